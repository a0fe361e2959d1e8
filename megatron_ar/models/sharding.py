"""Full (unsharded) megatron state dict <-> this rank's TP/PP/VPP shards, in memory.

The full state dict uses the global names of NAMES.md (``decoder.layers.{global i}...``,
vocab rows unpadded, ``linear_fc1`` = [gate; up]). Used by tests (copy weights from HF or from a
single-process model into any parallel layout, gather gradients back) and by small in-memory
conversions; multi-GB conversions stream through ``megatron_ar.checkpoint`` instead.

Design choices
- How to split a tensor comes from :func:`megatron_ar.models.tp.tp_split_axis` (megatron-core's
  own parameter attributes ``tensor_model_parallel`` / ``partition_dim``), not from a second
  hand-written table, so the split follows whatever the spec builds. Two layout facts are added
  on top: gated ``linear_fc1`` is split per half (rank r holds [gate_r; up_r], megatron-core's
  GLU layout) and vocab-parallel tensors are zero-padded to the Megatron padded vocab.
- ``linear_qkv`` needs no special case: megatron-core stores it grouped per query group, so a TP
  split is a contiguous split of the rows.
- Gathering uses ``all_gather`` over TP and ``all_gather_object`` over the pipeline group: simple and exact, meant for test-sized models (it materialises the whole
  model on every rank).
"""
from __future__ import annotations

import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_ar.models.config import ModelConfig
from megatron_ar.models.tp import VOCAB_PARAMS, tp_split_axis

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


def _bare(chunk):
    from megatron_ar.models.wrappers import unwrap

    return unwrap([chunk])[0]


def iter_global_params(chunks: Sequence[torch.nn.Module], cfg: ModelConfig
                       ) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """(global full name, local parameter) for every parameter this rank holds.

    Local layer indices are mapped to global ones via each layer's ``layer_number`` (which
    megatron-core offsets for the pipeline / virtual stage). With tied embeddings the last
    stage's copy of the embedding (``output_layer.weight``) maps to
    ``embedding.word_embeddings.weight``.
    """
    for chunk in chunks:
        model = _bare(chunk)
        layer_map = {}
        if hasattr(model, "decoder"):
            layer_map = {str(i): str(layer.layer_number - 1)
                         for i, layer in enumerate(model.decoder.layers)}
        for name, p in model.named_parameters():
            m = _LAYER_RE.match(name)
            if m:
                name = f"decoder.layers.{layer_map[m.group(1)]}.{m.group(2)}"
            if name == "output_layer.weight" and cfg.tie_embeddings:
                name = "embedding.word_embeddings.weight"
            yield name, p


def _is_gated_fc1(name: str, cfg: ModelConfig) -> bool:
    return cfg.gated and (name.endswith("mlp.linear_fc1.weight")
                          or name.endswith("mlp.linear_fc1.bias"))


def shard_tensor(name: str, full: torch.Tensor, param: torch.Tensor, cfg: ModelConfig,
                 tp_rank: int, tp: int) -> torch.Tensor:
    """This TP rank's piece of the full tensor ``full`` for local parameter ``param``."""
    axis = tp_split_axis(param)
    split = tp > 1 and axis is not None
    if name in VOCAB_PARAMS:
        rows = param.shape[0] * (tp if split else 1)
        if full.shape[0] > rows:
            raise ValueError(f"{name}: vocab {full.shape[0]} > padded vocab {rows}")
        pad = full.new_zeros((rows - full.shape[0],) + tuple(full.shape[1:]))
        out = torch.cat([full, pad], 0)
        out = out.chunk(tp, 0)[tp_rank] if split else out
    elif not split:
        out = full
    elif _is_gated_fc1(name, cfg):
        gate, up = full.chunk(2, 0)
        out = torch.cat([gate.chunk(tp, 0)[tp_rank], up.chunk(tp, 0)[tp_rank]], 0)
    else:
        out = full.chunk(tp, axis)[tp_rank]
    if tuple(out.shape) != tuple(param.shape):
        raise ValueError(f"{name}: shard shape {tuple(out.shape)} != parameter shape "
                         f"{tuple(param.shape)} (full tensor {tuple(full.shape)})")
    return out


def load_full_state_dict(chunks: Sequence[torch.nn.Module], full: Dict[str, torch.Tensor],
                         cfg: ModelConfig, strict: bool = True) -> None:
    """Copy a full state dict (NAMES.md names) into this rank's model chunks.

    ``strict``: every local parameter must be found in ``full`` (missing names raise
    ``KeyError`` naming them). Tensors for other ranks' layers are ignored.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    missing = []
    with torch.no_grad():
        for name, p in iter_global_params(chunks, cfg):
            if name not in full:
                missing.append(name)
                continue
            p.copy_(shard_tensor(name, full[name].to(p.dtype), p, cfg, tp_rank, tp))
    if strict and missing:
        raise KeyError(f"load_full_state_dict: missing tensors {missing[:8]}"
                       + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))


def _unshard(name: str, pieces: List[torch.Tensor], param, cfg: ModelConfig) -> torch.Tensor:
    axis = tp_split_axis(param)
    if axis is None:
        full = pieces[0]
    elif name in VOCAB_PARAMS:
        full = torch.cat(pieces, 0)[: cfg.vocab_size]
    elif _is_gated_fc1(name, cfg):
        halves = [p.chunk(2, 0) for p in pieces]
        full = torch.cat([h[0] for h in halves] + [h[1] for h in halves], 0)
    else:
        full = torch.cat(pieces, axis)
    if name in VOCAB_PARAMS and full.shape[0] > cfg.vocab_size:
        full = full[: cfg.vocab_size]
    return full


def _param_value(p: torch.nn.Parameter, grads: bool) -> Optional[torch.Tensor]:
    if not grads:
        return p.detach()
    g = getattr(p, "main_grad", None)
    if g is None:
        g = p.grad
    return None if g is None else g.detach()


def gather_full_state_dict(chunks: Sequence[torch.nn.Module], cfg: ModelConfig,
                           grads: bool = False) -> Dict[str, torch.Tensor]:
    """The full state dict (or full gradients with ``grads=True``: ``main_grad`` under DDP,
    else ``.grad``) assembled on every rank. Collective over the TP and PP groups.

    Tied embeddings: the first stage's copy wins (after ``finalize_model_grads`` both copies'
    grads are equal)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_group = parallel_state.get_tensor_model_parallel_group()
    local: Dict[str, torch.Tensor] = {}
    for name, p in iter_global_params(chunks, cfg):
        value = _param_value(p, grads)
        if value is None:
            value = torch.zeros_like(p)
        value = value.float().contiguous()
        if tp > 1 and tp_split_axis(p) is not None:
            pieces = [torch.empty_like(value) for _ in range(tp)]
            dist.all_gather(pieces, value, group=tp_group)
        else:
            pieces = [value]
        full = _unshard(name, pieces, p, cfg)
        if name not in local:
            local[name] = full.cpu()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return local
    everyone: List[Dict[str, torch.Tensor]] = [None] * pp
    dist.all_gather_object(everyone, local,
                           group=parallel_state.get_pipeline_model_parallel_group())
    merged: Dict[str, torch.Tensor] = {}
    for part in everyone:  # pipeline rank order: the first stage's tied embedding wins
        for k, v in part.items():
            merged.setdefault(k, v)
    return merged

"""Logit parity between a converted Megatron checkpoint and its HF original (``compare_hf.py``).

Design choices
- The Megatron side is the real thing: ``megatron_ar.models.build_model`` at the job's TP/PP
  (the parallel state set by :func:`megatron_ar.runtime.init_distributed`), weights from
  :func:`megatron_ar.checkpoint.load_into_model` (megatron-core ``dist_checkpointing``, resharded
  on load), logits from megatron-core's forward-only pipeline schedule gathered over TP
  (:func:`megatron_ar.models.step.forward_logits`, the training step), vocab padding stripped.
  This is the path training uses, so a pass here means training starts from the HF weights.
- The oracle is ``transformers``' ``AutoModelForCausalLM`` in fp32 with eager attention (what
  HF itself uses for Gemma-2 soft-capping), run on one rank only (the first rank of the last
  pipeline stage, which holds the gathered logits); the numbers are broadcast so every rank
  returns the same result and the CLI exits with the same status everywhere.
- Tokens come from the checkpoint's own tokenizer over a text file
  (:func:`megatron_ar.tokenizers.io.tokens_from_text`, called by the CLI: tokenisation is a
  higher layer than checkpoints): the first ``batch_size * seq_length`` tokens of the text
  (fewer rows if the text is short), identical on every rank because tokenisation is
  deterministic.
- Reported: max |logit difference| over all positions and real-vocab entries (the tolerance
  applies to it), mean |difference|, and top-1 agreement (fraction of positions whose argmax
  token is the same).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch

from megatron_ar.checkpoint.errors import CheckpointError


def find_tokenizer_dir(*candidates: Optional[str]) -> str:
    """First directory among ``candidates`` holding HF tokenizer files."""
    from megatron_ar.checkpoint.hf_io import TOKENIZER_FILES

    for d in candidates:
        if d and os.path.isdir(d) and any(os.path.isfile(os.path.join(d, n))
                                          for n in TOKENIZER_FILES):
            return d
    raise CheckpointError(f"no tokenizer files in any of {[c for c in candidates if c]}; pass "
                          f"--tokenizer-dir")


def _hf_model(hf_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def compare_with_hf(hf_dir: str, megatron_dir: str, token_batches: Sequence[torch.Tensor],
                    names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Compare logits on each ``[batch, seq]`` token tensor; collective over the whole job
    (call after ``init_distributed(tp, pp)``). Returns, on every rank::

        {"max_abs_diff", "mean_abs_diff", "top1_agreement", "num_positions",
         "per_batch": [{"name", "max_abs_diff", "mean_abs_diff", "top1_agreement",
                        "num_positions"}, ...], "tensor_model_parallel_size", ...}
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ar.checkpoint.megatron_io import load_into_model, read_checkpoint_info
    from megatron_ar.models.builder import build_model
    from megatron_ar.models.step import forward_logits

    if not token_batches:
        raise ValueError("compare_with_hf: no token batches")
    info = read_checkpoint_info(megatron_dir)
    cfg = info.model_config
    chunks = build_model(cfg, params_dtype=torch.float32)
    load_into_model(chunks, megatron_dir, cfg)
    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    reporter = last_stage and parallel_state.get_tensor_model_parallel_rank() == 0
    # global rank of the reporter: the first rank of the last pipeline stage's TP group
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, reporter)
    src = flags.index(True)
    names = list(names) if names is not None else [f"batch{i}" for i in range(len(token_batches))]
    mega = []
    for tokens in token_batches:  # the forward step moves them to the device
        out = forward_logits(chunks, tokens, vocab_size=cfg.vocab_size)
        if reporter:
            mega.append(out.float().cpu())  # the HF oracle runs on the CPU
    del chunks
    result: List[Optional[Dict[str, object]]] = [None]
    if reporter:
        try:
            result[0] = _summarise(hf_dir, names, token_batches, mega)
        except Exception as exc:  # tell the other ranks instead of leaving them in broadcast
            result[0] = {"error": f"{type(exc).__name__}: {exc}"}
            dist.broadcast_object_list(result, src=src)
            raise
        result[0].update({
            "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
            "pipeline_model_parallel_size":
                parallel_state.get_pipeline_model_parallel_world_size(),
            "checkpoint_padded_vocab_size": info.padded_vocab_size,
        })
    dist.broadcast_object_list(result, src=src)
    if "error" in result[0]:
        raise CheckpointError(f"compare_hf failed on rank {src}: {result[0]['error']}")
    return result[0]


def _summarise(hf_dir, names, token_batches, mega) -> Dict[str, object]:
    per = []
    max_diff, abs_sum, agree, count = 0.0, 0.0, 0, 0
    model = _hf_model(hf_dir)
    for name, tokens, m in zip(names, token_batches, mega):
        with torch.no_grad():
            h = model(input_ids=tokens).logits.float()
        if h.shape != m.shape:
            raise CheckpointError(f"logit shapes differ: megatron {tuple(m.shape)}, "
                                  f"HF {tuple(h.shape)}")
        diff = (m - h).abs()
        same = m.argmax(-1) == h.argmax(-1)
        per.append({"name": name, "max_abs_diff": float(diff.max()),
                    "mean_abs_diff": float(diff.mean()),
                    "top1_agreement": float(same.float().mean()),
                    "num_positions": int(same.numel())})
        max_diff = max(max_diff, float(diff.max()))
        abs_sum += float(diff.sum())
        agree += int(same.sum())
        count += same.numel()
    return {"max_abs_diff": max_diff, "mean_abs_diff": abs_sum / (count * mega[0].shape[-1]),
            "top1_agreement": agree / count, "num_positions": count, "per_batch": per}

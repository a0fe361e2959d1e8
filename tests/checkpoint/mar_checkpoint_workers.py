"""Rank-side code of the multi-process checkpoint tests (spawned by run_multiprocess)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch


def parity_and_megatron_save(cases: List[Tuple[str, str, str, torch.Tensor]], tp: int, pp: int,
                             resave: Tuple[str, str]) -> Dict[str, object]:
    """For each (name, hf_dir, megatron_dir, tokens): logit parity with HF at TP x PP. Then load
    ``resave[0]`` into a TP x PP model and save it with megatron-core's own
    ``dist_checkpointing.save`` into ``resave[1]`` (the oracle for our shard layout)."""
    from megatron.core import dist_checkpointing

    from megatron_ar.checkpoint import compare_with_hf, load_into_model, read_checkpoint_info
    from megatron_ar.models import build_model
    from megatron_ar.runtime import init_distributed

    init_distributed(tp=tp, pp=pp)
    out: Dict[str, object] = {}
    for name, hf_dir, meg_dir, tokens in cases:
        out[name] = compare_with_hf(hf_dir, meg_dir, [tokens], names=[name])
    src, dst = resave
    chunks = build_model(read_checkpoint_info(src).model_config)
    load_into_model(chunks, src)
    dist_checkpointing.save(chunks[0].sharded_state_dict(), dst)
    # Same job, another layout: PP=2 with 2 virtual stages per rank, DP=2 (model chunks > 1).
    init_distributed(tp=1, pp=2, vpp=2)
    name, hf_dir, meg_dir, tokens = cases[0]
    out[name + "-pp2-vpp2-dp2"] = compare_with_hf(hf_dir, meg_dir, [tokens], names=[name])
    return out


def _plain_state(model) -> Dict[str, torch.Tensor]:
    """Tensors of ``model.state_dict()`` under the local spec's names (the stand-in's fused
    norm weights renamed back), ``_extra_state`` left out, on the host."""
    renames = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
               "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("_extra_state") or not isinstance(v, torch.Tensor):
            continue
        for a, b in renames.items():
            k = k.replace(a, b)
        out[k] = v.detach().cpu().clone()
    return out


def cross_spec_roundtrip(cases: List[Tuple[str, str, str, str, torch.Tensor]], tp: int,
                         pp: int) -> Dict[str, object]:
    """For each (kind, converted_dir, te_dir, bare_dir, tokens):

    1. at TP x PP: a local model and a TE-style stand-in model (mar_te_standin) load the
       converted checkpoint; the stand-in's FP8 states are the fresh ones; logits of both;
       three forwards update the stand-in's FP8 state, then its model state is saved into
       ``te_dir`` (as a training checkpoint's model part) with model_config.json beside it;
       the local model's tensors alone (no ShardedObject) are saved into ``bare_dir``;
    2. at TP=1 x PP=1 (DP = world): a fresh stand-in loads ``te_dir`` (FP8 states restored),
       a local model loads ``te_dir`` (TE state ignored), a stand-in and a local model load
       ``bare_dir`` (no ``_extra_state`` in it at all) and a local model loads the converted
       checkpoint as the reference.
    Returns per kind what the parent compares."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from mar_te_standin import extra_states, standin_modules
    from megatron_ar.checkpoint import load_into_model, read_checkpoint_info, write_checkpoint_info
    from megatron_ar.models import build_model, forward_logits
    from megatron_ar.runtime import init_distributed, to_host
    from megatron_ar.training.checkpointing import load_weights, model_sharded_state_dict

    def logits(chunks, tok, vocab):
        out = forward_logits(chunks, tok, vocab)
        return None if out is None else to_host(out)

    init_distributed(tp=tp, pp=pp)
    out: Dict[str, object] = {}
    for kind, src, te_dir, bare_dir, tokens in cases:
        cfg = read_checkpoint_info(src).model_config
        r: Dict[str, object] = {}
        local = build_model(cfg)
        load_into_model(local, src)
        te = build_model(cfg, modules=standin_modules(cfg))
        load_into_model(te, src)
        r["fresh_steps"] = sorted({s["step"] for s in extra_states(te[0]).values()})
        r["logits_local"] = logits(local, tokens, cfg.vocab_size)
        r["logits_te"] = logits(te, tokens, cfg.vocab_size)
        for shift in (1, 2, 3):
            logits(te, (tokens + shift) % cfg.vocab_size, cfg.vocab_size)
        dist_checkpointing.save(model_sharded_state_dict(te), te_dir)
        bare = {k: v for k, v in model_sharded_state_dict(local)["model"].items()
                if not isinstance(v, ShardedObject)}
        dist_checkpointing.save({"model": bare}, bare_dir)
        if dist.get_rank() == 0:
            write_checkpoint_info(te_dir, read_checkpoint_info(src))
        dist.barrier()
        # The FP8 states of this TP x PP run, as TP rank 0 saves them (replica 0).
        r["saved_states"] = (extra_states(te[0]) if parallel_state.get_tensor_model_parallel_rank()
                             == 0 and parallel_state.get_data_parallel_rank() == 0 else {})
        out[kind] = r

    init_distributed(tp=1, pp=1)
    for kind, src, te_dir, bare_dir, tokens in cases:
        cfg = read_checkpoint_info(src).model_config
        r = out[kind]
        ref = build_model(cfg)
        load_into_model(ref, src)
        r["reference"] = _plain_state(ref[0])
        te2 = build_model(cfg, modules=standin_modules(cfg))
        load_weights(te2, te_dir)
        r["te_from_te"] = _plain_state(te2[0])
        r["te_from_te_states"] = extra_states(te2[0])
        local2 = build_model(cfg)
        load_weights(local2, te_dir)
        r["local_from_te"] = _plain_state(local2[0])
        te3 = build_model(cfg, modules=standin_modules(cfg))
        load_weights(te3, bare_dir)
        r["te_from_bare"] = _plain_state(te3[0])
        r["te_from_bare_steps"] = sorted({s["step"] for s in extra_states(te3[0]).values()})
        local3 = build_model(cfg)
        load_weights(local3, bare_dir)
        r["local_from_bare"] = _plain_state(local3[0])
        r["logits_te_tp1"] = logits(te2, tokens, cfg.vocab_size)
        r["logits_ref_tp1"] = logits(ref, tokens, cfg.vocab_size)
    return out

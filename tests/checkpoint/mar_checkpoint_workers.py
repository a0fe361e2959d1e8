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

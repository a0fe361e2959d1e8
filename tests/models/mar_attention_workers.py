"""Rank-side code of tests/models/test_attention_backends.py: every attention backend that runs
on a CPU, at TP=1, TP=2 with sequence parallelism and PP=2, against HF logits (and, for the
backends that train on a CPU, against the unfused reference's loss and gradients)."""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "parallel"))
import mar_parallel_workers as pw  # noqa: E402

LAYOUTS = [("tp1", 1, 1, False), ("tp2sp", 2, 1, True), ("pp2", 1, 2, False)]


def suite(payload):
    from megatron_ar.models import ModelConfig

    out = {}
    for case in payload["cases"]:
        base = ModelConfig.from_dict(case["cfg"])
        ref_loss = ref_grads = None
        if case.get("train"):
            ref_loss, ref_grads = pw._reference(
                dataclasses.replace(base, attention_backend="unfused"), case["state"],
                case["microbatches"])
        for backend in case["backends"]:
            cfg = dataclasses.replace(base, attention_backend=backend)
            for name, tp, pp, sp in LAYOUTS:
                pw._layout(tp, pp)
                chunks = pw._build(cfg, case["state"], sp=sp)
                key = f"{case['name']}/{backend}/{name}"
                out[key + "/logits"] = pw._logit_diff(chunks, cfg, case["tokens"],
                                                      case["hf_logits"])
                if case.get("train") and backend != "flex":  # no FlexAttention backward on CPU
                    r = pw._equivalence(cfg, case["state"], case["microbatches"], ref_loss,
                                        ref_grads, tp, pp, sp=sp, ddp=True)
                    out[key + "/grad"] = r["max_grad_rel"]
                    out[key + "/loss"] = r["loss_diff"]
    return out

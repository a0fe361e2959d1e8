"""megatron-core's fused code paths as our models use them on a GPU without TE/apex, and DDP
communication overlap as ``wrap_with_ddp`` sets it up, on 2 gloo ranks (workers:
fused_workers.py).

Fusions: the flags ``decide_fusions`` gives a bare H200 stack (bias-SwiGLU for Llama,
bias-dropout-add and the native fused cross entropy for both; Gemma's tanh-GELU stays unfused)
run through megatron-core's fused functions with ``torch.compile`` in ``force_eager`` stance
(the same Python, not compiled), at TP=2 + sequence parallel in bf16. Oracle: the same model and
weights with every fusion off. The backward graph must contain megatron's fused autograd
Functions (so the flags really took effect) and the unfused one must not. Gemma-2 checks that
the fused cross entropy sees the final-logit soft-cap (applied by a forward hook on the output
layer) and that the sandwich-norm bias-dropout-add wrapper works with the fused callable.
Measured (printed with -s): loss equal to the last bit in both models; largest gradient
difference 1.0e-2 relative for Llama (megatron's SwiGLU backward rounds to bf16 at other points
than autograd of ``silu(a) * b``; one bf16 ulp is 7.8e-3), 0.0 for Gemma-2. A wrong fused
function (another activation, a missed soft-cap) differs by O(1).

Overlap: DP=2, distributed optimizer, ``overlap_grad_reduce`` + ``overlap_param_gather`` with
small buckets, three Adam steps of two micro-batches per rank through megatron-core's
schedule. Oracle: the same run without overlap (one bucket). Same sums in the same order, so
losses and parameters must agree to fp32 noise. The run also shows why the training loop must
force a parameter sync before reading weights outside a forward: right after the step the other
rank's shard is stale.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fused_workers  # noqa: E402

from megatron_ar.models import get_preset, hf_to_megatron, to_hf_config  # noqa: E402
from megatron_ar.runtime import run_multiprocess  # noqa: E402

pytestmark = pytest.mark.multiproc

SEQ = 32
LOSS_REL_TOL = 1e-3     # bf16 model; both variants compute the loss in fp32 from bf16 logits
GRAD_REL_TOL = 2e-2     # bf16 gradients: one bf16 ulp is 2**-8 = 4e-3 relative
PARAM_TOL = 1e-6


def _random_state(cfg, seed):
    from transformers import AutoModelForCausalLM

    hfc = to_hf_config(cfg)
    hfc._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hfc).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            base = 1.0 if (p.ndim == 1 and cfg.norm == "rmsnorm") else 0.0
            p.copy_((0.3 if p.ndim == 1 else 0.08) * noise + base)
    return hf_to_megatron(model.state_dict(), cfg)


def _tokens(vocab, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (n, SEQ), generator=gen),
            torch.randint(0, vocab, (n, SEQ), generator=gen))


@pytest.fixture(scope="module")
def results():
    fused = {}
    for i, preset in enumerate(("tiny-llama", "tiny-gemma2")):
        cfg = get_preset(preset, seq_length=SEQ)
        fused[preset] = {"cfg": cfg.to_dict(), "state": _random_state(cfg, 10 + i),
                         "batch": _tokens(cfg.vocab_size, 2, 20 + i)}
    cfg = get_preset("tiny-llama", seq_length=SEQ)
    steps = []
    for s in range(3):  # per step, per rank: two micro-batches of one sequence
        toks, labels = _tokens(cfg.vocab_size, 4, 30 + s)
        steps.append([[{"tokens": toks[2 * r + m:2 * r + m + 1],
                        "labels": labels[2 * r + m:2 * r + m + 1]} for m in range(2)]
                      for r in range(2)])
    payload = {"fused": fused,
               "overlap": {"cfg": cfg.to_dict(), "state": _random_state(cfg, 40), "steps": steps}}
    return run_multiprocess(fused_workers.suite, 2, payload, timeout=900)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2"])
def test_fused_paths_match_unfused(results, preset):
    for rank, res in enumerate(results):
        r = res["fused"][preset]
        print(f"\n{preset} rank {rank}: fusions {r['decision']}; loss fused {r['loss_fused']!r} "
              f"plain {r['loss_plain']!r}; max grad rel diff {r['max_grad_rel']:.2e} "
              f"({r['worst']})")
        want = {"bias_dropout_fusion", "cross_entropy_loss_fusion"}
        if preset == "tiny-llama":
            want.add("bias_activation_fusion")
        assert set(r["decision"]) == want
        assert {k for k, v in r["fused_flags"].items() if v} == want
        assert not any(r["plain_flags"].values())
        fused_ce = "megatron.core.fusions.fused_cross_entropy._VocabParallelCrossEntropy"
        swiglu = "megatron.core.fusions.fused_bias_swiglu.SwiGLUFunction"
        assert fused_ce in r["fused_functions"] and fused_ce not in r["plain_functions"]
        assert (swiglu in r["fused_functions"]) == (preset == "tiny-llama")
        assert swiglu not in r["plain_functions"]
        assert r["loss_fused"] == pytest.approx(r["loss_plain"], rel=LOSS_REL_TOL)
        assert r["max_grad_rel"] <= GRAD_REL_TOL


def test_overlap_matches_plain_ddp(results):
    for rank, res in enumerate(results):
        r = res["overlap"]
        print(f"\noverlap rank {rank}: losses {r['losses_overlap']} vs {r['losses_plain']}; "
              f"param max diff {r['param_max_diff']:.1e}; stale shard before sync "
              f"{r['stale_max_diff']:.1e}; {r['hooks']}")
        assert r["hooks"] == {"no_sync_func": True, "grad_sync_func": True,
                              "param_sync_func": False,  # aligned only with virtual stages
                              "ddp_overlap_param_gather": True, "ddp_overlap_grad_reduce": True,
                              "buckets": r["hooks"]["buckets"]}
        assert r["hooks"]["buckets"] > 1
        assert not any(v for k, v in r["hooks_plain"].items() if k != "buckets")
        assert r["losses_overlap"] == pytest.approx(r["losses_plain"], rel=1e-6)
        assert r["param_max_diff"] <= PARAM_TOL
        # Adam moved the parameters by ~lr=1e-2 per step: a stale shard is far off.
        assert r["stale_max_diff"] > 1e-3

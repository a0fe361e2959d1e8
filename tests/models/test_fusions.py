"""The megatron-core fusion decision table (megatron_ar.runtime.fusions) driven with hand-made
capability sets, its translation into TransformerConfig flags (megatron-core's own
``TransformerConfig.__post_init__`` is the oracle for which combinations it accepts), the DDP
overlap rules and the CUDA_DEVICE_MAX_CONNECTIONS check. Single process, no process groups;
the fused code paths themselves run in tests/models/test_fused_paths.py."""
import pytest
import torch
import torch.nn.functional as F

from megatron_ar.models import get_preset
from megatron_ar.runtime.fusions import (
    FUSION_FLAGS,
    CudaConnectionsError,
    FusionDecision,
    StackCapabilities,
    check_cuda_device_max_connections,
    overlap_errors,
    probe_capabilities,
)

pytestmark = pytest.mark.unit

BF16 = torch.bfloat16
# Capability sets of the machines we meet: a CPU, a bare CUDA torch (what the H200 check has),
# CUDA + apex, CUDA + TE, CUDA + TE + apex (an NGC container), and CUDA without a C compiler.
CPU = StackCapabilities()
BARE = StackCapabilities(cuda=True, device_name="NVIDIA H200", compute_capability=(9, 0),
                         torch_compile=True, torch_compile_detail="triton + cc")
APEX = StackCapabilities(**{**BARE.to_dict(), "apex_grad_accum": True, "softmax_kernels": True})
TE = StackCapabilities(**{**BARE.to_dict(), "te_version": "2.9.0", "te_fused_rope": True})
NGC = StackCapabilities(**{**APEX.to_dict(), "te_version": "2.9.0", "te_fused_rope": True})
NO_CC = StackCapabilities(**{**BARE.to_dict(), "torch_compile": False,
                             "torch_compile_detail": "no C compiler"})


def _on(decision):
    return set(decision.enabled)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2", "tiny-autoresearch"])
def test_cpu_decision_is_all_off_and_config_matches_the_old_flags(preset):
    cfg = get_preset(preset)
    d = cfg.fusion_decision(torch.float32, CPU)
    assert _on(d) == set()
    assert all(d.reason(f) == "no CUDA device" for f in FUSION_FLAGS)
    tc = cfg.to_transformer_config(fusions=d)
    # The flags the CPU path always had (hard-coded before the decision table existed).
    for flag in FUSION_FLAGS:
        assert getattr(tc, flag) is False, flag
    # Without CUDA the automatic decision is this one, and nothing is printed.
    assert cfg.fusion_decision(torch.float32) == d


@pytest.mark.parametrize("caps,dtype,want", [
    (BARE, BF16, {"bias_activation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion"}),
    (BARE, torch.float32, {"bias_activation_fusion", "bias_dropout_fusion"}),
    (APEX, BF16, {"gradient_accumulation_fusion", "bias_activation_fusion",
                  "bias_dropout_fusion", "masked_softmax_fusion", "cross_entropy_loss_fusion"}),
    (TE, BF16, {"bias_activation_fusion", "bias_dropout_fusion", "apply_rope_fusion",
                "cross_entropy_loss_fusion"}),
    (NGC, BF16, {"gradient_accumulation_fusion", "bias_activation_fusion", "bias_dropout_fusion",
                 "apply_rope_fusion", "masked_softmax_fusion", "cross_entropy_loss_fusion"}),
    (NO_CC, BF16, set()),
])
def test_llama_decision_table(caps, dtype, want):
    d = get_preset("fanar-star-7b").fusion_decision(dtype, caps)
    assert _on(d) == want
    assert "persist_layer_norm" not in want and "RMSNorm" in d.reason("persist_layer_norm")
    if caps is TE:  # TE alone does not bring apex's wgrad kernel megatron's output layer needs
        assert "fused_weight_gradient_mlp_cuda" in d.reason("gradient_accumulation_fusion")
    if caps is NO_CC:
        assert d.reason("bias_dropout_fusion") == "torch.compile unusable: no C compiler"
    if dtype == torch.float32:
        assert "casts the logit gradient to bf16" in d.reason("cross_entropy_loss_fusion")


def test_gemma2_decision_sliding_window_softcaps_and_tanh_gelu():
    cfg = get_preset("fanar-prime-9b")
    assert cfg.sliding_window and cfg.attn_logit_softcap and cfg.final_logit_softcap
    d = cfg.fusion_decision(BF16, NGC)
    # On: everything the stack has except what the architecture rules out.
    assert _on(d) == {"gradient_accumulation_fusion", "bias_dropout_fusion", "apply_rope_fusion",
                      "cross_entropy_loss_fusion"}
    assert "window_size" in d.reason("masked_softmax_fusion")
    assert "gelu_tanh" in d.reason("bias_activation_fusion")
    # Soft-caps alone do not block the softmax or cross-entropy fusions: no window -> on.
    no_window = cfg.replace(sliding_window=None).fusion_decision(BF16, NGC)
    assert {"masked_softmax_fusion", "cross_entropy_loss_fusion"} <= _on(no_window)


@pytest.mark.parametrize("activation,gated,bias,fused", [
    ("swiglu", True, False, True),
    ("geglu_tanh", True, False, False),
    ("relu2", False, False, False),
    ("gelu", False, False, False),
    ("gelu", False, True, True),
])
def test_activation_rule_matches_megatron_core(activation, gated, bias, fused):
    """Oracle: megatron-core's TransformerConfig accepts bias_activation_fusion=True exactly for
    the activations our table fuses."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    base = get_preset("tiny-autoresearch" if activation in ("relu2", "gelu") else "tiny-llama")
    cfg = base.replace(activation=activation, add_bias_linear=bias)
    assert cfg.gated == gated
    d = cfg.fusion_decision(BF16, BARE)
    assert d.bias_activation_fusion == fused, d.reason("bias_activation_fusion")
    tc_kwargs = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                     activation_func=cfg.activation_func(), gated_linear_unit=cfg.gated,
                     add_bias_linear=bias, bias_activation_fusion=True)
    if fused:
        TransformerConfig(**tc_kwargs)
    else:
        with pytest.raises(ValueError, match="bias_activation_fusion"):
            TransformerConfig(**tc_kwargs)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2", "tiny-autoresearch"])
@pytest.mark.parametrize("caps", [BARE, APEX, NO_CC], ids=["bare", "apex", "no-cc"])
def test_transformer_config_accepts_the_decisions(preset, caps):
    cfg = get_preset(preset)
    d = cfg.fusion_decision(BF16, caps)
    tc = cfg.to_transformer_config(params_dtype=BF16, fusions=d)
    for flag in FUSION_FLAGS:
        assert getattr(tc, flag) == getattr(d, flag), flag
    if d.cross_entropy_loss_fusion:
        assert tc.cross_entropy_fusion_impl == "native"


def test_rope_fusion_needs_transformer_engine_as_megatron_core_says():
    """With TE's capability claimed, the flag is on; megatron-core itself refuses it on this
    machine iff its TE fused RoPE is missing, which is what our probe reports."""
    from megatron.core.models.common.embeddings import rope_utils

    cfg = get_preset("tiny-llama")
    d = cfg.fusion_decision(BF16, TE)
    assert d.apply_rope_fusion
    here = probe_capabilities(cuda=True)
    assert here.te_fused_rope == (rope_utils.fused_apply_rotary_pos_emb is not None)
    if rope_utils.fused_apply_rotary_pos_emb is None:
        with pytest.raises(ValueError, match="apply_rope_fusion is not available"):
            cfg.to_transformer_config(params_dtype=BF16, fusions=d)
    else:
        assert cfg.to_transformer_config(params_dtype=BF16, fusions=d).apply_rope_fusion


def test_probe_agrees_with_megatron_core_on_apex_wgrad_kernel():
    from megatron.core.tensor_parallel import layers

    assert probe_capabilities(cuda=True).apex_grad_accum == layers._grad_accum_fusion_available


def test_summary_is_one_line_with_every_flag_and_reason():
    d = get_preset("fanar-prime-9b").fusion_decision(BF16, BARE)
    line = d.summary()
    assert "\n" not in line
    on, off = line.split(" | off: ")
    assert on == ("[fusions] on: bias_dropout_fusion (torch.compile), "
                  "cross_entropy_loss_fusion (native, torch.compile)")
    for flag in FUSION_FLAGS:
        assert (flag in on) == getattr(d, flag)
        assert f"{flag} ({d.reason(flag)})" in line
    assert FusionDecision.all_off("x").summary().startswith("[fusions] on: none | off: ")


def test_overlap_rules_follow_megatron_lm():
    assert overlap_errors(use_distributed_optimizer=True, overlap_grad_reduce=True,
                          overlap_param_gather=True) == []
    assert overlap_errors(use_distributed_optimizer=False, overlap_grad_reduce=True,
                          overlap_param_gather=False) == []
    errs = overlap_errors(use_distributed_optimizer=False, overlap_grad_reduce=False,
                          overlap_param_gather=True)
    assert [k for k, _ in errs] == ["overlap_param_gather", "overlap_param_gather"]
    assert "use_distributed_optimizer" in errs[0][1] and "overlap_grad_reduce" in errs[1][1]


def test_wrap_with_ddp_refuses_param_gather_without_distributed_optimizer():
    from megatron_ar.models import wrap_with_ddp

    with pytest.raises(ValueError, match="overlap_param_gather needs use_distributed_optimizer"):
        wrap_with_ddp([torch.nn.Linear(2, 2)], overlap_grad_reduce=True, overlap_param_gather=True)


@pytest.mark.parametrize("tp,cp,sp,env,cap,fails", [
    (2, 1, True, {}, (9, 0), True),                                      # H100/H200, unset
    (2, 1, True, {"CUDA_DEVICE_MAX_CONNECTIONS": "8"}, (9, 0), True),
    (2, 1, False, {}, (9, 0), True),                                     # TP without SP too
    (1, 2, False, {}, (9, 0), True),                                     # context parallel
    (2, 1, True, {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}, (9, 0), False),
    (1, 1, False, {}, (9, 0), False),                                    # DP only
    (2, 1, True, {}, (10, 0), False),                                    # Blackwell
])
def test_cuda_device_max_connections(tp, cp, sp, env, cap, fails):
    caps = StackCapabilities(**{**BARE.to_dict(), "compute_capability": cap})
    if fails:
        with pytest.raises(CudaConnectionsError, match="CUDA_DEVICE_MAX_CONNECTIONS must be 1"):
            check_cuda_device_max_connections(tp, cp, sp, environ=env, caps=caps)
    else:
        check_cuda_device_max_connections(tp, cp, sp, environ=env, caps=caps)
    # Never on a CPU run.
    check_cuda_device_max_connections(tp, cp, sp, environ=env, caps=CPU)


def test_cuda_device_max_connections_message_names_the_setting():
    with pytest.raises(CudaConnectionsError) as exc:
        check_cuda_device_max_connections(2, 1, True, environ={"CUDA_DEVICE_MAX_CONNECTIONS": "32"},
                                          caps=BARE)
    msg = str(exc.value)
    assert "tensor parallel size 2 with sequence parallelism" in msg
    assert "NVIDIA H200 (compute capability 9.0), got '32'" in msg


def test_flags_are_exactly_megatron_cores_fields():
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = set(TransformerConfig.__dataclass_fields__)
    assert set(FUSION_FLAGS) <= fields
    assert F.silu is get_preset("tiny-llama").activation_func()


def test_environment_switch_turns_every_fusion_off():
    caps = probe_capabilities(cuda=True, environ={"MEGATRON_AR_FUSIONS": "off"})
    d = get_preset("fanar-star-7b").fusion_decision(BF16, caps)
    assert caps.cuda and d.enabled == ()
    assert d.reason("bias_dropout_fusion") == "disabled by MEGATRON_AR_FUSIONS=off"

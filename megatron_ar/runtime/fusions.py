"""GPU performance settings: which megatron-core fusions this machine's stack supports, and the
preconditions of communication overlap (DDP overlap flags, ``CUDA_DEVICE_MAX_CONNECTIONS``).

Design choices
- Probing and deciding are separate. :func:`probe_stack` looks at the installed stack once per
  process (CUDA device, torch.compile's toolchain, Transformer Engine, apex's / Megatron's CUDA
  extensions) and returns a frozen :class:`StackCapabilities`. :func:`decide_fusions` is a pure
  function of those capabilities plus the model options that matter, returning a
  :class:`FusionDecision` (every flag with its reason). ``ModelConfig.to_transformer_config``
  takes the decision as data, so CPU tests drive the GPU decision table with a hand-made
  capability set and the CPU path stays exactly as before (everything off).
- This module sits in ``runtime`` (below ``models``): the model options arrive as plain values
  (the activation *function*, gated or not, bias, sliding window, parameter dtype), never as a
  ``ModelConfig``. The activation is checked by identity exactly as megatron-core 0.16 does in
  ``TransformerConfig.__post_init__`` / ``MLP.forward``.
- Each rule follows megatron-core 0.16.1's code, not its flag documentation:
  * ``gradient_accumulation_fusion``: megatron's ``ColumnParallelLinear`` (always used for the
    output layer, TE spec or not) raises unless apex's ``fused_weight_gradient_mlp_cuda`` imports,
    so apex is required even with TE. Backward then accumulates into ``param.main_grad``: the
    model must be wrapped in megatron-core DDP (``models.builder.wrap_with_ddp``) before backward.
  * ``bias_activation_fusion``: fused kernels exist for ``F.silu`` with a gated unit (SwiGLU),
    ``F.gelu`` gated (GEGLU) or with a bias, ``quick_gelu`` gated. Gemma's tanh-GELU
    (``gelu_tanh``) and ReLU^2 are not in that set (megatron's GEGLU kernel happens to use the
    tanh approximation, but it is selected by ``activation_func is F.gelu``; claiming ``F.gelu``
    would make every unfused path compute the erf GELU), so they stay unfused.
  * ``bias_dropout_fusion``, ``bias_activation_fusion`` and the native
    ``cross_entropy_loss_fusion`` are ``megatron.core.jit.jit_fuser`` = ``torch.compile``
    (torch >= 2.2): they need triton plus a host C compiler and Python headers, which triton uses
    to build its launcher; without them the first call fails, so they stay off.
  * ``cross_entropy_loss_fusion`` (native): its backward casts the logit gradient to bf16
    (``fused_cross_entropy.calculate_gradients``), so it is on for bf16 parameters only. It reads
    the logits the output layer returns, i.e. after the final-logit soft-cap forward hook of
    ``ArGPTModel``, so soft-capped models can use it.
  * ``apply_rope_fusion``: megatron-core's only fused RoPE is TE's
    (``megatron.core.extensions.transformer_engine.fused_apply_rotary_pos_emb``).
  * ``masked_softmax_fusion``: the local ``DotProductAttention``'s kernels are the
    ``scaled_upper_triang_masked_softmax_cuda`` / ``scaled_masked_softmax_cuda`` extensions
    (apex builds them). ``FusedScaleMaskSoftmax.is_kernel_available`` does not look at
    ``window_size``, so a sliding-window layer would silently get full causal attention: off for
    every model with a sliding window. Attention soft-capping is applied to the scores before
    this module (``SoftcapDotProductAttention``), so it composes with the fused kernel.
  * ``persist_layer_norm``: only megatron's apex ``FusedLayerNorm`` (LayerNorm) reads it; our
    norms are RMSNorm (``megatron_ar.models.modules.RMSNorm`` or TE's), so it is always off.
- ``MEGATRON_AR_FUSIONS=off`` makes the probe report a CUDA device without fusion support, so
  a GPU run can rule the fusions out when diagnosing a numerical or compile problem without
  editing a recipe.
- Trade-off: probing imports TE / apex extensions, which can take a second on a GPU node; it is
  skipped entirely without a CUDA device, so CPU runs import nothing new.
- Overlap: :func:`overlap_errors` states Megatron-LM's rules for ``overlap_param_gather``
  (``megatron/training/arguments.py``: it needs the distributed optimizer and
  ``overlap_grad_reduce``). :func:`check_cuda_device_max_connections` is Megatron-LM's
  ``validate_args`` check: with TP > 1 or CP > 1 on GPUs before Blackwell (compute capability
  < 10), megatron-core's linear layers rely on ``CUDA_DEVICE_MAX_CONNECTIONS=1`` so that the
  TP/SP collectives are queued before the GEMMs they overlap with.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import shutil
import sysconfig
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

FUSION_FLAGS = (
    "gradient_accumulation_fusion",
    "bias_activation_fusion",
    "bias_dropout_fusion",
    "apply_rope_fusion",
    "masked_softmax_fusion",
    "cross_entropy_loss_fusion",
    "persist_layer_norm",
)

_SOFTMAX_KERNELS = ("scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda")


@dataclass(frozen=True)
class StackCapabilities:
    """What the installed stack offers (see :func:`probe_stack`). Tests build these by hand.

    cuda: a CUDA device is usable. ``torch_compile``: torch.compile can build CUDA kernels
    (triton, a C compiler and Python headers present); ``torch_compile_detail`` says what is
    missing otherwise. ``te_version``: Transformer Engine's version when it imports.
    ``te_fused_rope``: megatron-core's TE fused RoPE imports. ``apex_grad_accum``: apex's
    ``fused_weight_gradient_mlp_cuda`` imports. ``softmax_kernels``: the fused masked-softmax
    extensions import. ``compute_capability``: (major, minor) of the current device.
    ``disabled_by``: set when the environment switched fusions off (``MEGATRON_AR_FUSIONS=off``).
    """

    cuda: bool = False
    device_name: str = ""
    compute_capability: Optional[Tuple[int, int]] = None
    torch_compile: bool = False
    torch_compile_detail: str = "no CUDA device"
    te_version: Optional[str] = None
    te_fused_rope: bool = False
    apex_grad_accum: bool = False
    softmax_kernels: bool = False
    disabled_by: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FusionDecision:
    """megatron-core fusion flags and, for each, why it is on or off."""

    gradient_accumulation_fusion: bool = False
    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    apply_rope_fusion: bool = False
    masked_softmax_fusion: bool = False
    cross_entropy_loss_fusion: bool = False
    persist_layer_norm: bool = False
    reasons: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def all_off(cls, reason: str) -> "FusionDecision":
        return cls(reasons=tuple((name, reason) for name in FUSION_FLAGS))

    def reason(self, flag: str) -> str:
        return dict(self.reasons).get(flag, "")

    @property
    def enabled(self) -> Tuple[str, ...]:
        return tuple(f for f in FUSION_FLAGS if getattr(self, f))

    def transformer_config_kwargs(self) -> Dict[str, Any]:
        """The ``TransformerConfig`` keyword arguments of this decision."""
        out: Dict[str, Any] = {f: bool(getattr(self, f)) for f in FUSION_FLAGS}
        if self.cross_entropy_loss_fusion:
            out["cross_entropy_fusion_impl"] = "native"
        return out

    def summary(self) -> str:
        """One line: the fusions that are on, then each one that is off with its reason."""
        on = [f"{f} ({self.reason(f)})" for f in FUSION_FLAGS if getattr(self, f)]
        off = [f"{f} ({self.reason(f)})" for f in FUSION_FLAGS if not getattr(self, f)]
        return ("[fusions] on: " + (", ".join(on) if on else "none")
                + " | off: " + (", ".join(off) if off else "none"))


# ----------------------------------------------------------------------------------------------
# probing
# ----------------------------------------------------------------------------------------------
def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or an extension built for another torch/CUDA
        return False
    return True


def _torch_compile_toolchain() -> Tuple[bool, str]:
    """Whether torch.compile (inductor + triton) can build CUDA kernels here."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False, "torch has no triton support"
    if not has_triton():
        return False, "triton is not installed (or no supported GPU)"
    cc = os.environ.get("CC") or next(
        (c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if not cc:
        return False, "no C compiler (triton builds its kernel launcher with one; set CC)"
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return False, f"Python headers missing ({include}/Python.h; triton's launcher needs them)"
    return True, f"triton + {cc}"


def te_fused_rope_available() -> bool:
    """megatron-core's own test (``TransformerConfig.__post_init__``): its TE wrapper exports
    ``fused_apply_rotary_pos_emb``."""
    try:
        from megatron.core.extensions.transformer_engine import fused_apply_rotary_pos_emb
    except Exception:
        return False
    return fused_apply_rotary_pos_emb is not None


DISABLE_ENV = "MEGATRON_AR_FUSIONS"


def probe_capabilities(cuda: Optional[bool] = None,
                       environ: Optional[Mapping[str, str]] = None) -> StackCapabilities:
    """Probe the installed stack (uncached; :func:`probe_stack` caches it). ``cuda=None`` asks
    torch; without CUDA nothing else is imported and everything reads unavailable.
    ``MEGATRON_AR_FUSIONS=off`` in the environment reports a CUDA device with no fusion support
    (a switch to rule fusions out when diagnosing a GPU run)."""
    environ = os.environ if environ is None else environ
    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        return StackCapabilities()
    if environ.get(DISABLE_ENV, "").lower() == "off":
        return StackCapabilities(cuda=True, torch_compile_detail=f"{DISABLE_ENV}=off",
                                 disabled_by=f"{DISABLE_ENV}=off")
    name, cap = "", None
    try:
        name = torch.cuda.get_device_name()
        cap = tuple(torch.cuda.get_device_capability())
    except Exception:  # a CUDA build that cannot open the device
        pass
    te_version = None
    if _imports("transformer_engine"):
        import transformer_engine

        te_version = str(getattr(transformer_engine, "__version__", "unknown"))
    compile_ok, compile_detail = _torch_compile_toolchain()
    return StackCapabilities(
        cuda=True, device_name=name, compute_capability=cap,
        torch_compile=compile_ok, torch_compile_detail=compile_detail,
        te_version=te_version,
        te_fused_rope=te_version is not None and te_fused_rope_available(),
        apex_grad_accum=_imports("fused_weight_gradient_mlp_cuda"),
        softmax_kernels=all(_imports(m) for m in _SOFTMAX_KERNELS),
    )


@functools.lru_cache(maxsize=1)
def probe_stack() -> StackCapabilities:
    """:func:`probe_capabilities` of this process, computed once."""
    return probe_capabilities()


# ----------------------------------------------------------------------------------------------
# the decision table
# ----------------------------------------------------------------------------------------------
def _activation_fusion(activation_func: Callable, gated: bool, bias: bool) -> Tuple[bool, str]:
    import torch.nn.functional as F
    from megatron.core.fusions.fused_bias_geglu import quick_gelu

    if activation_func is F.silu:
        if gated:
            return True, "bias_swiglu"
        return False, "megatron-core fuses SiLU only as SwiGLU (gated_linear_unit)"
    if activation_func is F.gelu:
        if gated:
            return True, "bias_geglu"
        if bias:
            return True, "bias_gelu"
        return False, "megatron-core fuses non-gated GELU only with a bias (add_bias_linear)"
    if activation_func is quick_gelu and gated:
        return True, "quick_geglu"
    name = getattr(activation_func, "__name__", repr(activation_func))
    return False, (f"activation {name} has no megatron-core fused kernel (F.silu gated, F.gelu, "
                   "quick_gelu gated only)")


def decide_fusions(caps: StackCapabilities, *, activation_func: Callable,
                   gated_linear_unit: bool, add_bias_linear: bool = False,
                   sliding_window: bool = False,
                   params_dtype: torch.dtype = torch.float32) -> FusionDecision:
    """The fusion flags for a model with these options on a stack with ``caps`` (module
    docstring: the rule of each flag and where megatron-core imposes it)."""
    if not caps.cuda:
        return FusionDecision.all_off("no CUDA device")
    if caps.disabled_by:
        return FusionDecision.all_off(f"disabled by {caps.disabled_by}")
    on: Dict[str, bool] = {}
    why: Dict[str, str] = {}

    def put(flag: str, value: bool, reason: str) -> None:
        on[flag], why[flag] = value, reason

    compile_reason = f"torch.compile unusable: {caps.torch_compile_detail}"

    if caps.apex_grad_accum:
        put("gradient_accumulation_fusion", True, "apex fused_weight_gradient_mlp_cuda")
    else:
        put("gradient_accumulation_fusion", False,
            "apex fused_weight_gradient_mlp_cuda not importable (megatron's ColumnParallelLinear "
            "requires it, TE or not)")

    act_ok, act_reason = _activation_fusion(activation_func, gated_linear_unit, add_bias_linear)
    if act_ok and not caps.torch_compile:
        act_ok, act_reason = False, compile_reason
    put("bias_activation_fusion", act_ok, act_reason + (" via torch.compile" if act_ok else ""))

    put("bias_dropout_fusion", caps.torch_compile,
        "torch.compile" if caps.torch_compile else compile_reason)

    if caps.te_fused_rope:
        put("apply_rope_fusion", True, f"Transformer Engine {caps.te_version} fused RoPE")
    else:
        put("apply_rope_fusion", False,
            "needs Transformer Engine's fused RoPE: " + (
                "TE not importable" if caps.te_version is None
                else f"TE {caps.te_version} does not provide it"))

    if sliding_window:
        put("masked_softmax_fusion", False,
            "sliding window: megatron-core's fused causal softmax ignores window_size")
    elif caps.softmax_kernels:
        put("masked_softmax_fusion", True, "fused softmax kernels (bf16/fp16, seq <= 4096)")
    else:
        put("masked_softmax_fusion", False,
            "scaled_upper_triang_masked_softmax_cuda / scaled_masked_softmax_cuda not importable")

    if params_dtype != torch.bfloat16:
        put("cross_entropy_loss_fusion", False,
            f"params {str(params_dtype).replace('torch.', '')}: the native fused cross entropy "
            "casts the logit gradient to bf16")
    elif not caps.torch_compile:
        put("cross_entropy_loss_fusion", False, compile_reason)
    else:
        put("cross_entropy_loss_fusion", True, "native, torch.compile")

    put("persist_layer_norm", False,
        "applies to apex FusedLayerNorm only; the model's norms are RMSNorm")
    return FusionDecision(**on, reasons=tuple((f, why[f]) for f in FUSION_FLAGS))


_ANNOUNCED: set = set()


def announce_fusions(decision: FusionDecision) -> Optional[str]:
    """Print the decision's one-line summary on rank 0, once per process and distinct line.
    Returns the line when printed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    line = decision.summary()
    if line in _ANNOUNCED:
        return None
    _ANNOUNCED.add(line)
    print(line, flush=True)
    return line


# ----------------------------------------------------------------------------------------------
# communication overlap preconditions
# ----------------------------------------------------------------------------------------------
def overlap_errors(*, use_distributed_optimizer: bool, overlap_grad_reduce: bool,
                   overlap_param_gather: bool) -> List[Tuple[str, str]]:
    """Megatron-LM's rules for the DDP overlap flags (``megatron/training/arguments.py``).
    Returns ``[(field, message), ...]``; empty when the combination is valid."""
    out = []
    if overlap_param_gather and not use_distributed_optimizer:
        out.append(("overlap_param_gather", "needs use_distributed_optimizer: true (the param "
                    "all-gather it overlaps exists only with the distributed optimizer)"))
    if overlap_param_gather and not overlap_grad_reduce:
        out.append(("overlap_param_gather", "needs overlap_grad_reduce: true (Megatron-LM "
                    "requires both)"))
    return out


class CudaConnectionsError(RuntimeError):
    """``CUDA_DEVICE_MAX_CONNECTIONS`` is not 1 where megatron-core's TP overlap needs it."""


def check_cuda_device_max_connections(tp: int, cp: int = 1, sequence_parallel: bool = False,
                                      environ: Optional[Mapping[str, str]] = None,
                                      caps: Optional[StackCapabilities] = None) -> None:
    """Raise :class:`CudaConnectionsError` when a CUDA run with TP > 1 or CP > 1 on a GPU older
    than Blackwell (compute capability < 10) lacks ``CUDA_DEVICE_MAX_CONNECTIONS=1``
    (Megatron-LM ``validate_args``). Must run before the first CUDA call of the process: the
    variable is read when the CUDA context is created. No-op without CUDA."""
    caps = probe_stack() if caps is None else caps
    environ = os.environ if environ is None else environ
    if not caps.cuda or (tp <= 1 and cp <= 1):
        return
    if caps.compute_capability is not None and caps.compute_capability[0] >= 10:
        return
    value = environ.get("CUDA_DEVICE_MAX_CONNECTIONS")
    if value == "1":
        return
    what = (f"tensor parallel size {tp}" + (" with sequence parallelism" if sequence_parallel
                                            else "") + (f", context parallel size {cp}" if cp > 1
                                                        else ""))
    raise CudaConnectionsError(
        f"CUDA_DEVICE_MAX_CONNECTIONS must be 1 for {what} on "
        f"{caps.device_name or 'this GPU'} (compute capability "
        f"{'.'.join(map(str, caps.compute_capability or ()))}), got "
        f"{'unset' if value is None else repr(value)}: megatron-core's tensor-parallel layers "
        "rely on one CUDA work queue so that the TP/SP all-gather / reduce-scatter is scheduled "
        "before the GEMM it overlaps with. Export CUDA_DEVICE_MAX_CONNECTIONS=1 before launching "
        "(examples/cluster_env.sh does).")

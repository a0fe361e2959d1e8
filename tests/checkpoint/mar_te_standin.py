"""Stand-ins for Transformer Engine's modules that carry ``_extra_state`` the way TE's do.

TE is not importable on CPU, so the cross-spec checkpoint tests build the TE layer structure
from these: the pre-norm fused into the input-side column-parallel linear (the norm weight is
``layer_norm_weight`` of ``linear_qkv`` / ``linear_fc1``, no ``input_layernorm`` module and no
``sharded_state_dict_keys_map``), and every linear and the core attention holding delayed-
scaling FP8 state (an amax history and scales, updated by every forward) that
``get_extra_state`` serialises as TE does: a pickled dict in a uint8 tensor
(``transformer_engine/pytorch/module/base.py``, ``TransformerEngineBaseModule.get_extra_state``),
and ``set_extra_state`` returns early on ``None``. The arithmetic is the local modules', so a
stand-in model's logits are bit-identical to the local model's on the same weights.
"""
from __future__ import annotations

import pickle
from typing import Any, Dict

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_ar.models.spec import LayerModules, attention_choice, core_attention_spec, norm_spec

HISTORY = 4  # amax history length (TE's default is 1024; short here so it wraps)
E4M3_MAX = 448.0


class _FP8State:
    """TE-like delayed scaling state on the host; updated from each forward's input amax."""

    def _init_fp8(self) -> None:
        self.fp8_meta: Dict[str, Any] = {"amax_history": torch.zeros(HISTORY),
                                         "scale": torch.ones(()), "step": 0}

    def _record_amax(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            amax = x.detach().abs().max().float().cpu()
            hist = torch.roll(self.fp8_meta["amax_history"], 1)
            hist[0] = amax
            self.fp8_meta = {"amax_history": hist,
                             "scale": E4M3_MAX / hist.max().clamp_min(1e-12),
                             "step": self.fp8_meta["step"] + 1}

    def get_extra_state(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(pickle.dumps(self.fp8_meta)), dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        if state is None:  # what TE does: keep the state the module was built with
            return
        if isinstance(state, torch.Tensor):
            state = pickle.loads(state.detach().cpu().numpy().tobytes())
        self.fp8_meta = state


class StandInLayerNormColumnParallelLinear(_FP8State, ColumnParallelLinear):
    """``TELayerNormColumnParallelLinear``: RMSNorm (weight ``layer_norm_weight``) + column linear."""

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.zero_centered_gamma = bool(config.layernorm_zero_centered_gamma)
        self.norm_eps = config.layernorm_epsilon
        init = torch.zeros if self.zero_centered_gamma else torch.ones
        self.layer_norm_weight = torch.nn.Parameter(init(input_size, dtype=config.params_dtype))
        setattr(self.layer_norm_weight, "sequence_parallel", bool(config.sequence_parallel))
        self._init_fp8()

    def forward(self, x: torch.Tensor, *args, **kwargs):
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.norm_eps)
        w = self.layer_norm_weight.float()
        y = (y * (1.0 + w if self.zero_centered_gamma else w)).to(x.dtype)
        self._record_amax(y)
        return super().forward(y, *args, **kwargs)


class StandInRowParallelLinear(_FP8State, RowParallelLinear):
    """``TERowParallelLinear`` with FP8-like extra state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fp8()

    def forward(self, x: torch.Tensor, *args, **kwargs):
        self._record_amax(x)
        return super().forward(x, *args, **kwargs)


class _StandInAttention(_FP8State):
    """``TEDotProductAttention``: the core attention with extra state (the local one has none);
    mixed into the class of the attention backend the local spec picks, so both compute alike."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fp8()

    def forward(self, query, *args, **kwargs):
        self._record_amax(query)
        return super().forward(query, *args, **kwargs)


def _standin_attention(cfg) -> ModuleSpec:
    local = core_attention_spec(cfg, attention_choice(cfg, use_te=False).backend)
    cls = type("StandIn" + local.module.__name__, (_StandInAttention, local.module), {})
    return ModuleSpec(module=cls, params=dict(local.params))



def standin_modules(cfg) -> LayerModules:
    """The TE layer structure (fused pre-norms, no keys map) built from the stand-ins."""
    norm = norm_spec(cfg)
    return LayerModules(
        column_in=StandInLayerNormColumnParallelLinear,
        row=StandInRowParallelLinear,
        core_attention=_standin_attention(cfg),
        pre_norm=IdentityOp, branch_norm=norm, qk_norm=norm if cfg.qk_norm else IdentityOp,
        final_norm=norm, keys_map={})


def extra_states(model: torch.nn.Module) -> Dict[str, Dict[str, Any]]:
    """``fp8_meta`` of every stand-in module, keyed by global layer number and module path."""
    out = {}
    for layer in model.decoder.layers:
        for name, mod in layer.named_modules():
            if isinstance(mod, _FP8State):
                out[f"{layer.layer_number}.{name}"] = mod.fp8_meta
    return out


def same_state(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return (a["step"] == b["step"] and torch.equal(a["amax_history"], b["amax_history"])
            and torch.equal(a["scale"], b["scale"]))

"""Rank functions for test_train_architectures.py (a plain module so that spawned ranks can
unpickle them). One launch trains several architectures one after another through the real
training path (``load_config`` -> ``build_run`` -> ``fit``), which saves a process start and a
megatron-core import per architecture: ``init_distributed`` keeps the gloo group and rebuilds
megatron-core's parallel state for the next run."""
from typing import Dict, Sequence


class _FirstBatch:
    """Callback keeping the micro-batches of step 0 as trained on (``state.last_batches``, set
    on ranks that read data), for the transformers oracle of the step-0 loss."""

    def __init__(self):
        self.batches = None

    def on_step_end(self, state, metrics):
        if metrics["step"] == 0 and state.last_batches is not None:
            self.batches = [{k: v.clone() for k, v in b.items()} for b in state.last_batches]


def train_runs(runs: Sequence[dict]) -> Dict[str, dict]:
    """``runs``: dicts with ``name``, ``recipe`` (path) and ``overrides`` (CLI list). Returns
    name -> {"steps": per-step {loss, grad_norm, lr, skipped}, "batch0": step 0's micro-batches
    on this rank or None}. Step metrics are identical on every rank (the loss is all-reduced,
    the grad norm reduced over model-parallel ranks by megatron-core)."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from megatron.core import parallel_state

    from megatron_ar.training.builder import build_run
    from megatron_ar.training.config import load_config
    from megatron_ar.training.loop import fit

    out = {}
    for run in runs:
        cfg = load_config(run["recipe"], list(run["overrides"]))
        # Only our recorder: nothing written per step (no metrics/tensorboard/checkpoint I/O);
        # the step metrics are read from state.history, the dicts MetricsLogger would write.
        first = _FirstBatch()
        state = build_run(cfg, callbacks=[first])
        fit(state)
        out[run["name"]] = {
            "steps": [{k: m[k] for k in ("loss", "grad_norm", "lr", "skipped")}
                      for m in state.history],
            "batch0": first.batches}
        del state
        parallel_state.destroy_model_parallel()
    return out


# ----------------------------------------------------------------------------------------------
# Initial weights (built in the pytest process, loaded by every run with --pretrained-checkpoint)
# ----------------------------------------------------------------------------------------------
def tiny_gemma2_hf(vocab_size: int, sliding_window: int = 16, query_pre_attn_scalar: int = 20,
                   seed: int = 0):
    """A random ``Gemma2ForCausalLM`` (shapes of the ``tiny-gemma2`` preset: 4 layers, hidden 64,
    4 heads / 2 KV heads of 24, FFN 128; tied embeddings, soft-caps 5 / 3, alternating sliding
    window). Weights are drawn larger than HF's 0.02 init (as tests/parallel does), otherwise
    the soft-caps and the (1+w) norms would barely act."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=24, query_pre_attn_scalar=query_pre_attn_scalar,
                       sliding_window=sliding_window, attn_logit_softcapping=5.0,
                       final_logit_softcapping=3.0, max_position_embeddings=64, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                       attn_implementation="eager")
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(0.3 * noise if p.ndim == 1 else 0.08 * noise)
    return model


def random_converted_checkpoint(cfg, directory: str, std: float = 0.02) -> str:
    """Write random weights for ``cfg`` (any family, also ``gpt`` which has no HF twin) in the
    converter's output format (megatron-core dist checkpoint + model_config.json), with the
    converter's own streaming writer. Matrices ~ N(0, std), norm weights 1."""
    import os
    import zlib

    import torch

    from megatron_ar.checkpoint import megatron_io as mio

    padded = mio.target_padded_vocab(cfg, 1)
    os.makedirs(directory)
    with mio.single_process_group():
        layout = mio.make_layout(cfg, padded, torch.float32)

        def source(name):
            shape, _ = layout.params[name]
            if len(shape) == 1:
                return torch.ones(shape)
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            return std * torch.randn(shape, generator=gen)

        mio.save_streaming(layout, directory, source, target_tp=1)
    mio.write_checkpoint_info(directory, mio.CheckpointInfo(model_config=cfg,
                                                            padded_vocab_size=padded))
    return directory

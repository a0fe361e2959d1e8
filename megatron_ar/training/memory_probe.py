"""Measured per-GPU memory of a recipe: one rank of the real job run on fake tensors.

``probe_memory(cfg, world_size)`` plays one rank (default: the first rank of the most loaded
pipeline stage) of the real ``world_size``-GPU layout in a fresh child process: torch's ``fake``
process group of the real world size and megatron-core's parallel state
(:func:`megatron_ar.runtime.fake.init_fake_distributed`), the recipe's model chunks, DDP wrappers
and (distributed) optimizer built exactly as ``training.builder.build_run`` builds them, then one
call of the training loop's own ``train_step`` (megatron-core's pipeline schedule with its
virtual stages, backward, ``finalize_model_grads``, the loss reduction, ``optimizer.step()``,
the LR scheduler), all on FakeTensors (:class:`megatron_ar.runtime.fake.FakeSession`). It reports
the bytes of the weights, gradient buffers and optimizer state (measured on the built objects and
compared with the exact arithmetic of :func:`megatron_ar.training.memory.static_memory`), the
peak, the activations and the logits, beside the planning estimate of
:mod:`megatron_ar.training.memory`.

Design choices
- A child process (``run_multiprocess`` with one rank): torch.distributed, megatron-core's
  parallel state and the fake mode are process-global; the caller's process is untouched.
- The step is ``training.loop.train_step`` itself, so whatever the loop does with batches,
  devices and collectives is what gets run (and, under the CPU layer's strict device mode or on
  a CUDA build, checked). No data: its dataset is :class:`_ZeroTokens`, samples of the recipe's
  ``seq_length + 1`` tokens that the loop turns into micro-batches as it does real ones. No
  callbacks (logging, checkpointing, evaluation: host-side work outside the memory question).
  Parameters are initialised as in a real run: on fake tensors that is shape work only, and
  megatron-core sets its tensor-parallel parameter attributes (``tensor_model_parallel``...,
  which the gradient-norm and finalize code read) only in its initialisers
  (tensor_parallel/layers.py), so ``perform_initialization=False`` would change the step.
- Default rank: the first rank (TP 0, DP 0) of the pipeline stage with the largest planning
  estimate (:func:`megatron_ar.training.memory.most_loaded_stage`). Probing every stage would
  multiply the time by PP; the planning estimate ranks stages reliably because the stages differ
  by the embedding / output layer (exact) and by megatron-core's warm-up micro-batch count
  (exact), not by the approximate per-layer activation size. ``rank=`` probes any rank.
- Steady state: the optimizer state (main parameters, Adam moments) is created by a first
  ``optimizer.step()`` on zero gradients before the measured step, so the measured step sees the
  state every step after the first one sees (a first step peaks lower: its moments appear after
  its activations are gone).
- Micro-batches: the step runs as many micro-batches as megatron-core's schedule needs to reach
  its peak (``microbatches="steady"``, :func:`steady_state_microbatches`; the step's recipe gets
  the matching global batch), not all of them, because a fake op costs ~0.5-1 ms of Python on a
  loaded CPU and Fanar Prime's 51 micro-batches of 21 layers are ~10^6 ops. Live activations
  depend only on the micro-batches in flight, which the schedule caps at its warm-up count plus
  one (``get_pp_rank_microbatches``); after that each steady 1F1B iteration repeats the same
  allocations, gradients accumulate in place in the DDP buffers, and the gradient reduction runs
  once after the last micro-batch either way. ``microbatches="all"`` runs every micro-batch; the
  tests check that both give the same peak (the last stage differs by the 8-byte loss report the
  schedule keeps per micro-batch).
- Categories: weights = the DDP parameter buffers (distributed optimizer) or the parameters;
  gradients = the DDP gradient buffers; optimizer = fp32 main parameters and Adam state tensors
  not aliasing the model (torch's per-parameter ``step`` scalar excluded: it lives on the host);
  other = everything else alive when the step starts (megatron-core's RNG tracker, Adam's step
  scalars...). Activations = the peak of the forward/backward pass minus what was alive at its
  start (micro-batches moved to the device included); logits = the largest live bytes created
  between the output layer and the end of the loss (logits, soft-cap, vocab-parallel cross
  entropy of one micro-batch), part of the activations when the peak falls there. Peak = the
  larger of the forward/backward and the optimizer-step peaks.
- Not measured (as in :mod:`megatron_ar.training.memory`): CUDA context, allocator rounding and
  fragmentation, NCCL and Transformer Engine workspaces, host memory. On a CPU build the model
  uses the local (non-TE) spec, whose attention materialises the full score matrix (no flash
  attention) and whose norms and RoPE run unfused, so its activations exceed a TE run's; the
  figures are those of the model that would be built here.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from megatron_ar.training.config import ConfigError, TrainConfig

GIB = 1024 ** 3


class MemoryProbeError(RuntimeError):
    """The fake step failed (shape error, device mismatch, unsupported op...); the message
    names the phase, the error and the innermost megatron/megatron_ar source line."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class MemoryLimitError(RuntimeError):
    """The measured peak exceeds ``gpu_memory_gib``; ``probe`` holds the measurement."""

    def __init__(self, probe: "MemoryProbe"):
        self.probe = probe
        super().__init__(
            f"{probe.describe_rank()} needs {probe.peak / GIB:.1f} GiB at its measured peak "
            f"(weights {probe.weights / GIB:.1f} + grads {probe.grads / GIB:.1f} + optimizer "
            f"{probe.optimizer / GIB:.1f} + activations {probe.activations / GIB:.1f} + other "
            f"{probe.other / GIB:.1f} GiB), more than gpu_memory_gib="
            f"{probe.gpu_memory_gib:g} (CUDA context and fragmentation not included)")


@dataclass
class MemoryProbe:
    """Measured memory of one rank (bytes) beside the exact and planning arithmetic."""

    preset: str
    world_size: int
    rank: int
    layout: Dict[str, Any]  # tp, pp, vpp, dp, tp_rank, pp_rank, dp_rank
    micro_batch_size: int
    seq_length: int
    num_microbatches: int  # micro-batches of the step on this rank
    microbatches_run: int  # micro-batches the measured schedule ran
    params: int  # parameters on this rank (measured)
    weights: int
    grads: int
    optimizer: int
    other: int
    activations: int
    logits: int
    peak_forward_backward: int
    peak_optimizer_step: int
    peak: int
    expected: Dict[str, int]  # training.memory.static_memory of this rank
    estimate: Dict[str, Any]  # training.memory.estimate_memory of this stage (GiB)
    gpu_memory_gib: Optional[float] = None
    fits: Optional[bool] = None
    placeholders: Dict[str, int] = field(default_factory=dict)
    fake_ops: int = 0
    timing: Dict[str, float] = field(default_factory=dict)

    def describe_rank(self) -> str:
        L = self.layout
        return (f"rank {self.rank} of {self.world_size} (TP {L['tp']} x PP {L['pp']}"
                f"{' x VPP ' + str(L['vpp']) if (L['vpp'] or 1) > 1 else ''} x DP {L['dp']}; "
                f"pipeline stage {L['pp_rank']}, TP rank {L['tp_rank']}, DP rank {L['dp_rank']})")

    def static_matches(self) -> bool:
        e = self.expected
        return (self.params, self.weights, self.grads, self.optimizer) == (
            e["params"], e["weights"], e["grads"], e["optimizer"])

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["peak_gib"] = self.peak / GIB
        d["static_matches_arithmetic"] = self.static_matches()
        return d


def steady_state_microbatches(num_microbatches: int, pp: int, vpp: Optional[int], pp_rank: int) -> int:
    """Micro-batches after which megatron-core's schedule on ``pp_rank`` repeats itself (module
    docstring): without pipelining 2 (the second one runs while the first one's outputs are
    still referenced by the schedule, as every later one does); 1F1B its warm-up ``pp - r - 1``
    plus two steady iterations (the first steady forward holds the most micro-batches in flight,
    the second also the first one's leftovers); interleaved a multiple of the micro-batch group
    (``pp``) covering the warm-up ``2(pp - r - 1) + (v - 1) pp`` plus one whole cycle of ``pp v``
    virtual micro-batches (the chunks in flight rotate, and the first/last chunks carry the
    embedding / loss head). Never more than ``num_microbatches``. Measured: one micro-batch less
    than this misses a few hundred bytes to ~16 KiB of the peak (tiny-llama, PP 2)."""
    v = vpp if (vpp or 1) > 1 else 1
    if pp == 1:
        return min(num_microbatches, 2)
    if v == 1:
        return min(num_microbatches, pp - pp_rank + 1)
    warmup = 2 * (pp - pp_rank - 1) + (v - 1) * pp
    n = pp
    while n * v < warmup + pp * v + 1:
        n += pp
    return min(n, num_microbatches)


def _check_interleaved(nmb: int, pp: int, vpp: Optional[int]) -> None:
    """megatron-core's interleaved-schedule rule on the micro-batch count (schedules.py,
    ``forward_backward_pipelining_with_interleaving``), checked before any process starts."""
    if (vpp or 1) <= 1:
        return
    if nmb < pp:
        raise ConfigError(f"schedule.global_batch_size: the interleaved schedule needs at least PP={pp} "
                          f"micro-batches per step, the recipe gives {nmb}")
    if nmb % pp:
        raise ConfigError(f"schedule.global_batch_size: {nmb} micro-batches per step is not a multiple "
                          f"of PP={pp}, as megatron-core's interleaved schedule requires")


def default_rank(cfg: TrainConfig, world_size: int) -> int:
    """First rank (TP 0, DP 0) of the most loaded pipeline stage; megatron-core's default rank
    order ``tp-cp-ep-dp-pp`` puts pipeline stage ``s`` at ranks ``s * world/pp ...``."""
    from megatron_ar.training.plan import build_run_plan, most_loaded_stage

    pp = cfg.parallel.pipeline_model_parallel_size
    return most_loaded_stage(build_run_plan(cfg, world_size, curriculum=None), cfg) * (world_size // pp)


def probe_memory(cfg: TrainConfig, world_size: int, rank: Optional[int] = None,
                 gpu_memory_gib: Optional[float] = None, microbatches: str = "steady",
                 timeout: float = 1800.0) -> MemoryProbe:
    """Measure one rank of ``cfg`` on ``world_size`` GPUs on fake tensors (module docstring).

    Raises ConfigError for an invalid layout (before starting anything), MemoryProbeError when
    the fake step fails, and MemoryLimitError (carrying the probe) when ``gpu_memory_gib`` is
    given and the measured peak exceeds it.
    """
    from megatron_ar.runtime import MultiprocessError, run_multiprocess
    from megatron_ar.training.builder import check_precision_support
    from megatron_ar.training.plan import model_config_from

    if microbatches not in ("steady", "all"):
        raise ValueError(f"probe_memory: microbatches must be 'steady' or 'all', got {microbatches!r}")
    mc = model_config_from(cfg)
    p = cfg.parallel
    nmb = cfg.num_microbatches(world_size)  # validates the layout and batch arithmetic
    vpp = cfg.vpp_size(mc.num_layers)
    _check_interleaved(nmb, p.pipeline_model_parallel_size, vpp)
    check_precision_support(cfg)
    try:
        mc.to_transformer_config(tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                                 vpp=vpp, sequence_parallel=p.sequence_parallel)
    except ValueError as exc:
        raise ConfigError(f"parallel: {exc}") from exc
    if rank is None:
        rank = default_rank(cfg, world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank: must be in [0, {world_size}), got {rank!r}")
    try:
        out = run_multiprocess(_probe_rank, 1, cfg, world_size, rank, microbatches,
                               timeout=timeout)[0]
    except MultiprocessError as exc:
        raise MemoryProbeError(f"fake run of {mc.name} rank {rank} crashed: "
                               f"{exc.remote_traceback.strip().splitlines()[-1]}",
                               exc.remote_traceback) from exc
    if "error" in out:
        raise MemoryProbeError(out["error"], out["details"])
    probe = MemoryProbe(**out)
    if gpu_memory_gib is not None:
        probe.gpu_memory_gib = float(gpu_memory_gib)
        probe.fits = probe.peak <= gpu_memory_gib * GIB
        if not probe.fits:
            raise MemoryLimitError(probe)
    return probe


# ----------------------------------------------------------------------------------------------
# the child process
# ----------------------------------------------------------------------------------------------
def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for f in reversed(frames):
        if "/torch/" not in f.filename and "/megatron_ar/runtime/" not in f.filename:
            name = f.filename
            for marker in ("site-packages/", "/megatron_ar/"):
                if marker in name:
                    name = name[name.index(marker) + (len(marker) if marker == "site-packages/" else 1):]
                    break
            return f"{name}:{f.lineno}"
    return "<unknown>"


_KNOWN_NOISE = r".*(Transformer Engine and Apex are|Apex is) not installed"


def _probe_rank(cfg: TrainConfig, world_size: int, rank: int, microbatches: str) -> Dict[str, Any]:
    import warnings

    # The child's stderr is the caller's: keep megatron-core's CPU fallback notices and torch's
    # collective-rename notices out of it.
    warnings.filterwarnings("ignore", message=_KNOWN_NOISE, category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    from megatron_ar.runtime.fake import FakeSession, destroy_fake_distributed, init_fake_distributed
    from megatron_ar.training.plan import model_config_from

    t0 = time.perf_counter()
    mc = model_config_from(cfg)
    p = cfg.parallel
    vpp = cfg.vpp_size(mc.num_layers)
    layout = init_fake_distributed(world_size, rank, tp=p.tensor_model_parallel_size,
                                   pp=p.pipeline_model_parallel_size, vpp=vpp, seed=cfg.schedule.seed)
    phase = "setup"
    try:
        with FakeSession() as fs:
            run = _FakeStep(cfg, mc, layout, fs, microbatches)
            timing = {"startup_s": time.perf_counter() - t0}
            phase = "building the model, DDP and optimizer"
            run.build()
            timing["build_s"] = time.perf_counter() - t0 - timing["startup_s"]
            phase = "the first optimizer step (creating the optimizer state)"
            run.warm_up()
            phase = "the training step"
            t1 = time.perf_counter()
            result = run.step()
            timing["step_s"] = time.perf_counter() - t1
            result["timing"] = timing
            result["placeholders"] = dict(fs.placeholders)
            result["fake_ops"] = fs.ops
        timing["total_s"] = time.perf_counter() - t0
        return result
    except Exception as exc:  # reported in the parent with a clear first line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"error": f"fake run of {mc.name} rank {rank} (pipeline stage {layout.pp_rank}) failed "
                         f"during {phase}: {type(exc).__name__}: {msg} (at {_where(exc)})",
                "details": traceback.format_exc()}
    finally:
        destroy_fake_distributed()


class _ZeroTokens:
    """The step's dataset: every sample is ``seq_length + 1`` zero tokens (the shape
    ``training.loop.sample_to_arrays`` turns into tokens / labels / loss mask)."""

    def __init__(self, seq_length: int):
        import numpy as np

        self.sample = np.zeros(seq_length + 1, dtype=np.int64)

    def __getitem__(self, index: int):
        return self.sample


class _FakeStep:
    """Builds the run as ``build_run`` does and takes one measured ``train_step`` (module
    docstring)."""

    def __init__(self, cfg: TrainConfig, mc, layout, session, microbatches: str):
        self.cfg, self.mc, self.layout, self.fs = cfg, mc, layout, session
        self.mem = session.memory
        self.microbatches = microbatches

    def build(self) -> None:
        from megatron_ar.training.builder import build_model_and_optimizer

        self.mem.tag = "model"
        # The trainer's own construction; the fake group has no gloo side groups
        # (init_fake_distributed). The optimizer's state is created lazily by warm_up.
        self.model, self.optimizer = build_model_and_optimizer(self.cfg, self.mc,
                                                               use_gloo_process_groups=False)

    def warm_up(self) -> None:
        self.mem.tag = "optimizer"
        for chunk in self.model:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        self.optimizer.step()

    def _static(self) -> Dict[str, int]:
        """Bytes of weights / gradient buffers / optimizer state on the built objects."""
        storages = self.mem.storage_bytes
        params = {id(q): q for c in self.model for q in c.parameters()}
        weights, grads = [], []
        for chunk in self.model:
            for buf in chunk.buffers + chunk.expert_parallel_buffers:
                grads.append(buf.grad_data)
                if buf.param_data is not None:
                    weights.append(buf.param_data)
        if not weights:
            weights = list(params.values())
        model_storages = {id(t.untyped_storage()) for t in weights + grads}
        opt_tensors = []
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = opt.optimizer
            for group in inner.param_groups:
                opt_tensors += [q for q in group["params"]]
            for state in inner.state.values():
                opt_tensors += [v for k, v in state.items()
                                if k != "step" and hasattr(v, "untyped_storage")]
        opt_tensors = [t for t in opt_tensors if id(t.untyped_storage()) not in model_storages]
        return {"params": sum(q.numel() for q in params.values()), "weights": storages(weights),
                "grads": storages(grads), "optimizer": storages(opt_tensors)}

    def _logit_hooks(self) -> list:
        from megatron_ar.models.builder import unwrap

        mem = self.mem

        def enter(*_):
            mem.tag = "logits"

        def leave(*_):
            mem.tag = "activations"

        handles = []
        for bare in unwrap(self.model):
            if bare.post_process:
                handles.append(bare.output_layer.register_forward_pre_hook(enter))
                handles.append(bare.register_forward_hook(leave))
        return handles

    def step(self) -> Dict[str, Any]:
        from megatron_ar.training.loop import TrainState, train_step
        from megatron_ar.training.memory import static_memory
        from megatron_ar.training.plan import build_run_plan, memory_estimate

        cfg, L, mem = self.cfg, self.layout, self.mem
        s = cfg.schedule
        nmb = cfg.num_microbatches(L.world_size)
        n_run = nmb if self.microbatches == "all" else steady_state_microbatches(nmb, L.pp, L.vpp, L.pp_rank)
        # The step's recipe: the same run with n_run micro-batches per step (constant batch).
        iters = max(s.train_iters or 0, 10 * (s.lr_warmup_iters + s.lr_cooldown_iters + 1))
        run_cfg = dataclasses.replace(cfg, data=None, schedule=dataclasses.replace(
            s, global_batch_size=n_run * s.micro_batch_size * L.dp, rampup_batch_size=None,
            train_iters=iters))
        plan = build_run_plan(run_cfg, L.world_size, curriculum=None, model_config=self.mc)
        state = TrainState(cfg=run_cfg, layout=L, model_config=self.mc, model=self.model,
                           optimizer=self.optimizer, data=_ZeroTokens(cfg.model.seq_length),
                           scheduler=plan.build_scheduler(self.optimizer), plan=plan)
        mem.tag = "other"
        for chunk in self.model:  # train_step does it too; here to free the warm-up's grads first
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        static = self._static()
        start = mem.live
        marks: Dict[str, int] = {}
        optimizer_step = self.optimizer.step

        def measured_optimizer_step(*args, **kwargs):
            marks["forward_backward"] = mem.peak
            marks["logits"] = mem.max_by_tag.get("logits", 0)
            mem.tag = "optimizer_step"
            mem.reset_peak()
            return optimizer_step(*args, **kwargs)

        self.optimizer.step = measured_optimizer_step
        mem.tag = "activations"
        mem.reset_peak()
        handles = self._logit_hooks()
        try:
            train_step(state)
        finally:
            for h in handles:
                h.remove()
            del self.optimizer.step
        peak_fb, peak_step = marks["forward_backward"], mem.peak
        o = cfg.optimizer
        expected = static_memory(self.mc, L.tp, L.pp, L.vpp, L.dp, L.pp_rank, L.dp_rank, bf16=o.bf16,
                                 grad_reduce_in_fp32=o.grad_reduce_in_fp32,
                                 distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                                 overlap_grad_reduce=cfg.parallel.overlap_grad_reduce)
        estimate = memory_estimate(build_run_plan(cfg, L.world_size, curriculum=None,
                                                  model_config=self.mc), cfg, pp_rank=L.pp_rank)
        return {
            "preset": self.mc.name, "world_size": L.world_size, "rank": L.rank,
            "layout": {"tp": L.tp, "pp": L.pp, "vpp": L.vpp or 1, "dp": L.dp, "tp_rank": L.tp_rank,
                       "pp_rank": L.pp_rank, "dp_rank": L.dp_rank},
            "micro_batch_size": s.micro_batch_size, "seq_length": cfg.model.seq_length,
            "num_microbatches": nmb, "microbatches_run": n_run,
            "params": static["params"], "weights": static["weights"], "grads": static["grads"],
            "optimizer": static["optimizer"],
            "other": start - static["weights"] - static["grads"] - static["optimizer"],
            "activations": peak_fb - start, "logits": marks["logits"],
            "peak_forward_backward": peak_fb, "peak_optimizer_step": peak_step,
            "peak": max(peak_fb, peak_step), "expected": expected.to_dict(),
            "estimate": estimate.to_dict(),
        }


def format_probe(probe: MemoryProbe) -> str:
    """Measured vs arithmetic vs planning estimate, one line per category (GiB)."""
    e, est = probe.expected, probe.estimate

    def g(x):
        return f"{x / GIB:10.2f}"

    def ge(x):
        return f"{x:10.2f}" if x is not None else " " * 10

    rows = [
        ("weights", probe.weights, e["weights"], est["weights_gib"]),
        ("gradients", probe.grads, e["grads"], est["grads_gib"]),
        ("optimizer", probe.optimizer, e["optimizer"], est["optimizer_gib"]),
        ("activations+logits", probe.activations, None, est["activations_gib"] + est["logits_gib"]),
        ("  logits (max)", probe.logits, None, est["logits_gib"]),
        ("other", probe.other, None, None),
        ("peak", probe.peak, None, est["total_gib"]),
    ]
    lines = [f"measured (fake tensors): {probe.describe_rank()}",
             f"  {probe.preset}, micro-batch {probe.micro_batch_size} x seq {probe.seq_length}, "
             f"{probe.num_microbatches} micro-batches per step ({probe.microbatches_run} run to the "
             f"schedule's steady state); {probe.params:,} parameters on this rank",
             f"  {'GiB':<18}{'measured':>10}{'exact':>10}{'estimate':>10}"]
    for name, m, x, est_v in rows:
        lines.append(f"  {name:<18}{g(m)}{g(x) if x is not None else ' ' * 10}{ge(est_v)}")
    lines.append(f"  measured peak = the larger of forward/backward "
                 f"{probe.peak_forward_backward / GIB:.2f} GiB (static + activations, logits within "
                 f"them) and optimizer step {probe.peak_optimizer_step / GIB:.2f} GiB")
    verdict = "equal" if probe.static_matches() else "DIFFERENT"
    lines.append(f"  weights/gradients/optimizer vs exact arithmetic: {verdict}; peak / estimate = "
                 f"{probe.peak / GIB / est['total_gib']:.2f}")
    if probe.placeholders:
        lines.append("  placeholder values for data-dependent reads: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(probe.placeholders.items())))
    t = probe.timing
    lines.append(f"  time: start-up {t.get('startup_s', 0):.1f} s, build {t.get('build_s', 0):.1f} s, "
                 f"step {t.get('step_s', 0):.1f} s ({probe.fake_ops:,} fake ops), total "
                 f"{t.get('total_s', 0):.1f} s in the child process")
    if probe.gpu_memory_gib is not None:
        lines.append(f"  fits in {probe.gpu_memory_gib:g} GiB: {'yes' if probe.fits else 'NO'} "
                     f"(CUDA context and fragmentation not included)")
    return "\n".join(lines)


__all__ = ["MemoryLimitError", "MemoryProbe", "MemoryProbeError", "default_rank", "format_probe",
           "probe_memory", "steady_state_microbatches"]

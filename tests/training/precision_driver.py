"""torchrun entry for test_train_precision.py: exactly ``megatron_ar.train``'s
parse -> build -> fit -> close, plus one observer callback (:class:`StepProbe`).

StepProbe records, on *every* rank and for every step, whether that rank's model weights, its
optimizer's main parameters and Adam state, and the LR scheduler's step counter changed during
the step (bitwise, ``torch.equal`` on clones taken just before ``optimizer.step()``), together
with the loss-spike detector's own list of spike steps on that rank. It only observes: it never
skips an update and never touches a tensor it did not clone. The checkpoint callback is left
out (nothing here resumes; one save of 4 ranks costs more than the whole short run).

    python -m torch.distributed.run --nproc_per_node N tests/training/precision_driver.py \
        --config RECIPE.yaml [--key value ...]
"""
import json
import os
import sys
import warnings

import torch


def _optimizers(optimizer):
    return getattr(optimizer, "chained_optimizers", [optimizer])


def snapshot(state):
    model = [p.detach().clone() for m in state.model for p in m.parameters()]
    optim = []
    for opt in _optimizers(state.optimizer):
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                optim.append(p.detach().clone())
                for k, v in sorted(inner.state.get(p, {}).items()):
                    if torch.is_tensor(v):
                        optim.append(v.detach().clone())
    return model, optim


def _changed(a, b):
    return len(a) != len(b) or any(not torch.equal(x, y) for x, y in zip(a, b))


class StepProbe:
    name = "step_probe"

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.before = None

    def before_optimizer_step(self, state, loss):
        grads = sorted({str(p.main_grad.dtype) for m in state.model for p in m.parameters()
                        if getattr(p, "main_grad", None) is not None})
        self.before = snapshot(state) + (state.scheduler.num_steps, grads)
        return False  # observer only

    def on_step_end(self, state, metrics):
        import torch.distributed as dist

        model0, optim0, sched0, grads = self.before
        model1, optim1 = snapshot(state)
        det = next(cb for cb in state.callbacks if getattr(cb, "name", "") == "loss_spike")
        rec = {"rank": dist.get_rank(), "step": metrics["step"], "loss": metrics["loss"],
               "model_changed": _changed(model0, model1), "optim_changed": _changed(optim0, optim1),
               "optim_tensors": len(optim1), "sched_steps_before": sched0,
               "sched_steps_after": state.scheduler.num_steps,
               "consumed_samples": state.consumed_samples, "detector_spikes": list(det.spikes),
               "param_dtypes": sorted({str(p.dtype) for m in state.model for p in m.parameters()}),
               "main_grad_dtypes": grads,
               "main_param_dtypes": sorted({str(p.dtype) for opt in _optimizers(state.optimizer)
                                            for g in opt.optimizer.param_groups for p in g["params"]})}
        with open(os.path.join(self.run_dir, f"probe_rank{rec['rank']}.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")


def main(argv):
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.core")
    from megatron_ar.training.builder import build_run, close_run, default_callbacks, model_config_from
    from megatron_ar.training.config import load_config
    from megatron_ar.training.loop import fit

    assert argv[0] == "--config"
    cfg = load_config(argv[1], argv[2:])
    # No checkpoint callback: these runs are observed live, and a save costs more than the run.
    cbs = [cb for cb in default_callbacks(cfg, model_config_from(cfg)) if cb.name != "checkpoint"]
    cbs.append(StepProbe(cfg.logging.run_dir))
    state = build_run(cfg, callbacks=cbs)
    try:
        fit(state)
    finally:
        close_run(state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

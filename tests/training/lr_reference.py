"""A reference implementation of the learning-rate schedules, written from their definitions,
that the tests hold megatron-core's scheduler (``megatron_ar.training.optimizer``) against:
linear warmup, then constant / linear / cosine decay to ``min_lr`` (Loshchilov & Hutter 2017),
WSD (warmup-stable-decay, Hu et al. 2024, "MiniCPM"), and Fanar's cosine + linear cool-down to
zero (Fanar report, Sec. 6.3.1). Positions are the scheduler's (iterations, or samples under
batch-size ramp-up); the step counts come from the run plan's ``LRPlan``."""
import math


def reference_lr(lr, k: float) -> float:
    w, d, c = lr.warmup, lr.decay, lr.cooldown
    if w > 0 and k <= w:
        return lr.init_lr + (lr.max_lr - lr.init_lr) * k / w
    style = lr.style
    if style == "constant":
        return lr.max_lr
    if k > d:
        if style == "cosine-cooldown" and c > 0:
            return lr.min_lr * max(0.0, 1.0 - (k - d) / c)
        return lr.min_lr
    r = (k - w) / (d - w)
    if style in ("cosine", "cosine-cooldown"):
        return lr.min_lr + (lr.max_lr - lr.min_lr) * 0.5 * (1 + math.cos(math.pi * r))
    if style == "linear":
        return lr.min_lr + (lr.max_lr - lr.min_lr) * (1 - r)
    if style == "WSD":
        start = d - lr.wsd_decay
        if k <= start:
            return lr.max_lr
        q = (k - start) / lr.wsd_decay
        f = {"linear": 1 - q, "cosine": 0.5 * (1 + math.cos(math.pi * q)),
             "exponential": 2 * 0.5 ** q - 1, "minus_sqrt": 1 - math.sqrt(q)}[lr.wsd_decay_style]
        return lr.min_lr + (lr.max_lr - lr.min_lr) * f
    raise ValueError(f"no reference formula for {style!r}")

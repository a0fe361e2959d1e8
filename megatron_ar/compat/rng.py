"""megatron-core's private CUDA RNG accessors, redirected to the CPU generator.

Used by the CPU execution layer (:mod:`megatron_ar.runtime.cpu`), which installs and restores
the patches; this module only says *what* to patch and checks that it is still there.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

from megatron_ar.compat.version import upstream_attr


def _get_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    # get_state() returns a fresh tensor, so ``clone`` needs no extra copy.
    return torch.default_generator.get_state()


def _set_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.default_generator.set_state(new_state)


def cuda_rng_state_patches() -> List[Tuple[Any, str, Callable]]:
    """``(module, attribute, replacement)`` for megatron-core's private
    ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state``.

    Versions: all known (0.16.1 measured; 0.17.1, 0.18.2, 0.19.2 read: same names and
    signatures ``(device="cuda", clone=False, graph_safe=False)`` / ``(new_state, device=-1,
    graph_safe=False)``).

    Why: ``CudaRNGStatesTracker.add``/``fork`` and ``checkpoint``'s RNG bookkeeping
    (megatron/core/tensor_parallel/random.py) read and write the CUDA generator through these
    two functions, which index ``torch.cuda.default_generators`` or call
    ``torch._C._cuda_setRNGState`` directly, i.e. bypass the ``torch.cuda.get_rng_state`` /
    ``set_rng_state`` that the CPU layer replaces. Not an upstream bug: megatron-core targets
    CUDA only.

    Without it: on a CPU-only torch, ``model_parallel_cuda_manual_seed`` and every
    ``get_cuda_rng_tracker().fork()`` (dropout, weight init under TP) fail inside torch.cuda.
    The replacements act on the CPU default generator, which the CPU layer treats as "the CUDA
    generator", so TP ranks keep their own random streams as on GPUs.
    """
    import megatron.core.tensor_parallel.random as mrandom

    user = "megatron_ar.compat.rng.cuda_rng_state_patches"
    upstream_attr(mrandom, "_get_cuda_rng_state", user, ("device", "clone", "graph_safe"))
    upstream_attr(mrandom, "_set_cuda_rng_state", user, ("new_state", "device", "graph_safe"))
    return [(mrandom, "_get_cuda_rng_state", _get_state),
            (mrandom, "_set_cuda_rng_state", _set_state)]

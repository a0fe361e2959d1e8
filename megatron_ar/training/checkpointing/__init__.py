"""Training checkpoints: megatron-core ``dist_checkpointing`` + publish-by-rename + resume state.

Layout of a checkpoint root (``checkpoint.save``)::

    latest_checkpointed_iteration.txt      pointer (Megatron-LM's file name), written last
    iter_0000200/                          one published checkpoint
        metadata.json, *.distcp, common.pt dist_checkpointing: model, optimizer, scheduler
        model_config.json                  the converter's format (export with
                                           tools/checkpoint/convert.py --loader megatron)
        train_state.json                   iteration, consumed samples/tokens, seed, data
                                           position + fingerprint, parallel layout, optimizer
                                           format (distributed or not, bf16), stateful
                                           callbacks (loss-spike window)
        config.yaml                        the resolved recipe of the run that saved it
        rng/rank_00003.pt                  python/numpy/torch/CUDA + TP-tracker RNG states

Modules (one concern each; this package re-exports what the rest of megatron_ar uses)
- :mod:`.publish`: staging directory, atomic rename, pointer file, keep-last-K, stale-temp
  cleanup, the fault-injection hook. File-system operations of rank 0 only.
- :mod:`.train_state`: ``train_state.json``, RNG states, data position / fingerprint checks,
  and the save / load / resume orchestration (:func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`load_weights`).
- :mod:`.optimizer_formats`: loading an optimizer checkpoint saved with the distributed
  optimizer switched the other way.
megatron-core private APIs and workarounds used by them live in :mod:`megatron_ar.compat`.
"""
from megatron_ar.training.checkpointing.optimizer_formats import (
    DIST,
    OPT_METADATA,
    PLAIN_FP32,
    PLAIN_MIXED,
    optimizer_format,
    optimizer_load_plan,
    saved_kind,
)
from megatron_ar.training.checkpointing.publish import (
    FAULT_SAVE_SLEEP_ENV,
    POINTER,
    CheckpointError,
    iter_dirname,
    latest_iteration,
    list_checkpoints,
    prune_checkpoints,
    resolve_checkpoint_dir,
)
from megatron_ar.training.checkpointing.train_state import (
    check_loadable,
    data_fingerprint,
    load_checkpoint,
    load_weights,
    model_sharded_state_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train_state_dict,
)

# The names these functions had when this package was one module (tests/training use them).
_saved_kind = saved_kind
_optimizer_load_plan = optimizer_load_plan

__all__ = [
    "DIST", "PLAIN_MIXED", "PLAIN_FP32", "OPT_METADATA", "FAULT_SAVE_SLEEP_ENV", "POINTER",
    "CheckpointError", "check_loadable", "data_fingerprint", "iter_dirname", "latest_iteration",
    "list_checkpoints", "load_checkpoint", "load_weights", "model_sharded_state_dict",
    "optimizer_format", "optimizer_load_plan", "prune_checkpoints", "resolve_checkpoint_dir",
    "rng_state", "save_checkpoint", "saved_kind", "set_rng_state", "train_state_dict",
]

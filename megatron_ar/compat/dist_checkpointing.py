"""Private helpers of megatron-core's ``dist_checkpointing`` torch_dist strategy."""
from __future__ import annotations

from megatron_ar.compat.version import upstream_attr


def replace_state_dict_keys_with_sharded_keys(sharded_state_dict, keep_only_main_replica: bool = False):
    """megatron-core's flattening of a sharded state dict into ``{sharded key: [ShardedBase]}``
    (plus the mappings to rebuild the nesting), the first step of its torch_dist save.

    Versions: all known (``megatron.core.dist_checkpointing.strategies.torch.
    _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, keep_only_main_replica)``
    in 0.16.1-0.19.2).
    Why: the streaming converter (:mod:`megatron_ar.checkpoint.megatron_io`) hands the result
    to ``mcore_to_pyt_state_dict`` and torch.distributed.checkpoint with its own one-item-at-a-
    time writer; megatron-core's public ``dist_checkpointing.save`` resolves every tensor first
    (whole model in memory). Not an upstream bug.
    Without it: the converter would need its own copy of megatron-core's key flattening, which
    must match what ``dist_checkpointing.load`` expects byte for byte.
    """
    from megatron.core.dist_checkpointing.strategies import torch as mtorch

    fn = upstream_attr(mtorch, "_replace_state_dict_keys_with_sharded_keys",
                       "megatron_ar.compat.dist_checkpointing.replace_state_dict_keys_with_sharded_keys",
                       ("sharded_state_dict", "keep_only_main_replica"))
    return fn(sharded_state_dict, keep_only_main_replica=keep_only_main_replica)


def save_common_state(common_state_dict, checkpoint_dir: str) -> None:
    """Write the non-tensor ("common") part of a torch_dist checkpoint as ``common.pt``.

    Versions (a real branch):
    - ``<0.17``: ``serialization.get_default_save_common_strategy().save_common(...)`` (the
      strategy registry; 0.16.1).
    - ``>=0.17``: the registry is gone; ``strategies.common.save_common(common, dir)`` writes the
      same ``common.pt`` (0.17.1, 0.18.2). 0.19 stores the common state of *new* saves as a
      ``common_state`` ShardedObject inside the DCP files instead and marks ``save_common``
      deprecated, but its ``load_common_state_dict`` / ``load`` still read a ``common.pt``
      ("legacy" format), so the same call stays valid there (0.19.2 read).
    Why: the streaming converter writes the DCP files itself (see
    :func:`replace_state_dict_keys_with_sharded_keys`) and must add the common part that
    ``dist_checkpointing.save`` would add. Not an upstream bug.
    Without it: ``dist_checkpointing.load`` of a converted checkpoint fails (no common state).
    """
    from megatron.core.dist_checkpointing import serialization

    factory = getattr(serialization, "get_default_save_common_strategy", None)
    if factory is not None:  # megatron-core < 0.17
        factory().save_common(common_state_dict, checkpoint_dir)
        return
    from megatron.core.dist_checkpointing.strategies import common

    upstream_attr(common, "save_common", "megatron_ar.compat.dist_checkpointing.save_common_state",
                  ("common_state_dict", "checkpoint_dir"))(common_state_dict, checkpoint_dir)


def start_writer_helpers_shielded(signals=None) -> None:
    """Start the helper processes megatron-core's torch_dist save keeps for the whole run (the
    ``spawn`` multiprocessing Manager behind ``_get_write_results_queue``, and multiprocessing's
    resource tracker) with ``signals`` (default SIGTERM, SIGUSR1) blocked, so they inherit the
    blocked mask and never die of them. Idempotent; call before the first save.

    Versions: 0.16.1-0.19.2 (``megatron.core.dist_checkpointing.strategies.filesystem_async.
    _get_write_results_queue()``: a module-global ``mp.get_context("spawn").Manager().Queue()``
    created at the first save and reused by every later one).
    Why: Slurm delivers ``scancel --signal=USR1`` and ``--signal=USR1@T`` to every process of
    the job step (slurmstepd signals the whole process container), not only the task. The
    trainer catches the signal to save and stop, but the Manager is a fresh interpreter with
    the default action for SIGUSR1 (terminate). Not an upstream bug: megatron-core cannot know
    that the launcher signals the whole process tree.
    Without it: after a periodic save, a pre-emption signal kills the Manager and the save the
    trainer makes in answer to that signal fails (the queue's server is gone), so the job ends
    without the checkpoint the signal asked for.
    """
    import signal
    from multiprocessing import resource_tracker

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    get_queue = upstream_attr(filesystem_async, "_get_write_results_queue",
                              "megatron_ar.compat.dist_checkpointing.start_writer_helpers_shielded", ())
    blocked = set(signals if signals is not None else (signal.SIGTERM, signal.SIGUSR1))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        resource_tracker.ensure_running()
        # ensure_running unblocks SIGINT/SIGTERM on its way out (it blocks them around its own
        # spawn): block again before the Manager starts
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        get_queue()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

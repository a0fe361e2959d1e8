"""megatron_ar.compat: every use of a private megatron-core API, every patch of a megatron-core
object and every workaround of a megatron-core defect, in one place, with a version guard.

Layer: just above :mod:`megatron_ar.io`; imports megatron-core and torch (lazily, inside the
functions, so importing this package costs milliseconds), nothing else of megatron_ar.

Importing the package checks the installed megatron-core against :data:`SUPPORTED`
(``>=0.16.1,<0.20``) and raises :class:`UnsupportedMegatronCoreError` naming both otherwise
(:mod:`megatron_ar.compat.version`). Each function's docstring states the versions it was
checked for, why it exists (the upstream file and function), and what breaks without it.
Workarounds of upstream *defects* have a test in ``tests/compat/`` that reproduces the defect
with the workaround left out and fails once upstream fixes it, naming the function to delete.

Rule of the house: code outside this package may use megatron-core's public API (documented,
no leading underscore) directly; a private name, an instance patch, an upstream workaround or
knowledge of an undocumented on-disk layout belongs here.

What is here (module.function: the megatron-core name or behaviour; kind)
- rng.cuda_rng_state_patches: tensor_parallel.random._get_cuda_rng_state / _set_cuda_rng_state;
  CPU enablement (installed by megatron_ar.runtime.cpu)
- optimizer.init_optimizer_state: DistributedOptimizer.state_dict asserts on a fresh torch
  Adam; upstream bug (calls the private _init_optimizer_states_with_dummy_values)
- optimizer.patch_step_copy: DistributedOptimizer._set_main_param_and_optimizer_states needs a
  'step' the reshardable loaders drop; upstream bug, instance patch
- optimizer.unshare_step_tensors: DistributedOptimizer.load_state_dict shares one 'step'
  tensor between parameters; upstream bug
- optimizer.fused_adam_in_use: distrib_optimizer.HAVE_APEX_OR_TE; private flag
- optimizer_state.*: the optimizer checkpoint layout (common.pt, chained dicts, state keys,
  fully_reshardable order, param-group identifiers); undocumented layout
- p2p.batch_p2p_comm: batched pipeline p2p swaps messages on gloo when prev == next peer;
  upstream behaviour on gloo
- indexed.open_index / indexed.gpt_sample_tokens: datasets.indexed_dataset._IndexReader,
  GPTDataset._query_document_sample_shuffle_indices (2-tuple up to 0.18, 3-tuple from 0.19);
  private names, version branch
- dist_checkpointing.replace_state_dict_keys_with_sharded_keys: strategies.torch private
  helper; dist_checkpointing.save_common_state: common.pt writer (0.16 strategy registry,
  0.17+ function); version branch
- dist_checkpointing.start_writer_helpers_shielded: strategies.filesystem_async's private
  _get_write_results_queue (a spawn Manager reused by every save), started with SIGTERM/SIGUSR1
  blocked so Slurm's step-wide signals do not kill it; launcher behaviour, not an upstream bug
"""
from megatron_ar.compat.version import (
    MCORE_VERSION,
    SUPPORTED,
    MegatronCoreAPIError,
    UnsupportedMegatronCoreError,
    check_supported,
)

check_supported(MCORE_VERSION)

__all__ = ["MCORE_VERSION", "SUPPORTED", "MegatronCoreAPIError", "UnsupportedMegatronCoreError",
           "check_supported"]

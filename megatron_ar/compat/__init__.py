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

==============================================  ==========================================  ==============
what                                            function                                    kind
==============================================  ==========================================  ==============
tensor_parallel.random._get/_set_cuda_rng_state rng.cuda_rng_state_patches                  CPU enablement
DistributedOptimizer state_dict on empty Adam   optimizer.init_optimizer_state              upstream bug
_set_main_param_and_optimizer_states + 'step'   optimizer.patch_step_copy                   upstream bug
load_state_dict shares one 'step' tensor        optimizer.unshare_step_tensors              upstream bug
HAVE_APEX_OR_TE (FusedAdam or torch Adam)       optimizer.fused_adam_in_use                 private flag
optimizer checkpoint layout (common.pt, keys)   optimizer_state.*                           layout
batched p2p on gloo with prev == next peer      p2p.batch_p2p_comm                          upstream bug
datasets.indexed_dataset._IndexReader           indexed.open_index                          private name
GPTDataset._query_document_sample_shuffle_...   indexed.gpt_sample_tokens                   private name
strategies.torch._replace_state_dict_keys_...   dist_checkpointing.replace_state_dict_...   private name
common.pt writer (0.16 registry / 0.17+ func)   dist_checkpointing.save_common_state        version branch
==============================================  ==========================================  ==============
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

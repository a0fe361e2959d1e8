"""megatron_ar.checkpoint: streaming HF <-> megatron-core dist-checkpoint conversion.

Public API
- :func:`convert` / :class:`ConversionResult` (``checkpoint.convert``): HF safetensors <->
  megatron-core ``dist_checkpointing`` (torch_dist) + ``model_config.json``; CLI
  ``tools/checkpoint/convert.py``.
- :func:`load_into_model` (``checkpoint.megatron_io``): load a converted checkpoint as the
  weights of ``build_model`` chunks at any TP/PP/VPP (collective). :func:`read_checkpoint_info`
  / :func:`write_checkpoint_info` / :class:`CheckpointInfo`: the ModelConfig and facts saved
  beside the checkpoint (a training save that wants HF export writes one too).
- :func:`compare_with_hf` (``checkpoint.compare``): logit parity with transformers; CLI
  ``tools/checkpoint/compare_hf.py``.
- Errors: :class:`CheckpointError`, :class:`UnknownModelTypeError`, :class:`ConfigMismatchError`.

Importing this package patches nothing; conversion sets up (and tears down) its own one-process
gloo group when none exists.
"""
from megatron_ar.checkpoint.errors import (
    CheckpointError,
    ConfigMismatchError,
    UnknownModelTypeError,
)
from megatron_ar.checkpoint.megatron_io import (
    CheckpointInfo,
    check_config_compatible,
    load_into_model,
    read_checkpoint_info,
    write_checkpoint_info,
)
from megatron_ar.checkpoint.convert import ConversionResult, convert
from megatron_ar.checkpoint.compare import compare_with_hf

__all__ = [
    "CheckpointError", "ConfigMismatchError", "UnknownModelTypeError", "CheckpointInfo",
    "check_config_compatible", "load_into_model", "read_checkpoint_info",
    "write_checkpoint_info", "ConversionResult",
    "convert", "compare_with_hf",
]

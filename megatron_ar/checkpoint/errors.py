"""Errors raised by the checkpoint converters.

Every error message names what is wrong *and where*: the tensor key, the file it lives in (or
should live in), the config field. Conversion never logs-and-continues: a checkpoint that does
not match the expected architecture is rejected before anything is written.
"""


class CheckpointError(ValueError):
    """A checkpoint (HF or Megatron) is missing, malformed, or does not match the model."""


class UnknownModelTypeError(CheckpointError):
    """``--model-type`` (or a checkpoint's recorded type) is not one we can convert."""


class ConfigMismatchError(CheckpointError):
    """A checkpoint's config disagrees with the requested model type or the target model."""

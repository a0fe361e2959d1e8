"""Checkpoint conversion and comparison tools (``megatron_ar_tools.checkpoint``)."""

"""megatron_ar command-line tools (importable as ``megatron_ar_tools``; see tools/_cli.py)."""

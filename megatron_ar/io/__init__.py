"""megatron_ar.io: the bottom layer (file formats and process plumbing; imports nothing else of
megatron_ar).

Modules (import the one you need; this package imports none of them, so a data tool never pays
for torch and the safetensors module never for tqdm):

- :mod:`~megatron_ar.io.compression`: plain / .gz / .zst readers and writers by extension;
  truncated or corrupt streams raise :class:`~megatron_ar.io.compression.CompressedStreamError`.
- :mod:`~megatron_ar.io.records`: JSONL records line by line with errors classified and
  located (``file:line: kind: detail``), ``--on-error skip`` statistics, input globbing.
- :mod:`~megatron_ar.io.atomic`: the one atomic publisher of files and directories
  (``.<name>.tmp-<host>-<pid>`` beside the target, fsync + rename) and stale-temp cleanup.
- :mod:`~megatron_ar.io.outputs`: the output rule of every tool (never over an input; existing
  outputs only with ``--overwrite``; foreign files in an output directory are never touched).
- :mod:`~megatron_ar.io.shards`: run a function over input files with processes, progress and
  resume.
- :mod:`~megatron_ar.io.summary`: per-shard summary merging; a summary as a table and/or one JSON
  line.
- :mod:`~megatron_ar.io.safetensors`: streaming safetensors reader and writer (one file or
  HF-style shards + index).
- :mod:`~megatron_ar.io.rank`: rank-aware printing without importing ``torch.distributed``.
"""

"""HF checkpoint directories: the tokenizer files that travel with a converted checkpoint.

Tensors are read and written by :mod:`megatron_ar.io.safetensors` (streaming, one tensor at a
time); this module only knows which files ``transformers``' ``AutoTokenizer`` reads, so a
conversion can carry them along and a logit comparison can find them.
"""
from __future__ import annotations

import os
import shutil
from typing import List

from megatron_ar.checkpoint.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")


def copy_tokenizer_files(src: str, dst: str) -> List[str]:
    """Copy the tokenizer files HF's ``AutoTokenizer`` reads from ``src`` to ``dst``.

    Raises if ``src`` holds none of them (a wrong ``--tokenizer-dir`` must not pass silently).
    """
    if not os.path.isdir(src):
        raise CheckpointError(f"tokenizer directory {src!r} does not exist")
    copied = []
    for name in TOKENIZER_FILES:
        p = os.path.join(src, name)
        if os.path.isfile(p):
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(p, os.path.join(dst, name))
            copied.append(name)
    if not copied:
        raise CheckpointError(f"tokenizer directory {src!r} has none of {list(TOKENIZER_FILES)}")
    return copied


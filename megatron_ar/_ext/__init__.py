"""megatron_ar._ext: the compiled C++/CUDA extensions (built by setup.py from csrc/<name>/).

:func:`load` imports one of them or returns None; :func:`warn_fallback` logs, once per process
and extension, that the pure-Python fallback runs instead, naming the extension and why it is
missing (the import error, and the build's reason from ``build_report.json`` when the build
recorded one).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Dict, Optional

log = logging.getLogger(__name__)
_import_errors: Dict[str, str] = {}
_warned = set()


def load(name: str):
    """``megatron_ar._ext.<name>`` or None when it is not built (the reason is kept)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        _import_errors[name] = str(exc)
        return None


def build_reason(name: str) -> Optional[str]:
    """What the build recorded for ``name`` (``skipped: ...`` / ``failed: ...``), if anything."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_report.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(f"{__name__}.{name}")
    except (OSError, ValueError):
        return None


def warn_fallback(name: str, consequence: str) -> None:
    """Log once that ``megatron_ar._ext.<name>`` is missing and what that costs."""
    if name in _warned:
        return
    _warned.add(name)
    why = _import_errors.get(name, "not built")
    built = build_reason(name)
    if built:
        why += f"; build: {built}"
    log.warning("C++ extension megatron_ar._ext.%s is not available (%s): %s. Rebuild with "
                "`pip install .` (needs a C++ compiler) or `python setup.py build_ext --inplace`.",
                name, why, consequence)

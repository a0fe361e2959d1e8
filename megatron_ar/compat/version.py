"""The installed megatron-core version and the range megatron_ar supports.

Design choices
- The version is read from ``megatron/core/package_info.py`` of the megatron-core that
  *would be imported* (``importlib.util.find_spec``; the file is parsed, not imported, so the
  check costs milliseconds instead of megatron-core's multi-second import), falling back to the
  installed distribution's metadata. A Megatron-LM checkout on ``PYTHONPATH`` therefore reports
  its own version, not the one of a wheel it shadows.
- The supported range is one closed-open interval, :data:`SUPPORTED`. 0.16.1 is what the CPU
  suite runs on (the newest megatron-core for Python 3.11); 0.17.1, 0.18.2 and 0.19.2 (Python
  3.12, NVIDIA's containers) were checked by reading the source of every private name and
  workaround in :mod:`megatron_ar.compat` (each function's docstring says what was found).
- Outside the range, importing :mod:`megatron_ar.compat` raises
  :class:`UnsupportedMegatronCoreError` naming the version and the range. Setting
  ``MEGATRON_AR_ALLOW_UNSUPPORTED_MCORE=1`` turns that into a warning, for trying a newer
  container before the range is widened; the compat tests then tell which workaround broke.
- Version strings are compared as (major, minor, patch) integer tuples; a pre-release
  (``0.20.0rc0``) counts as its release, i.e. it is outside ``<0.20``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import warnings
from typing import Optional, Tuple

Version = Tuple[int, int, int]

#: Supported megatron-core versions: ``SUPPORTED[0] <= version < SUPPORTED[1]``.
SUPPORTED: Tuple[Version, Version] = ((0, 16, 1), (0, 20, 0))
ALLOW_ENV = "MEGATRON_AR_ALLOW_UNSUPPORTED_MCORE"


class UnsupportedMegatronCoreError(ImportError):
    """The installed megatron-core is missing or outside :data:`SUPPORTED`."""


def parse(text: str) -> Version:
    """``"0.16.1"`` / ``"0.19.0rc1"`` / ``"0.17.0+nv25.08"`` -> ``(0, 16, 1)`` ..."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"not a megatron-core version: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def fmt(v: Version) -> str:
    return ".".join(map(str, v))


def range_str(lo: Version, hi: Version) -> str:
    return f">={fmt(lo)},<{fmt(hi)}"


def _from_package_info() -> Optional[str]:
    try:
        spec = importlib.util.find_spec("megatron.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "package_info.py")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            parts = [re.search(rf"^{k}\s*=\s*(\d+)", text, re.M) for k in ("MAJOR", "MINOR", "PATCH")]
            if all(parts):
                return ".".join(p.group(1) for p in parts)
    return None


def installed_version_string() -> Optional[str]:
    """Version of the megatron-core that ``import megatron.core`` would load, or None."""
    found = _from_package_info()
    if found is not None:
        return found
    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_version() -> Version:
    text = installed_version_string()
    if text is None:
        raise UnsupportedMegatronCoreError(
            f"megatron-core is not installed; megatron_ar needs megatron-core{range_str(*SUPPORTED)} "
            "(pip install 'megatron-core" + range_str(*SUPPORTED) + "')")
    return parse(text)


def in_range(v: Version, lo: Version, hi: Version) -> bool:
    return lo <= v < hi


def check_supported(version: Optional[Version] = None) -> Version:
    """Raise :class:`UnsupportedMegatronCoreError` (or warn, with ``MEGATRON_AR_ALLOW_UNSUPPORTED_MCORE=1``)
    when ``version`` (default: the installed one) is outside :data:`SUPPORTED`. Returns it."""
    v = installed_version() if version is None else version
    if in_range(v, *SUPPORTED):
        return v
    msg = (f"megatron-core {fmt(v)} is not supported by megatron_ar (supported: "
           f"megatron-core{range_str(*SUPPORTED)}; the private APIs and upstream workarounds in "
           "megatron_ar/compat/ were checked for that range only). Install a supported version, "
           f"or set {ALLOW_ENV}=1 to try anyway and run tests/compat to see what breaks.")
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return v
    raise UnsupportedMegatronCoreError(msg)


#: The installed megatron-core version as a tuple (read once, at import).
MCORE_VERSION: Version = installed_version()


class MegatronCoreAPIError(RuntimeError):
    """A private megatron-core name that :mod:`megatron_ar.compat` relies on is gone or changed."""


def upstream_attr(owner, name: str, user: str, params: Optional[Tuple[str, ...]] = None):
    """``getattr(owner, name)``, failing with the megatron-core version and the compat function
    that needs it (``user``) when the name is gone or, with ``params``, when its call signature
    no longer starts with those parameter names."""
    import inspect

    where = f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', getattr(owner, '__name__', owner))}"
    where = where.lstrip(".")
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        raise MegatronCoreAPIError(f"megatron-core {fmt(MCORE_VERSION)}: {where}.{name} does not exist; "
                                   f"{user} was written for megatron-core{range_str(*SUPPORTED)}")
    if params is not None:
        got = tuple(inspect.signature(value).parameters)
        if got[:len(params)] != tuple(params):
            raise MegatronCoreAPIError(
                f"megatron-core {fmt(MCORE_VERSION)}: {where}.{name} takes {got}, {user} expects "
                f"{tuple(params)} (written for megatron-core{range_str(*SUPPORTED)})")
    return value


_MISSING = object()

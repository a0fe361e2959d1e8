"""Several test hosts on one machine: network namespaces on a bridge (``netns.sh``).

``hosts(prefix, subnet, n)`` is a context manager giving ``[Host(name, addr, ns), ...]``; it
tears everything down on exit, also after a failure. Tests that need it call
``unavailable_reason()`` first and skip with that message on machines without ``ip netns`` rights
(not root, no iproute2, a sandbox that refuses namespaces).

Each user of this module picks its own ``prefix`` and ``subnet`` so two fixtures never collide.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
from typing import Iterator, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "netns.sh")


@dataclasses.dataclass(frozen=True)
class Host:
    name: str   # resolvable through /etc/hosts while the fixture lives
    addr: str
    ns: str     # `ip netns exec <ns> ...`

    def wrap(self, argv: List[str]) -> List[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> Optional[str]:
    """Why namespaces cannot be made here, or None when they can (probed once)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run as root to test multi-host launches"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = "marnprobe"
    add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if add.returncode != 0:
        return f"`ip netns add` is refused here: {add.stderr.strip()}"
    return None


def _run(*args: str) -> None:
    proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"netns.sh {' '.join(args)} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def hosts(prefix: str, subnet: str, n: int) -> Iterator[List[Host]]:
    """``n`` namespaces ``{prefix}0..`` at ``{subnet}.10..``; the root namespace is ``{subnet}.1``."""
    _run("up", prefix, subnet, str(n))
    try:
        yield [Host(f"{prefix}{i}", f"{subnet}.{10 + i}", f"{prefix}{i}") for i in range(n)]
    finally:
        _run("down", prefix)

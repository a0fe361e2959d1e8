"""Rank-aware printing for code that may run under ``torchrun`` or in one process.

Design choices and trade-offs:

* ``torch.distributed`` is never imported here: if it is not in ``sys.modules`` no process
  group can exist, so the rank comes from the launcher's ``RANK`` variable (``torchrun`` sets it
  before any group is created) or is 0. Importing this module therefore costs nothing and data
  tools that never touch torch stay light.
* Once a default process group is initialised its rank wins over the environment (a group may
  be created with an explicit rank, as the CPU test harness does).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["global_rank", "is_rank", "print_rank"]


def global_rank() -> int:
    """This process's global rank: the default process group's, else ``$RANK``, else 0."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_rank(rank: int = 0) -> bool:
    """Whether this process is global rank ``rank``."""
    return global_rank() == rank


def print_rank(*args, rank: Optional[int] = 0, file=None, flush: bool = True, **kwargs) -> None:
    """``print`` on global rank ``rank`` only (``rank=None``: on every rank, each line prefixed
    with ``[rank N]``)."""
    if rank is None:
        print(f"[rank {global_rank()}]", *args, file=file, flush=flush, **kwargs)
    elif global_rank() == rank:
        print(*args, file=file, flush=flush, **kwargs)

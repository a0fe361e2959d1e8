"""The conventions every tool in ``tools/`` follows (flags, errors, exit status, --json).

Design choices and trade-offs:

* **Exit status**: 0 success; 1 only for "ran and found a difference" (a comparison over its
  tolerance, an unverifiable back-trace, ...), returned by the tool itself; 2 bad input
  (a file, line, key or option at fault); 130 interrupted. Bad input is every ``ValueError``
  (the package's error types derive from it: ``RecordError``, ``CheckpointError``,
  ``TextInputError``, ``ConfigError``, ...), ``OSError`` (missing or unreadable files) and
  ``ImportError`` (an optional dependency a flag needs), plus any type a tool adds.
* **Errors are one line** on stderr, ``error: <message>``, where the message names the
  file/line/key (the library raises it that way); a traceback only with ``--debug``.
* **--json**: the summary is one JSON object on the *last* stdout line (human output before it,
  or on stderr for table summaries); scripts and tests parse that line.
* Tools are thin CLIs over library functions; ``main(argv)`` is what tests call and returns the
  exit status, with errors already mapped by :func:`cli_main`.
* The package is importable as ``megatron_ar_tools`` (mapped to this folder by setup.py), so
  scripts here and in ``tools/checkpoint/`` share this module without editing ``sys.path``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import traceback
from typing import Any, Callable, Optional, Sequence, Tuple, Type

from megatron_ar.io.summary import Summary, print_json_line

__all__ = [
    "BAD_INPUT",
    "EXIT_OK",
    "EXIT_DIFFERENCE",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "parser",
    "add_json",
    "add_debug",
    "add_workers",
    "add_on_error",
    "add_progress",
    "add_resume",
    "add_shard_args",
    "add_shard_selection",
    "shard_spec",
    "cli_main",
    "emit_json",
    "emit_summary",
    "fail",
]

EXIT_OK, EXIT_DIFFERENCE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Exceptions reported as bad input (exit 2, one line) by :func:`cli_main`.
BAD_INPUT: Tuple[Type[BaseException], ...] = (ValueError, OSError, ImportError)


def parser(doc: Optional[str], *, full_doc: bool = False, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--json`` and ``--debug``. The description is the first paragraph
    of ``doc`` (``full_doc``: all of it, formatted as written)."""
    if full_doc:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        desc = doc
    else:
        desc = (doc or "").strip().split("\n\n")[0] or None
    p = argparse.ArgumentParser(description=desc, **kwargs)
    add_json(p)
    add_debug(p)
    return p


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on the last stdout line")


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true",
                   help="on an error, show the full traceback instead of one line")


def add_workers(p, default: Optional[int] = None, help: str = "worker processes") -> None:
    d = default if default is not None else max(1, os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=d, help=f"{help} (default: {d})")


def add_on_error(p) -> None:
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="malformed lines: stop with file:line (fail) or count and skip them")


def add_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_resume(p) -> None:
    p.add_argument("--no-resume", action="store_true",
                   help="redo shards that a previous run already finished")


def add_shard_selection(p) -> None:
    """--shard-index / --num-shards: this process handles one part of the sorted inputs
    (megatron_ar.io.shards.ShardSpec; defaults from a Slurm job array). Read with
    :func:`shard_spec`."""
    p.add_argument("--shard-index", type=int, default=None, metavar="K",
                   help="process part K (0-based) of the sorted inputs (default: "
                        "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0)")
    p.add_argument("--num-shards", type=int, default=None, metavar="N",
                   help="number of parts, contiguous ranges balanced by bytes (default: "
                        "SLURM_ARRAY_TASK_COUNT, else 1)")


def shard_spec(args):
    """The :class:`~megatron_ar.io.shards.ShardSpec` of parsed args (flags, then Slurm array
    variables, then 0 of 1); a bad value raises ValueError naming the flag or variable."""
    from megatron_ar.io.shards import ShardSpec

    return ShardSpec.resolve(getattr(args, "shard_index", None), getattr(args, "num_shards", None))


def add_shard_args(p, *, output_dir: bool = True, shards: bool = True) -> None:
    """The flags of the per-file data tools: --input globs, --output-dir, --workers,
    --on-error, --no-resume, --no-progress, and (``shards``) --shard-index/--num-shards, which
    the tool passes on as ``shard=shard_spec(args)`` (a whole-run tool passes ``shards=False``)."""
    p.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                   help="input JSONL files or globs (plain, .gz or .zst)")
    if output_dir:
        p.add_argument("--output-dir", required=True,
                       help="directory for per-shard outputs (one per input file)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace outputs in --output-dir made from other inputs or options "
                            "(a rerun with the same ones resumes without it)")
    add_workers(p)
    add_on_error(p)
    add_resume(p)
    add_progress(p)
    if shards:
        add_shard_selection(p)


def fail(message: str) -> int:
    """Report bad input found by the tool itself: ``error: message`` on stderr; returns 2."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cli_main(fn: Optional[Callable] = None, *, errors: Sequence[Type[BaseException]] = ()):
    """Decorate a tool's ``main(argv=None) -> int | None``: bad input (:data:`BAD_INPUT` and
    ``errors``) becomes ``error: ...`` on stderr and exit status 2 (a traceback only with
    ``--debug`` in argv); Ctrl-C is 130; a closed stdout pipe (``| head``) is 0."""

    def wrap(main: Callable) -> Callable[..., int]:
        bad = tuple(BAD_INPUT) + tuple(errors)

        @functools.wraps(main)
        def run(argv: Optional[Sequence[str]] = None) -> int:
            debug = "--debug" in (sys.argv[1:] if argv is None else argv)
            try:
                rc = main(argv)
                return EXIT_OK if rc is None else int(rc)
            except BrokenPipeError:
                with contextlib.suppress(OSError):
                    sys.stdout = open(os.devnull, "w")
                return EXIT_OK
            except KeyboardInterrupt:
                print("interrupted; finished work is kept, rerun to resume", file=sys.stderr)
                return EXIT_INTERRUPTED
            except bad as e:
                if debug:
                    traceback.print_exc()
                return fail(str(e) or type(e).__name__)

        return run

    return wrap(fn) if fn is not None else wrap


def emit_json(obj: Any) -> None:
    """``obj`` as the last stdout line (one JSON object)."""
    print_json_line(obj)


def emit_summary(title: str, data: dict, json_mode: bool) -> None:
    """A table summary: on stdout, or with ``json_mode`` on stderr with the JSON line last on
    stdout (:class:`megatron_ar.io.summary.Summary`)."""
    Summary(title, data).emit(json_mode)

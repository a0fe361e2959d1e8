"""Run summaries: plain dicts merged across shards, shown as a table and/or one JSON line.

Design choices and trade-offs:

* A summary is a plain dict (JSON-serialisable), so a tool's result is the same object whether
  it is printed, returned to a test, or stored in a shard's done marker.
* :func:`merge_summaries` has one rule set for every tool (numbers add, dicts merge
  recursively, lists concatenate with ``examples`` capped, booleans AND, anything else keeps the
  first value), so per-shard results reduce without custom code.
* :class:`Summary` puts the machine-readable line last: with ``json_mode`` the human table goes
  to stderr and one JSON object is the last stdout line (what scripts and tests parse); without
  it the table goes to stdout. ``rich`` draws the table when installed, plain text otherwise.
"""
from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["merge_summaries", "json_line", "print_json_line", "Summary"]

_MAX_EXAMPLES = 5


def merge_summaries(a: dict, b: dict) -> dict:
    """Merge per-shard summary dicts: numbers add, dicts recurse, lists concatenate (``examples``
    lists are capped at 5), booleans AND, other values keep the first one seen."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, bool) or isinstance(out[k], bool):
            out[k] = out[k] and v
        elif isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
            out[k] = out[k] + v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge_summaries(out[k], v)
        elif isinstance(v, list) and isinstance(out[k], list):
            out[k] = out[k] + v
            if k == "examples":
                out[k] = out[k][:_MAX_EXAMPLES]
    return out


def json_line(obj: Any) -> str:
    """``obj`` as one line of JSON (UTF-8 kept readable; non-JSON values via ``str``)."""
    return json.dumps(obj, ensure_ascii=False, default=str)


def print_json_line(obj: Any) -> None:
    """Print ``obj`` as the (last) JSON line on stdout, after flushing what came before."""
    sys.stdout.flush()
    print(json_line(obj), flush=True)


class Summary:
    """A tool's final summary: a human table (rich if present) and/or one JSON line."""

    def __init__(self, title: str, data: dict):
        self.title = title
        self.data = data

    def rows(self) -> list[tuple[str, str]]:
        rows = []

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict) and v:
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            elif isinstance(v, float):
                rows.append((prefix, f"{v:,.4g}"))
            elif isinstance(v, int) and not isinstance(v, bool):
                rows.append((prefix, f"{v:,}"))
            elif isinstance(v, list):
                rows.append((prefix, "; ".join(map(str, v)) if v else "-"))
            else:
                rows.append((prefix, str(v)))

        walk("", self.data)
        return rows

    def print_table(self, file=None) -> None:
        file = file or sys.stdout
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            print(self.title, file=file)
            w = max((len(k) for k, _ in self.rows()), default=0)
            for k, v in self.rows():
                print(f"  {k:<{w}}  {v}", file=file)
            return
        table = Table(title=self.title, show_header=True)
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for k, v in self.rows():
            table.add_row(k, v)
        Console(file=file, width=120).print(table)

    def emit(self, json_mode: bool = False) -> None:
        """Table to stdout; with ``json_mode`` table to stderr and the JSON line last on stdout."""
        if json_mode:
            self.print_table(sys.stderr)
            print_json_line(self.data)
        else:
            self.print_table(sys.stdout)

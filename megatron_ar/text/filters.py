"""Threshold filtering on quality signals (``tools/filter_data.py``).

A rules file (YAML) lists thresholds on the signals of :mod:`megatron_ar.text.signals`::

    min_arabic_fraction: 0.5          # shorthand for a rule on arabic_fraction, applied first
    rules:
      - name: too_short               # optional; default "<signal>_min" / "<signal>_max"
        signal: word_count
        min: 30                       # keep when min <= value <= max (both inclusive)
      - signal: duplicate_line_fraction
        max: 0.3

Design choices (why):

* A removed record is attributed to the **first** rule it fails, in file order, so
  ``removed_by_rule`` sums to ``docs_in - docs_out`` and the report reads like a funnel (Fanar
  and RedPajama-V2 report filters this way). ``fails_by_rule`` also counts every rule on its own
  (overlaps included), which is what one needs to judge a single threshold.
* Records without ``quality_signals`` get them computed on the fly (same function as
  ``tools/quality_signals.py``), so annotating first is an optimisation, not a requirement;
  ``compute_missing=False`` turns that into an error instead.
* No C4 "at least 3 paragraphs of 200+ characters" rule is provided by default: Fanar's report
  shows it removes good Arabic news articles, which are often one long paragraph.
* Unknown signals, unknown keys and ``min > max`` are rejected when the file is loaded, with the
  rule's position and field in the message, before any data is read.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.records import ErrorStats, RecordError, dump_record, iter_records
from megatron_ar.io.shards import ShardTask, run_shards
from megatron_ar.text.signals import SIGNAL_NAMES, compute_signals

__all__ = ["FilterRule", "FilterConfig", "load_rules", "filter_shard", "filter_files", "apply_rules"]


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """Keep a record when ``min <= signals[signal] <= max`` (a missing bound is open)."""

    signal: str
    min: Optional[float] = None
    max: Optional[float] = None
    name: str = ""

    def __post_init__(self):
        if self.signal not in SIGNAL_NAMES:
            raise ValueError(f"FilterRule.signal: unknown signal {self.signal!r} "
                             f"(known: {', '.join(SIGNAL_NAMES)})")
        if self.min is None and self.max is None:
            raise ValueError(f"FilterRule {self.signal!r}: give min and/or max")
        for k in ("min", "max"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"FilterRule {self.signal!r}.{k} must be a number, got {v!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"FilterRule {self.signal!r}: min {self.min} > max {self.max}")
        if not self.name:
            kind = "min" if self.max is None else "max" if self.min is None else "range"
            object.__setattr__(self, "name", f"{self.signal}_{kind}")

    def passes(self, value: float) -> bool:
        if self.min is not None and not value >= self.min:
            return False
        if self.max is not None and not value <= self.max:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """rules: applied in order; text_key/signals_key: record keys; compute_missing: compute
    signals for records without them; write_removed: also write removed records (with
    ``filter_rule``) under ``<out_dir>/removed/``."""

    rules: tuple = ()
    text_key: str = "text"
    signals_key: str = "quality_signals"
    compute_missing: bool = True
    write_removed: bool = False

    def __post_init__(self):
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"FilterConfig.rules: duplicate rule names {sorted(dup)}")


_RULE_KEYS = {"name", "signal", "min", "max"}
_TOP_KEYS = {"rules", "min_arabic_fraction"}


def parse_rules(data: Any, source: str = "<rules>") -> tuple:
    """Rules from a parsed YAML/JSON mapping; errors name the source, rule index and field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with 'rules' and/or 'min_arabic_fraction'")
    extra = set(data) - _TOP_KEYS
    if extra:
        raise ValueError(f"{source}: unknown top-level key(s) {sorted(extra)}; allowed {sorted(_TOP_KEYS)}")
    rules = []
    maf = data.get("min_arabic_fraction")
    if maf is not None:
        if isinstance(maf, bool) or not isinstance(maf, (int, float)) or not 0 <= maf <= 1:
            raise ValueError(f"{source}: min_arabic_fraction must be a number in [0, 1], got {maf!r}")
        rules.append(FilterRule("arabic_fraction", min=float(maf), name="min_arabic_fraction"))
    raw = data.get("rules") or []
    if not isinstance(raw, list):
        raise ValueError(f"{source}: 'rules' must be a list")
    for i, r in enumerate(raw):
        where = f"{source}: rules[{i}]"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected a mapping, got {r!r}")
        extra = set(r) - _RULE_KEYS
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; allowed {sorted(_RULE_KEYS)}")
        if "signal" not in r:
            raise ValueError(f"{where}: missing key 'signal'")
        try:
            rules.append(FilterRule(r["signal"], r.get("min"), r.get("max"), r.get("name") or ""))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return tuple(rules)


def load_rules(path: str) -> tuple:
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"rules file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
    return parse_rules(data, path)


def apply_rules(signals: dict, rules: Sequence[FilterRule]) -> tuple[Optional[str], list[str]]:
    """Return (first failing rule name or None, all failing rule names)."""
    failed = [r.name for r in rules if not r.passes(signals[r.signal])]
    return (failed[0] if failed else None), failed


def filter_shard(task: ShardTask) -> dict:
    cfg: FilterConfig = task.options
    stats = ErrorStats()
    removed = {r.name: 0 for r in cfg.rules}
    fails = {r.name: 0 for r in cfg.rules}
    n_in = n_out = b_in = b_out = computed = 0
    required = (cfg.text_key,) if cfg.compute_missing else (cfg.text_key, cfg.signals_key)
    removed_path = os.path.join(task.out_dir, "removed", task.output_name)
    import contextlib

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_output(task.output_path()))
        rem = stack.enter_context(atomic_output(removed_path)) if cfg.write_removed else None
        for line_no, rec in iter_records(task.input_path, required_keys=required,
                                         on_error=task.on_error, stats=stats, progress=task.report):
            n_in += 1
            nb = len(rec[cfg.text_key].encode("utf-8"))
            b_in += nb
            sig = rec.get(cfg.signals_key)
            if not isinstance(sig, dict) or any(r.signal not in sig for r in cfg.rules):
                if not cfg.compute_missing:
                    err = RecordError(task.input_path, line_no, "missing_key",
                                      f"{cfg.signals_key!r} lacks signals the rules need")
                    if task.on_error == "fail":
                        raise err
                    stats.add(err)
                    continue
                sig = compute_signals(rec[cfg.text_key])
                computed += 1
            first, failed = apply_rules(sig, cfg.rules)
            for name in failed:
                fails[name] += 1
            if first is None:
                out.write(dump_record(rec))
                n_out += 1
                b_out += nb
            else:
                removed[first] += 1
                if rem is not None:
                    rem.write(dump_record({**rec, "filter_rule": first}))
    return {"docs_in": n_in, "docs_out": n_out, "text_bytes_in": b_in, "text_bytes_out": b_out,
            "removed_by_rule": removed, "fails_by_rule": fails, "signals_computed": computed,
            "errors": stats.as_dict()}


def _filter_outputs(task: ShardTask) -> list:
    return [task.output_path(), os.path.join(task.out_dir, "removed", task.output_name)]


def filter_files(inputs: Sequence[str], out_dir: str, config: FilterConfig, *, workers: int = 1,
                 on_error: str = "fail", resume: bool = True, progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Filter ``inputs`` into ``out_dir`` (same file names); returns the run summary."""
    if not config.rules:
        raise ValueError("FilterConfig.rules is empty: nothing to filter on")
    s = run_shards(inputs, out_dir, filter_shard, workers=workers, desc="filter", resume=resume,
                   options=config, on_error=on_error, progress=progress, overwrite=overwrite,
                   outputs=_filter_outputs)
    # keep every rule in the report, in rule order, even if no shard saw it fail
    s["removed_by_rule"] = {r.name: s.get("removed_by_rule", {}).get(r.name, 0) for r in config.rules}
    s["fails_by_rule"] = {r.name: s.get("fails_by_rule", {}).get(r.name, 0) for r in config.rules}
    return s

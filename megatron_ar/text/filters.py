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


#: Signals made by other tools (tools/perplexity.py, tools/quality_classifier.py): never
#: computed here, so a record must carry them.
EXTERNAL_SIGNAL_PREFIXES = ("perplexity", "classifier")


def is_external(signal: str) -> bool:
    return signal.startswith(EXTERNAL_SIGNAL_PREFIXES)


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """Keep a record when ``min <= signals[signal] <= max`` (a missing bound is open).

    ``max_percentile`` / ``min_percentile`` (0-100) are bounds relative to the run's inputs
    (one dataset), resolved by :func:`filter_files` in a first pass: ``max_percentile: 95``
    keeps the lowest ``round(0.95 n)`` values (drops the top 5%), ``min_percentile: 10`` drops
    the lowest ``round(0.10 n)``; documents tied with the boundary value are kept. A sharded
    run (``--num-shards``) resolves them over *all* inputs in every task, so each task applies
    the corpus's bounds (outputs equal the single run's) at the cost of every task reading
    every input's signals once; at cluster scale, absolute bounds read off
    ``tools/signal_histogram.py`` avoid that."""

    signal: str
    min: Optional[float] = None
    max: Optional[float] = None
    name: str = ""
    min_percentile: Optional[float] = None
    max_percentile: Optional[float] = None

    def __post_init__(self):
        if self.signal not in SIGNAL_NAMES and not is_external(self.signal):
            raise ValueError(f"FilterRule.signal: unknown signal {self.signal!r} "
                             f"(known: {', '.join(SIGNAL_NAMES)}; external signals start with "
                             f"{' or '.join(EXTERNAL_SIGNAL_PREFIXES)})")
        bounds = ("min", "max", "min_percentile", "max_percentile")
        if all(getattr(self, k) is None for k in bounds):
            raise ValueError(f"FilterRule {self.signal!r}: give min, max, min_percentile and/or "
                             "max_percentile")
        for k in bounds:
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"FilterRule {self.signal!r}.{k} must be a number, got {v!r}")
        for k in ("min_percentile", "max_percentile"):
            v = getattr(self, k)
            if v is not None and not 0 <= v <= 100:
                raise ValueError(f"FilterRule {self.signal!r}.{k} must be in [0, 100], got {v}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"FilterRule {self.signal!r}: min {self.min} > max {self.max}")
        if not self.name:
            lo = self.min is not None or self.min_percentile is not None
            hi = self.max is not None or self.max_percentile is not None
            kind = "range" if lo and hi else "min" if lo else "max"
            pct = "_pct" if self.min_percentile is not None or self.max_percentile is not None \
                else ""
            object.__setattr__(self, "name", f"{self.signal}_{kind}{pct}")

    @property
    def relative(self) -> bool:
        return self.min_percentile is not None or self.max_percentile is not None

    def resolved(self, values) -> "FilterRule":
        """This rule with its percentile bounds turned into values from ``values`` (all the
        run's documents)."""
        import numpy as np

        v = np.sort(np.asarray(values, dtype=np.float64))
        lo, hi = self.min, self.max
        if len(v):
            if self.max_percentile is not None:
                k = int(round(len(v) * self.max_percentile / 100.0))
                cut = float(v[k - 1]) if k > 0 else -float("inf")
                hi = cut if hi is None else min(hi, cut)
            if self.min_percentile is not None:
                j = int(round(len(v) * self.min_percentile / 100.0))
                cut = float(v[j]) if j < len(v) else float("inf")
                lo = cut if lo is None else max(lo, cut)
        return dataclasses.replace(self, min=lo, max=hi, min_percentile=None,
                                   max_percentile=None)

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


_RULE_KEYS = {"name", "signal", "min", "max", "min_percentile", "max_percentile"}
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
            rules.append(FilterRule(r["signal"], r.get("min"), r.get("max"), r.get("name") or "",
                                    r.get("min_percentile"), r.get("max_percentile")))
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
            sig = dict(sig) if isinstance(sig, dict) else {}
            missing = [r.signal for r in cfg.rules if r.signal not in sig]
            external = [s for s in missing if is_external(s)]
            if external or (missing and not cfg.compute_missing):
                why = (f"lacks the external signal(s) {external} (made by another tool, e.g. "
                       "tools/perplexity.py)" if external else "lacks signals the rules need")
                err = RecordError(task.input_path, line_no, "missing_key",
                                  f"{cfg.signals_key!r} {why}")
                if task.on_error == "fail":
                    raise err
                stats.add(err)
                continue
            if missing:
                sig = {**compute_signals(rec[cfg.text_key]), **sig}
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
                 overwrite: bool = False, shard=None) -> dict:
    """Filter ``inputs`` into ``out_dir`` (same file names); returns the run summary."""
    if not config.rules:
        raise ValueError("FilterConfig.rules is empty: nothing to filter on")
    thresholds = {}
    if any(r.relative for r in config.rules):
        config, thresholds = _resolve_percentiles(inputs, config, on_error)
    s = run_shards(inputs, out_dir, filter_shard, workers=workers, desc="filter", resume=resume,
                   options=config, on_error=on_error, progress=progress, overwrite=overwrite,
                   outputs=_filter_outputs, shard=shard)
    # keep every rule in the report, in rule order, even if no shard saw it fail
    s["removed_by_rule"] = {r.name: s.get("removed_by_rule", {}).get(r.name, 0) for r in config.rules}
    s["fails_by_rule"] = {r.name: s.get("fails_by_rule", {}).get(r.name, 0) for r in config.rules}
    if thresholds:
        s["percentile_thresholds"] = thresholds
    return s


def _resolve_percentiles(inputs: Sequence[str], config: FilterConfig, on_error: str):
    """First pass: every document's value of each percentile rule's signal (the run's inputs
    are one dataset); 8 bytes per document and rule. Returns the config with value bounds."""
    rel = [r for r in config.rules if r.relative]
    values = {r.name: [] for r in rel}
    for path in inputs:
        for line_no, rec in iter_records(path, required_keys=(config.text_key,),
                                         on_error=on_error):
            sig = rec.get(config.signals_key)
            sig = sig if isinstance(sig, dict) else {}
            for r in rel:
                if r.signal not in sig:
                    if is_external(r.signal) or not config.compute_missing:
                        raise RecordError(path, line_no, "missing_key",
                                          f"{config.signals_key!r} lacks {r.signal!r}, which "
                                          f"percentile rule {r.name!r} needs")
                    sig = {**compute_signals(rec[config.text_key]), **sig}
                values[r.name].append(float(sig[r.signal]))
    rules = tuple(r.resolved(values[r.name]) if r.relative else r for r in config.rules)
    thresholds = {r.name: {"min": r.min, "max": r.max, "docs": len(values[r.name])}
                  for r in rules if r.name in values}
    return dataclasses.replace(config, rules=rules), thresholds

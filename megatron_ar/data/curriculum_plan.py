"""Curriculum arithmetic from the ``.idx`` files alone: samples, tokens, epochs, steps, warnings,
and the data fingerprint.

Design choices
- Everything here reads only the ``.idx`` files (megatron-core's ``_IndexReader``), never the
  ``.bin``: ``tools/curriculum_plan.py`` runs on a login node against a 10 TB corpus in seconds.
- Samples per epoch of a dataset are Megatron ``GPTDataset``'s count for one epoch with
  ``drop_last_partial_sequence``: ``(tokens - add_extra_token) // seq_length``. The dataset
  builder checks the built ``GPTDataset`` against this number, so plan and data cannot drift.
- Per-phase sample counts are apportioned with exact rational arithmetic (``fractions``; largest
  remainder): the realized counts sum to the phase size and each differs from its exact share by
  less than one sample. Phases are rounded *up* to whole global batches when the batch is known.
- The fingerprint hashes what determines the sample sequence: each dataset's ``.idx`` bytes
  (sha256; lengths and pointers, so any re-tokenization that changes a length changes it), the
  ``.bin`` size and a digest of its content (below), seq length, seed, the extra-token and
  alignment settings, global batch (when it shapes phases) and each phase's budget and resolved
  per-dataset shares. Paths, phase names and LR hints are not fingerprinted: moving data or
  renaming a phase does not invalidate a run.
- ``.bin`` content (``data.bin_fingerprint``, :func:`bin_digest`): a token file rewritten in
  place with the same size (same lengths, other token ids: a re-tokenization with another
  vocabulary of equal lengths, a bad copy) leaves the ``.idx`` unchanged, so the ``.bin`` is
  hashed too. ``sampled`` (default) hashes the first and last 64 KiB block and 32 evenly spaced
  blocks between them (offsets are a pure function of the file size; files up to 34 blocks,
  2.1 MiB, are hashed whole): about 2 MiB read per dataset whatever its size, milliseconds per
  resume. ``full`` hashes every byte (sha256 streams at roughly 0.5-1 GB/s per core, i.e.
  hours on a multi-TB corpus, on every start and resume: affordable only for small corpora or a
  one-off check). ``size`` is the previous behaviour (``.bin`` size only).
  Trade-off, stated honestly: ``sampled`` misses a change confined to bytes outside the sampled
  blocks (on a 1 GB file ~0.2% of the bytes are read), so it catches whole-file rewrites and
  re-tokenizations, not a flipped byte somewhere in the middle. The mode is part of the
  fingerprint, so switching modes refuses a resume (the message names it).
- The ``.bin`` is read only by :func:`build_manifest` (run start); the plan itself
  (:func:`plan_curriculum`) still reads only ``.idx`` files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Dict, List, Optional, Tuple

import numpy

from megatron_ar.data.curriculum_config import CurriculumConfig, CurriculumConfigError

MANIFEST_FORMAT = "megatron_ar.curriculum/2"  # /2: .bin size + content digest per dataset
BIN_BLOCK = 64 * 1024  # bytes per sampled block of a .bin
BIN_INTERIOR_BLOCKS = 32  # evenly spaced blocks between the first and the last
BIN_FINGERPRINT_MODES = ("sampled", "full", "size")


class CurriculumDataError(RuntimeError):
    """A dataset named by the recipe is missing, unreadable or too small."""


@dataclass(frozen=True)
class DatasetStats:
    """What a dataset's ``.idx`` says: sequences, documents, tokens, samples per epoch at the run's
    sequence length, and the ``.idx`` digest the fingerprint covers."""

    name: str
    prefix: str
    num_sequences: int  # Megatron GPTDataset "documents" (IndexedDataset sequences)
    num_documents: int  # IndexedDataset documents (groups of sequences)
    num_tokens: int
    samples_per_epoch: int
    idx_sha256: str
    idx_bytes: int
    dtype: str


def read_dataset_stats(name: str, prefix: str, seq_length: int, add_extra_token: bool = True) -> DatasetStats:
    """Stats of one ``.bin/.idx`` dataset from its ``.idx`` (the ``.bin`` is not opened)."""
    from megatron.core.datasets.indexed_dataset import get_idx_path

    from megatron_ar.compat.indexed import open_index

    idx_path = get_idx_path(prefix)
    if not os.path.isfile(idx_path):
        raise CurriculumDataError(f"data.datasets.{name}: index file not found: {idx_path}")
    try:
        reader = open_index(idx_path)
    except (AssertionError, ValueError, OSError, struct.error) as exc:
        raise CurriculumDataError(f"data.datasets.{name}: {idx_path} is not a Megatron .idx "
                                  f"file ({exc})") from None
    lengths = reader.sequence_lengths
    num_tokens = int(numpy.sum(lengths, dtype=numpy.int64))
    num_docs = int(reader.document_indices.shape[0]) - 1
    dtype = numpy.dtype(reader.dtype).name
    del reader
    spe = (num_tokens - int(add_extra_token)) // seq_length
    if spe < 1:
        raise CurriculumDataError(
            f"data.datasets.{name}: {idx_path} holds {num_tokens} tokens, fewer than one sample of "
            f"seq_length {seq_length} (+{int(add_extra_token)})")
    with open(idx_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return DatasetStats(name=name, prefix=prefix, num_sequences=int(lengths.shape[0]),
                        num_documents=num_docs, num_tokens=num_tokens, samples_per_epoch=spe,
                        idx_sha256=digest, idx_bytes=os.path.getsize(idx_path), dtype=dtype)


@dataclass
class PhaseDatasetPlan:
    """One dataset's part of a phase: its share, samples, tokens, epochs read in the phase and where
    in the dataset's sample stream the phase starts."""

    dataset: str
    group: str
    share: float  # fraction of the phase's samples (normalized weight)
    samples: int
    tokens: int
    epochs: float  # epochs of this dataset read in this phase
    stream_start: int  # position in the dataset's sample stream where the phase starts reading
    epochs_before: float
    epochs_after: float


@dataclass
class PhasePlan:
    """One phase in global samples (``[start_sample, end_sample)``) and, with a global batch, steps;
    per-dataset allocation in ``datasets``."""

    index: int
    name: str
    budget: Dict[str, Any]  # {"tokens": N} or {"epochs": E}
    requested_samples: int  # before rounding to global batches
    samples: int
    tokens: int
    start_sample: int
    end_sample: int  # exclusive
    steps: Optional[float]
    start_step: Optional[float]
    end_step: Optional[float]
    datasets: List[PhaseDatasetPlan]
    lr_schedule: Any = None
    shares_exact: Dict[str, str] = field(default_factory=dict)  # dataset -> "p/q", fingerprinted


@dataclass
class CurriculumPlan:
    """The whole curriculum in samples: per-dataset stats, phases, totals and warnings (pure
    arithmetic over the ``.idx`` files; :func:`plan_curriculum`)."""

    seq_length: int
    global_batch_size: Optional[int]
    seed: int
    stats: Dict[str, DatasetStats]
    phases: List[PhasePlan]
    total_samples: int
    total_tokens: int
    total_steps: Optional[float]
    epochs_total: Dict[str, float]
    warnings: List[str]

    def phase_of_sample(self, idx: int) -> PhasePlan:
        for ph in self.phases:
            if ph.start_sample <= idx < ph.end_sample:
                return ph
        raise IndexError(f"sample {idx} is outside the curriculum (0..{self.total_samples - 1})")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["stats"] = {k: asdict(v) for k, v in self.stats.items()}
        return d

    def format_text(self) -> str:
        gbs = self.global_batch_size
        lines = [f"Curriculum: {len(self.phases)} phase(s), {self.total_samples:,} samples x "
                 f"{self.seq_length} tokens = {self.total_tokens:,} tokens"
                 + (f", {_num(self.total_steps)} steps at global batch {gbs}" if gbs else
                    ", steps unknown (no global batch size)") + f"; seed {self.seed}"]
        lines.append("Datasets:")
        for s in self.stats.values():
            lines.append(f"  {s.name:<16} {s.num_tokens:>16,} tokens {s.num_sequences:>12,} docs "
                         f"{s.samples_per_epoch:>12,} samples/epoch  {s.prefix}")
        for ph in self.phases:
            b = ", ".join(f"{k} {v}" for k, v in ph.budget.items())
            hint = f"; lr_schedule: {ph.lr_schedule}" if ph.lr_schedule is not None else ""
            lines.append(f"Phase {ph.index} '{ph.name}' ({b}{hint})")
            lines.append(f"  samples {ph.start_sample:,}..{ph.end_sample:,} ({ph.samples:,}"
                         + (f", asked {ph.requested_samples:,}" if ph.samples != ph.requested_samples else "")
                         + f"), tokens {ph.tokens:,}"
                         + (f", steps {_num(ph.start_step)}..{_num(ph.end_step)} ({_num(ph.steps)})"
                            if ph.steps is not None else ""))
            lines.append(f"  {'group':<10} {'dataset':<16} {'weight':>8} {'samples':>12} {'tokens':>16} "
                         f"{'epochs':>8} {'cum.epochs':>11}")
            for dp in ph.datasets:
                lines.append(f"  {dp.group:<10} {dp.dataset:<16} {dp.share * 100:>7.2f}% {dp.samples:>12,} "
                             f"{dp.tokens:>16,} {dp.epochs:>8.3f} {dp.epochs_after:>11.3f}")
        lines.append("Warnings:" if self.warnings else "Warnings: none")
        lines.extend(f"  - {w}" for w in self.warnings)
        return "\n".join(lines)


def _num(x: Optional[float]) -> str:
    if x is None:
        return "?"
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}"


def apportion(total: int, shares: List[Fraction]) -> List[int]:
    """Largest-remainder apportionment of ``total`` by exact ``shares`` (sum 1); ties go to the
    earlier entry. Each result is within one of ``total * share`` and they sum to ``total``."""
    exact = [total * s for s in shares]
    counts = [math.floor(x) for x in exact]
    rest = total - sum(counts)
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def collect_stats(config: CurriculumConfig) -> Dict[str, DatasetStats]:
    seq = config.require_seq_length()
    used = []
    for ph in config.phases:
        for g in ph.blend:
            for d in g.datasets:
                if d not in used:
                    used.append(d)
    return {d: read_dataset_stats(d, config.datasets[d], seq, config.add_extra_token_to_sequence)
            for d in used}


def plan_curriculum(config: CurriculumConfig, stats: Optional[Dict[str, DatasetStats]] = None) -> CurriculumPlan:
    """Per-phase sample allocation of the curriculum (pure arithmetic over ``.idx`` stats)."""
    seq = config.require_seq_length()
    stats = stats if stats is not None else collect_stats(config)
    if len(stats) >= 32767:  # megatron's blending helper stores dataset ids as int16
        raise CurriculumConfigError(f"data.datasets: {len(stats)} datasets in use, at most 32766")
    gbs = config.global_batch_size
    align = bool(config.align_phases_to_global_batch and gbs)
    warnings: List[str] = []
    offsets: Dict[str, int] = {d: 0 for d in stats}
    phases: List[PhasePlan] = []
    start = 0
    over_warned = set()
    for i, ph in enumerate(config.phases):
        members: List[Tuple[str, str, Fraction]] = []  # (group, dataset, share)
        group_size = [sum(stats[d].samples_per_epoch for d in g.datasets) for g in ph.blend]
        if ph.blend[0].weight is None:
            gw = [Fraction(s) for s in group_size]
        else:
            gw = [Fraction(str(g.weight)) for g in ph.blend]
        gsum = sum(gw)
        for g, w, size in zip(ph.blend, gw, group_size):
            if g.dataset_weights is None:
                inner = [Fraction(stats[d].samples_per_epoch, size) for d in g.datasets]
            else:
                raw = [Fraction(str(x)) for x in g.dataset_weights]
                inner = [x / sum(raw) for x in raw]
            for d, s in zip(g.datasets, inner):
                members.append((g.name, d, w / gsum * s))
        natural = sum(stats[d].samples_per_epoch for _, d, _ in members)
        if ph.tokens is not None:
            requested = -(-ph.tokens // seq)
            budget: Dict[str, Any] = {"tokens": ph.tokens}
        else:
            requested = math.ceil(Fraction(str(ph.epochs)) * natural)
            budget = {"epochs": ph.epochs}
        n = -(-requested // gbs) * gbs if align else requested
        if gbs and requested < gbs:
            warnings.append(f"phase {i} '{ph.name}' asks for {requested:,} samples "
                            f"({requested * seq:,} tokens), less than one global batch ({gbs} samples)"
                            + (f"; rounded up to {n}" if align else ""))
        if gbs and not align and (start % gbs or (start + n) % gbs):
            warnings.append(f"phase {i} '{ph.name}' does not start/end on a step boundary "
                            f"(global batch {gbs}); one step mixes two phases")
        counts = apportion(n, [s for _, _, s in members])
        dplans = []
        for (gname, d, share), c in zip(members, counts):
            spe = stats[d].samples_per_epoch
            before = offsets[d]
            offsets[d] += c
            dplans.append(PhaseDatasetPlan(
                dataset=d, group=gname, share=float(share), samples=c, tokens=c * seq,
                epochs=c / spe, stream_start=before, epochs_before=before / spe,
                epochs_after=offsets[d] / spe))
            if c == 0:
                warnings.append(f"phase {i} '{ph.name}': dataset '{d}' gets 0 samples "
                                f"(weight {float(share):.2e} of {n} samples)")
            if offsets[d] / spe > config.max_epochs_warning and d not in over_warned:
                over_warned.add(d)
                warnings.append(f"dataset '{d}' is repeated {offsets[d] / spe:.2f} epochs by the end "
                                f"of phase {i} '{ph.name}' (> {config.max_epochs_warning:g}; "
                                "repeated data loses value beyond ~4 epochs, Muennighoff et al. 2023)")
        steps = n / gbs if gbs else None
        phases.append(PhasePlan(
            index=i, name=ph.name, budget=budget, requested_samples=requested, samples=n,
            tokens=n * seq, start_sample=start, end_sample=start + n, steps=steps,
            start_step=start / gbs if gbs else None, end_step=(start + n) / gbs if gbs else None,
            datasets=dplans, lr_schedule=ph.lr_schedule,
            shares_exact={d: f"{s.numerator}/{s.denominator}" for _, d, s in members}))
        start += n
    for d in config.datasets:
        if d not in stats:
            warnings.append(f"dataset '{d}' is declared in data.datasets but used by no phase")
    return CurriculumPlan(
        seq_length=seq, global_batch_size=gbs, seed=config.seed, stats=stats, phases=phases,
        total_samples=start, total_tokens=start * seq, total_steps=start / gbs if gbs else None,
        epochs_total={d: offsets[d] / stats[d].samples_per_epoch for d in stats}, warnings=warnings)


# ---------------------------------------------------------------------------------- fingerprint
def bin_sample_offsets(size: int, block: int = BIN_BLOCK, interior: int = BIN_INTERIOR_BLOCKS) -> List[int]:
    """Start offsets of the blocks :func:`bin_digest` reads in ``sampled`` mode: the first block,
    the last block and ``interior`` evenly spaced ones (integer arithmetic; a file of at most
    ``interior + 2`` blocks is one range from 0, i.e. hashed whole)."""
    n = interior + 2
    if size <= n * block:
        return [0]
    return [(i * (size - block)) // (n - 1) for i in range(n)]


def bin_digest(path: str, mode: str = "sampled", block: int = BIN_BLOCK,
               interior: int = BIN_INTERIOR_BLOCKS) -> Dict[str, Any]:
    """``{"bin_bytes", "bin_hash", "bin_sha256"}`` of a ``.bin`` (see the module docstring for
    the modes and their trade-off). ``bin_hash`` names the mode and sampling geometry so that two
    digests are only ever compared when they cover the same bytes."""
    if mode not in BIN_FINGERPRINT_MODES:
        raise CurriculumConfigError(f"data.bin_fingerprint: must be one of "
                                    f"{', '.join(BIN_FINGERPRINT_MODES)}, got {mode!r}")
    try:
        size = os.path.getsize(path)
        if mode == "size":
            return {"bin_bytes": size, "bin_hash": "size", "bin_sha256": None}
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if mode == "full":
                h = hashlib.file_digest(f, "sha256")
                desc = "full"
            else:
                offsets = bin_sample_offsets(size, block, interior)
                whole = offsets == [0]
                for off in offsets:
                    f.seek(off)
                    buf = f.read(size if whole else block)
                    h.update(struct.pack("<QQ", off, len(buf)))  # offsets are part of what is hashed
                    h.update(buf)
                desc = f"sampled:{interior + 2}x{block}"
    except OSError as exc:
        raise CurriculumDataError(f"{path}: cannot read the .bin for the data fingerprint ({exc})") from None
    return {"bin_bytes": size, "bin_hash": desc, "bin_sha256": h.hexdigest()}


def build_manifest(config: CurriculumConfig, plan: CurriculumPlan) -> Dict[str, Any]:
    """What determines the sample sequence. ``prefix`` entries are informational only. Reads
    each ``.idx``'s stats from the plan and samples each ``.bin`` (``data.bin_fingerprint``)."""
    from megatron.core.datasets.indexed_dataset import get_bin_path

    mode = getattr(config, "bin_fingerprint", "sampled")
    bins = {}
    for d, s in plan.stats.items():
        path = get_bin_path(s.prefix)
        if not os.path.isfile(path):
            raise CurriculumDataError(f"data.datasets.{d}: file not found: {path} (the data "
                                      "fingerprint covers the .bin; plan_curriculum needs only .idx)")
        bins[d] = bin_digest(path, mode)
    return {
        "format": MANIFEST_FORMAT,
        "seq_length": plan.seq_length,
        "seed": config.seed,
        "add_extra_token_to_sequence": config.add_extra_token_to_sequence,
        "align_phases_to_global_batch": config.align_phases_to_global_batch,
        "global_batch_size": plan.global_batch_size if config.align_phases_to_global_batch else None,
        "datasets": {d: {"prefix": s.prefix, "idx_sha256": s.idx_sha256, "idx_bytes": s.idx_bytes,
                         "num_sequences": s.num_sequences, "num_tokens": s.num_tokens, **bins[d]}
                     for d, s in plan.stats.items()},
        # "order" fixes the interleaving (the blending helper breaks ties by dataset order).
        "phases": [{"budget": ph.budget, "shares": ph.shares_exact, "samples": ph.samples,
                    "order": [dp.dataset for dp in ph.datasets],
                    "groups": {dp.dataset: dp.group for dp in ph.datasets}}
                   for ph in plan.phases],
        "total_samples": plan.total_samples,
    }


def _fingerprinted(manifest: Dict[str, Any]) -> Dict[str, Any]:
    m = json.loads(json.dumps(manifest))
    for v in m.get("datasets", {}).values():
        v.pop("prefix", None)
    for ph in m.get("phases", []):
        ph.pop("groups", None)
    return m


def fingerprint_of(manifest: Dict[str, Any]) -> str:
    blob = json.dumps(_fingerprinted(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def diff_manifests(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable list of what changed between two manifests (fingerprinted fields only)."""
    out: List[str] = []
    a, b = _fingerprinted(old), _fingerprinted(new)
    for k in sorted((set(a) | set(b)) - {"datasets", "phases"}):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    da, db = a.get("datasets", {}), b.get("datasets", {})
    pa = old.get("datasets", {})
    for d in sorted(set(da) | set(db)):
        if d not in db:
            out.append(f"datasets.{d}: no longer used")
        elif d not in da:
            out.append(f"datasets.{d}: newly used")
        else:
            where = new.get("datasets", {}).get(d, {}).get("prefix") or pa.get(d, {}).get("prefix")
            for k in ("num_sequences", "num_tokens", "idx_bytes", "idx_sha256"):
                if da[d].get(k) != db[d].get(k):
                    out.append(f"datasets.{d} ({where}.idx) changed: {k} {da[d].get(k)} -> {db[d].get(k)}")
            if da[d].get("bin_hash") != db[d].get("bin_hash"):
                out.append(f"datasets.{d} ({where}.bin): fingerprint mode changed "
                           f"{da[d].get('bin_hash')} -> {db[d].get('bin_hash')} (data.bin_fingerprint)")
            else:
                for k in ("bin_bytes", "bin_sha256"):
                    if da[d].get(k) != db[d].get(k):
                        out.append(f"datasets.{d} ({where}.bin) changed: {k} {da[d].get(k)} -> "
                                   f"{db[d].get(k)} ({da[d].get('bin_hash')})")
    pha, phb = a.get("phases", []), b.get("phases", [])
    if len(pha) != len(phb):
        out.append(f"phases: {len(pha)} -> {len(phb)} phases")
    for i, (x, y) in enumerate(zip(pha, phb)):
        if x.get("budget") != y.get("budget"):
            out.append(f"phases[{i}].budget: {x.get('budget')} -> {y.get('budget')}")
        if x.get("order") != y.get("order") and set(x.get("order", [])) == set(y.get("order", [])):
            out.append(f"phases[{i}].blend: dataset order {x.get('order')} -> {y.get('order')}")
        sx, sy = x.get("shares", {}), y.get("shares", {})
        for d in sorted(set(sx) | set(sy)):
            if sx.get(d) != sy.get(d):
                fx = float(Fraction(sx[d])) if d in sx else 0.0
                fy = float(Fraction(sy[d])) if d in sy else 0.0
                out.append(f"phases[{i}].blend: share of dataset '{d}' {fx:.6g} -> {fy:.6g}")
    if not out and fingerprint_of(old) != fingerprint_of(new):
        out.append("manifest format/content differs")
    return out


def prefix_compatible(old: Dict[str, Any], new: Dict[str, Any], consumed_samples: int) -> List[str]:
    """Why the first ``consumed_samples`` samples of ``old`` may differ in ``new`` (empty: they
    are identical). True when the changes touch only phases that have not started and datasets
    only those phases read: the sequence already trained on is a function of the started phases'
    budgets/shares/order, their datasets' ``.idx`` and the global settings."""
    a, b = _fingerprinted(old), _fingerprinted(new)
    problems = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted((set(a) | set(b)) - {"datasets", "phases", "total_samples"})
                if a.get(k) != b.get(k)]
    started, start = 0, 0
    for ph in a.get("phases", []):
        if start >= consumed_samples:
            break
        started += 1
        start += ph["samples"]
    pa, pb = a.get("phases", []), b.get("phases", [])
    if len(pb) < started:
        problems.append(f"phases: {started} phase(s) already started, the new recipe has {len(pb)}")
    for i in range(min(started, len(pb))):
        if pa[i] != pb[i]:
            problems.append(f"phases[{i}] changed after it started ({pa[i]} -> {pb[i]})")
    used = {d for ph in pa[:started] for d in ph.get("order", [])}
    for d in sorted(used):
        if a["datasets"].get(d) != b.get("datasets", {}).get(d):
            problems.append(f"datasets.{d}: changed but already read")
    return problems

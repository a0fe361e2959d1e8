"""Shard functions behind ``tools/quality_signals.py`` and ``tools/normalize_text.py``.

Both stream one input file into one output file of the same name (and compression) under the
output directory, through :func:`megatron_ar.io.shards.run_shards`, so they inherit its
parallelism, progress, resume and atomic outputs (see that module's docstring for why).

Design choices:

* Signals go into ``record["quality_signals"]`` (Dolma/RedPajama-V2 layout), replacing what was
  there, and all other keys are kept untouched, so the tools compose in any order.
* Normalization rewrites ``text`` in place and records the options used in
  ``metadata.normalization`` so a later reader knows what the text went through.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.records import ErrorStats, dump_record, iter_records
from megatron_ar.io.shards import ShardTask, run_shards
from megatron_ar.text.normalize import ArabicNormalizeConfig, build_normalizer
from megatron_ar.text.signals import compute_signals

__all__ = ["AnnotateConfig", "annotate_shard", "annotate_files", "normalize_shard", "normalize_files"]


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """Options of the quality-signal annotator.

    text_key: record key holding the document text.
    signals_key: record key the signals dict is written to.
    """

    text_key: str = "text"
    signals_key: str = "quality_signals"


def annotate_shard(task: ShardTask) -> dict:
    cfg: AnnotateConfig = task.options
    stats = ErrorStats()
    n = nbytes = 0
    with atomic_output(task.output_path()) as out:
        for _, rec in iter_records(task.input_path, required_keys=(cfg.text_key,),
                                   on_error=task.on_error, stats=stats, progress=task.report):
            text = rec[cfg.text_key]
            rec[cfg.signals_key] = compute_signals(text)
            out.write(dump_record(rec))
            n += 1
            nbytes += len(text.encode("utf-8"))
    return {"docs_in": n, "docs_out": n, "text_bytes": nbytes, "errors": stats.as_dict()}


def annotate_files(inputs: Sequence[str], out_dir: str, *, config: Optional[AnnotateConfig] = None,
                   workers: int = 1, on_error: str = "fail", resume: bool = True,
                   progress: bool = True, overwrite: bool = False, shard=None) -> dict:
    """Annotate every record of ``inputs`` with quality signals; returns the run summary."""
    return run_shards(inputs, out_dir, annotate_shard, workers=workers, desc="quality signals",
                      resume=resume, options=config or AnnotateConfig(), on_error=on_error,
                      progress=progress, overwrite=overwrite, shard=shard)


@dataclasses.dataclass(frozen=True)
class NormalizeJob:
    """Options of one normalization shard job (picklable, for the shard runner's worker processes)."""

    normalize: ArabicNormalizeConfig = ArabicNormalizeConfig()
    text_key: str = "text"
    drop_empty: bool = True


def normalize_shard(task: ShardTask) -> dict:
    job: NormalizeJob = task.options
    fn = build_normalizer(job.normalize)
    changed = {k: v for k, v in dataclasses.asdict(job.normalize).items()
               if v != getattr(ArabicNormalizeConfig(), k)}
    stats = ErrorStats()
    n_in = n_out = bytes_in = bytes_out = 0
    with atomic_output(task.output_path()) as out:
        for _, rec in iter_records(task.input_path, required_keys=(job.text_key,),
                                   on_error=task.on_error, stats=stats, progress=task.report):
            n_in += 1
            text = rec[job.text_key]
            new = fn(text)
            bytes_in += len(text.encode("utf-8"))
            if job.drop_empty and not new.strip():
                continue
            rec[job.text_key] = new
            meta = rec.get("metadata")
            if isinstance(meta, dict) or meta is None:
                rec["metadata"] = {**(meta or {}), "normalization": {"arabic": changed or "default"}}
            out.write(dump_record(rec))
            n_out += 1
            bytes_out += len(new.encode("utf-8"))
    return {"docs_in": n_in, "docs_out": n_out, "text_bytes_in": bytes_in,
            "text_bytes_out": bytes_out, "errors": stats.as_dict()}


def normalize_files(inputs: Sequence[str], out_dir: str, *, config: Optional[ArabicNormalizeConfig] = None,
                    text_key: str = "text", drop_empty: bool = True, workers: int = 1,
                    on_error: str = "fail", resume: bool = True, progress: bool = True,
                    overwrite: bool = False, shard=None) -> dict:
    """Rewrite ``text`` of every record with :func:`build_normalizer`; returns the run summary."""
    job = NormalizeJob(config or ArabicNormalizeConfig(), text_key, drop_empty)
    return run_shards(inputs, out_dir, normalize_shard, workers=workers, desc="normalize",
                      resume=resume, options=job, on_error=on_error, progress=progress,
                      overwrite=overwrite, shard=shard)

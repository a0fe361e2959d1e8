#!/usr/bin/env python3
"""Exact / URL / MinHash-LSH deduplication of JSONL corpora (thin CLI over
megatron_ar.text.dedup.dedup_files).

Example:
  python tools/dedup.py --input a/*.jsonl.gz b.jsonl --output kept.jsonl \
      --clusters clusters.jsonl --mode all --json

At cluster scale, two stages with the same flags (examples/slurm/data_pipeline.sbatch):
  # stage 1, a job array: each task hashes its part of the sorted inputs into --work-dir
  python tools/dedup.py --stage keys --input 'c/*.jsonl.gz' --work-dir dd.work  # SLURM_ARRAY_*
  # stage 2, one node: union-find over the key files only, then the kept records
  python tools/dedup.py --stage cluster --input 'c/*.jsonl.gz' --work-dir dd.work --output kept.jsonl
  # or, without --output there, the kept records per input file by another job array
  python tools/dedup.py --stage write --input 'c/*.jsonl.gz' --work-dir dd.work --output kept/
"""
import os
import sys

from megatron_ar.text.dedup import DedupConfig, dedup_files
from megatron_ar_tools._cli import (add_on_error, add_progress, add_resume, add_shard_selection,
                                    add_workers, cli_main, emit_summary, parser, shard_spec)


@cli_main
def main(argv=None):
    p = parser(__doc__, full_doc=True)
    p.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                   help="JSONL inputs (plain/.gz/.zst, globs); several inputs are deduplicated "
                        "together and earlier inputs win")
    p.add_argument("--output", default=None,
                   help="kept records (JSONL; .gz/.zst by extension); required unless --stage keys")
    p.add_argument("--stage", choices=("all", "keys", "cluster", "write"), default="all",
                   help="all: both passes; keys: stage 1 only (key files into --work-dir, "
                        "sharded); cluster: stage 2 from the key files (one process; writes "
                        "--output if given, and the kept set WORK_DIR/kept.npy); write: each "
                        "input's kept records into the folder --output (sharded)")
    p.add_argument("--clusters", default=None,
                   help='clusters file: one {"id": dropped, "kept": kept} line per dropped record')
    p.add_argument("--mode", choices=("exact", "minhash", "url", "all"), default="all")
    p.add_argument("--ngram", type=int, default=8, help="shingle size (default 8, Fanar)")
    p.add_argument("--shingle", choices=("word", "char"), default="word",
                   help="shingle unit: whitespace words (default) or characters")
    p.add_argument("--bands", type=int, default=12)
    p.add_argument("--rows", type=int, default=11)
    p.add_argument("--seed", type=int, default=1, help="MinHash permutation seed")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip Arabic normalisation (text is still casefolded, spaces collapsed)")
    p.add_argument("--text-key", default="text")
    p.add_argument("--id-key", default="id")
    p.add_argument("--url-key", default="url", help="URL key in metadata (or top level)")
    add_workers(p, default=os.cpu_count() or 1,
                help="processes over input files x C++ threads")
    p.add_argument("--work-dir", default=None,
                   help="per-input key files (8 bytes x (bands+2) per record), kept after the run so "
                        "a rerun skips hashing (default: OUTPUT.work)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output / --clusters file")
    add_on_error(p)
    add_resume(p)
    add_progress(p)
    add_shard_selection(p)
    a = p.parse_args(argv)
    cfg = DedupConfig(mode=a.mode, ngram=a.ngram, bands=a.bands, rows=a.rows, shingle=a.shingle,
                      seed=a.seed, normalize=not a.no_normalize, text_key=a.text_key,
                      id_key=a.id_key, url_key=a.url_key)
    summary = dedup_files(a.input, a.output, a.clusters, cfg, workers=a.workers,
                          on_error=a.on_error, work_dir=a.work_dir, resume=not a.no_resume,
                          progress=not a.no_progress, overwrite=a.overwrite, stage=a.stage,
                          shard=shard_spec(a))
    emit_summary("dedup", summary, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

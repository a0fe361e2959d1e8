"""Remove site boilerplate (headers, footers, inner sections, link lists): lines a source
repeats in more than --min-fraction of its documents (megatron_ar.text.boilerplate).

    python tools/strip_boilerplate.py --input 'crawl/*.jsonl.gz' --output-dir clean/ \
        [--source-key metadata.source] [--min-fraction 0.3] [--min-docs 5] [--json]

The source of a record is the domain of metadata.url unless --source-key names another key.
Per-source removals (counts and example lines) go to the summary; the full report is written
to OUTPUT_DIR/.boilerplate_report.json (.boilerplate_report_shardK_of_N.json per array task).

On a cluster (a source spans files): an array job `--stage count` (per-input line counts into
OUTPUT_DIR/.boilerplate_counts/), then after it an array job `--stage strip` (each task sums all
counts and strips its part of the sorted inputs); the outputs equal the one-process run's.
"""
import json
import os
import sys

from megatron_ar.io.atomic import write_json_atomic
from megatron_ar.io.records import expand_inputs
from megatron_ar.text.boilerplate import BoilerplateConfig, strip_boilerplate
from megatron_ar_tools._cli import (add_on_error, add_progress, add_resume, add_shard_selection,
                                    cli_main, emit_summary, parser, shard_spec)


@cli_main
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                   help="input JSONL files or globs (plain, .gz or .zst)")
    p.add_argument("--output-dir", required=True, help="outputs keep the input file names")
    p.add_argument("--source-key", default=None,
                   help="dotted record key naming the source (default: domain of metadata.url)")
    p.add_argument("--min-fraction", type=float, default=BoilerplateConfig.min_fraction)
    p.add_argument("--min-docs", type=int, default=BoilerplateConfig.min_docs)
    p.add_argument("--min-chars", type=int, default=BoilerplateConfig.min_chars)
    p.add_argument("--no-normalize-digits", action="store_true",
                   help="compare lines with their digits (default: digits count as equal)")
    p.add_argument("--keep-empty", action="store_true", help="keep records left without text")
    p.add_argument("--text-key", default="text")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--stage", choices=("all", "count", "strip"), default="all",
                   help="all: both passes in this process; count / strip: the two passes as "
                        "separate job arrays (--shard-index/--num-shards)")
    add_on_error(p)
    add_progress(p)
    add_resume(p)
    add_shard_selection(p)
    a = p.parse_args(argv)
    shard = shard_spec(a)
    cfg = BoilerplateConfig(min_fraction=a.min_fraction, min_docs=a.min_docs,
                            min_chars=a.min_chars, source_key=a.source_key, text_key=a.text_key,
                            keep_empty=a.keep_empty, normalize_digits=not a.no_normalize_digits)
    s = strip_boilerplate(expand_inputs(a.input), a.output_dir, cfg, on_error=a.on_error,
                          overwrite=a.overwrite, progress=not a.no_progress, stage=a.stage,
                          shard=shard, resume=not a.no_resume)
    if a.stage == "count":
        emit_summary("boilerplate counts", s, a.json)
        return 0
    name = ".boilerplate_report" + (shard.suffix if shard.sharded else "") + ".json"
    write_json_atomic(os.path.join(a.output_dir, name), s, indent=1)
    top = dict(list(s["by_source"].items())[:10])
    table = {k: v for k, v in s.items() if k not in ("by_source", "outputs")}
    table["top_sources"] = {k: f"{v['lines_removed']} lines, {v['chars_removed']} chars; e.g. "
                            + json.dumps(v["examples"][:2], ensure_ascii=False)
                            for k, v in top.items()}
    emit_summary("strip boilerplate", table, a.json)


if __name__ == "__main__":
    sys.exit(main())

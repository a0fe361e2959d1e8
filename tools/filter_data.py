#!/usr/bin/env python3
"""Filter JSONL records by thresholds on quality signals (rules from a YAML file).

    python tools/filter_data.py --input 'annotated/*.jsonl.gz' --output-dir filtered/ \\
        --rules examples/data/filter_rules_ar.yaml --json

Reports how many records each rule removed (first failing rule, so the counts add up) and how
many failed each rule on its own. Records without ``quality_signals`` get them computed.
Library: megatron_ar.text.filters.filter_files.
"""
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.filters import FilterConfig, filter_files, load_rules
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary, parser, shard_spec


@cli_main
def main(argv=None):
    p = parser(__doc__)
    add_shard_args(p)
    p.add_argument("--rules", required=True, help="YAML rules file (see examples/data/filter_rules_ar.yaml)")
    p.add_argument("--min-arabic-fraction", type=float, default=None,
                   help="override/add the min_arabic_fraction rule of the rules file")
    p.add_argument("--write-removed", action="store_true",
                   help="also write removed records, tagged with filter_rule, to OUTPUT_DIR/removed/")
    p.add_argument("--no-compute-missing", action="store_true",
                   help="treat records without quality_signals as malformed instead of computing them")
    p.add_argument("--text-key", default="text")
    p.add_argument("--signals-key", default="quality_signals")
    a = p.parse_args(argv)
    rules = load_rules(a.rules)
    if a.min_arabic_fraction is not None:
        from megatron_ar.text.filters import FilterRule

        rules = (FilterRule("arabic_fraction", min=a.min_arabic_fraction, name="min_arabic_fraction"),
                 *[r for r in rules if r.name != "min_arabic_fraction"])
    cfg = FilterConfig(rules=tuple(rules), text_key=a.text_key, signals_key=a.signals_key,
                       compute_missing=not a.no_compute_missing, write_removed=a.write_removed)
    summary = filter_files(expand_inputs(a.input), a.output_dir, cfg, workers=a.workers,
                           on_error=a.on_error, resume=not a.no_resume, progress=not a.no_progress,
                           overwrite=a.overwrite, shard=shard_spec(a))
    emit_summary("filter", summary, a.json)


if __name__ == "__main__":
    sys.exit(main())

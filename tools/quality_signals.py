#!/usr/bin/env python3
"""Annotate JSONL records with Arabic-adapted RedPajama-V2 quality signals.

    python tools/quality_signals.py --input 'data/*.jsonl.gz' --output-dir annotated/ --workers 8

Writes one output per input (same name and compression) with ``quality_signals`` added; the
signals are listed with ``--list-signals``. Library: megatron_ar.text.annotate.annotate_files.
"""
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.annotate import AnnotateConfig, annotate_files
from megatron_ar.text.signals import SIGNALS
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary, parser, shard_spec


@cli_main
def main(argv=None):
    if "--list-signals" in (sys.argv[1:] if argv is None else argv):
        for k, v in SIGNALS.items():
            print(f"{k:38s} {v}")
        return 0
    p = parser(__doc__)
    add_shard_args(p)
    p.add_argument("--text-key", default="text")
    p.add_argument("--signals-key", default="quality_signals")
    p.add_argument("--list-signals", action="store_true", help="print the signals and exit")
    a = p.parse_args(argv)
    summary = annotate_files(expand_inputs(a.input), a.output_dir,
                             config=AnnotateConfig(a.text_key, a.signals_key), workers=a.workers,
                             on_error=a.on_error, resume=not a.no_resume, progress=not a.no_progress,
                             overwrite=a.overwrite, shard=shard_spec(a))
    emit_summary("quality signals", summary, a.json)


if __name__ == "__main__":
    sys.exit(main())

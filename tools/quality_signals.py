#!/usr/bin/env python3
"""Annotate JSONL records with Arabic-adapted RedPajama-V2 quality signals.

    python tools/quality_signals.py --input 'data/*.jsonl.gz' --output-dir annotated/ --workers 8

Writes one output per input (same name and compression) with ``quality_signals`` added; the
signals are listed with ``--list-signals``. Library: megatron_ar.text.annotate.annotate_files.
"""
import argparse
import sys

from megatron_ar.data.records import Summary, add_common_args, cli_errors, expand_inputs
from megatron_ar.text.annotate import AnnotateConfig, annotate_files
from megatron_ar.text.signals import SIGNALS


def main(argv=None):
    if argv is None and "--list-signals" in sys.argv[1:]:
        for k, v in SIGNALS.items():
            print(f"{k:38s} {v}")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--text-key", default="text")
    p.add_argument("--signals-key", default="quality_signals")
    p.add_argument("--list-signals", action="store_true", help="print the signals and exit")
    a = p.parse_args(argv)
    summary = annotate_files(expand_inputs(a.input), a.output_dir,
                             config=AnnotateConfig(a.text_key, a.signals_key), workers=a.workers,
                             on_error=a.on_error, resume=not a.no_resume, progress=not a.no_progress)
    Summary("quality signals", summary).emit(a.json)


if __name__ == "__main__":
    sys.exit(cli_errors(main))

#!/usr/bin/env python3
"""Arabic normalization of the ``text`` of JSONL records (megatron_ar.text.normalize).

    python tools/normalize_text.py --input 'raw/*.jsonl.zst' --output-dir clean/ --web --unify-alef

Defaults (Fanar): remove diacritics, Quranic marks, tatweel, zero-width and bidi controls; NFKC.
Every option of ArabicNormalizeConfig is a flag (``--no-remove-diacritics``, ``--unify-alef``...).
Library: megatron_ar.text.annotate.normalize_files.
"""
import argparse
import dataclasses
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.annotate import normalize_files
from megatron_ar.text.normalize import ArabicNormalizeConfig
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary, parser, shard_spec


@cli_main
def main(argv=None):
    p = parser(__doc__)
    add_shard_args(p)
    p.add_argument("--web", action="store_true", help="also strip HTML and normalize whitespace")
    for f in dataclasses.fields(ArabicNormalizeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "unicode_form":
            p.add_argument(flag, choices=("NFKC", "NFC", "none"), default=None)
        else:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default: {'on' if f.default else 'off'})")
    p.add_argument("--keep-empty", action="store_true", help="keep records whose text becomes empty")
    p.add_argument("--text-key", default="text")
    a = p.parse_args(argv)
    over = {f.name: getattr(a, f.name) for f in dataclasses.fields(ArabicNormalizeConfig)
            if getattr(a, f.name) is not None}
    cfg = ArabicNormalizeConfig.web(**over) if a.web else ArabicNormalizeConfig(**over)
    summary = normalize_files(expand_inputs(a.input), a.output_dir, config=cfg, text_key=a.text_key,
                              drop_empty=not a.keep_empty, workers=a.workers, on_error=a.on_error,
                              resume=not a.no_resume, progress=not a.no_progress,
                              overwrite=a.overwrite, shard=shard_spec(a))
    emit_summary("normalize", summary, a.json)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Documents, sequences, tokens, bytes and tokens-per-document histogram of Megatron indexed
datasets (one or many prefixes). Thin CLI over megatron_ar.data.indexed.datasets_info.

Example: python tools/dataset_info.py data/ar_text_document data/en_text_document --json
"""
import sys

from megatron_ar.data.indexed import datasets_info
from megatron_ar_tools._cli import cli_main, emit_summary, parser


@cli_main
def main(argv=None):
    p = parser(__doc__, full_doc=True)
    p.add_argument("prefixes", nargs="+", help="dataset prefixes (with or without .bin/.idx)")
    a = p.parse_args(argv)
    info = datasets_info(a.prefixes)
    if not a.json:
        for d in info["datasets"]:
            print(f"{d['prefix']}: {d['documents']:,} documents, {d['tokens']:,} tokens "
                  f"({d['dtype']}), {d['bin_bytes']:,} bytes")
            peak = max((h["documents"] for h in d["histogram"]), default=1)
            for h in d["histogram"]:
                bar = "#" * max(1, round(40 * h["documents"] / peak))
                print(f"  {h['range']:>15} tokens  {h['documents']:>10,}  {bar}")
    if a.json:
        emit_summary("dataset_info", info, True)
    else:
        emit_summary("dataset_info (total)", info["total"], False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Documents, sequences, tokens, bytes and tokens-per-document histogram of Megatron indexed
datasets (one or many prefixes). Thin CLI over megatron_ar.data.indexed.datasets_info.

Example: python tools/dataset_info.py data/ar_text_document data/en_text_document --json
"""
import argparse
import sys

from megatron_ar.data.indexed import datasets_info
from megatron_ar.data.records import Summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefixes", nargs="+", help="dataset prefixes (with or without .bin/.idx)")
    p.add_argument("--json", action="store_true", help="summary as one JSON line, last on stdout")
    a = p.parse_args(argv)
    try:
        info = datasets_info(a.prefixes)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.json:
        for d in info["datasets"]:
            print(f"{d['prefix']}: {d['documents']:,} documents, {d['tokens']:,} tokens "
                  f"({d['dtype']}), {d['bin_bytes']:,} bytes")
            peak = max((h["documents"] for h in d["histogram"]), default=1)
            for h in d["histogram"]:
                bar = "#" * max(1, round(40 * h["documents"] / peak))
                print(f"  {h['range']:>15} tokens  {h['documents']:>10,}  {bar}")
    Summary("dataset_info", info).emit(a.json) if a.json else Summary(
        "dataset_info (total)", info["total"]).emit(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

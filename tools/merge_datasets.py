#!/usr/bin/env python3
"""Concatenate Megatron indexed datasets in the given order (megatron-core add_index).
Thin CLI over megatron_ar.data.indexed.merge_datasets.

Example: python tools/merge_datasets.py --input a_text_document b_text_document \
             --output-prefix ab_text_document --json
"""
import argparse
import glob
import sys

from megatron_ar.data.indexed import merge_datasets
from megatron_ar.data.records import Summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes, or globs over .idx files (sorted), merged in order")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--json", action="store_true", help="summary as one JSON line, last on stdout")
    a = p.parse_args(argv)
    prefixes = []
    for x in a.input:
        hits = sorted(glob.glob(x)) if glob.has_magic(x) else [x]
        if not hits:
            print(f"error: {x!r} matched nothing", file=sys.stderr)
            return 2
        prefixes.extend(h for h in hits if not h.endswith(".bin"))
    try:
        info = merge_datasets(prefixes, a.output_prefix)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info.pop("histogram", None)
    Summary("merge_datasets", info).emit(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Concatenate Megatron indexed datasets in the given order (megatron-core add_index).
Thin CLI over megatron_ar.data.indexed.merge_datasets.

Example: python tools/merge_datasets.py --input a_text_document b_text_document \
             --output-prefix ab_text_document --json
"""
import glob
import sys

from megatron_ar.data.indexed import merge_datasets
from megatron_ar_tools._cli import cli_main, emit_summary, fail, parser


@cli_main
def main(argv=None):
    p = parser(__doc__, full_doc=True)
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes, or globs over .idx files (sorted), merged in order")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output pair")
    a = p.parse_args(argv)
    prefixes = []
    for x in a.input:
        hits = sorted(glob.glob(x)) if glob.has_magic(x) else [x]
        if not hits:
            return fail(f"{x!r} matched nothing")
        prefixes.extend(h for h in hits if not h.endswith(".bin"))
    info = merge_datasets(prefixes, a.output_prefix, overwrite=a.overwrite)
    info.pop("histogram", None)
    emit_summary("merge_datasets", info, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

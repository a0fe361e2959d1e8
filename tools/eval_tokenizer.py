#!/usr/bin/env python3
"""Evaluate tokenizers: per-category fertility, chars/bytes per token, vocabulary usage and
the Morphological Alignment Score against a gold segmentation (definitions in
megatron_ar/tokenizers/evaluate.py). Thin CLI over megatron_ar.tokenizers.evaluate.

Categories come from CATEGORY=PATH inputs, the JSONL 'category' / 'metadata.category' / 'lang'
keys, or the file-name prefix (ar_test.txt -> ar).

Example:
  python tools/eval_tokenizer.py --tokenizer out/morph --tokenizer out/bpe \\
      --input ar=heldout_ar.txt en=heldout_en.jsonl --gold-segmentation gold.tsv --plot cmp.png --json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ar.tokenizers.evaluate import evaluate_tokenizers, format_table, plot_summary  # noqa: E402
from megatron_ar.tokenizers.io import TextInputError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", action="append", required=True,
                   help="directory with tokenizer.json (or the file); repeat to compare")
    p.add_argument("--input", nargs="+", required=True, help="text/JSONL files, optionally CATEGORY=PATH")
    p.add_argument("--gold-segmentation", default=None, help="TSV: word<TAB>m1 m2 m3")
    p.add_argument("--text-key", default="text")
    p.add_argument("--plot", default=None, help="write a PNG comparison plot here")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    a = p.parse_args(argv)
    try:
        summary = evaluate_tokenizers(a.tokenizer, a.input, a.gold_segmentation, a.text_key,
                                      show_progress=True)
    except (TextInputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary))
    if a.plot:
        plot_summary(summary, a.plot)
        print(f"plot: {a.plot}")
    if a.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

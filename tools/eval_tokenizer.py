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
import sys

from megatron_ar.io.outputs import check_file_output
from megatron_ar.tokenizers.evaluate import (
    evaluate_tokenizers,
    format_table,
    plot_summary,
    require_pyplot,
)
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__, full_doc=True)
    p.add_argument("--tokenizer", action="append", required=True,
                   help="directory with tokenizer.json (or the file); repeat to compare")
    p.add_argument("--input", nargs="+", required=True, help="text/JSONL files, optionally CATEGORY=PATH")
    p.add_argument("--gold-segmentation", default=None, help="TSV: word<TAB>m1 m2 m3")
    p.add_argument("--text-key", default="text")
    p.add_argument("--plot", default=None, help="write a PNG comparison plot here")
    a = p.parse_args(argv)
    if a.plot:
        require_pyplot()  # before the evaluation, not after it
        check_file_output(a.plot, overwrite=True, key="--plot")
    summary = evaluate_tokenizers(a.tokenizer, a.input, a.gold_segmentation, a.text_key,
                                  show_progress=True)
    print(format_table(summary))
    if a.plot:
        plot_summary(summary, a.plot)
        print(f"plot: {a.plot}")
    if a.json:
        emit_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

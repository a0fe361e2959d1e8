#!/usr/bin/env python3
"""Combine byte-level BPE tokenizers (e.g. a 32K English/code one and a 45K Arabic one) into one
of a target size, pruning the least used merges while keeping the vocabulary closed under
merges. Thin CLI over megatron_ar.tokenizers.merge (design notes there).

Example (Fanar: 32K en/code + 45K ar -> 76,800):
  python tools/merge_tokenizers.py --tokenizer out/en32k --tokenizer out/ar45k \\
      --corpus en_sample.jsonl code_sample.txt --corpus ar_sample.txt \\
      --target-vocab-size 76800 --output out/merged --json
"""
import sys

from megatron_ar.tokenizers.merge import MergeConfig, merge_tokenizers
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__, full_doc=True)
    p.add_argument("--tokenizer", action="append", required=True, help="source tokenizer dir (repeat)")
    p.add_argument("--corpus", action="append", nargs="+", default=None,
                   help="files scoring the merges of the tokenizer at the same position (repeat "
                        "once per --tokenizer); without it merges are scored by rank")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per tokenizer")
    p.add_argument("--target-vocab-size", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--max-docs", type=int, default=20000, help="documents read per corpus")
    p.add_argument("--overwrite", action="store_true",
                   help="replace tokenizer files already in --output (other files are kept)")
    a = p.parse_args(argv)
    summary = merge_tokenizers(MergeConfig(
        tokenizers=a.tokenizer, output=a.output, target_vocab_size=a.target_vocab_size,
        corpora=a.corpus, weights=a.weights, max_docs=a.max_docs, overwrite=a.overwrite))
    if a.json:
        emit_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Train a byte-level BPE or MorphBPE tokenizer (thin CLI over megatron_ar.tokenizers.morphbpe).

Example:
  python tools/train_tokenizer.py --input ar=hadith.txt en=docs.jsonl --algorithm morph-bpe \\
      --vocab-size 76800 --output out/tok --sample ar=0.35 en=0.30 code=0.15 math=0.15 classical=0.05 --json
"""
import sys

from megatron_ar.tokenizers.morphbpe import (
    DEFAULT_SPECIAL_TOKENS, TrainConfig, parse_sample_specs, train_tokenizer,
)
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__, full_doc=True)
    p.add_argument("--input", nargs="+", required=True,
                   help="plain-text (one document per line) or JSONL ('text' key) files; "
                        "CATEGORY=PATH sets the category")
    p.add_argument("--algorithm", choices=["bpe", "morph-bpe"], default="morph-bpe")
    p.add_argument("--vocab-size", type=int, required=True, help="multiple of 1024")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--segmenter", choices=["builtin", "farahidi"], default="builtin")
    p.add_argument("--special-tokens", nargs="*", default=list(DEFAULT_SPECIAL_TOKENS))
    p.add_argument("--reserved", type=int, default=64, help="reserved special-token slots")
    p.add_argument("--model-vocab-size", type=int, default=None,
                   help="cap on the learned ids (0..N-1); the rest up to --vocab-size becomes "
                        "reserved slots (autoresearch-v2: 32000 of 32768)")
    p.add_argument("--specials-at-top", action="store_true",
                   help="special tokens take the last ids, after the reserved slots "
                        "(autoresearch-v2's layout), not the ids right after the learned ones")
    p.add_argument("--sample", nargs="*", default=[], metavar="CATEGORY=RATIO")
    p.add_argument("--max-chars", type=int, default=None, help="cap on training characters")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-key", default="text")
    p.add_argument("--overwrite", action="store_true",
                   help="replace tokenizer files already in --output (other files are kept)")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        inputs=a.input, output=a.output, algorithm=a.algorithm, vocab_size=a.vocab_size,
        segmenter=a.segmenter, special_tokens=tuple(a.special_tokens), reserved=a.reserved,
        model_vocab_size=a.model_vocab_size, specials_at_top=a.specials_at_top,
        sample=parse_sample_specs(a.sample), min_frequency=a.min_frequency,
        max_chars=a.max_chars, seed=a.seed, text_key=a.text_key, show_progress=True,
        overwrite=a.overwrite,
    )
    summary = train_tokenizer(cfg)
    if a.json:
        emit_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

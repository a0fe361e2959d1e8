#!/usr/bin/env python3
"""Print document i of a Megatron indexed dataset: its token ids and, given the tokenizer flags
of preprocess_data.py, the detokenized text. Thin CLI over megatron_ar.data.indexed.

Example: python tools/dump_document.py data/ar_text_document 12 \
             --tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/
"""
import sys

from megatron_ar.data.indexed import dump_document, tokenizer_from_flags
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main(errors=(IndexError,))
def main(argv=None):
    p = parser(__doc__, full_doc=True)
    p.add_argument("prefix", help="dataset prefix (with or without .bin/.idx)")
    p.add_argument("index", type=int, help="document index (negative counts from the end)")
    p.add_argument("--tokenizer-type", default=None)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--keep-special", action="store_true", help="keep special tokens (EOD...)")
    p.add_argument("--ids", action="store_true", help="also print the token ids")
    a = p.parse_args(argv)
    tok = (tokenizer_from_flags(a.tokenizer_type, a.tokenizer_model, a.vocab_file,
                                a.merge_file) if a.tokenizer_type else None)
    d = dump_document(a.prefix, a.index, tok, keep_special=a.keep_special)
    if a.json:
        emit_json(d)
        return 0
    print(f"# {d['prefix']} document {d['document']}: {d['tokens']} tokens", file=sys.stderr)
    if "text" in d:
        print(d["text"])
    if a.ids or "text" not in d:
        print(" ".join(map(str, d["ids"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

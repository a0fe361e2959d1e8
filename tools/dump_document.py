#!/usr/bin/env python3
"""Print document i of a Megatron indexed dataset: its token ids and, given the tokenizer flags
of preprocess_data.py, the detokenized text. Thin CLI over megatron_ar.data.indexed.

Example: python tools/dump_document.py data/ar_text_document 12 \
             --tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/
"""
import argparse
import json
import sys

from megatron_ar.data.indexed import dump_document, tokenizer_from_flags


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (with or without .bin/.idx)")
    p.add_argument("index", type=int, help="document index (negative counts from the end)")
    p.add_argument("--tokenizer-type", default=None)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--keep-special", action="store_true", help="keep special tokens (EOD...)")
    p.add_argument("--ids", action="store_true", help="also print the token ids")
    p.add_argument("--json", action="store_true", help="one JSON object on the last stdout line")
    a = p.parse_args(argv)
    try:
        tok = (tokenizer_from_flags(a.tokenizer_type, a.tokenizer_model, a.vocab_file,
                                    a.merge_file) if a.tokenizer_type else None)
        d = dump_document(a.prefix, a.index, tok, keep_special=a.keep_special)
    except (ValueError, FileNotFoundError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    print(f"# {d['prefix']} document {d['document']}: {d['tokens']} tokens", file=sys.stderr)
    if "text" in d:
        print(d["text"])
    if a.ids or "text" not in d:
        print(" ".join(map(str, d["ids"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

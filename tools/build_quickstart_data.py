#!/usr/bin/env python3
"""Build the CPU quickstart's data from locally installed real text: a mixed Arabic / English /
code corpus, a MorphBPE tokenizer, ``.bin/.idx`` datasets and the Arabic cloze task
(``megatron_ar.training.quickstart.build_quickstart_data``). Finished outputs are reused.

    python tools/build_quickstart_data.py --out .cache/quickstart [--json]
"""
import os
import sys

from megatron_ar.training.quickstart import build_quickstart_data
from megatron_ar.training.tasks import build_arabic_cloze
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", default=".cache/quickstart")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--n-ar", type=int, default=1500, help="Arabic training documents")
    ap.add_argument("--n-en", type=int, default=1500, help="English training documents")
    ap.add_argument("--n-code", type=int, default=40, help="Python source files")
    args = ap.parse_args(argv)
    print(f"building corpus, tokenizer and datasets under {args.out} ...", flush=True)
    out = build_quickstart_data(args.out, args.vocab_size, n_ar=args.n_ar, n_en=args.n_en,
                                n_code=args.n_code)
    cloze = os.path.join(args.out, "quran_cloze.jsonl")
    if not os.path.isfile(cloze):
        build_arabic_cloze(cloze, "quran", n=200)
    out["cloze"] = cloze
    for k, v in out.items():
        print(f"  {k}: {v}")
    if args.json:
        emit_json(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

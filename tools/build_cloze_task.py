#!/usr/bin/env python3
"""Generate the example Arabic cloze multiple-choice task (JSONL {query, choices, gold}) from
installed Quran/hadith text (``megatron_ar.training.tasks.build_arabic_cloze``); the output is
generated, never committed.

    python tools/build_cloze_task.py --source quran --out examples/eval/quran_cloze.jsonl
"""
import sys

from megatron_ar.training.tasks import build_arabic_cloze
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--source", choices=["quran", "hadith"], default="quran")
    ap.add_argument("--out", default="examples/eval/quran_cloze.jsonl")
    ap.add_argument("-n", type=int, default=200, help="number of items")
    ap.add_argument("--num-choices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    path = build_arabic_cloze(args.out, args.source, args.n, args.num_choices, args.seed)
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    summary = {"path": path, "items": n, "source": args.source}
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {n} items to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

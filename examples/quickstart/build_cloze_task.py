"""Generate the example Arabic cloze multiple-choice task (JSONL {query, choices, gold}) from
installed Quran/hadith text (``examples.quickstart.data.build_arabic_cloze``); the output is
generated, never committed.

    python -m examples.quickstart.build_cloze_task --source quran --out examples/eval/quran_cloze.jsonl
"""
import argparse
import json
import sys

from examples.quickstart.data import CLOZE_SOURCES, build_arabic_cloze


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=CLOZE_SOURCES, default="quran")
    ap.add_argument("--out", default="examples/eval/quran_cloze.jsonl")
    ap.add_argument("-n", type=int, default=200, help="number of items")
    ap.add_argument("--num-choices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args(argv)
    path = build_arabic_cloze(args.out, args.source, args.n, args.num_choices, args.seed)
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    summary = {"path": path, "items": n, "source": args.source}
    print(json.dumps(summary, ensure_ascii=False) if args.json else f"wrote {n} items to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

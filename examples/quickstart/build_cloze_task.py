"""Generate the example Arabic cloze multiple-choice task (JSONL {query, choices, gold}) from
installed Quran/hadith text (``examples.quickstart.data.build_arabic_cloze``); the output is
generated, never committed.

    python -m examples.quickstart.build_cloze_task --source quran --out examples/eval/quran_cloze.jsonl

Follows the tools' conventions (``tools/_cli.py``): bad input is one ``error:`` line and exit 2,
an existing ``--out`` is refused unless ``--overwrite``, the file is written atomically.
"""
import os
import sys

from examples.quickstart.data import CLOZE_SOURCES, build_arabic_cloze
from megatron_ar.io.outputs import check_file_output
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--source", choices=CLOZE_SOURCES, default="quran")
    ap.add_argument("--out", default="examples/eval/quran_cloze.jsonl")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ap.add_argument("-n", type=int, default=200,
                    help="number of items (fewer when the source has fewer usable texts)")
    ap.add_argument("--num-choices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    check_file_output(args.out, overwrite=args.overwrite, key="--out")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"--out {args.out}: its folder {parent} does not exist")
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

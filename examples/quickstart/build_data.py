"""Build the CPU quickstart's data from locally installed real text: a mixed Arabic / English /
code corpus, a MorphBPE tokenizer, ``.bin/.idx`` datasets and the Arabic cloze task
(``examples.quickstart.data.build_quickstart_data``). Finished outputs are reused.

    python -m examples.quickstart.build_data --out .cache/quickstart [--json]   # from the repo root
"""
import argparse
import json
import sys

from examples.quickstart.data import build_quickstart_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".cache/quickstart")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--n-ar", type=int, default=1500, help="Arabic training documents")
    ap.add_argument("--n-en", type=int, default=1500, help="English training documents")
    ap.add_argument("--n-code", type=int, default=40, help="Python source files")
    ap.add_argument("--n-valid", type=int, default=None,
                    help="held-out documents per category (default: the builder's)")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args(argv)
    print(f"building corpus, tokenizer and datasets under {args.out} ...", flush=True)
    sizes = dict(n_ar=args.n_ar, n_en=args.n_en, n_code=args.n_code)
    if args.n_valid is not None:
        sizes["n_valid"] = args.n_valid
    out = build_quickstart_data(args.out, args.vocab_size, **sizes)
    for k, v in out.items():
        print(f"  {k}: {v}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

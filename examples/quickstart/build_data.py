"""Build the CPU quickstart's data from locally installed real text: a mixed Arabic / English /
code corpus, a MorphBPE tokenizer, ``.bin/.idx`` datasets and the Arabic cloze task
(``examples.quickstart.data.build_quickstart_data``). Finished outputs are reused when they were
built with the same settings (``settings.json`` in ``--out``); other settings are refused.

    python -m examples.quickstart.build_data --out .cache/quickstart [--json]   # from the repo root
"""
import sys

from examples.quickstart.data import build_quickstart_data
from megatron_ar_tools._cli import cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", default=".cache/quickstart")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--n-ar", type=int, default=1500, help="Arabic training documents")
    ap.add_argument("--n-en", type=int, default=1500, help="English training documents")
    ap.add_argument("--n-code", type=int, default=40, help="Python source files")
    ap.add_argument("--n-valid", type=int, default=None,
                    help="held-out documents per category (default: the builder's)")
    args = ap.parse_args(argv)
    for key in ("vocab_size", "n_ar", "n_en", "n_code", "n_valid"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')}: must be >= 1, got {value}")
    print(f"building corpus, tokenizer and datasets under {args.out} ...", flush=True)
    sizes = dict(n_ar=args.n_ar, n_en=args.n_en, n_code=args.n_code)
    if args.n_valid is not None:
        sizes["n_valid"] = args.n_valid
    out = build_quickstart_data(args.out, args.vocab_size, **sizes)
    for k, v in out.items():
        print(f"  {k}: {v}")
    if args.json:
        emit_json(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score JSONL records with a KenLM model: document perplexity into quality_signals
(megatron_ar.text.perplexity), normalised as the model was trained (CCNet, as the public
edugp/kenlm Wikipedia models that Fanar used).

    python tools/perplexity.py --input 'ar/*.jsonl.gz' --output-dir scored/ \
        --model ar.arpa.bin --sp-model ar.sp.model [--signal perplexity] [--workers 8] [--json]

Filter on it with filter_data rules, e.g. {signal: perplexity, max_percentile: 95}.
"""
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.perplexity import PerplexityConfig, perplexity_files
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary, parser, shard_spec


@cli_main
def main(argv=None):
    p = parser(__doc__)
    add_shard_args(p)
    p.add_argument("--model", required=True, help="KenLM model (ARPA or binary)")
    p.add_argument("--sp-model", default=None,
                   help="SentencePiece model the KenLM model was trained on (edugp/kenlm)")
    p.add_argument("--no-ccnet-normalize", action="store_true",
                   help="score the raw text (a model trained without CCNet normalisation)")
    p.add_argument("--signal", default="perplexity", help="quality_signals key to write")
    p.add_argument("--text-key", default="text")
    a = p.parse_args(argv)
    cfg = PerplexityConfig(model=a.model, sp_model=a.sp_model,
                           ccnet_normalize=not a.no_ccnet_normalize, signal=a.signal,
                           text_key=a.text_key)
    s = perplexity_files(expand_inputs(a.input), a.output_dir, cfg, workers=a.workers,
                         on_error=a.on_error, resume=not a.no_resume,
                         progress=not a.no_progress, overwrite=a.overwrite, shard=shard_spec(a))
    s.pop("log_ppl_sum", None)
    emit_summary("perplexity", s, a.json)


if __name__ == "__main__":
    sys.exit(main())

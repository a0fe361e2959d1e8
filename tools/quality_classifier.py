"""Train a document quality classifier on annotations and score corpora with it
(megatron_ar.text.classifier): a fastText classifier (DCLM) or a head on a frozen HF encoder's
mean-pooled embeddings (FineWeb-Edu, Fanar's education classifier).

    python tools/quality_classifier.py train --annotations ann.jsonl --output edu_clf/ \
        --backend fasttext | --backend hf --encoder bge-m3/ [--head linear|mlp] \
        [--holdout-fraction 0.1] [--seed 0] [--json]
    python tools/quality_classifier.py score --model edu_clf/ --input 'ar/*.jsonl.gz' \
        --output-dir scored/ [--fields score|probs|both] [--prefix classifier] [--json]

Annotations are JSONL lines {"text": ..., "score": 0-5 (or 0/1)}. Scores land in
quality_signals as classifier_score (expected score) and classifier_p<label>; filter with
filter_data rules, e.g. {signal: classifier_score, min: 1.5} (Fanar drops scores 0 and 1).
"""
import argparse
import sys

from megatron_ar.io.records import expand_inputs
from megatron_ar.text.classifier import ScoreConfig, TrainConfig, score_files, train_classifier
from megatron_ar_tools import _cli
from megatron_ar_tools._cli import add_shard_args, cli_main, emit_summary


def _train(a) -> None:
    cfg = TrainConfig(annotations=tuple(expand_inputs(a.annotations)), output=a.output,
                      backend=a.backend, encoder=a.encoder, head=a.head,
                      hidden_size=a.hidden_size, epochs=a.epochs, lr=a.lr,
                      weight_decay=a.weight_decay, batch_size=a.batch_size,
                      max_length=a.max_length, dim=a.dim, word_ngrams=a.word_ngrams,
                      threads=a.threads, holdout_fraction=a.holdout_fraction, seed=a.seed,
                      bins=a.bins, text_key=a.text_key, score_key=a.score_key,
                      overwrite=a.overwrite)
    s = train_classifier(cfg, progress=not a.no_progress)
    if a.json:
        _cli.emit_json(s)
        return
    h = s.get("holdout") or {}
    flat = {k: v for k, v in s.items() if k not in ("holdout",)}
    flat.update({k if k.startswith("holdout") else f"holdout_{k}": v for k, v in h.items()
                 if k != "reliability"})
    emit_summary("quality_classifier train", flat, False)


def _score(a) -> None:
    cfg = ScoreConfig(model=a.model, prefix=a.prefix, fields=a.fields, batch_size=a.batch_size,
                      text_key=a.text_key)
    shard = _cli.shard_spec(a)  # --shard-index/--num-shards (Slurm array defaults)
    s = score_files(expand_inputs(a.input), a.output_dir, cfg, workers=a.workers,
                    on_error=a.on_error, resume=not a.no_resume, progress=not a.no_progress,
                    overwrite=a.overwrite, shard=shard)
    emit_summary("quality_classifier score", s, a.json)


@cli_main
def main(argv=None):
    # --json/--debug belong to each sub-command (argparse lets a sub-parser's defaults override
    # a top-level flag given before the sub-command)
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on annotations, report held-out calibration")
    _cli.add_json(t)
    _cli.add_debug(t)
    t.add_argument("--annotations", nargs="+", required=True, metavar="GLOB",
                   help='JSONL files of {"text": ..., "score": 0-5}')
    t.add_argument("--output", required=True, help="model folder (written atomically)")
    t.add_argument("--overwrite", action="store_true", help="replace a model in --output")
    t.add_argument("--backend", choices=("fasttext", "hf"), default="fasttext")
    t.add_argument("--encoder", help="--backend hf: local HF encoder folder (AutoModel)")
    t.add_argument("--head", choices=("linear", "mlp"), default="linear",
                   help="--backend hf: logistic regression or one hidden layer")
    t.add_argument("--hidden-size", type=int, default=256, help="--head mlp width")
    t.add_argument("--epochs", type=int, default=None,
                   help="head steps (hf, default 300) or fastText epochs (default 25)")
    t.add_argument("--lr", type=float, default=None, help="default 1e-2 (hf) / 0.5 (fastText)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=32, help="encoder batch (hf)")
    t.add_argument("--max-length", type=int, default=512, help="encoder tokens per doc (hf)")
    t.add_argument("--dim", type=int, default=64, help="fastText vector size")
    t.add_argument("--word-ngrams", type=int, default=2, help="fastText word n-grams")
    t.add_argument("--threads", type=int, default=1,
                   help="fastText threads (>1 is faster but not reproducible)")
    t.add_argument("--holdout-fraction", type=float, default=0.1,
                   help="stratified held-out share for calibration (0: none)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bins", type=int, default=10, help="ECE / reliability bins")
    t.add_argument("--text-key", default="text")
    _cli.add_progress(t)
    t.add_argument("--score-key", default="score")
    s = sub.add_parser("score", help="add classifier scores to quality_signals")
    _cli.add_json(s)
    _cli.add_debug(s)
    add_shard_args(s)
    s.add_argument("--model", required=True, help="folder written by train")
    s.add_argument("--fields", choices=("score", "probs", "both"), default="both",
                   help="expected score, P(label) fields, or both")
    s.add_argument("--prefix", default="classifier",
                   help="signal name prefix (must start with 'classifier')")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--text-key", default="text")
    a = p.parse_args(argv)
    (_train if a.command == "train" else _score)(a)


if __name__ == "__main__":
    sys.exit(main())

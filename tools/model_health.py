"""Model-health report of a checkpoint: weight histograms, singular-value spectra and effective
rank, block-to-block similarity, embedding PCA by script, sparsity and dead units
(megatron_ar.checkpoint.health).

    python tools/model_health.py CHECKPOINT --out DIR [--tokenizer DIR] [--no-plots] [--json]

CHECKPOINT is an HF directory (safetensors) or a Megatron checkpoint written by
tools/checkpoint/convert.py or training; it is read one tensor at a time.
"""
import sys

from megatron_ar.checkpoint.health import HealthConfig, model_health
from megatron_ar_tools._cli import cli_main, emit_summary, parser


@cli_main
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output folder (health.json and PNGs)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder for the embedding PCA (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.add_argument("--no-plots", action="store_true", help="write health.json only")
    p.add_argument("--max-svd-rows", type=int, default=HealthConfig.max_svd_rows)
    p.add_argument("--sketch-size", type=int, default=HealthConfig.sketch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = HealthConfig(max_svd_rows=a.max_svd_rows, sketch_size=a.sketch_size, seed=a.seed,
                       plots=not a.no_plots)
    s = model_health(a.checkpoint, a.out, cfg, tokenizer=a.tokenizer, overwrite=a.overwrite,
                     progress=not a.no_progress)
    pca = s["embedding_pca"] or {}
    table = {"tensors": s["tensors"], "parameters": s["parameters"], "layers": len(s["layers"]),
             "max adjacent block similarity": max(s["adjacent_similarity"], default=None),
             "lowest effective rank (fraction)": s["lowest_effective_rank"][:1],
             "dead rows": s["dead_rows_total"], "exact zeros": s["zeros_total"],
             "embedding scripts": {k: v["count"] for k, v in (pca.get("scripts") or {}).items()},
             "out": s["out"]}
    emit_summary("model health", table, a.json)


if __name__ == "__main__":
    sys.exit(main())

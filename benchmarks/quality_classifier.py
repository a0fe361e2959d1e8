#!/usr/bin/env python3
"""Quality classifiers on the real-text task of the tests (hadith Arabic/English and Python-docs
paragraphs, score 1, against the same paragraphs with shuffled words or repeated boilerplate
lines, score 0): held-out accuracy / ECE / Brier of both back-ends, and scoring throughput per
core (one worker, one thread) against the per-document baseline in the same process:
fastText's single-string ``predict`` per document, and the encoder at batch size 1.

    OMP_NUM_THREADS=1 python benchmarks/quality_classifier.py [--paragraphs 2400] [--json]

The HF back-end runs on a tiny *random* BERT (2 layers, width 32) with a WordPiece tokenizer
trained on the task: its figures show the pipeline, not what a real encoder (BGE-M3) reaches.
"""
import argparse
import json
import os
import tempfile
import time

import _material
from megatron_ar.text.classifier import (QualityClassifier, ScoreConfig, TrainConfig,
                                         _ft_line, score_files, train_classifier)

material = _material.tests_material()  # hadith, Python docs, the task, the tiny encoder


def _write(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _rate(fn, n):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paragraphs", type=int, default=2400)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        recs = material.quality_task(a.paragraphs)
        ann = _write(os.path.join(d, "ann.jsonl"), recs)
        docs = _write(os.path.join(d, "docs.jsonl"), [{"text": r["text"]} for r in recs])
        texts = [r["text"] for r in recs]
        enc = material.tiny_bert_encoder([r["text"] for r in recs[::2][:300]],
                                         os.path.join(d, "enc"))
        runs = {"fasttext": dict(dim=16, epochs=10),
                "hf_linear": dict(backend="hf", encoder=enc),
                "hf_mlp": dict(backend="hf", encoder=enc, head="mlp", hidden_size=16, epochs=50)}
        for name, kw in runs.items():
            cfg = TrainConfig(annotations=(ann,), output=os.path.join(d, name),
                              holdout_fraction=0.2, seed=0, **kw)
            t = time.perf_counter()
            s = train_classifier(cfg)
            h = s["holdout"]
            row = {"train_s": round(time.perf_counter() - t, 2), "holdout_docs": h["holdout_docs"],
                   "accuracy": round(h["accuracy"], 4), "ece_10_bins": round(h["ece"], 4),
                   "brier": round(h["brier"], 4)}
            if name != "hf_mlp":
                sc = score_files([docs], os.path.join(d, name + "_scored"),
                                 ScoreConfig(model=cfg.output), progress=False)
                row["score_docs_per_s_per_core"] = sc["docs_per_s"]
                clf = QualityClassifier.load(cfg.output)
                sub = texts[:400]
                if name == "fasttext":
                    base = _rate(lambda: [clf.ft.f.predict(_ft_line(t) + "\n", -1, 0.0, "strict")
                                          for t in sub], len(sub))
                else:
                    clf.encoder.batch_size = 1
                    base = _rate(lambda: clf.predict_proba(sub), len(sub))
                    clf.encoder.batch_size = 64
                ours = _rate(lambda: clf.predict_proba(sub), len(sub))
                row["predict_docs_per_s"] = round(ours, 1)
                row["baseline_docs_per_s"] = round(base, 1)
                row["speedup_vs_baseline"] = round(ours / base, 2)
            out[name] = row
    out["docs"] = len(recs)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()

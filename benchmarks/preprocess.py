#!/usr/bin/env python3
"""MB/s per worker of tools/preprocess_data.py (megatron_ar) vs a Megatron-LM-style baseline,
same data, tokenizer and flags, in one run; prints the ratio (target: >= 3x per core).

The baseline is Megatron-LM's tools/preprocess_data.py pipeline reduced to its hot loop (written
here, not copied): a multiprocessing.Pool whose initializer builds megatron-core's tokenizer,
``pool.imap(encode, lines, 32)`` where ``encode`` does json.loads + ``tokenizer.tokenize`` per
document, and the parent adding each document to an IndexedDatasetBuilder. Both outputs are
checked to be byte-identical before the figures are printed.

Usage: python benchmarks/preprocess.py [--workers 1] [--repeat 1] [--tokenizer-model DIR]
(default data: Sahih al-Bukhari Arabic + English hadiths as JSONL; default tokenizer: Gemma.)
"""
import argparse
import filecmp
import json
import multiprocessing
import os
import sys
import tempfile
import time

import _material


class _BaselineEncoder:
    """Megatron-LM's Encoder reduced to what the benchmark needs (per-document tokenize)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def initializer(self):
        from megatron_ar.data.preprocess import build_tokenizer

        _BaselineEncoder.tok = build_tokenizer(self.cfg)

    def encode(self, line):
        text = json.loads(line)["text"]
        ids = _BaselineEncoder.tok.tokenize(text)
        lens = [len(ids)] if ids else []
        if ids and self.cfg.append_eod:
            ids = list(ids) + [_BaselineEncoder.tok.eod]
            lens[-1] += 1
        return ids, lens, len(line)


def run_baseline(cfg, path, prefix, workers):
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    enc = _BaselineEncoder(cfg)
    enc.initializer()
    vocab = _BaselineEncoder.tok.vocab_size
    builder = IndexedDatasetBuilder(prefix + "_text_document.bin",
                                    dtype=DType.optimal_dtype(vocab))
    with open(path, encoding="utf-8") as fin:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=enc.initializer)
        for ids, lens, _ in pool.imap(enc.encode, fin, 32):
            builder.add_document(ids, lens)
        pool.close()
        pool.join()
    builder.finalize(prefix + "_text_document.idx")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="repeat the corpus N times")
    ap.add_argument("--tokenizer-type", default="HuggingFaceTokenizer")
    ap.add_argument("--tokenizer-model", default=None)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N hadiths")
    a = ap.parse_args()
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess

    model = a.tokenizer_model or _material.gemma_tokenizer_dir()
    recs = _material.bukhari_records()
    if a.limit:
        recs = recs[: a.limit]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "corpus.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(a.repeat):
                for i, r in enumerate(recs):
                    for t in (r["arabic"], r["english"]["text"]):
                        f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
        mb = os.path.getsize(path) / 1e6
        cfg = PreprocessConfig(input=[path], output_prefix=os.path.join(d, "ours"),
                               tokenizer_type=a.tokenizer_type, tokenizer_model=model,
                               append_eod=True, workers=a.workers)
        t0 = time.perf_counter()
        run_baseline(cfg, path, os.path.join(d, "base"), a.workers)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = preprocess(cfg, resume=False, progress=False)
        t_ours = time.perf_counter() - t0
        same = all(filecmp.cmp(os.path.join(d, f"base_text_document{e}"),
                               os.path.join(d, f"ours_text_document{e}"), shallow=False)
                   for e in (".bin", ".idx"))
    base_mbs = mb / t_base / a.workers
    ours_mbs = mb / t_ours / a.workers
    out = {"input_mb": round(mb, 2), "documents": s["documents"], "tokens": s["tokens"],
           "workers": a.workers, "cpu_count": os.cpu_count(),
           "baseline_s": round(t_base, 2), "ours_s": round(t_ours, 2),
           "baseline_mb_s_per_worker": round(base_mbs, 3),
           "ours_mb_s_per_worker": round(ours_mbs, 3),
           "ratio": round(ours_mbs / base_mbs, 2), "byte_identical": same,
           "tokenizer": f"{a.tokenizer_type}:{os.path.basename(model.rstrip('/'))}"}
    print(f"baseline (Megatron-LM style): {base_mbs:.3f} MB/s per worker ({t_base:.1f} s)")
    print(f"megatron_ar preprocess_data : {ours_mbs:.3f} MB/s per worker ({t_ours:.1f} s)")
    print(f"ratio: {out['ratio']:.2f}x  (target >= 3x)  outputs byte-identical: {same}")
    print(json.dumps(out))
    if not same:
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()

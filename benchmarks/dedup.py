#!/usr/bin/env python3
"""Docs/s per core of megatron_ar's MinHash-LSH dedup (C++ extension) vs datasketch's
MinHashLSH on the same texts and parameters (word 8-gram shingles, 12 bands x 11 rows = 132
permutations), in one run; prints the ratio (target: >= 20x).

Both sides do the whole near-dedup job on already-normalised texts: shingling, hashing, 132
MinHash permutations, LSH banding, and turning candidate pairs into clusters (ours: band keys +
union-find in C++; datasketch: MinHash.update_batch + MinHashLSH.insert, then a query per
document and a union-find). Each side runs on one core (our extension with threads=1). The
cluster agreement between the two is printed as a sanity check. Then, for context, our
end-to-end file pipeline (JSON parsing, normalisation, two passes) is timed on the same corpus.

Usage: python benchmarks/dedup.py [--limit N] [--copies 0.2] [--shingle word|char]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np

import _material


def corpus(limit, copies, seed=0):
    recs = _material.bukhari_records()
    texts = [r["arabic"] for r in recs] + [r["english"]["text"] for r in recs]
    texts = [t for t in texts if t.strip()][: limit or None]
    rng = random.Random(seed)
    extra = []
    for t in rng.sample(texts, int(len(texts) * copies)):  # near copies: ~1% words replaced
        w = t.split()
        for _ in range(max(1, len(w) // 100)):
            w[rng.randrange(len(w))] = rng.choice(w)
        extra.append(" ".join(w))
    return texts + extra


def roots_from_pairs(n, pairs):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def run_datasketch(texts, cfg):
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as exc:
        raise SystemExit("benchmarks/dedup.py compares with datasketch: pip install 'megatron_ar[bench]'") from exc

    from megatron_ar.text.dedup import shingle_set

    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    sigs = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in shingle_set(t, cfg.ngram, cfg.shingle)])
        lsh.insert(i, m)
        sigs.append(m)
    pairs = [(i, j) for i, m in enumerate(sigs) for j in lsh.query(m) if j != i]
    roots = roots_from_pairs(len(texts), pairs)
    return time.perf_counter() - t0, roots


def run_ours(texts, cfg):
    from megatron_ar.text import dedup as D

    t0 = time.perf_counter()
    roots = D.cluster(D.band_keys(texts, cfg), cfg)
    return time.perf_counter() - t0, roots


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="use the first N texts (0: all 14.5k)")
    ap.add_argument("--copies", type=float, default=0.2, help="fraction of near copies added")
    ap.add_argument("--shingle", choices=("word", "char"), default="word")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for the extra multi-threaded run of ours")
    a = ap.parse_args()
    from megatron_ar.text import dedup as D

    if not D.have_extension():
        sys.exit("megatron_ar._ext.dedup is not built: pip install --no-build-isolation -e .")
    raw = corpus(a.limit, a.copies)
    try:
        norm = D._arabic_normalizer()
        arabic = True
    except ImportError:
        norm, arabic = None, False
    texts = [D.dedup_normalize(t, norm, arabic) for t in raw]
    cfg = D.DedupConfig(mode="minhash", shingle=a.shingle, threads=1)
    t_ds, r_ds = run_datasketch(texts, cfg)
    t_us, r_us = run_ours(texts, cfg)
    t_mt, r_mt = run_ours(texts, D.DedupConfig(mode="minhash", shingle=a.shingle,
                                               threads=a.threads))
    assert np.array_equal(r_us, r_mt)
    n = len(texts)
    agree = float((r_us == r_ds).mean())
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "in.jsonl")
        with open(p, "w", encoding="utf-8") as f:
            for i, t in enumerate(raw):
                f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
        t0 = time.perf_counter()
        s = D.dedup_files([p], os.path.join(d, "out.jsonl"), os.path.join(d, "c.jsonl"),
                          D.DedupConfig(mode="all", shingle=a.shingle, normalize=arabic),
                          workers=1, progress=False)
        t_e2e = time.perf_counter() - t0
    out = {
        "docs": n, "shingle": a.shingle, "ngram": cfg.ngram, "bands": cfg.bands, "rows": cfg.rows,
        "datasketch_docs_s_per_core": round(n / t_ds, 1),
        "ours_docs_s_per_core": round(n / t_us, 1),
        "ratio_per_core": round(t_ds / t_us, 1),
        f"ours_docs_s_{a.threads}_threads": round(n / t_mt, 1),
        "ours_end_to_end_docs_s_1_worker": round(n / t_e2e, 1),
        "end_to_end_duplicates": s["duplicates"],
        "duplicates_ours": int((r_us != np.arange(n)).sum()),
        "duplicates_datasketch": int((r_ds != np.arange(n)).sum()),
        "same_cluster_root_fraction": round(agree, 4),
        "cpu_count": os.cpu_count(),
    }
    print(f"datasketch MinHashLSH : {out['datasketch_docs_s_per_core']:>10,.0f} docs/s per core")
    print(f"megatron_ar (C++)     : {out['ours_docs_s_per_core']:>10,.0f} docs/s per core")
    print(f"ratio                 : {out['ratio_per_core']:.1f}x  (target >= 20x)")
    print(f"ours, {a.threads} threads       : {n / t_mt:>10,.0f} docs/s;  end-to-end JSONL "
          f"pipeline (1 worker): {n / t_e2e:,.0f} docs/s")
    print(f"duplicates found: ours {out['duplicates_ours']}, datasketch "
          f"{out['duplicates_datasketch']}; same cluster root for {agree:.2%} of docs")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

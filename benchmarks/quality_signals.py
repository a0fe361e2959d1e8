#!/usr/bin/env python3
"""Throughput of Arabic normalization and quality signals vs straightforward baselines, on the
real Bukhari hadiths, in one process (ratios, not absolute timings, are the figure of merit).

Baselines (what one writes first): normalization as a per-character Python loop over a set of
characters to drop; repetition signals as RedPajama-V2's Counter-of-tuples code with a Python
loop marking duplicated n-gram positions.

    python benchmarks/quality_signals.py [--docs 2000]
"""
import argparse
import json
import sys
import time
import unicodedata
from collections import Counter

import _material
from megatron_ar.text.normalize import DIACRITICS, QURANIC_MARKS, build_normalizer
from megatron_ar.text.signals import compute_signals, normalized_words


def baseline_normalize(text, drop=frozenset(DIACRITICS + QURANIC_MARKS + "\u0640\u200f\u200e")):
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if ch not in drop)


def baseline_ngrams(words):
    out = {}
    total = sum(map(len, words)) or 1
    for n in (2, 3, 4):
        mc = Counter(zip(*[words[i:] for i in range(n)])).most_common(1)
        out[n] = 0.0 if not mc or mc[0][1] <= 1 else sum(map(len, mc[0][0])) * mc[0][1] / total
    for n in range(5, 11):
        grams = list(zip(*[words[i:] for i in range(n)]))
        c = Counter(grams)
        mask = [0] * len(words)
        for i, g in enumerate(grams):
            if c[g] > 1:
                mask[i:i + n] = [1] * n
        out[n] = sum(len(w) for w, m in zip(words, mask) if m) / total
    return out


def timed(fn, items):
    t = time.perf_counter()
    for x in items:
        fn(x)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--docs", type=int, default=2000)
    a = p.parse_args()
    docs = [r["arabic"] for r in _material.bukhari_records()[: a.docs]]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    norm = build_normalizer()
    t_norm = timed(norm, docs)
    t_norm_base = timed(baseline_normalize, docs)
    assert all(norm(d) == baseline_normalize(d) for d in docs[:200])
    words = [normalized_words(d) for d in docs]
    t_sig = timed(compute_signals, docs)
    from megatron_ar.text.signals import _ngram_signals

    t_ng = timed(lambda w: _ngram_signals(w, {}), words)
    t_ng_base = timed(baseline_ngrams, words)
    # long documents (20 hadiths each, ~1,500 words): where web pages sit
    long_words = [sum(words[i:i + 20], []) for i in range(0, len(words), 20)]
    t_ng_long = timed(lambda w: _ngram_signals(w, {}), long_words)
    t_ng_long_base = timed(baseline_ngrams, long_words)
    res = {
        "docs": len(docs), "MB": round(mb, 3),
        "normalize_MB_per_s": round(mb / t_norm, 2),
        "normalize_speedup_vs_char_loop": round(t_norm_base / t_norm, 2),
        "signals_docs_per_s": round(len(docs) / t_sig, 1),
        "signals_MB_per_s": round(mb / t_sig, 3),
        "ngram_signals_speedup_vs_rpv2_counter": round(t_ng_base / t_ng, 2),
        "ngram_signals_speedup_vs_rpv2_counter_long_docs": round(t_ng_long_base / t_ng_long, 2),
    }
    for k, v in res.items():
        print(f"{k:40s} {v}", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

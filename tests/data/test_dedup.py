"""Dedup on real hadith texts with controlled near-copies.

The oracle is the exact Jaccard of the shingle sets, computed here with Python sets; datasketch's
MinHash / MinHashLSH on the same shingles and (bands, rows) is the reference implementation.
"""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from megatron_ar.text import dedup as D

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDIT_RATES = (0.0, 0.003, 0.006, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.25)


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def _edit(words, rate, rng, vocab):
    """Word-level edits (substitute / delete / insert) at ``rate`` per word."""
    out = []
    for w in words:
        if rng.random() >= rate:
            out.append(w)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.choice(vocab))
        elif op == 2:
            out.extend([w, rng.choice(vocab)])
        # op == 1: deletion
    return out


@pytest.fixture(scope="module")
def corpus(bukhari_records):
    """~400 distinct hadiths (>= 60 words) + one near-copy each at a controlled edit rate."""
    rng = random.Random(1234)
    seen, originals = set(), []
    for r in bukhari_records:
        t = " ".join(r["arabic"].split())
        if len(t.split()) >= 60 and t not in seen:
            seen.add(t)
            originals.append(t)
        if len(originals) >= 400:
            break
    vocab = sorted({w for t in originals for w in t.split()})
    variants, rates = [], []
    for i, t in enumerate(originals):
        rate = EDIT_RATES[i % len(EDIT_RATES)]
        v = t if rate == 0.0 else " ".join(_edit(t.split(), rate, rng, vocab))
        if rate == 0.0:
            v = v + " "  # byte-different but the same word shingles
        variants.append(v)
        rates.append(rate)
    return originals, variants, rates


@pytest.fixture(scope="module")
def pairs(corpus):
    """Per designated (original, variant) pair: exact word-8-gram Jaccard."""
    originals, variants, _ = corpus
    return np.array([_jaccard(D.shingle_set(a), D.shingle_set(b))
                     for a, b in zip(originals, variants)])


def _pair_rates(roots, n, jac):
    same = roots[:n] == roots[n:]
    hi, lo = jac >= 0.9, jac <= 0.6
    return same, hi, lo


def test_minhash_recall_and_false_positives(corpus, pairs):
    originals, variants, _ = corpus
    n = len(originals)
    cfg = D.DedupConfig(mode="minhash", normalize=False)
    assert abs(cfg.threshold - 0.7979) < 1e-3  # Fanar: 12 bands x 11 rows
    roots = D.dedup_texts(originals + variants, cfg)
    same, hi, lo = _pair_rates(roots, n, pairs)
    assert hi.sum() >= 60 and lo.sum() >= 60, (hi.sum(), lo.sum())  # the test set covers both
    recall = same[hi].mean()
    fpr = same[lo].mean()
    print(f"pairs J>=0.9: {hi.sum()} recall={recall:.3f}; J<=0.6: {lo.sum()} fpr={fpr:.3f}")
    assert recall >= 0.95
    assert fpr <= 0.05
    # every variant that is kept apart from its original really is dissimilar
    assert pairs[~same].max() < 0.9


def test_jaccard_estimate_matches_exact_and_datasketch(corpus, pairs):
    datasketch = pytest.importorskip("datasketch")
    originals, variants, _ = corpus
    idx = list(range(0, len(originals), 4))
    a = [originals[i] for i in idx]
    b = [variants[i] for i in idx]
    cfg = D.DedupConfig(normalize=False)
    sa, sb = D.minhash_signatures(a, cfg), D.minhash_signatures(b, cfg)
    ours = (sa == sb).mean(axis=1)
    ref = []
    for x, y in zip(a, b):
        m1, m2 = datasketch.MinHash(num_perm=132, seed=1), datasketch.MinHash(num_perm=132, seed=1)
        m1.update_batch([s.encode() for s in D.shingle_set(x)])
        m2.update_batch([s.encode() for s in D.shingle_set(y)])
        ref.append(m1.jaccard(m2))
    true = pairs[idx]
    err_ours, err_ref = np.abs(ours - true).mean(), np.abs(np.array(ref) - true).mean()
    print(f"mean |J_est - J|: ours {err_ours:.4f}, datasketch {err_ref:.4f}")
    # 132 permutations: standard error sqrt(J(1-J)/132) <= 0.044
    assert err_ours < 0.035
    assert err_ours < err_ref + 0.015


def test_lsh_agrees_with_datasketch_minhashlsh(corpus, pairs):
    datasketch = pytest.importorskip("datasketch")
    originals, variants, _ = corpus
    n = len(originals)
    lsh = datasketch.MinHashLSH(num_perm=132, params=(12, 11))
    mh = []
    for i, t in enumerate(originals + variants):
        m = datasketch.MinHash(num_perm=132, seed=1)
        m.update_batch([s.encode() for s in D.shingle_set(t)])
        lsh.insert(i, m)
        mh.append(m)
    ref_same = np.array([(n + i) in lsh.query(mh[i]) for i in range(n)])
    roots = D.dedup_texts(originals + variants, D.DedupConfig(mode="minhash", normalize=False))
    same, hi, lo = _pair_rates(roots, n, pairs)
    print(f"recall ours {same[hi].mean():.3f} datasketch {ref_same[hi].mean():.3f}; "
          f"fpr ours {same[lo].mean():.3f} datasketch {ref_same[lo].mean():.3f}")
    assert ref_same[hi].mean() >= 0.95  # the oracle itself meets the targets on this set
    assert abs(same[hi].mean() - ref_same[hi].mean()) <= 0.05
    assert abs(same[lo].mean() - ref_same[lo].mean()) <= 0.05


@pytest.mark.parametrize("shingle", ["word", "char"])
def test_cpp_and_python_fallback_identical(corpus, shingle):
    if not D.have_extension():
        pytest.skip("megatron_ar._ext.dedup not built")
    originals, variants, _ = corpus
    texts = originals[:60] + variants[:60] + ["", "one", "a\u00a0b\u3000c\x1cd  e"]
    cpp = D.DedupConfig(mode="minhash", shingle=shingle, normalize=False, threads=2)
    py = D.DedupConfig(mode="minhash", shingle=shingle, normalize=False, backend="python")
    kc, kp = D.band_keys(texts, cpp), D.band_keys(texts, py)
    assert np.array_equal(kc, kp)
    assert np.array_equal(D.minhash_signatures(texts[:20], cpp),
                          D.minhash_signatures(texts[:20], py))
    assert np.array_equal(D.hash_texts(texts, cpp), D.hash_texts(texts, py))
    rc, rp = D.cluster(kc, cpp), D.cluster(kc, py)
    assert np.array_equal(rc, rp)
    assert (rc != np.arange(len(texts))).sum() >= 6  # some near copies were clustered
    assert (kc[texts.index("")] == 0).all()  # empty text: no LSH key, never a duplicate


def test_word_split_matches_python_str_split():
    # the C++ word splitter must see the words str.split() sees (NBSP, ideographic space, \x1c)
    t = "a\u00a0b\u3000c\x1cd\u2028e  f\tg\u200bh"
    cfg = D.DedupConfig(ngram=2, shingle="word", normalize=False)
    assert len(D.shingle_set(t, 2)) == len(t.split()) - 1
    sig = D.minhash_signatures([t, " ".join(t.split())], cfg)
    assert (sig[0] == sig[1]).all()


def test_exact_mode(bukhari_records):
    texts = [" ".join(r["arabic"].split()) for r in bukhari_records[1000:1100]]
    texts = list(dict.fromkeys(texts))
    dup = ["  " + texts[3].replace(" ", "\n  ") + "\t", texts[7] + "."]
    roots = D.dedup_texts(texts + dup, D.DedupConfig(mode="exact", normalize=False))
    n = len(texts)
    assert roots[n] == 3  # whitespace-only difference: exact duplicate of texts[3]
    assert roots[n + 1] == n + 1  # one extra character: not an exact duplicate
    assert (roots[:n] == np.arange(n)).all()


def test_exact_mode_normalizes_arabic(bukhari_records):
    pytest.importorskip("megatron_ar.text.normalize")
    from megatron_ar.text.normalize import normalize_arabic

    t = bukhari_records[5]["arabic"]
    plain = normalize_arabic(t)
    assert plain != t  # the hadith is diacritized; its plain copy differs byte-wise
    # a copy typed with unified alef and tatweel (spelling variants folded by the matching key)
    variant = plain.replace("أ", "ا").replace("إ", "ا").replace("الله", "اللـــه")
    assert variant != plain
    other = bukhari_records[6]["arabic"]
    roots = D.dedup_texts([t, plain, variant, other], D.DedupConfig(mode="exact"))
    assert roots.tolist() == [0, 0, 0, 3]
    raw = D.dedup_texts([t, plain, variant, other], D.DedupConfig(mode="exact", normalize=False))
    assert raw.tolist() == [0, 1, 2, 3]


def test_url_mode():
    recs = ["https://Example.com/a/", "https://example.com/a#frag", "https://example.com/b",
            None, None, "http://example.com:80/a?x=1", "http://example.com/a?x=1"]
    texts = [f"text number {i}" for i in range(len(recs))]
    roots = D.dedup_texts(texts, D.DedupConfig(mode="url", normalize=False), urls=recs)
    assert roots.tolist() == [0, 0, 2, 3, 4, 5, 5]


def _write(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def test_cross_dataset_cli(tmp_path, corpus, pairs):
    originals, variants, _ = corpus
    a = [{"id": f"a{i}", "text": t, "metadata": {"url": f"https://site.test/a/{i}"}}
         for i, t in enumerate(originals[:40])]
    near = [i for i in range(40) if pairs[i] >= 0.95]
    assert len(near) >= 6
    b = [{"id": f"b{i}", "text": variants[i]} for i in near]
    b += [{"id": f"b-own{i}", "text": t} for i, t in enumerate(originals[200:230])]
    b += [{"id": "b-url", "text": "غير مكرر أبدا", "metadata": {"url": "https://SITE.test/a/5/"}}]
    _write(tmp_path / "a.jsonl", a)
    _write(tmp_path / "b.jsonl", b)
    out, clu = tmp_path / "kept.jsonl", tmp_path / "clusters.jsonl"
    cmd = [sys.executable, os.path.join(REPO, "tools", "dedup.py"), "--input",
           str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--output", str(out),
           "--clusters", str(clu), "--mode", "all", "--workers", "2", "--no-normalize",
           "--no-progress", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    kept = [json.loads(x)["id"] for x in open(out, encoding="utf-8")]
    clusters = [json.loads(x) for x in open(clu, encoding="utf-8")]
    assert {c["id"]: c["kept"] for c in clusters} == {
        **{f"b{i}": f"a{i}" for i in near}, "b-url": "a5"}
    assert kept == [r["id"] for r in a] + [f"b-own{i}" for i in range(30)]
    assert summary["docs_in"] == len(a) + len(b)
    assert summary["docs_out"] == len(kept)
    assert summary["duplicates"] == len(near) + 1 == len(clusters)
    assert summary["clusters"] == len(near) + (0 if 5 in near else 1)  # a5: b5 and b-url
    assert summary["duplicates_by_mode"]["url"] == 1
    # rerun: refused over the finished output without --overwrite (nothing touched) ...
    before = open(out, "rb").read()
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--output" in refused.stderr and "--overwrite" in refused.stderr
    assert open(out, "rb").read() == before
    # ... and with it both shards resume from their key files and give the same output
    res2 = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert json.loads(res2.stdout.strip().splitlines()[-1])["shards_skipped"] == 2
    assert [json.loads(x)["id"] for x in open(out, encoding="utf-8")] == kept


def test_malformed_line_reported(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1, "text": "سطر سليم"}\n{"id": 2, "text": \n{"id": 3}\n',
                 encoding="utf-8")
    cfg = D.DedupConfig(mode="exact", normalize=False)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: bad_json"):
        D.dedup_files([str(p)], str(tmp_path / "o.jsonl"), None, cfg, progress=False)
    assert not (tmp_path / "o.jsonl").exists()
    s = D.dedup_files([str(p)], str(tmp_path / "o.jsonl"), None, cfg, on_error="skip",
                      progress=False, resume=False)
    assert s["docs_in"] == 1 and s["errors"]["skipped"] == 2
    assert s["errors"]["counts"] == {"bad_json": 1, "missing_key": 1}

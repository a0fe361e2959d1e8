"""merge_tokenizers: English BPE + Arabic MorphBPE -> one closed vocabulary of a target size."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_ar.tokenizers.evaluate import evaluate_tokenizers
from megatron_ar.tokenizers.merge import MergeConfig, merge_tokenizers
from megatron_ar.tokenizers.morphbpe import TrainConfig, bytes_to_unicode, train_tokenizer

pytestmark = pytest.mark.unit

TARGET = 5120


@pytest.fixture(scope="module")
def sources(trained, hadith_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    en = train_tokenizer(TrainConfig(inputs=[str(hadith_corpus["en_train"])], output=str(d / "en2k"),
                                     algorithm="bpe", vocab_size=2048, show_progress=False))
    ar_small = d / "ar_score.txt"
    with open(hadith_corpus["train"], encoding="utf-8") as f:
        ar_small.write_text("".join(f.readlines()[:400]), encoding="utf-8")
    en_small = d / "en_score.jsonl"
    with open(hadith_corpus["en_train"], encoding="utf-8") as f:
        en_small.write_text("".join(f.readlines()[:400]), encoding="utf-8")
    return {"en": en["output"], "ar": trained["morph-bpe"][0], "dir": d,
            "en_corpus": str(en_small), "ar_corpus": str(ar_small)}


@pytest.fixture(scope="module")
def merged(sources):
    out = str(sources["dir"] / "merged")
    s = merge_tokenizers(MergeConfig(tokenizers=[sources["en"], sources["ar"]], output=out,
                                     target_vocab_size=TARGET,
                                     corpora=[[sources["en_corpus"]], [sources["ar_corpus"]]]))
    return out, s


def _model(d):
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in j["model"]["merges"]]
    return j, merges


def test_exact_size_and_closed_under_merges(merged, sources):
    d, s = merged
    j, merges = _model(d)
    vocab = j["model"]["vocab"]
    assert s["vocab_size"] == TARGET and len(vocab) + len(j["added_tokens"]) == TARGET
    base = set(bytes_to_unicode().values())
    built = set(base)
    for a, b in merges:  # every merge's parents exist before it: each token can be built
        assert a in built and b in built, (a, b)
        built.add(a + b)
    assert set(vocab) == built  # no orphan token, no merge producing an unknown token
    assert s["pruned_merges"] > 0
    _, en_m = _model(sources["en"])
    _, ar_m = _model(sources["ar"])
    assert s["union_merges"] == len(set(en_m) | set(ar_m))
    assert s["pruned_merges"] == s["union_merges"] - len(merges)


def test_pruned_merges_are_the_infrequent_ones(merged, sources):
    d, _ = merged
    _, kept = _model(d)
    kept = set(kept)
    _, ar_m = _model(sources["ar"])
    kept_ranks = [r for r, m in enumerate(ar_m) if m in kept]
    pruned_ranks = [r for r, m in enumerate(ar_m) if m not in kept]
    assert pruned_ranks and sum(pruned_ranks) / len(pruned_ranks) > 1.5 * sum(kept_ranks) / len(kept_ranks)
    # single-character tokens (Arabic letters, diacritics) are never pruned
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    for a, b in ar_m:
        try:
            ch = bytes(u2b[c] for c in a + b).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(ch) == 1:
            assert (a, b) in kept, ch


def test_each_language_keeps_its_source_quality(merged, sources, hadith_corpus, tmp_path):
    d, _ = merged
    en_small = tmp_path / "en.jsonl"
    with open(hadith_corpus["en_train"], encoding="utf-8") as f:
        en_small.write_text("".join(f.readlines()[-300:]), encoding="utf-8")
    s = evaluate_tokenizers([sources["en"], sources["ar"], d],
                            [f"ar={hadith_corpus['heldout']}", f"en={en_small}"])
    en, ar, m = s["tokenizers"]
    assert m["fertility"]["ar"] <= 1.05 * ar["fertility"]["ar"]
    assert m["fertility"]["en"] <= 1.05 * en["fertility"]["en"]
    assert m["fertility"]["ar"] < 0.5 * en["fertility"]["ar"]
    assert m["fertility"]["en"] < 0.5 * ar["fertility"]["en"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for t in ["قال رسول الله ﷺ", "The Prophet said: 😀 中文", "وَالْكِتَابِ"]:
        assert tok.decode(tok.encode(t, add_special_tokens=False).ids) == t


def test_rank_scoring_cli_and_errors(sources, tmp_path, repo_root):
    r = subprocess.run(
        [sys.executable, "tools/merge_tokenizers.py", "--tokenizer", sources["en"], "--tokenizer",
         sources["ar"], "--target-vocab-size", "4096", "--output", str(tmp_path / "m"), "--json"],
        cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["vocab_size"] == 4096 and s["scored_by"] == "rank" and s["closed"]
    with pytest.raises(ValueError, match="corpora"):
        merge_tokenizers(MergeConfig(tokenizers=[sources["en"], sources["ar"]], output=str(tmp_path / "x"),
                                     target_vocab_size=4096, corpora=[[sources["en_corpus"]]]))
    with pytest.raises(ValueError, match="target_vocab_size"):
        MergeConfig(tokenizers=[sources["en"], sources["ar"]], output="x", target_vocab_size=5000).validate()

"""eval_tokenizer: MAS against hand-computed values on hand-built tokenizers, fertility against
a direct count, JSON/plot CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_ar.tokenizers.evaluate import (
    evaluate_tokenizers, morph_alignment, project_boundaries, read_gold_tsv, write_gold_tsv,
)
from megatron_ar.tokenizers.io import TextInputError
from megatron_ar.tokenizers.morphbpe import bytes_to_unicode, runtime_pre_tokenizer

pytestmark = pytest.mark.unit


def _bpe_from_tokens(tokens: list[str]):
    """Byte-level BPE whose merges first build every character of the given tokens from its
    bytes, then each token character by character, left to right, token after token; so
    encoding reproduces exactly those tokens where they occur (earlier tokens win)."""
    from tokenizers import Tokenizer, decoders, models

    b2u = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(b2u.values())}
    merges = []

    def add(a, b):
        if a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)

    enc = [["".join(b2u[b] for b in ch.encode("utf-8")) for ch in t] for t in tokens]
    for chars in enc:
        for c in chars:
            for k in range(2, len(c) + 1):
                add(c[:k - 1], c[k - 1])
    for chars in enc:
        for k in range(2, len(chars) + 1):
            add("".join(chars[:k - 1]), chars[k - 1])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = runtime_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    return tok


GOLD = {"والكتاب": ["و", "ال", "كتاب"], "فقال": ["ف", "قال"], "كتاب": ["كتاب"]}


def test_mas_perfect_char_level_and_whole_word():
    perfect = _bpe_from_tokens(["كتاب", "قال", "ال", " و", " ف", " كتاب"])
    assert [perfect.decode([i]) for i in perfect.encode(" والكتاب").ids] == [" و", "ال", "كتاب"]
    r = morph_alignment(perfect, GOLD)
    assert (r.score, r.precision, r.recall, r.exact) == (1.0, 1.0, 1.0, 1.0)

    chars = _bpe_from_tokens([" "] + [c for c in "والكتابفق"] + [" " + c for c in "وفك"])
    r = morph_alignment(chars, GOLD)
    # |G| = 2 + 1 + 0 = 3 ; |T| = 6 + 3 + 3 = 12 (every letter a token) ; TP = 3
    assert r.precision == pytest.approx(3 / 12) and r.recall == 1.0
    assert r.score == pytest.approx(2 * 0.25 / 1.25)
    assert r.exact == pytest.approx(0.0)

    whole = _bpe_from_tokens([" والكتاب", " فقال", " كتاب"])
    r = morph_alignment(whole, GOLD)
    assert (r.precision, r.recall, r.score) == (0.0, 0.0, 0.0)
    assert r.exact == pytest.approx(1 / 3)  # the one-morpheme word is exactly right


def test_mas_frequency_weighting():
    half = _bpe_from_tokens([" فقال", " كتاب", " و", "الكتاب"])   # و|الكتاب: 1 of 2 gold cuts
    assert [half.decode([i]) for i in half.encode(" والكتاب فقال").ids] == [" و", "الكتاب", " فقال"]
    r = morph_alignment(half, GOLD, weights={"والكتاب": 3, "فقال": 1})
    # TP = 3*1 ; |T| = 3*1 + 0 ; |G| = 3*2 + 1*1
    assert r.precision == 1.0 and r.recall == pytest.approx(3 / 7)


def test_project_boundaries_dp_alignment():
    assert project_boundaries("والكتاب", ["و", "ال", "كتاب"]) == {1, 3}
    # analyzer restores the elided alif of the article: ل + ال + ناس over surface للناس
    assert project_boundaries("للناس", ["ل", "ال", "ناس"]) == {1, 2}
    # diacritized gold over an undiacritized surface
    assert project_boundaries("بالله", ["بِ", "اللَّهِ"]) == {1}


def test_gold_tsv_roundtrip_and_errors(tmp_path):
    p = tmp_path / "g.tsv"
    write_gold_tsv(str(p), GOLD)
    assert read_gold_tsv(str(p)) == GOLD
    bad = tmp_path / "bad.tsv"
    bad.write_text("# comment\nوالكتاب\tو ال كتاب\nfaulty line without tab\n", encoding="utf-8")
    with pytest.raises(TextInputError, match=r"bad.tsv:3"):
        read_gold_tsv(str(bad))


def test_fertility_and_usage_match_direct_counts(trained, hadith_corpus, tmp_path):
    from tokenizers import Tokenizer

    d = trained["morph-bpe"][0]
    en = tmp_path / "english.jsonl"  # category from the JSONL metadata, not the file name
    with open(hadith_corpus["en_train"], encoding="utf-8") as f:
        en.write_text("".join(f.readlines()[:300]), encoding="utf-8")
    s = evaluate_tokenizers([d], [f"ar={hadith_corpus['heldout']}", str(en)])
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    r = s["tokenizers"][0]
    assert set(r["fertility"]) == {"ar", "en"} and r["morph_alignment"] is None
    with open(hadith_corpus["heldout"], encoding="utf-8") as f:
        docs = [line.rstrip("\n") for line in f if line.strip()]
    n_tok = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in docs)
    n_words = sum(len(t.split()) for t in docs)
    assert r["fertility"]["ar"] == pytest.approx(n_tok / n_words, abs=1e-4)
    assert r["tokens"]["ar"] == n_tok
    chars = sum(s["categories"][c]["chars"] for c in s["categories"])
    assert r["chars_per_token"] == pytest.approx(chars / sum(r["tokens"].values()), abs=1e-4)
    en_docs = [json.loads(line)["text"] for line in en.read_text(encoding="utf-8").splitlines() if line.strip()]
    used = {i for t in docs + en_docs for i in tok.encode(t, add_special_tokens=False).ids}
    assert r["vocab_usage"] == pytest.approx(len(used) / tok.get_vocab_size(), abs=1e-4)
    assert 0.3 < r["vocab_usage"] <= 1.0


def test_cli_table_json_and_plot(trained, hadith_corpus, builtin_gold, tmp_path, repo_root):
    gold = tmp_path / "gold.tsv"
    write_gold_tsv(str(gold), dict(list(builtin_gold.items())[:2000]))
    png = tmp_path / "cmp.png"
    r = subprocess.run(
        [sys.executable, "tools/eval_tokenizer.py", "--tokenizer", trained["morph-bpe"][0],
         "--tokenizer", trained["bpe"][0], "--input", f"ar={hadith_corpus['heldout']}",
         "--gold-segmentation", str(gold), "--plot", str(png), "--json"],
        cwd=repo_root, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [t["path"] for t in out["tokenizers"]] == [trained["morph-bpe"][0], trained["bpe"][0]]
    # the thin CLI reports what the library computes in-process from the same files
    lib = evaluate_tokenizers([trained["morph-bpe"][0], trained["bpe"][0]],
                              [f"ar={hadith_corpus['heldout']}"], str(gold))
    for t, want in zip(out["tokenizers"], lib["tokenizers"]):
        assert {"path", "vocab_size", "fertility", "chars_per_token", "morph_alignment"} <= set(t)
        assert t["morph_alignment"] == want["morph_alignment"] and t["fertility"] == want["fertility"]
        assert 0 < t["morph_alignment"] <= 1
    assert "fert[ar]" in r.stdout and "MAS" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

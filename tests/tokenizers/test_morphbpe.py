"""MorphBPE training on real Arabic (Sahih al-Bukhari): its defining properties."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from megatron_ar.tokenizers.evaluate import evaluate_tokenizers, write_gold_tsv
from megatron_ar.tokenizers.morphbpe import (
    MORPH_MARK, PRETOKENIZE_PATTERN, TrainConfig, bytes_to_unicode, parse_sample_specs,
    train_tokenizer,
)
from megatron_ar.tokenizers.segmenter import (
    ARABIC_WORD_RE, DIACRITICS, BuiltinSegmenter, strip_diacritics,
)

pytestmark = pytest.mark.unit

VOCAB = 4096


def _learned_tokens(tok_dir):
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        model = json.load(f)["model"]
    base = set(bytes_to_unicode().values())
    merges = model["merges"]
    results = [(m[0] + m[1]) if isinstance(m, list) else m.replace(" ", "") for m in merges]
    return [t for t in results if t not in base]


def _morpheme_pieces(texts, seg):
    """All substrings of the byte-level pre-tokens of ``texts`` with Arabic words cut at the
    morpheme boundaries of ``seg`` (the training segmentation, rebuilt here)."""
    from tokenizers import Regex, pre_tokenizers

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(MORPH_MARK), behavior="removed"),
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    pieces = set()
    for text in texts:
        t = ARABIC_WORD_RE.sub(lambda m: MORPH_MARK.join(seg.segment(m[0])), strip_diacritics(text))
        pieces.update(p for p, _ in pre.pre_tokenize_str(t))
    # every substring of every piece: a token learned inside one piece is one of them
    subs = set()
    for p in pieces:
        n = len(p)
        for i in range(n):
            for j in range(i + 2, n + 1):
                subs.add(p[i:j])
    return subs


def test_learned_tokens_never_cross_a_morpheme_boundary(trained, hadith_corpus):
    corpus = _morpheme_pieces(hadith_corpus["train_texts"],
                              BuiltinSegmenter().fit(hadith_corpus["train_counts"]))
    morph = _learned_tokens(trained["morph-bpe"][0])
    crossing = [t for t in morph if t not in corpus]
    # diacritic tokens are added on purpose (training text has none); everything else must be
    # a substring of a single morpheme piece
    b2u = bytes_to_unicode()
    diacritic_tokens = {"".join(b2u[b] for b in ch.encode()) for ch in DIACRITICS}
    crossing = [t for t in crossing if t not in diacritic_tokens]
    assert len(morph) > 3000
    assert crossing == []
    # the same check is not vacuous: plain BPE on the same text learns cross-boundary tokens
    plain = [t for t in _learned_tokens(trained["bpe"][0]) if t not in diacritic_tokens]
    plain_crossing = [t for t in plain if t not in corpus]
    assert len(plain_crossing) > 300, len(plain_crossing)


def test_alignment_beats_plain_bpe_at_equal_vocab(trained, builtin_gold, hadith_corpus, tmp_path):
    gold = tmp_path / "gold.tsv"
    write_gold_tsv(str(gold), builtin_gold)
    s = evaluate_tokenizers([trained["morph-bpe"][0], trained["bpe"][0]],
                            [f"ar={hadith_corpus['heldout']}"], str(gold))
    morph, plain = s["tokenizers"]
    assert morph["vocab_size"] == plain["vocab_size"] == VOCAB
    # measured (hadith 0..3999 train, 6000.. held out, vocab 4096): MAS 0.69 vs 0.09,
    # fertility 1.67 vs 1.42 (+17.5%)
    assert morph["morph_alignment"] > plain["morph_alignment"] + 0.3
    assert morph["fertility"]["ar"] <= 1.25 * plain["fertility"]["ar"]
    assert morph["fertility"]["ar"] >= plain["fertility"]["ar"]  # alignment costs tokens


def test_alignment_with_farahidi_gold(trained, hadith_corpus, farahidi_segmenter, tmp_path):
    far = farahidi_segmenter
    words = [w for w, _ in hadith_corpus["heldout_counts"].most_common(400)]
    gold = tmp_path / "gold_farahidi.tsv"
    write_gold_tsv(str(gold), {w: far.segment(w) for w in words})
    s = evaluate_tokenizers([trained["morph-bpe"][0], trained["bpe"][0]],
                            [f"ar={hadith_corpus['heldout']}"], str(gold))
    morph, plain = s["tokenizers"]
    assert morph["morph_alignment"] > plain["morph_alignment"] + 0.2


def test_loads_in_transformers_with_same_ids(trained):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = trained["morph-bpe"][0]
    raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(d)
    text = "فقال رسول الله صلى الله عليه وسلم: إنما الأعمال بالنيات. def f(x): return x**2 🙂"
    ids = raw.encode(text, add_special_tokens=False).ids
    assert fast(text, add_special_tokens=False)["input_ids"] == ids
    assert auto(text, add_special_tokens=False)["input_ids"] == ids
    assert len(auto) == VOCAB
    assert auto.bos_token == "<|begin_of_text|>" and auto.eos_token == "<|end_of_text|>"
    assert auto.convert_tokens_to_ids("<|pad|>") == raw.token_to_id("<|pad|>") >= VOCAB - 80
    assert auto.decode(ids) == text


@pytest.mark.parametrize("algo", ["morph-bpe", "bpe"])
def test_byte_level_roundtrip_any_text(trained, algo):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(trained[algo][0], "tokenizer.json"))
    texts = [
        "emoji 😀👍🏽 and 中文分词测试 and 日本語 한국어",
        "وَالْكِتَابِ الْمُبِينِ — diacritized Arabic",
        "tabs\tand\nnewlines\r\n  indented code:\n    return {'a': [1, 2]}\n",
        "\x00\x01 control \u200f\u200e bidi marks \ufeff",
        "ﷺ ﷲ ligatures and Persian گچپژ",
    ]
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False)
        assert tok.get_vocab_size() == VOCAB
        assert all(0 <= i < VOCAB for i in enc.ids)
        assert tok.decode(enc.ids) == t


def test_diacritics_are_single_tokens(trained):
    from tokenizers import Tokenizer

    for algo in ("morph-bpe", "bpe"):
        tok = Tokenizer.from_file(os.path.join(trained[algo][0], "tokenizer.json"))
        for ch in DIACRITICS:
            ids = tok.encode("ب" + ch, add_special_tokens=False).ids
            assert len(ids) == 2, (algo, hex(ord(ch)), ids)
            assert tok.decode(ids[1:]) == ch


def test_vocabulary_layout(trained):
    d, summary = trained["morph-bpe"]
    assert summary["vocab_size"] == VOCAB
    assert summary["learned_tokens"] + summary["diacritic_tokens"] + summary["special_tokens"] \
        + summary["reserved_tokens"] == VOCAB
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    assert all(t["special"] for t in added)
    assert [t["id"] for t in added] == list(range(VOCAB - len(added), VOCAB))
    assert sum(t["content"].startswith("<|reserved_special_token_") for t in added) == summary["reserved_tokens"]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        TrainConfig(inputs=["x"], output=str(tmp_path), vocab_size=4000).validate()
    with pytest.raises(ValueError, match="algorithm"):
        TrainConfig(inputs=["x"], output=str(tmp_path), algorithm="wordpiece").validate()
    with pytest.raises(ValueError, match="ratio"):
        parse_sample_specs(["ar=-1"])
    assert parse_sample_specs(["ar=35", "en=65"]) == {"ar": 0.35, "en": 0.65}


def test_sample_draws_categories_proportionally(hadith_corpus, tmp_path):
    s = train_tokenizer(TrainConfig(
        inputs=[f"ar={hadith_corpus['heldout']}", str(hadith_corpus["en_train"])], output=str(tmp_path / "t"),
        algorithm="bpe", vocab_size=1024, sample={"ar": 0.25, "en": 0.75}, max_chars=400_000,
        show_progress=False))
    got = s["train_chars_by_category"]
    share = got["ar"] / (got["ar"] + got["en"])
    assert abs(share - 0.25) < 0.03, got
    assert 0.8 * 400_000 < got["ar"] + got["en"] < 1.2 * 400_000, got
    with pytest.raises(ValueError, match="code"):
        train_tokenizer(TrainConfig(inputs=[str(hadith_corpus["en_train"])], output=str(tmp_path / "u"),
                                    algorithm="bpe", vocab_size=1024, sample={"code": 1.0},
                                    show_progress=False))


def test_cli_json_summary(hadith_corpus, tmp_path, repo_root):
    out = tmp_path / "cli"
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "tools/train_tokenizer.py", "--input", str(hadith_corpus["heldout"]),
         "--algorithm", "morph-bpe", "--vocab-size", "1024", "--reserved", "8",
         "--output", str(out), "--json"],
        cwd=repo_root, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["vocab_size"] == 1024 and 0 < summary["seconds"] < wall  # seconds, inside the launch
    assert os.path.isfile(out / "tokenizer.json") and os.path.isfile(out / "tokenizer_config.json")
    bad = subprocess.run([sys.executable, "tools/train_tokenizer.py", "--input", str(tmp_path / "missing.txt"),
                          "--vocab-size", "1024", "--output", str(tmp_path / "x")],
                         cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing.txt" in bad.stderr


def test_farahidi_segmenter_plugin_trains(hadith_corpus, farahidi_segmenter, tmp_path):
    small = tmp_path / "ar_small.txt"
    with open(hadith_corpus["heldout"], encoding="utf-8") as f:
        small.write_text("".join(f.readlines()[:8]), encoding="utf-8")
    s = train_tokenizer(TrainConfig(inputs=[str(small)], output=str(tmp_path / "far"), algorithm="morph-bpe",
                                    segmenter="farahidi", vocab_size=1024, min_frequency=1,
                                    show_progress=False))
    assert s["segmenter"] == "farahidi" and s["vocab_size"] == 1024
    assert 0.2 * s["word_types"] < s["segmented_types"] < s["word_types"]
    texts = small.read_text(encoding="utf-8").splitlines()
    corpus = _morpheme_pieces(texts, farahidi_segmenter)
    learned = _learned_tokens(str(tmp_path / "far"))
    b2u = bytes_to_unicode()
    diacritic_tokens = {"".join(b2u[b] for b in ch.encode()) for ch in DIACRITICS}
    assert len(learned) > 100
    assert [t for t in learned if t not in corpus and t not in diacritic_tokens] == []

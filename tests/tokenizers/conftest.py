"""Session fixtures for the tokenizer tests: a real Arabic (hadith) corpus split into training
and held-out files, and MorphBPE / plain BPE tokenizers trained on it at the same vocabulary
size (4096). Built once per session; the whole folder runs in well under 4 minutes."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer
from megatron_ar.tokenizers.segmenter import ARABIC_WORD_RE, BuiltinSegmenter, strip_diacritics

N_TRAIN = 4000          # hadiths used for training (~1.7M characters undiacritized)
HELDOUT_START = 6000    # hadiths 6000.. are never seen in training
VOCAB = 4096


@pytest.fixture(scope="session")
def hadith_corpus(bukhari_records, tmp_path_factory):
    d = tmp_path_factory.mktemp("hadith")
    train = [r["arabic"].replace("\n", " ") for r in bukhari_records[:N_TRAIN]]
    held = [strip_diacritics(r["arabic"].replace("\n", " ")) for r in bukhari_records[HELDOUT_START:]]
    (d / "ar_train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (d / "ar_heldout.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    with open(d / "en_train.jsonl", "w", encoding="utf-8") as f:
        for r in bukhari_records[:N_TRAIN]:
            f.write(json.dumps({"text": r["english"]["text"], "metadata": {"category": "en"}}) + "\n")
    train_counts = Counter()
    for t in train:
        train_counts.update(ARABIC_WORD_RE.findall(strip_diacritics(t)))
    held_counts = Counter()
    for t in held:
        held_counts.update(ARABIC_WORD_RE.findall(t))
    return {"dir": d, "train": d / "ar_train.txt", "heldout": d / "ar_heldout.txt",
            "en_train": d / "en_train.jsonl", "train_counts": train_counts,
            "heldout_counts": held_counts, "train_texts": train}


@pytest.fixture(scope="session")
def trained(hadith_corpus, tmp_path_factory):
    """{'morph-bpe': (dir, summary), 'bpe': (dir, summary)} trained on the same text."""
    out = {}
    for algo in ("morph-bpe", "bpe"):
        d = tmp_path_factory.mktemp(algo)
        s = train_tokenizer(TrainConfig(inputs=[str(hadith_corpus["train"])], output=str(d / "tok"),
                                        algorithm=algo, vocab_size=VOCAB, show_progress=False))
        out[algo] = (str(d / "tok"), s)
    return out


@pytest.fixture(scope="session")
def builtin_gold(hadith_corpus):
    """Gold segmentation of the held-out word types by the built-in segmenter fitted on the
    *training* counts -- i.e. the training segmentation applied to unseen text."""
    seg = BuiltinSegmenter().fit(hadith_corpus["train_counts"])
    return {w: seg.segment(w) for w in hadith_corpus["heldout_counts"]}


@pytest.fixture(scope="session")
def farahidi_segmenter():
    """The optional GPL farahidi plug-in (lexicon load takes a few seconds: shared)."""
    pytest.importorskip("farahidi", reason="farahidi (GPL, optional) not installed")
    from megatron_ar.tokenizers.segmenter import FarahidiSegmenter

    return FarahidiSegmenter()

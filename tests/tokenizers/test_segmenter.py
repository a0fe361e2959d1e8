"""Built-in Arabic clitic segmenter and the farahidi plug-in, on real text."""
from __future__ import annotations

import pytest

from megatron_ar.tokenizers.evaluate import segmentation_agreement
from megatron_ar.tokenizers.segmenter import (
    BuiltinSegmenter, boundaries, get_segmenter, strip_diacritics,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fitted(hadith_corpus):
    return BuiltinSegmenter().fit(hadith_corpus["train_counts"])


@pytest.mark.parametrize("word,expected", [
    ("وبالمدرسة", ["و", "ب", "ال", "مدرسة"]),
    ("لمدرستهم", ["ل", "مدرست", "هم"]),
    ("فسيقولون", ["ف", "س", "يقولون"]),
    ("وللناس", ["و", "ل", "ل", "ناس"]),
    ("كتابهما", ["كتاب", "هما"]),
    ("الكتاب", ["ال", "كتاب"]),
])
def test_rules_without_corpus_counts(word, expected):
    assert BuiltinSegmenter().segment(word) == expected


@pytest.mark.parametrize("word,expected", [
    ("فقال", ["ف", "قال"]),
    ("والله", ["و", "الله"]),          # الله is protected, also behind a proclitic
    ("بالله", ["ب", "الله"]),
    ("الله", ["الله"]),
    ("الذي", ["الذي"]),
    ("كان", ["كان"]),                  # not ك+ان: stem too short behind ب/ك/ل
    ("بكر", ["بكر"]),
    ("كنت", ["كنت"]),
    ("علي", ["علي"]),                  # final ي of a 2-letter stem is a stem letter
    ("وجهه", ["وجه", "ه"]),            # not و+جه+ه: جه is unattested
    ("فهجرته", ["ف", "هجرت", "ه"]),
    ("عليه", ["علي", "ه"]),
    ("لهم", ["ل", "هم"]),              # preposition hosting a pronoun
    ("الحميدي", ["ال", "حميدي"]),      # the article excludes a possessive ي
    ("أخبرني", ["أخبر", "ني"]),
    ("سألت", ["سألت"]),                # past tense, not future س
])
def test_guards_on_hadith_counts(fitted, word, expected):
    assert fitted.segment(word) == expected


def test_concatenation_and_diacritics_on_all_types(fitted, hadith_corpus):
    for w in hadith_corpus["train_counts"]:
        parts = fitted.segment(w)
        assert "".join(parts) == w and all(parts), (w, parts)
    # diacritized words: same boundaries (in letters), marks stay with their letter
    text = hadith_corpus["train_texts"][0]
    for w in text.split():
        bare = strip_diacritics(w)
        if not bare or not bare.isalpha():
            continue
        parts = fitted.segment(w)
        assert "".join(parts) == w
        assert [strip_diacritics(p) for p in parts] == fitted.segment(bare)


def test_boundaries_helper():
    assert boundaries(["و", "ال", "كتاب"]) == [1, 3]
    assert boundaries(["كتاب"]) == []


def test_unknown_segmenter_named():
    with pytest.raises(ValueError, match="nope"):
        get_segmenter("nope")


def test_farahidi_plugin_examples(farahidi_segmenter):
    # farahidi's documented segmentations: وبالمدرسة -> وَبِال + مِدْرَسَة ; لمدرستهم -> لَ + مِدْرَسَة + هُمْ
    assert farahidi_segmenter.segment("وبالمدرسة") == ["و", "ب", "ال", "مدرسة"]
    assert farahidi_segmenter.segment("لمدرستهم") == ["ل", "مدرست", "هم"]
    assert farahidi_segmenter.segment("،") == ["،"]


def test_agreement_with_farahidi_on_hadith(fitted, hadith_corpus, farahidi_segmenter):
    """Held-out hadith words (most frequent 400 types, ~75% of running words): the full
    benchmark (benchmarks/segmenter_agreement.py, 3000 types) measured token-weighted boundary
    F1 0.85, exact match 0.91."""
    held = hadith_corpus["heldout_counts"]
    words = [w for w, _ in held.most_common(400)]
    mine = {w: fitted.segment(w) for w in words}
    ref = {w: farahidi_segmenter.segment(w) for w in words}
    agr = segmentation_agreement(mine, ref, held)
    assert agr["token"]["exact"] > 0.8, agr
    assert agr["token"]["f1"] > 0.75, agr
    # and it is not trivially agreeing: both split a large share of the words
    assert sum(len(v) > 1 for v in ref.values()) > 100
    assert sum(len(v) > 1 for v in mine.values()) > 100

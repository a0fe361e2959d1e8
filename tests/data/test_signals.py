"""Quality signals on small real excerpts, with the expected values worked out by hand.

Excerpts: hadith 1 of Sahih al-Bukhari (diacritized Arabic + its English), and lines of the
Python 3.11 documentation. Each excerpt is checked to be a verbatim substring of the material,
so the tests run on real text; the numbers in the comments are counted by hand from it.
"""
import math
import os
import re
from collections import Counter

import pytest

from megatron_ar.text.signals import SIGNAL_NAMES, SIGNALS, compute_signals, normalized_words

pytestmark = pytest.mark.unit

# "Actions are by intentions, and everyone gets what he intended" (diacritized, one line)
# written with escapes because the corpus orders shadda before the short vowel (not NFC order)
E1 = ("\u0625\u0650\u0646\u0651\u064e\u0645\u064e\u0627 \u0627\u0644\u0652\u0623\u064e\u0639\u0652\u0645\u064e"
      "\u0627\u0644\u064f \u0628\u0650\u0627\u0644\u0646\u0651\u0650\u064a\u0651\u064e\u0627\u062a\u0650\u060c "
      "\u0648\u064e\u0625\u0650\u0646\u0651\u064e\u0645\u064e\u0627 \u0644\u0650\u0643\u064f\u0644\u0651\u0650 "
      "\u0627\u0645\u0652\u0631\u0650\u0626\u064d \u0645\u064e\u0627 \u0646\u064e\u0648\u064e\u0649")
# the isnad (chain of narrators) at the start of hadith 1, up to its fourth "  ،"
E2_WORDS = "حدثنا الحميدي عبد الله بن الزبير قال حدثنا سفيان قال حدثنا يحيى بن سعيد الأنصاري قال أخبرني محمد بن إبراهيم التيمي"
PY_DICT = ("   >>> tel = {'jack': 4098, 'sape': 4139}\n"
           "   >>> tel['guido'] = 4127\n"
           "   >>> tel\n"
           "   {'jack': 4098, 'sape': 4139, 'guido': 4127}")
PY_LOOP = ("   >>> while True:\n"
           "   ...     pass  # Busy-wait for keyboard interrupt (Ctrl+C)\n"
           "   ...")
PY_JS = ("   Module :mod:`json`\n"
         "      The ``json`` module implements a subset of JavaScript syntax which is\n"
         "      sometimes used for configuration, but does not support comments.")
DOCS = "/usr/share/doc/python3.11/html/_sources"


E2 = None  # set from the corpus by the hadith1 fixture


@pytest.fixture(scope="module")
def hadith1(bukhari_records):
    global E2
    h = bukhari_records[0]
    assert E1 in h["arabic"]  # "Actions are by intentions ..." (diacritized, one line)
    k = -1
    for _ in range(4):
        k = h["arabic"].index("  \u060c", k + 1)
    E2 = h["arabic"][:k]
    return h


def _doc(rel):
    path = os.path.join(DOCS, rel)
    if not os.path.isfile(path):
        pytest.skip("python3.11-doc is not installed")
    with open(path, encoding="utf-8") as f:
        return f.read()


def approx(x):
    return pytest.approx(x, abs=2e-6)


def test_every_signal_is_documented_and_present(hadith1):
    s = compute_signals(hadith1["arabic"])
    assert tuple(s) == SIGNAL_NAMES and set(SIGNALS) == set(SIGNAL_NAMES)
    assert len(SIGNAL_NAMES) >= 20
    assert all(isinstance(v, float) for v in s.values())


def test_diacritized_arabic_sentence(hadith1):
    s = compute_signals(E1)
    # words: إنما الأعمال بالنيات وإنما لكل امرئ ما نوى (the Arabic comma is punctuation)
    assert normalized_words(E1) == "إنما الأعمال بالنيات وإنما لكل امرئ ما نوى".split()
    assert s["word_count"] == 8
    assert s["mean_word_length"] == approx(35 / 8)  # 4+7+7+5+3+4+2+3 letters
    assert s["unique_word_fraction"] == 1.0
    assert s["unigram_entropy"] == approx(math.log(8))  # 8 distinct words once each
    # stop words: إنما, وإنما (proclitic و + إنما), ما -> 3 of 8
    assert s["stop_word_fraction"] == approx(3 / 8)
    assert s["arabic_fraction"] == 1.0 and s["farsi_fraction"] == 0.0
    # letters followed by a haraka, word by word: 3+5+4+4+3+3+1+2 = 25 of 35 letters
    assert s["diacritics_fraction"] == approx(25 / 35)
    # raw tokens: 8 words + "،" -> one token without a letter
    assert s["no_alpha_word_fraction"] == approx(1 / 9)
    assert s["sentence_count"] == 1 and s["line_count"] == 1
    assert s["terminal_punctuation_line_fraction"] == 0.0  # ends in a word
    # the same sentence without diacritics has the same word-level signals, and 0 diacritics
    plain = compute_signals("إنما الأعمال بالنيات، وإنما لكل امرئ ما نوى")
    for k in ("word_count", "mean_word_length", "stop_word_fraction", "unigram_entropy"):
        assert plain[k] == s[k]
    assert plain["diacritics_fraction"] == 0.0


def test_isnad_top_ngrams(hadith1):
    assert normalized_words(E2) == E2_WORDS.split()
    s = compute_signals(E2)
    # 21 words: حدثنا الحميدي عبد الله بن الزبير قال حدثنا سفيان قال حدثنا يحيى بن سعيد الأنصاري
    #           قال أخبرني محمد بن إبراهيم التيمي ; letters 5+7+3+4+2+6+3+5+5+3+5+4+2+4+8+3+6+4+2+7+6 = 94
    assert s["word_count"] == 21
    assert s["mean_word_length"] == approx(94 / 21)
    assert s["unique_word_fraction"] == approx(15 / 21)  # حدثنا, بن, قال occur 3 times each
    # the only repeated bigram is "قال حدثنا" (twice): 2 * (3 + 5) letters
    assert s["top_2gram_char_fraction"] == approx(16 / 94)
    assert s["top_3gram_char_fraction"] == 0.0  # "قال حدثنا سفيان" / "قال حدثنا يحيى" differ
    assert s["dupe_5gram_char_fraction"] == 0.0
    assert s["stop_word_fraction"] == 0.0  # narrators' names and verbs only
    assert s["symbol_to_word_ratio"] == 0.0


def test_repeated_lines_and_ngrams(hadith1):
    doc = E1 + "\n" + E1 + "\n" + E2
    s = compute_signals(doc)
    # 37 words, 35 + 35 + 94 = 164 letters
    assert s["word_count"] == 37
    assert s["line_count"] == 3
    assert s["duplicate_line_fraction"] == approx(1 / 3)
    assert s["duplicate_line_char_fraction"] == approx(len(E1) / len(doc))
    assert s["duplicate_paragraph_fraction"] == 0.0  # a single paragraph
    # every bigram of E1 occurs twice; the first one seen wins ties: "إنما الأعمال" = 2*(4+7)
    assert s["top_2gram_char_fraction"] == approx(22 / 164)
    assert s["top_3gram_char_fraction"] == approx(2 * (4 + 7 + 7) / 164)
    assert s["top_4gram_char_fraction"] == approx(2 * (4 + 7 + 7 + 5) / 164)
    # 5..8-grams inside the two copies of E1 repeat: all 16 words of both copies are covered
    for n in (5, 6, 7, 8):
        assert s[f"dupe_{n}gram_char_fraction"] == approx(70 / 164), n
    # a 9-gram would need E1 plus one more identical word: none
    assert s["dupe_9gram_char_fraction"] == s["dupe_10gram_char_fraction"] == 0.0

    para = E1 + "\n\n" + hadith1["english"]["text"] + "\n\n" + E1
    p = compute_signals(para)
    assert p["duplicate_paragraph_fraction"] == approx(1 / 3)
    assert p["duplicate_paragraph_char_fraction"] == approx(len(E1) / len(para))


def test_english_hadith(hadith1):
    en = hadith1["english"]["text"]
    s = compute_signals(en)
    # 47 words ("Allah's" -> allahs, "(ﷺ)" -> ﷺ), 217 letters
    assert s["word_count"] == 47
    assert s["mean_word_length"] == approx(217 / 47)
    # repeats: the x3, for x4, reward/to/what/he/emigrated x2 -> 47 - 10 distinct repeats
    assert s["unique_word_fraction"] == approx(37 / 47)
    # i the of the and will the to what he has so for or for a to his was for what he for
    assert s["stop_word_fraction"] == approx(23 / 47)
    # the only Arabic-script letter is the ligature ﷺ (a presentation form, so "decorated")
    assert s["arabic_fraction"] == approx(1 / 217)
    assert s["decorated_fraction"] == 1.0
    assert s["line_count"] == 4
    # the last line ends in ." and RPv2's marks are . ! ? ” (not the ASCII quote)
    assert s["terminal_punctuation_line_fraction"] == 0.0


def test_python_docs_code():
    assert PY_DICT in _doc("tutorial/datastructures.rst.txt")
    s = compute_signals(PY_DICT)
    # 41 + 26 + 10 + 46 characters + 3 newlines = 126; four braces
    assert s["char_count"] == 126
    assert s["curly_bracket_fraction"] == approx(4 / 126)
    # 24 digits of 96 non-whitespace characters (27 spaces, 3 newlines)
    assert s["digit_fraction"] == approx(24 / 96)
    assert s["arabic_indic_digit_fraction"] == 0.0 and s["arabic_fraction"] == 0.0

    assert PY_LOOP in _doc("tutorial/controlflow.rst.txt")
    s = compute_signals(PY_LOOP)
    assert s["ellipsis_line_fraction"] == approx(1 / 3)  # the last line "   ..."
    # symbols: one "#" and two "..." over 19 raw tokens
    # (>>> while True : | ... pass # Busy - wait for keyboard interrupt ( Ctrl + C ) | ...)
    assert s["symbol_to_word_ratio"] == approx(3 / 19)
    assert s["no_alpha_word_fraction"] == approx(9 / 19)

    assert PY_JS in _doc("library/configparser.rst.txt")
    s = compute_signals(PY_JS)
    assert s["javascript_line_fraction"] == approx(1 / 3)
    assert s["terminal_punctuation_line_fraction"] == approx(1 / 3)


def test_bullets_lorem_digits_farsi_decorated(hadith1):
    lines = ["\u2022 " + E1, "\u25aa " + E1.replace("،", ""), "- " + E1]
    s = compute_signals("\n".join(lines))
    assert s["bullet_line_fraction"] == approx(2 / 3)  # "-" is not a bullet (dialogue dashes)
    lorem = "Lorem ipsum dolor sit amet"
    s = compute_signals(lorem)
    assert s["lorem_ipsum_ratio"] == approx(1 / 26)  # "lorem ipsum dolor sit amet" has 26 chars
    s = compute_signals("سنة ١٤٤٥ و 2024")
    assert s["digit_fraction"] == approx(8 / 12)  # 8 digits, 12 non-space characters
    assert s["arabic_indic_digit_fraction"] == approx(4 / 8)
    s = compute_signals("من کتاب پدر")  # Persian keheh and peh among 10 Arabic-script letters
    assert s["farsi_fraction"] == approx(2 / 9)
    s = compute_signals("الرحمـــن \ufefb")  # 3 tatweels + one lam-alef ligature, 7 letters
    assert s["decorated_fraction"] == approx(4 / 10)


def test_empty_and_degenerate():
    for t in ("", "\n\n", "،،،"):
        s = compute_signals(t)
        assert all(math.isfinite(v) for v in s.values())
        assert s["word_count"] == 0
    s = compute_signals("ha ha ha")
    assert s["top_2gram_char_fraction"] == approx(2 * 4 / 6)  # overlapping occurrences, as RPv2


def test_matches_counter_definition_on_corpus(bukhari_records):
    """The vectorised n-gram code equals RPv2's Counter-based definition on 300 real hadiths."""

    def rpv2(words):
        out = {}
        total = sum(map(len, words))
        for n in (2, 3, 4):
            grams = list(zip(*[words[i:] for i in range(n)]))
            mc = Counter(grams).most_common(1)
            out[f"top_{n}gram_char_fraction"] = (
                0.0 if not mc or mc[0][1] <= 1 else sum(map(len, mc[0][0])) * mc[0][1] / total)
        for n in range(5, 11):
            grams = list(zip(*[words[i:] for i in range(n)]))
            c = Counter(grams)
            mask = [0] * len(words)
            for i, g in enumerate(grams):
                if c[g] > 1:
                    mask[i:i + n] = [1] * n
            out[f"dupe_{n}gram_char_fraction"] = (
                sum(len(w) for w, m in zip(words, mask) if m) / total if total else 0.0)
        return out

    checked = 0
    for r in bukhari_records[:300]:
        text = r["arabic"]
        words = [w for w in re.sub(r"[\u064b-\u0652\u0670\u0640]", "", text).split()]
        words = [re.sub(r"[^\w]", "", w) for w in words]
        words = [w for w in words if w]
        assert words == normalized_words(text)
        s = compute_signals(text)
        for k, v in rpv2(words).items():
            assert s[k] == approx(v), (k, r["id"])
            checked += v > 0
    assert checked > 300  # many non-zero values were compared


def test_no_alpha_words_on_mixed_material():
    """Token-by-token reference (WordPunct-style tokens that keep Arabic marks inside words,
    letter = a word character that is not a digit, "_" or tatweel) on hadith, English, code."""
    import material

    m = material.mixed_texts(100, 100, 10)
    marks = "\u064b-\u065f\u0670\u0610-\u061a\u06d6-\u06ed\u08d3-\u08ff\u0640"
    tok = re.compile(rf"[\w{marks}]+|[^\w\s{marks}]+")
    letter = re.compile(r"[^\W\d_\u0640]")
    for t in m["ar"] + m["en"] + m["code"]:
        toks = tok.findall(t)
        ref = sum(1 for w in toks if not letter.search(w)) / len(toks)
        assert compute_signals(t)["no_alpha_word_fraction"] == approx(ref)

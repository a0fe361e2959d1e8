"""RedPajama-V2-style document quality signals, adapted to Arabic.

:func:`compute_signals` returns a flat ``{name: float}`` dict; :data:`SIGNALS` documents every
signal. Where RedPajama-V2 (RPv2; Weber et al. 2024, github.com/togethercomputer/RedPajama-Data,
``app/src/core/quality_signals``) or Gopher (Rae et al. 2021, as implemented in datatrove's
GopherRepetitionFilter) defines a signal, the definition is theirs; the Arabic adaptations are:

* **Normalized words.** RPv2 lowercases, deletes ASCII punctuation, collapses whitespace and
  applies NFD. We delete *all* Unicode punctuation (``، ؛ ؟ « » …`` too) and Arabic
  diacritics, Quranic marks, tatweel, zero-width and bidi controls, and do not apply NFD (NFD
  splits ``أ`` into alef + combining hamza). So a diacritized hadith and its plain form have
  the same words, word lengths and n-gram signals.
* **Raw words** (RPv2: NLTK ``WordPunctTokenizer``, ``\\w+|[^\\w\\s]+``): combining marks are
  not ``\\w`` in Python, so a diacritized word would be cut at every haraka; our pattern keeps
  marks and tatweel inside words.
* ``no_alpha_word_fraction``: RPv2 tests ``[a-zA-Z]``, which would call every Arabic word
  "non-alphabetic"; we test for any Unicode letter.
* ``stop_word_fraction``: RPv2 counts case-sensitive raw tokens against one language's list; we
  count normalized words against the union of an Arabic and an English list, matching Arabic
  after folding alef variants and alef maqsura, and also when a single proclitic ``و``/``ف``
  precedes the stop word (``وفي``, ``فإن``) because Arabic writes conjunctions attached.
* Sentence and terminal-punctuation marks add ``؟`` and ``۔`` (and ``»`` as a closing quote) to
  RPv2's ``. ! ? ”``; line-end tests ignore trailing bidi marks (hadith text ends lines with
  ``.\\u200f``).
* Arabic-only signals (ours): Arabic-script letter fraction, Persian/Urdu letter fraction,
  decorated-character fraction, diacritized-letter fraction, digit and Arabic-Indic digit
  fractions.
* Document-level line signals: RPv2 emits per-line values for javascript/bullets/terminal
  punctuation; we aggregate them to the fraction of lines (RPv2 lines: every ``\\n``-terminated
  segment, empty ones included, plus a non-empty tail).

Performance (why it looks the way it does): the text is viewed as a numpy array of code points
(one UTF-32 encode); character classes and the word-normalization deletions are lookups in
per-code-point tables over the BMP (astral characters such as emoji count as "other" and are
kept), so counting classes and diacritized letters is a ``bincount`` and a shifted AND; n-gram
signals map words to integer ids and build exact n-gram ids with ``numpy.unique`` over
(``(n-1)-gram id``, ``next word id``) pairs, so n-grams of all sizes cost a few sorts and no
Python loop over positions. Ties for the most frequent n-gram go to the one seen first, as
``collections.Counter.most_common`` does in RPv2.

All signals are defined for empty documents (0.0). ``top_*gram_char_fraction`` can exceed 1 when
occurrences overlap (``"ha ha ha"``), exactly as in RPv2; histograms clip.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from typing import Iterable

import numpy as np

from megatron_ar.text.normalize import BIDI_CONTROLS, DIACRITICS, QURANIC_MARKS, TATWEEL, ZERO_WIDTH

__all__ = ["SIGNALS", "SIGNAL_NAMES", "compute_signals", "normalized_words", "STOP_WORDS_AR",
           "STOP_WORDS_EN", "FARSI_LETTERS", "BULLETS"]

PRECISION = 6

SIGNALS: dict[str, str] = {
    "char_count": "number of characters of the raw text (ccnet_length)",
    "word_count": "number of normalized words (rps_doc_word_count)",
    "line_count": "number of lines: \\n-terminated segments, empty ones included, plus a non-empty tail",
    "sentence_count": "matches of \\b[^.!?؟۔]+[.!?؟۔]* in the raw text (rps_doc_num_sentences + Arabic marks)",
    "mean_word_length": "mean length of normalized words (rps_doc_mean_word_length)",
    "arabic_fraction": "Arabic-script letters / all letters (letters = str.isalpha; marks are not letters)",
    "farsi_fraction": "Persian/Urdu-specific letters (پ چ ژ گ ک ی ٹ ڈ ڑ ں ے ہ ھ ۀ) / Arabic-script letters",
    "decorated_fraction": "(presentation forms + tatweel + Quranic marks) / (Arabic-script letters + those)",
    "diacritics_fraction": "Arabic-script letters directly followed by a diacritic / Arabic-script letters",
    "digit_fraction": "digits (any script) / non-whitespace characters",
    "arabic_indic_digit_fraction": "Arabic-Indic and Extended Arabic-Indic digits / all digits",
    "symbol_to_word_ratio": "occurrences of '#', '...', '…' / raw words (rps_doc_symbol_to_word_ratio)",
    "no_alpha_word_fraction": "raw words without any letter (any script; tatweel is not a letter) / raw words "
                              "(rps_doc_frac_no_alph_words)",
    "unique_word_fraction": "distinct normalized words / normalized words (rps_doc_frac_unique_words)",
    "unigram_entropy": "sum(-c/N log(c/N)) over normalized word counts (rps_doc_unigram_entropy)",
    "stop_word_fraction": "normalized words in the Arabic or English stop list / normalized words",
    "duplicate_line_fraction": "lines (stripped text split on \\n+) equal to an earlier line / lines (Gopher)",
    "duplicate_line_char_fraction": "characters in such duplicate lines / characters (Gopher)",
    "duplicate_paragraph_fraction": "paragraphs (stripped text split on \\n\\n+) equal to an earlier one / "
                                    "paragraphs (Gopher)",
    "duplicate_paragraph_char_fraction": "characters in such duplicate paragraphs / characters (Gopher)",
    **{f"top_{n}gram_char_fraction":
       f"count x characters of the most frequent word {n}-gram / characters of all normalized words "
       f"(0 if no {n}-gram repeats; rps_doc_frac_chars_top_{n}gram)" for n in (2, 3, 4)},
    **{f"dupe_{n}gram_char_fraction":
       f"characters of normalized words covered by any {n}-gram occurring more than once / characters "
       f"of all normalized words (rps_doc_frac_chars_dupe_{n}grams)" for n in range(5, 11)},
    "ellipsis_line_fraction": "lines ending with '...' or '…' / lines (rps_doc_frac_lines_end_with_ellipsis)",
    "bullet_line_fraction": "lines starting with a bullet symbol / lines (rps_lines_start_with_bulletpoint)",
    "terminal_punctuation_line_fraction": "lines ending with . ! ? ” ؟ ۔ » / lines "
                                          "(rps_lines_ending_with_terminal_punctution_mark)",
    "curly_bracket_fraction": "occurrences of '{' or '}' / characters (rps_doc_curly_bracket)",
    "javascript_line_fraction": "lines containing the normalized word 'javascript' / lines "
                                "(rps_lines_javascript_counts, as a fraction of lines)",
    "lorem_ipsum_ratio": "occurrences of 'lorem ipsum' / characters of the normalized text (rps_doc_lorem_ipsum)",
}
SIGNAL_NAMES = tuple(SIGNALS)

# Persian/Urdu letters that Arabic does not use (ڤ and ڨ are Maghrebi Arabic, so not listed).
FARSI_LETTERS = "\u067e\u0686\u0698\u06af\u06a9\u06cc\u0679\u0688\u0691\u06ba\u06d2\u06c1\u06be\u06c0"
# RPv2's bullet symbols plus ● ◆ ► ✓ and the hyphen bullet "- " is *not* included (dialogue dashes).
BULLETS = ("\u2022", "\u2023", "\u25b6", "\u25c0", "\u25e6", "\u25a0", "\u25a1", "\u25aa", "\u25ab",
           "\u2013", "\u25cf", "\u25c6", "\u25ba", "\u2713")
_TERMINAL = (".", "!", "?", "\u201d", "\u061f", "\u06d4", "\u00bb")
_ELLIPSIS = ("...", "\u2026")
_SYMBOLS = ("#", "...", "\u2026")

# Stop words. Arabic: function words (prepositions, pronouns, demonstratives, relatives,
# particles, auxiliaries), written after folding (أ إ آ ٱ -> ا, ى -> ي), without diacritics.
STOP_WORDS_AR = frozenset("""
في من الي علي عن مع حتي منذ مذ عند لدي لدن بين دون نحو حول خلال ضد عبر قبل بعد فوق تحت امام خلف
هذا هذه هذان هاتان هؤلاء ذلك تلك ذلكم اولئك هنا هناك هنالك ثم ثمه
الذي التي اللذان اللتان الذين اللاتي اللواتي اللائي ما من ماذا متي اين كيف كم لماذا اي
هو هي هما هم هن انا نحن انت انتم انتما انتن اياه اياها اياهم اياك اياي
و ف او ام بل لكن لكن لا لم لن ليس ليست ان انه انها انما اذ اذا لو لولا كي لكي حيث قد لقد سوف
كل بعض غير سوي كان كانت كانوا يكون تكون اصبح ظل مازال لازال صار عسي
به بها بهم له لها لهم لنا لك لي منه منها منهم عنه عنها عليه عليها عليهم فيه فيها فيهم اليه اليها
هل الا اما يا ايها اي اذن ايضا جدا فقط كذلك هكذا عندما بينما حين حينما كلما لما
""".split())
STOP_WORDS_EN = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves
""".split())


def _spellings(word: str) -> set[str]:
    """All spellings of a folded stop word: each ا may be written أ إ آ ٱ, each ي as ى."""
    out = {""}
    for ch in word:
        alts = "\u0627\u0623\u0625\u0622\u0671" if ch == "\u0627" else "\u064a\u0649" if ch == "\u064a" else ch
        out = {o + a for o in out for a in alts}
    return out


# Matching folded words against folded lists, precomputed: the list expanded to every spelling,
# so a lookup is one set membership test (no per-word folding).
_STOP_AR_ALL = frozenset(x for w in STOP_WORDS_AR for x in _spellings(w))
_STOP = _STOP_AR_ALL | STOP_WORDS_EN

# --- character classes: per-code-point lookup tables -------------------------------------------
_ARABIC_BLOCKS = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x0870, 0x08FF), (0xFB50, 0xFDFF),
                  (0xFE70, 0xFEFF))
_PRESENTATION = ((0xFB50, 0xFDFF), (0xFE70, 0xFEFF))


def _in(cp: int, ranges) -> bool:
    return any(a <= cp <= b for a, b in ranges)


_CLS = "XAFPMQTEDLW"  # class codes, index = value stored in the lookup table
X_, A_, F_, P_, M_, Q_, T_, E_, D_, L_, W_ = range(len(_CLS))


def _build_tables():
    """Per-code-point lookup tables over the BMP (astral code points use U+FFFF's entries):
    class (A Arabic letter, F Farsi letter, P presentation-form letter, M diacritic, Q Quranic
    mark, T tatweel, E Arabic-Indic digit, D other digit, L other letter, W whitespace, X other)
    and whether word normalization deletes the character."""
    cls = np.zeros(0x10000, dtype=np.uint8)
    delete = np.zeros(0x10000, dtype=bool)
    marks = set(map(ord, DIACRITICS))
    quran = set(map(ord, QURANIC_MARKS))
    farsi = set(map(ord, FARSI_LETTERS))
    for cp in range(0x10000):
        ch = chr(cp)
        if cp in marks:
            c = M_
        elif cp in quran:
            c = Q_
        elif cp == 0x0640:
            c = T_
        elif ch.isspace():
            c = W_
        elif 0x0660 <= cp <= 0x0669 or 0x06F0 <= cp <= 0x06F9:
            c = E_
        elif ch.isdigit():
            c = D_
        elif ch.isalpha():
            if cp in farsi:
                c = F_
            elif _in(cp, _PRESENTATION):
                c = P_
            elif _in(cp, _ARABIC_BLOCKS):
                c = A_
            else:
                c = L_
        else:
            c = X_
        cls[cp] = c
        cat = unicodedata.category(ch)
        # Unicode punctuation + ASCII symbols ($+<=>^`|~ : string.punctuation, as RPv2)
        if cat.startswith("P") or (cp < 0x80 and cat.startswith("S")):
            delete[cp] = True
    for ch in DIACRITICS + QURANIC_MARKS + TATWEEL + ZERO_WIDTH + BIDI_CONTROLS:
        delete[ord(ch)] = True
    delete[0xFFFF] = False  # astral characters (emoji...) are kept
    return cls, delete


_CLASS_LUT, _DELETE_LUT = _build_tables()
_IS_AR_LETTER = np.zeros(len(_CLS), dtype=bool)
_IS_AR_LETTER[[A_, F_, P_]] = True
_MARKS_IN_WORD = DIACRITICS + QURANIC_MARKS + TATWEEL + "\u0653\u0654\u0655"
_RAW_WORD = re.compile(rf"[\w{_MARKS_IN_WORD}]+|[^\w\s{_MARKS_IN_WORD}]+")
# raw tokens without a letter: punctuation/symbol runs, and word runs made of digits, "_" and marks
_PUNCT_TOKEN = re.compile(rf"[^\w\s{_MARKS_IN_WORD}]+")
_NUMERIC_TOKEN = re.compile(rf"(?<![\w{_MARKS_IN_WORD}])[\d_{_MARKS_IN_WORD}]+(?![\w{_MARKS_IN_WORD}])")
_SENTENCE = re.compile(r"\b[^.!?\u061f\u06d4]+[.!?\u061f\u06d4]*")
_LINES_SPLIT = re.compile(r"\n+")
_PARA_SPLIT = re.compile(r"\n{2,}")
_RSTRIP = " \t\r\n\f\v\u00a0" + BIDI_CONTROLS + ZERO_WIDTH


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _normalized_text(cps: np.ndarray) -> str:
    keep = ~_DELETE_LUT[np.minimum(cps, 0xFFFF)]
    return cps[keep].tobytes().decode("utf-32-le", "surrogatepass").lower()


def normalized_words(text: str) -> list[str]:
    """Words after deleting punctuation, diacritics, Quranic marks, tatweel, zero-width/bidi
    characters and lowercasing (see the module docstring)."""
    return _normalized_text(_codepoints(text)).split()


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _dupe_fraction(parts: list[str], total_chars: int) -> tuple[float, float]:
    """Gopher duplicate fraction: elements equal to an earlier element, and their characters."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for p in parts:
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return dup / len(parts), (dup_chars / total_chars if total_chars else 0.0)


def _ngram_signals(words: list[str], out: dict, counts: Counter | None = None) -> None:
    n_words = len(words)
    for n in (2, 3, 4):
        out[f"top_{n}gram_char_fraction"] = 0.0
    for n in range(5, 11):
        out[f"dupe_{n}gram_char_fraction"] = 0.0
    if n_words < 2:
        return
    if counts is None:
        counts = Counter(words)
    if len(counts) == n_words:
        return  # no word repeats, so no n-gram repeats
    vocab = {w: i for i, w in enumerate(counts)}
    ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=n_words)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
    total_chars = int(lengths.sum())
    if total_chars == 0:
        return
    csum = np.concatenate(([0], np.cumsum(lengths)))
    v = np.int64(len(vocab))
    gram = ids  # exact ids of the (n-1)-grams starting at each position
    for n in range(2, 11):
        m = n_words - n + 1
        if m <= 1:
            break
        key = gram[:m] * v + ids[n - 1:n - 1 + m]
        # a lean np.unique(return_index, return_inverse, return_counts): this runs 9 times per
        # document, and numpy's wrapper overhead dominated on short documents
        order = np.argsort(key, kind="stable")
        sk = key[order]
        new = np.empty(m, dtype=bool)
        new[0] = True
        np.not_equal(sk[1:], sk[:-1], out=new[1:])
        gid_sorted = np.cumsum(new) - 1
        inv = np.empty(m, dtype=np.int64)
        inv[order] = gid_sorted
        counts = np.bincount(gid_sorted)
        cmax = int(counts.max())
        if cmax <= 1:
            break  # no n-gram repeats, so no longer one does either
        gram = inv
        if n <= 4:
            first = order[new]  # stable sort: first occurrence of each n-gram
            # ties -> the n-gram that occurs first (Counter.most_common insertion order)
            start = int(first[counts == cmax].min())
            chars = int(csum[start + n] - csum[start])
            out[f"top_{n}gram_char_fraction"] = round(chars * cmax / total_chars, PRECISION)
        else:
            dup_start = (counts[inv] > 1).astype(np.int64)
            # word j is covered if some duplicated n-gram starts in [j-n+1, j]
            c = np.concatenate(([0], np.cumsum(dup_start)))
            j = np.arange(n_words)
            hi = np.minimum(j, m - 1) + 1
            lo = np.clip(j - n + 1, 0, m)
            covered = (c[hi] - c[lo]) > 0
            out[f"dupe_{n}gram_char_fraction"] = round(
                float(lengths[covered].sum()) / total_chars, PRECISION)


def compute_signals(text: str) -> dict[str, float]:
    """All signals of :data:`SIGNALS` for one document, as floats (counts are whole numbers)."""
    r = PRECISION
    out: dict[str, float] = {}
    n_chars = len(text)
    cps = _codepoints(text)
    norm_text = _normalized_text(cps)
    words = norm_text.split()
    n_words = len(words)
    lines = _lines(text)
    n_lines = len(lines)

    out["char_count"] = float(n_chars)
    out["word_count"] = float(n_words)
    out["line_count"] = float(n_lines)
    out["sentence_count"] = float(len(_SENTENCE.findall(text)))
    word_chars = sum(map(len, words))
    out["mean_word_length"] = round(word_chars / n_words, r) if n_words else 0.0

    cls = _CLASS_LUT[np.minimum(cps, 0xFFFF)]
    cnt = np.bincount(cls, minlength=len(_CLS)).tolist()
    a, f, p = cnt[A_], cnt[F_], cnt[P_]
    t, q = cnt[T_], cnt[Q_]
    e, d, lo, ws = cnt[E_], cnt[D_], cnt[L_], cnt[W_]
    ar_letters = a + f + p
    letters = ar_letters + lo
    out["arabic_fraction"] = round(ar_letters / letters, r) if letters else 0.0
    out["farsi_fraction"] = round(f / ar_letters, r) if ar_letters else 0.0
    deco = p + t + q
    out["decorated_fraction"] = round(deco / (ar_letters + t + q), r) if ar_letters + t + q else 0.0
    if ar_letters and cnt[M_]:
        diac = int(np.count_nonzero(_IS_AR_LETTER[cls[:-1]] & (cls[1:] == M_)))
    else:
        diac = 0
    out["diacritics_fraction"] = round(diac / ar_letters, r) if ar_letters else 0.0
    non_ws = n_chars - ws
    out["digit_fraction"] = round((e + d) / non_ws, r) if non_ws else 0.0
    out["arabic_indic_digit_fraction"] = round(e / (e + d), r) if e + d else 0.0

    n_raw = len(_RAW_WORD.findall(text))
    n_sym = sum(text.count(s) for s in _SYMBOLS)
    out["symbol_to_word_ratio"] = round(n_sym / n_raw, r) if n_raw else 0.0
    no_letter = len(_PUNCT_TOKEN.findall(text)) + len(_NUMERIC_TOKEN.findall(text))
    out["no_alpha_word_fraction"] = round(no_letter / n_raw, r) if n_raw else 0.0

    counts = Counter(words)
    if n_words:
        out["unique_word_fraction"] = round(len(counts) / n_words, r)
        pr = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) / n_words
        out["unigram_entropy"] = round(float(-(pr * np.log(pr)).sum()), r)
        n_stop = 0
        for w, c in counts.items():  # unique words only
            if w in _STOP or (len(w) > 2 and w[0] in "وف" and w[1:] in _STOP_AR_ALL):
                n_stop += c
        out["stop_word_fraction"] = round(n_stop / n_words, r)
    else:
        out["unique_word_fraction"] = out["unigram_entropy"] = out["stop_word_fraction"] = 0.0

    stripped = text.strip()
    if "\n" in stripped:
        gl = _LINES_SPLIT.split(stripped)
        gp = _PARA_SPLIT.split(stripped)
    else:
        gl = gp = [stripped] if stripped else []
    out["duplicate_line_fraction"], out["duplicate_line_char_fraction"] = (
        round(x, r) for x in _dupe_fraction(gl, n_chars))
    out["duplicate_paragraph_fraction"], out["duplicate_paragraph_char_fraction"] = (
        round(x, r) for x in _dupe_fraction(gp, n_chars))

    _ngram_signals(words, out, counts)

    if n_lines:
        ends = [ln.rstrip(_RSTRIP) for ln in lines]
        out["ellipsis_line_fraction"] = round(sum(x.endswith(_ELLIPSIS) for x in ends) / n_lines, r)
        out["terminal_punctuation_line_fraction"] = round(
            sum(x.endswith(_TERMINAL) for x in ends) / n_lines, r)
        out["bullet_line_fraction"] = round(
            sum(ln.lstrip(_RSTRIP).startswith(BULLETS) for ln in lines) / n_lines, r)
        if "javascript" in norm_text:
            norm_lines = _lines(norm_text)
            js = sum(1 for ln in norm_lines if "javascript" in ln and "javascript" in ln.split())
            out["javascript_line_fraction"] = round(js / n_lines, r)
        else:
            out["javascript_line_fraction"] = 0.0
    else:
        for k in ("ellipsis_line_fraction", "terminal_punctuation_line_fraction",
                  "bullet_line_fraction", "javascript_line_fraction"):
            out[k] = 0.0
    out["curly_bracket_fraction"] = (
        round((text.count("{") + text.count("}")) / n_chars, r) if n_chars else 0.0)
    if "lorem" in norm_text:
        joined = " ".join(words)
        out["lorem_ipsum_ratio"] = round(joined.count("lorem ipsum") / len(joined), r)
    else:
        out["lorem_ipsum_ratio"] = 0.0
    return {k: out[k] for k in SIGNAL_NAMES}


def iter_signals(texts: Iterable[str]):
    for t in texts:
        yield compute_signals(t)


if __name__ == "__main__":  # pragma: no cover - quick manual check
    print(compute_signals(sys.stdin.read()))

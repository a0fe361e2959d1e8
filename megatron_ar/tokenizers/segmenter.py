"""Arabic clitic segmentation for MorphBPE training (Fanar report, section 5).

A segmenter maps one word to its *surface* morphemes: ``segment(w)`` returns strings whose
concatenation is exactly ``w`` (diacritics stay attached to the letter they follow). MorphBPE
only needs the boundaries, so surface strings are the natural interface; an analyzer that
restores elided letters (``لل`` = ``ل`` + ``ال``) is projected back onto the surface.

Design choices:
- **Built-in, dependency-free** :class:`BuiltinSegmenter` splits proclitics (conjunction
  ``و``/``ف``, then one of ``ب ك ل س``, then the article ``ال``; ``ل+ال`` is written ``لل``) and
  one enclitic pronoun (``ه ها هم هما هن ك كم كما كن ي ني نا``). That is the clitic level
  Fanar's MorphBPE uses; derivational/inflectional suffixes (``ة ات ون``) stay in the stem,
  because splitting them inflates fertility for little alignment gain.
- **Guards against stripping stem letters** (``وجد`` "found" is not ``و+جد``, ``كان`` is not
  ``ك+ان``, ``بكر`` is not ``ب+كر``): (1) minimum stem lengths: 2 in general, 3 behind the
  prepositions ``ب ك ل`` and before ``ي``/``ني`` (except particle hosts such as ``من عن إن``),
  4 behind the future ``س``; (2) a list of lexicalized words whose letters look like clitics
  (``الله الذي لكن ليس ...``) that no boundary may cut, also after a proclitic (``بالله`` =
  ``ب+الله``); (3) when corpus word counts are given (:meth:`fit`; the trainer does this in
  its counting pass) a split is kept only if the stem is attested in *unambiguous* other forms
  (free, with the article, with another enclitic) at least ``min_count`` times, and, for
  ``ب ك ل س``, at least ``prep_ratio`` x the word's own count (``كتاب`` is far more frequent than
  ``تاب``). The article followed by >= 3 letters is split without attestation (names like
  ``الزهري`` rarely occur bare). Without counts the rule is stricter (stem >= 3, >= 4 behind
  ``ب ك ل``). Among admissible splits the one with most morphemes wins (ties: better attested
  stem). Parameters were chosen against farahidi on hadith text (agreement in
  ``benchmarks/segmenter_agreement.py``). Trade-off: the count guard makes the segmentation
  corpus-dependent and misses rare correct splits (``بيده`` stays ``ب+يده``); a lexicon
  (farahidi) is more precise on stems but ~5 ms/word and GPL, and it does not split pronouns
  off particles (``له``, ``فيه``), which the built-in does (as Farasa-style schemes do).
- **farahidi as a plug-in** (:class:`FarahidiSegmenter`, imported lazily, GPL-3 so never a hard
  dependency): best-scored analysis' proclitics + stem + enclitics, projected onto the surface.
- Segmentation is memoized per word type: corpora are Zipfian, so segmenting the distinct
  types (tens of thousands) instead of tokens (millions) is what makes it cheap.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, Protocol

__all__ = [
    "Segmenter",
    "BuiltinSegmenter",
    "FarahidiSegmenter",
    "get_segmenter",
    "strip_diacritics",
    "ARABIC_WORD_RE",
    "DIACRITICS",
    "boundaries",
]

# Harakat, tanween, shadda, sukun and extended marks, superscript alef and tatweel: removed from
# training text, kept in the tokenizer vocabulary. The set is the project normalizer's
# (megatron_ar.text.normalize, Fanar defaults) when that module is present, so the tokenizer and
# the data pipeline agree on what "undiacritized" means; the fallback is the same list.
try:
    from megatron_ar.text.normalize import DIACRITICS as _NORM_DIACRITICS, TATWEEL as _TATWEEL

    DIACRITICS = _NORM_DIACRITICS + _TATWEEL
except ImportError:  # pragma: no cover - the text area is optional for this module
    DIACRITICS = (
        "".join(map(chr, range(0x064B, 0x0654))) + "".join(map(chr, range(0x0656, 0x0660)))
        + "\u0670\u0640"
    )
_DIAC_SET = frozenset(DIACRITICS)
_STRIP_TABLE = {ord(c): None for c in DIACRITICS}
_DIAC_CLASS = "".join(f"\\u{ord(c):04x}" for c in DIACRITICS)
# An Arabic word: letters (hamza..yeh, extended letters) with optional diacritics.
ARABIC_WORD_RE = re.compile(
    f"[\u0621-\u063A\u0641-\u064A\u0671-\u06D3][\u0621-\u063A\u0641-\u064A\u0671-\u06D3{_DIAC_CLASS}]*"
)


def strip_diacritics(text: str) -> str:
    """Remove tashkeel and tatweel (and nothing else: lossless for all other text)."""
    return text.translate(_STRIP_TABLE)


class Segmenter(Protocol):
    """Splits Arabic words into clitics and stem for MorphBPE training (built-in rules, or an
    optional plugin such as farahidi)."""

    name: str

    def segment(self, word: str) -> list[str]:
        """Surface morphemes of ``word``; ``"".join(result) == word``."""

    def fit(self, word_counts: Mapping[str, int]) -> "Segmenter":
        """Give corpus statistics (undiacritized word -> count). Optional for plug-ins."""


def boundaries(morphemes: Iterable[str]) -> list[int]:
    """Interior boundary offsets of a segmentation: ['و','ال','كتاب'] -> [1, 3]."""
    out, pos = [], 0
    parts = list(morphemes)
    for m in parts[:-1]:
        pos += len(m)
        out.append(pos)
    return out


def _project(word: str, bare_parts: list[str]) -> list[str]:
    """Map a segmentation of the undiacritized word back onto ``word`` (diacritics attach to
    the preceding letter)."""
    if len(bare_parts) <= 1:
        return [word]
    cuts = set(boundaries(bare_parts))
    out, cur, n_letters = [], [], 0
    for ch in word:
        if ch not in _DIAC_SET:
            if n_letters in cuts and cur:
                out.append("".join(cur))
                cur = []
            n_letters += 1
        cur.append(ch)
    out.append("".join(cur))
    return out


# ---------------------------------------------------------------------------------------------
# Built-in segmenter
# ---------------------------------------------------------------------------------------------
CONJ = ("و", "ف")
PREP = ("ب", "ك", "ل")
FUTURE = "س"
ARTICLE = "ال"
ENCLITICS = ("ه", "ها", "هم", "هما", "هن", "ك", "كم", "كما", "كن", "ي", "ني", "نا")
# Pronoun hosts: a preposition with an enclitic and no stem (له بها لكم بنا لي).
_HOST_PREPS = ("ب", "ل")
_HOST_ENCLITICS = frozenset(e for e in ENCLITICS if e != "ني")
# Particles that host ي/ني despite their short stem (مني عني إني أني معي فيّ لديّ).
_PARTICLE_HOSTS = frozenset("من عن إن أن مع لدى لد".split())
# Lexicalized words whose letters look like clitics; no boundary may cut inside them when they
# start the word or follow a proclitic.
PROTECTED = frozenset(
    """الله اللهم الذي التي الذين اللذان اللتان اللذين اللتين اللاتي اللائي اللواتي الآن الا إلا
    لكن لكنه ليس ليست لعل لما لدى لدي لولا لوما لئن كلا كلما كيف كيفما كأن كأنه كأنما بل بلى
    بين بعد بعض بغير هذا هذه هذان هذين ذلك تلك هؤلاء أولئك هنا هناك هنالك سوف سوى إنما أنما فيما
    كما ولكن ولكنه إليك عليك لديك لبيك نعم""".split()
)


def _proclitic_sequences() -> list[tuple[str, tuple[str, ...]]]:
    """(surface, morphemes) of every admissible proclitic chain, longest surface first."""
    seqs = {}
    for c in ("",) + CONJ:
        for mid in ("",) + PREP + (FUTURE,):
            for art in ("", ARTICLE):
                if mid == FUTURE and art:
                    continue  # future marker only precedes imperfect verbs
                parts = tuple(p for p in (c, mid, art) if p)
                if not parts:
                    continue
                if mid == "ل" and art:
                    surface, parts = c + "لل", tuple(p for p in (c, "ل", "ل") if p)
                else:
                    surface = "".join(parts)
                seqs[surface] = parts
    return sorted(seqs.items(), key=lambda kv: -len(kv[0]))


_PROCLITIC_SEQS = _proclitic_sequences()
_FUTURE_NEXT = frozenset("يتنأ")


class BuiltinSegmenter:
    """Rule + corpus-statistics clitic segmenter (see module docstring)."""

    name = "builtin"

    def __init__(self, min_stem: int = 2, min_count: int = 2, ratio: float = 0.0,
                 prep_ratio: float = 1.0, protected: Optional[Iterable[str]] = None):
        if min_stem < 1:
            raise ValueError(f"min_stem must be >= 1, got {min_stem}")
        if ratio < 0 or prep_ratio < 0:
            raise ValueError(f"ratio/prep_ratio must be >= 0, got {ratio}/{prep_ratio}")
        self.min_stem = min_stem
        self.min_count = min_count
        self.ratio = ratio
        self.prep_ratio = prep_ratio
        self.protected = frozenset(protected) if protected is not None else PROTECTED
        self._protected_lengths = sorted({len(p) for p in self.protected})
        self.counts: Optional[Mapping[str, int]] = None
        self._cache: dict[str, list[str]] = {}

    def fit(self, word_counts: Mapping[str, int]) -> "BuiltinSegmenter":
        """Use corpus counts of undiacritized words for the attestation guard."""
        self.counts = word_counts
        self._cache.clear()
        return self

    # -- guards ------------------------------------------------------------------------------
    def _cuts_protected(self, word: str, cuts: list[int]) -> bool:
        for start in [0] + [c for c in cuts if c <= 3]:
            for length in self._protected_lengths:
                end = start + length
                if end <= len(word) and word[start:end] in self.protected:
                    if any(start < c < end for c in cuts):
                        return True
        return False

    def _evidence(self, word: str, sp: str, stem: str, enc: str) -> int:
        """Occurrences of ``stem`` in *unambiguous* other forms: free, with the article, with a
        different enclitic, and (when both sides split) with its enclitic alone. Forms with
        another single-letter proclitic are not counted: ``بنت``/``كنت`` would otherwise
        attest each other's wrong split ``ب+نت``/``ك+نت``."""
        c = self.counts
        forms = {stem, ARTICLE + stem}
        for e in ENCLITICS:
            if e != enc:
                forms.add(stem + e)
        if sp and enc:
            forms.add(stem + enc)
        forms.discard(word)
        return sum(c.get(f, 0) for f in forms)

    def _min_stem(self, pparts: tuple[str, ...], stem: str, enc: str) -> int:
        """Shortest admissible stem: longer behind letters that often begin stems."""
        need = self.min_stem
        last = pparts[-1] if pparts else ""
        if last in PREP:
            need = max(need, 3)  # بكر بنت بشر بعث are words, not ب+كر ...
        elif last == FUTURE:
            need = max(need, 4)  # سألت is a verb, not س+ألت
        if enc in ("ي", "ني") and stem not in _PARTICLE_HOSTS:
            need = max(need, 3)  # علي نبي يعني: final ي/ني of short stems is a stem letter
        return need

    def _admissible(self, word: str, sp: str, pparts: tuple[str, ...], stem: str,
                    enc: str) -> Optional[int]:
        """Return the stem's evidence if the split is admissible, else None."""
        if len(stem) < self._min_stem(pparts, stem, enc):
            return None
        if self.counts is None:  # no statistics: stricter lengths (كتاب is not ك+تاب)
            need = 4 if (pparts and pparts[-1] in PREP and not sp.endswith(("ال", "لل"))) else 3
            return 0 if len(stem) >= need else None
        ev = self._evidence(word, sp, stem, enc)
        # The article (also in وال بال لل) followed by >= 3 letters is a safe split on its own:
        # names such as الزهري are rarely attested without it.
        if pparts and pparts[-1] in (ARTICLE, "ل") and sp.endswith(("ال", "لل")) and not enc \
                and len(stem) >= 3 and all(p in CONJ or p in PREP or p == ARTICLE or p == "ل"
                                           for p in pparts):
            return ev
        ratio = self.prep_ratio if any(p in PREP or p == FUTURE for p in pparts) else self.ratio
        if ev < self.min_count or ev < ratio * self.counts.get(word, 0):
            return None
        return ev

    # -- segmentation ------------------------------------------------------------------------
    def _segment_bare(self, word: str) -> list[str]:
        if len(word) < 2 or word in self.protected:
            return [word]
        best: tuple[int, int, list[str]] = (1, -1, [word])
        n = len(word)
        for sp, pparts in [("", ())] + _PROCLITIC_SEQS:
            if sp and not word.startswith(sp):
                continue
            for enc in ("",) + ENCLITICS:
                if not sp and not enc:
                    continue
                if enc and not word.endswith(enc):
                    continue
                if enc and (sp.endswith(("ال", "لل")) or (not sp and word.startswith(ARTICLE))):
                    continue  # the article excludes a possessive pronoun (الحميدي is one word)  # the article excludes a possessive pronoun
                stem = word[len(sp): n - len(enc)] if enc else word[len(sp):]
                if pparts and pparts[-1] == FUTURE and stem[:1] not in _FUTURE_NEXT:
                    continue
                parts = list(pparts) + ([stem] if stem else []) + ([enc] if enc else [])
                if not stem:
                    # preposition hosting a pronoun: له بها لكم (optionally after و/ف)
                    if not (enc in _HOST_ENCLITICS and pparts and pparts[-1] in _HOST_PREPS
                            and all(p in CONJ for p in pparts[:-1])):
                        continue
                    ev = self.counts.get(word, 0) if self.counts is not None else 0
                else:
                    ev = self._admissible(word, sp, pparts, stem, enc)
                    if ev is None:
                        continue
                if self._cuts_protected(word, boundaries(parts)):
                    continue
                key = (len(parts), ev)
                if key > best[:2]:
                    best = (len(parts), ev, parts)
        return best[2]

    def segment(self, word: str) -> list[str]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        bare = strip_diacritics(word)
        if not bare:
            out = [word]
        else:
            parts = self._segment_bare(bare)
            out = parts if bare == word else _project(word, parts)
        self._cache[word] = out
        return out


# ---------------------------------------------------------------------------------------------
# farahidi plug-in (GPL-3+, optional)
# ---------------------------------------------------------------------------------------------
def _split_proclitic_surface(sp: str) -> list[str]:
    """'وبال' -> ['و','ب','ال']; 'لل' -> ['ل','ل']; unknown strings stay whole."""
    for surface, parts in _PROCLITIC_SEQS:
        if surface == sp:
            return list(parts)
    return [sp] if sp else []


class FarahidiSegmenter:
    """farahidi (AlKhalil port) analyses as a segmenter: the best-scored analysis' proclitics,
    stem and enclitic, projected onto the surface word. Words it cannot analyze stay whole."""

    name = "farahidi"

    def __init__(self):
        try:
            import farahidi  # noqa: F401  (GPL-3+: optional plug-in, imported lazily)
        except ImportError as e:
            raise ImportError(
                "segmenter 'farahidi' needs the optional GPL package: pip install farahidi"
            ) from e
        self._analyzer = farahidi.Analyzer()
        self._cache: dict[str, list[str]] = {}

    def fit(self, word_counts: Mapping[str, int]) -> "FarahidiSegmenter":
        return self  # lexicon-based: corpus statistics are not used

    def _segment_bare(self, word: str) -> list[str]:
        try:
            analyses = self._analyzer.analyze(word)
        except Exception:  # farahidi raises on some non-words; treat as unanalyzable
            return [word]
        if not analyses:
            return [word]
        a = analyses[0]
        sp = strip_diacritics("".join(x.form for x in a.proclitics))
        se = strip_diacritics("".join(x.form for x in a.enclitics))
        if not word.startswith(sp) or not word.endswith(se) or len(sp) + len(se) > len(word):
            return [word]
        stem = word[len(sp): len(word) - len(se)]
        parts = _split_proclitic_surface(sp) + ([stem] if stem else []) + ([se] if se else [])
        return [p for p in parts if p] or [word]

    def segment(self, word: str) -> list[str]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        bare = strip_diacritics(word)
        parts = self._segment_bare(bare) if bare else [word]
        out = parts if bare == word else _project(word, parts)
        self._cache[word] = out
        return out


def get_segmenter(name: str, **kwargs) -> Segmenter:
    """``'builtin'`` or ``'farahidi'``."""
    if name == "builtin":
        return BuiltinSegmenter(**kwargs)
    if name == "farahidi":
        return FarahidiSegmenter(**kwargs)
    raise ValueError(f"segmenter: unknown name {name!r} (expected 'builtin' or 'farahidi')")

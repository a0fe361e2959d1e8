"""Arabic normalization on real text: Tanzil Quran variants and the diacritized Bukhari hadiths.

Oracles: Tanzil's own *simple-clean* text (the undiacritized form of *simple*, made by Tanzil),
hand-written undiacritized forms of known hadith phrases, and independent regex counts.
"""
import re
from collections import Counter

import material
import pytest

from megatron_ar.text.normalize import ArabicNormalizeConfig, build_normalizer, normalize_arabic, strip_html

pytestmark = pytest.mark.unit

QURAN_MARKS_RE = re.compile("[\u06d6-\u06dc]")  # the Quranic pause marks Tanzil keeps in simple-clean


@pytest.fixture(scope="module")
def quran():
    return {v: material.quran_lines(v) for v in ("simple", "simple-clean", "uthmani")}


def test_simple_to_simple_clean_all_verses(quran):
    # Tanzil's simple-clean = simple without harakat, dagger alef and tatweel (marks kept)
    norm = build_normalizer(ArabicNormalizeConfig(remove_quranic_marks=False))
    simple, clean = quran["simple"], quran["simple-clean"]
    assert len(simple) == len(clean) == 6236
    mismatches = [i for i, (a, b) in enumerate(zip(simple, clean)) if norm(a) != b]
    assert mismatches == []
    # and the input really was diacritized: the normalizer removed something from most verses
    assert sum(norm(a) != a for a in simple) > 6000


def test_default_also_removes_quranic_marks(quran):
    norm = build_normalizer()  # defaults: marks removed too
    expected = [QURAN_MARKS_RE.sub("", c) for c in quran["simple-clean"]]
    assert [norm(a) for a in quran["simple"]] == expected
    assert any(QURAN_MARKS_RE.search(c) for c in quran["simple-clean"])  # the marks were there


def test_uthmani_script(quran):
    u, clean = quran["uthmani"], quran["simple-clean"]
    cfg = ArabicNormalizeConfig(unify_alef=True)
    norm = build_normalizer(cfg)
    # 1:1 and 1:3 are spelled alike in both scripts once wasla/dagger alef are handled
    assert norm(u[0]) == norm(clean[0]) == "بسم الله الرحمن الرحيم"
    assert norm(u[2]) == "الرحمن الرحيم"
    # 1:2 writes the long a of العالمين as a dagger alef in Uthmani: dagger_alef_to_alef restores it
    assert norm(u[1]) == "الحمد لله رب العلمين"
    dag = build_normalizer(ArabicNormalizeConfig(unify_alef=True, dagger_alef_to_alef=True))
    assert dag(u[1]) == "الحمد لله رب العالمين" == norm(clean[1])
    assert dag(u[3]) == "مالك يوم الدين" == norm(clean[3])

    def overlap(f):
        hit = tot = 0
        for a, b in zip(u, clean):
            wb = set(f(b).split())
            hit += len(set(f(a).split()) & wb)
            tot += len(wb)
        return hit / tot

    raw = overlap(lambda s: s)
    assert raw < 0.1  # measured 0.044: diacritics/wasla make raw Uthmani words differ from simple-clean
    assert overlap(norm) > 0.8 and overlap(dag) > overlap(norm)


def test_hadith_known_undiacritized_forms(bukhari_records):
    h = bukhari_records[0]["arabic"]
    out = normalize_arabic(h)
    assert out.startswith("حدثنا الحميدي عبد الله بن الزبير  ، قال : حدثنا سفيان")
    assert "إنما الأعمال بالنيات، وإنما لكل امرئ ما نوى" in out
    assert "صلى الله عليه وسلم" in out
    folded = normalize_arabic(h, ArabicNormalizeConfig(unify_alef=True, alef_maqsura_to_yeh=True,
                                                        teh_marbuta_to_heh=True))
    assert "انما الاعمال بالنيات، وانما لكل امرئ ما نوي" in folded
    assert "علقمه بن وقاص" in folded and "علي المنبر" in folded


def test_hadith_corpus_counts(bukhari_records):
    text = "\n".join(r["arabic"] for r in bukhari_records[:1500])
    before = Counter(text)
    out = normalize_arabic(text)
    after = Counter(out)
    # independent count of what must go: harakat U+064B..U+0652, dagger alef, tatweel, RLM
    removed = sum(n for ch, n in before.items() if "\u064b" <= ch <= "\u0652" or ch in "\u0670\u0640\u200f")
    assert removed > 100_000 and before["\u200f"] > 0 and before["\u0640"] > 0
    assert len(text) - len(out) == removed
    for ch in "\u064e\u0651\u0652\u0640\u200f":
        assert after[ch] == 0
    # letters are untouched (no unification by default)
    for ch in "أإآىة":
        assert after[ch] == before[ch]
    assert normalize_arabic(out) == out  # idempotent


def test_presentation_forms_nfkc():
    # lam-alef ligatures and the Allah/salla ligatures decompose; hamza letters survive
    assert normalize_arabic("\ufefb \ufef7 \ufef9 \ufdf2 \ufdfa") == "لا لأ لإ الله صلى الله عليه وسلم"
    # isolated/final presentation forms of بسم
    assert normalize_arabic("\ufe91\ufeb4\ufee2") == "بسم"
    # alef + combining hamza composes to أ before marks are removed
    assert normalize_arabic("\u0627\u064e\u0654") == "\u0623"
    assert normalize_arabic("ﬁle", ArabicNormalizeConfig(unicode_form="NFC")) == "ﬁle"
    assert normalize_arabic("ﬁle") == "file"


def test_zero_width_and_bidi():
    s = "\u200fحدثنا\u200b \u202bعبدان\u202c\u2067x\u2069\ufeff"
    assert normalize_arabic(s) == "حدثنا عبدانx"
    persian = "می\u200cخواهم"
    assert normalize_arabic(persian) == "میخواهم"
    assert normalize_arabic(persian, ArabicNormalizeConfig(keep_zwnj_zwj=True)) == persian


def test_optional_letter_maps():
    assert normalize_arabic("أحمد إبراهيم آمن ٱلله", ArabicNormalizeConfig(unify_alef=True)) == "احمد ابراهيم امن الله"
    assert normalize_arabic("مدرسة", ArabicNormalizeConfig(teh_marbuta_to_heh=True)) == "مدرسه"
    assert normalize_arabic("على", ArabicNormalizeConfig(alef_maqsura_to_yeh=True)) == "علي"
    cfg = ArabicNormalizeConfig(persian_urdu_letters=True)
    assert normalize_arabic("کتاب یک ہے", cfg) == "كتاب يك هي"
    assert normalize_arabic("خانۀ", cfg) == "خانة"
    assert normalize_arabic("خانۀ", ArabicNormalizeConfig(persian_urdu_letters=True, teh_marbuta_to_heh=True)) == "خانه"
    d = ArabicNormalizeConfig(digits_to_ascii=True)
    assert normalize_arabic("سنة ١٤٤٥ هـ و۱۲۳٫٥٪ و١٬٠٠٠", d) == "سنة 1445 ه و123.5% و1,000"
    assert normalize_arabic("١٤٤٥") == "١٤٤٥"  # off by default


def test_html_and_whitespace(bukhari_records):
    ar = bukhari_records[1]["arabic"]
    en = bukhari_records[1]["english"]["text"]
    page = (f"<html><head><title>t</title><script type='text/javascript'>var a = '<p>x</p>';</script>"
            f"<style>p {{color: red}}</style></head><body><!-- nav --><p>{ar}</p>\n\n\n\n"
            f"<div class=\"en\">{en} &amp; &#1575;&nbsp;ok</div></body></html>")
    out = normalize_arabic(page, ArabicNormalizeConfig.web())
    exp_ar = re.sub(r"\s+", " ", normalize_arabic(ar)).strip()
    assert out.startswith("t")  # the title text is kept, script/style/comment are gone
    assert "var a" not in out and "color" not in out and "nav" not in out and "<" not in out
    assert exp_ar in re.sub(r"\s+", " ", out)  # the hadith keeps its own line breaks
    assert out.endswith("& ا ok")
    assert "\n\n\n" not in out and "  " not in out
    assert strip_html("a &lt;b&gt;") == "a <b>"


def test_whitespace_only():
    cfg = ArabicNormalizeConfig(normalize_whitespace=True)
    assert normalize_arabic("  قال \t\t حدثنا \r\n\r\n\r\n\r\n سفيان\u00a0\u2003بن  ", cfg) == "قال حدثنا\n\nسفيان بن"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unicode_form"):
        ArabicNormalizeConfig(unicode_form="NFD")
    with pytest.raises(TypeError, match="unify_alef"):
        ArabicNormalizeConfig(unify_alef="yes")

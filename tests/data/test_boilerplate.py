"""Site boilerplate removal (megatron_ar.text.boilerplate, tools/strip_boilerplate.py) on real
hadith text wrapped in planted site templates.

Three sites: A (a header, a footer whose year and counter change per page, a two-line link
list, on every page), B (an Arabic header on every page, an inner "read also" section on 80%
of them, URLs with and without ``www.``), C (a line on only 10% of its pages: content, kept);
plus records without a URL whose shared line must stay (no source, never stripped). Oracle:
the planted text itself: after stripping, every page must equal its real hadith body exactly.
"""
import json
import os

import pytest

from megatron_ar.io.records import iter_records
from megatron_ar.text.boilerplate import BoilerplateConfig, normalize_line, strip_boilerplate

pytestmark = pytest.mark.unit


def _pages(bukhari_records):
    recs = [r for r in bukhari_records[:400] if r["arabic"].strip() and r["english"]["text"].strip()]
    pages, bodies = [], {}
    for i, r in enumerate(recs[:60]):
        body = r["arabic"].strip() + "\n\n" + r["english"]["text"].strip()
        text = (f"Sunnah Library | Home | Books | Search\n{body}\nRelated: Book of Faith\n"
                f"Related: Book of Prayer\n© {2015 + i % 9} Sunnah Library, page views: "
                f"{1000 + 37 * i}")
        pages.append({"id": f"a{i}", "text": text,
                      "metadata": {"url": f"https://sunnah.example/hadith/{i}"}})
        bodies[f"a{i}"] = body
    for i, r in enumerate(recs[60:100]):
        body = r["arabic"].strip()
        inner = "\nاقرأ أيضا: كتاب العلم" if i % 5 else ""
        host = "www.hadith.example.org" if i % 2 else "hadith.example.org"
        pages.append({"id": f"b{i}", "text": f"حديث شريف — الصفحة الرئيسية\n{body}{inner}",
                      "metadata": {"url": f"http://{host}/p?id={i}"}})
        bodies[f"b{i}"] = body
    for i, r in enumerate(recs[100:130]):
        text = r["english"]["text"].strip() + ("\nA recurring proverb of this blog." if i < 3
                                                 else "")
        pages.append({"id": f"c{i}", "text": text, "metadata": {"url": f"blog.example/{i}"}})
        bodies[f"c{i}"] = text
    for i, r in enumerate(recs[130:140]):
        text = "Shared line without a source\n" + r["english"]["text"].strip()
        pages.append({"id": f"n{i}", "text": text})
        bodies[f"n{i}"] = text
    return pages, bodies


@pytest.fixture
def corpus(tmp_path, bukhari_records):
    pages, bodies = _pages(bukhari_records)
    d = tmp_path / "in"
    d.mkdir()
    # two files, sources spread over both: a source's counts must span files
    for k, part in enumerate((pages[0::2], pages[1::2])):
        with open(d / f"part{k}.jsonl", "w", encoding="utf-8") as f:
            for p in part:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return d, bodies


def _read(out):
    return {rec["id"]: rec["text"] for f in sorted(os.listdir(out)) if f.endswith(".jsonl")
            for _, rec in iter_records(str(out / f))}


def test_planted_boilerplate_removed_content_kept(corpus, tmp_path):
    d, bodies = corpus
    s = strip_boilerplate([str(d / "part0.jsonl"), str(d / "part1.jsonl")], str(tmp_path / "o"),
                          progress=False)
    got = _read(tmp_path / "o")
    assert got == bodies  # every page is exactly its real body; C and no-source pages untouched
    a, b = s["by_source"]["sunnah.example"], s["by_source"]["hadith.example.org"]
    assert (a["lines_removed"], a["repeated_lines"]) == (60 * 4, 4)
    assert b["lines_removed"] == 40 + 32 and b["repeated_lines"] == 2
    assert "blog.example" not in s["by_source"] and s["sources"] == 4
    assert s["docs_in"] == s["docs_out"] == 140
    assert any(x.startswith("© ") for x in a["examples"])


def test_digit_normalisation_is_what_finds_the_changing_footer(corpus, tmp_path):
    d, _ = corpus
    assert normalize_line("© 2015 Sunnah Library, page views: 1000") == \
        normalize_line("©  2023 sunnah library, page views: ١٢٣")
    strip_boilerplate([str(d / "part0.jsonl"), str(d / "part1.jsonl")], str(tmp_path / "o"),
                      BoilerplateConfig(normalize_digits=False), progress=False)
    got = _read(tmp_path / "o")
    assert all("page views" in got[f"a{i}"] for i in range(60))
    assert not any("Related: Book" in got[f"a{i}"] for i in range(60))


def test_cli_summary_and_refusals(corpus, tmp_path, capsys):
    from megatron_ar_tools.strip_boilerplate import main

    d, _ = corpus
    out = tmp_path / "cli"
    assert main(["--input", str(d / "*.jsonl"), "--output-dir", str(out), "--json",
                 "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["lines_removed"] == 60 * 4 + 72 and last["sources_stripped"] == 2
    report = json.loads((out / ".boilerplate_report.json").read_text(encoding="utf-8"))
    assert report["by_source"]["sunnah.example"]["docs"] == 60
    assert main(["--input", str(d / "*.jsonl"), "--output-dir", str(out), "--no-progress"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err

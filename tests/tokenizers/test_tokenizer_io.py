"""Text input reader shared by the tokenizer tools."""
from __future__ import annotations

import gzip
import json

import pytest

from megatron_ar.tokenizers.io import (
    TextInputError, category_from_filename, iter_texts, iter_texts_with_category,
)

pytestmark = pytest.mark.unit


def test_plain_jsonl_gz_and_categories(tmp_path):
    (tmp_path / "ar_part1.txt").write_text("سطر أول\n\n{not json, just code}\nثاني\n", encoding="utf-8")
    with open(tmp_path / "mixed.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "hello", "category": "en"}) + "\n")
        f.write(json.dumps({"text": "def f(): pass", "metadata": {"category": "code"}}) + "\n")
        f.write(json.dumps({"text": "x = 1", "meta": {}}) + "\n")
        f.write("\n")
    with gzip.open(tmp_path / "math-000.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "1+1=2"}) + "\n")
    got = list(iter_texts_with_category([
        str(tmp_path / "ar_part1.txt"), str(tmp_path / "mixed.jsonl"),
        str(tmp_path / "math-000.jsonl.gz"), f"classical={tmp_path / 'ar_part1.txt'}"]))
    assert got == [
        ("سطر أول", "ar"), ("{not json, just code}", "ar"), ("ثاني", "ar"),
        ("hello", "en"), ("def f(): pass", "code"), ("x = 1", "mixed"),
        ("1+1=2", "math"),
        ("سطر أول", "classical"), ("{not json, just code}", "classical"), ("ثاني", "classical"),
    ]
    assert list(iter_texts([str(tmp_path / "math-000.jsonl.gz")])) == ["1+1=2"]
    assert category_from_filename("/x/code-00001.txt.gz") == "code"


def test_jsonl_detected_by_content(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n", encoding="utf-8")
    assert list(iter_texts([str(p)])) == ["a", "b"]


@pytest.mark.parametrize("line,msg", [
    ('{"text": "ok"}\n{"txt": "x"}\n', r"bad.jsonl:2: missing key 'text'"),
    ('{"text": "ok"}\n{"text": 5}\n', r"bad.jsonl:2: key 'text' is int"),
    ('{"text": "ok"}\n{broken\n', r"bad.jsonl:2: invalid JSON"),
])
def test_errors_name_file_and_line(tmp_path, line, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(line, encoding="utf-8")
    with pytest.raises(TextInputError, match=msg):
        list(iter_texts([str(p)]))


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(TextInputError, match="nope.txt: no such file"):
        list(iter_texts([str(tmp_path / "nope.txt")]))
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(TextInputError, match="latin1.txt: not valid UTF-8"):
        list(iter_texts([str(p)]))

"""The quickstart's data builder (examples/quickstart): its text sources are found, not assumed,
and its held-out documents never appear in training."""
import sys

import pytest

from examples.quickstart import data, sources  # importable via tests/material.py (root conftest)

pytestmark = pytest.mark.unit


def test_python_docs_come_from_the_running_version(python_docs_paths):
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    root = sources.python_docs_dir()
    assert root.endswith("/html/_sources") and version in root
    assert python_docs_paths == sources.python_docs_paths()
    assert all(p.startswith(root + "/") and p.endswith(".rst.txt") for p in python_docs_paths)
    assert any(p.endswith("/library/functions.rst.txt") for p in python_docs_paths)


def test_missing_docs_name_the_package():
    with pytest.raises(sources.MaterialError, match=r"apt-get install python0\.1-doc"):
        sources.python_docs_dir("0.1")
    with pytest.raises(sources.MaterialError, match="pip install no-such-dist"):
        sources.package_dir("no_such_module_xyz", "no-such-dist")


def test_held_out_documents_are_not_trained_on(bukhari_records, python_docs_paths):
    docs = data.mixed_documents(n_ar=300, n_en=300, n_code=10, n_valid=20)
    assert {k: len(v) for k, v in docs.items()} == {
        "ar": 300, "valid_ar": 20, "en": 300 + 7, "valid_en": 20, "code": 10, "valid_code": 2}
    for cat in ("ar", "en", "code"):
        assert not set(docs[cat]) & set(docs["valid_" + cat]), cat
    assert docs["ar"][0] == bukhari_records[0]["arabic"]
    with pytest.raises(ValueError, match="source"):
        data.build_arabic_cloze("unused.jsonl", source="poetry")


def test_outputs_built_with_other_settings_are_refused_not_reused(tmp_path):
    out = str(tmp_path / "qs")
    a = dict(vocab_size=2048, cloze_items=40, cloze_seed=7, sizes={"n_ar": 500})
    data.check_settings(out, a)
    data.check_settings(out, dict(a))  # same settings: reuse
    with pytest.raises(ValueError, match=r"built with other settings \(sizes: built with "
                                         r"\{'n_ar': 500\}, asked \{'n_ar': 300\}\)"):
        data.check_settings(out, dict(a, sizes={"n_ar": 300}))
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "tokenizer").mkdir()
    with pytest.raises(ValueError, match="not empty and has no settings.json"):
        data.check_settings(str(legacy), a)
    assert sorted(p.name for p in legacy.iterdir()) == ["tokenizer"]  # nothing deleted

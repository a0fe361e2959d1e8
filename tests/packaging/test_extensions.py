"""megatron_ar._ext: a missing compiled extension is reported once, naming it, when the
pure-Python fallback first runs (a real import of a module that does not exist; the dedup
library's fallback switch)."""
import logging

import pytest

from megatron_ar import _ext

pytestmark = pytest.mark.unit


def test_missing_extension_warns_once_naming_it(caplog):
    assert _ext.load("no_such_extension") is None
    with caplog.at_level(logging.WARNING, logger="megatron_ar._ext"):
        _ext.warn_fallback("no_such_extension", "the slow path runs")
        _ext.warn_fallback("no_such_extension", "the slow path runs")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1, msgs
    assert "megatron_ar._ext.no_such_extension is not available" in msgs[0]
    assert "No module named 'megatron_ar._ext.no_such_extension'" in msgs[0]
    assert "the slow path runs" in msgs[0]


def test_dedup_fallback_warns_only_when_the_extension_is_missing(monkeypatch, caplog):
    from megatron_ar.text import dedup as D

    monkeypatch.setattr(_ext, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="megatron_ar._ext"):
        D.DedupConfig(backend="python").use_cpp()
        assert not caplog.records  # an explicit choice of the fallback is not warned about
        monkeypatch.setattr(D, "_ext", None)
        assert D.DedupConfig().use_cpp() is False
    assert len(caplog.records) == 1
    assert "megatron_ar._ext.dedup is not available" in caplog.records[0].getMessage()
    assert "about 100x slower" in caplog.records[0].getMessage()

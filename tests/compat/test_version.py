"""megatron_ar.compat.version: the installed megatron-core is read without importing it and
checked against the supported range; outside it, importing megatron_ar.compat fails naming the
version and the range (oracle: the installed distribution's own metadata)."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

from megatron_ar.compat import version as v

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_installed_version_matches_distribution_metadata():
    assert v.MCORE_VERSION == v.parse(importlib.metadata.version("megatron-core"))
    assert v.in_range(v.MCORE_VERSION, *v.SUPPORTED)


@pytest.mark.parametrize("text,expected", [("0.16.1", (0, 16, 1)), ("0.19.0rc1", (0, 19, 0)),
                                           ("0.17.0+nv25.08", (0, 17, 0)), ("1.2", (1, 2, 0))])
def test_parse(text, expected):
    assert v.parse(text) == expected


def test_parse_rejects_garbage():
    with pytest.raises(ValueError, match="not a megatron-core version: 'main'"):
        v.parse("main")


def test_range_edges():
    lo, hi = v.SUPPORTED
    assert v.range_str(lo, hi) == ">=0.16.1,<0.20.0"
    assert v.in_range(lo, lo, hi) and not v.in_range(hi, lo, hi)
    assert not v.in_range((0, 16, 0), lo, hi) and v.in_range((0, 19, 2), lo, hi)


def test_unsupported_version_names_version_and_range(monkeypatch):
    monkeypatch.delenv(v.ALLOW_ENV, raising=False)
    with pytest.raises(v.UnsupportedMegatronCoreError,
                       match=r"megatron-core 0\.20\.0 is not supported .*megatron-core>=0\.16\.1,<0\.20\.0"):
        v.check_supported((0, 20, 0))
    monkeypatch.setenv(v.ALLOW_ENV, "1")
    with pytest.warns(RuntimeWarning, match="0.15.3 is not supported"):
        assert v.check_supported((0, 15, 3)) == (0, 15, 3)


def test_import_fails_with_a_shadowing_unsupported_megatron_core(tmp_path):
    """A megatron/core/package_info.py earlier on sys.path (a Megatron-LM checkout) is what
    ``import megatron.core`` would load, so its version is the one checked."""
    pkg = tmp_path / "megatron" / "core"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "package_info.py").write_text("MAJOR = 0\nMINOR = 21\nPATCH = 3\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    env.pop(v.ALLOW_ENV, None)
    res = subprocess.run([sys.executable, "-c", "import megatron_ar.compat"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "UnsupportedMegatronCoreError: megatron-core 0.21.3 is not supported" in res.stderr
    assert ">=0.16.1,<0.20.0" in res.stderr


def test_setup_py_accepts_exactly_the_supported_range():
    """install_requires must neither force a downgrade nor accept what compat refuses."""
    import re

    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        m = re.search(r'"megatron-core>=([\d.]+),<([\d.]+)"', f.read())
    assert m, "setup.py: no megatron-core>=X,<Y requirement"
    assert (v.parse(m.group(1)), v.parse(m.group(2))) == v.SUPPORTED

"""Every CUDA source in csrc/ compiles with this machine's nvcc (``.ci/check_cuda.sh``); no GPU
and no CUDA torch are needed because the ``.cu`` files include no torch header. Without nvcc
the test skips, saying so."""
import glob
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: CUDA sources not "
                    "compile-checked on this machine")
def test_every_cu_file_compiles_with_nvcc():
    sources = sorted(glob.glob(os.path.join(REPO, "csrc", "**", "*.cu"), recursive=True))
    p = subprocess.run(["bash", ".ci/check_cuda.sh"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    checked = [line.split()[1] for line in p.stdout.splitlines() if line.startswith("ok ")]
    assert checked == [os.path.relpath(s, REPO) for s in sources]
    # the .cu files must stay torch-free, or this check could not run without a CUDA torch
    for s in sources:
        with open(s, encoding="utf-8") as f:
            assert "torch/" not in f.read(), f"{s} includes a torch header"

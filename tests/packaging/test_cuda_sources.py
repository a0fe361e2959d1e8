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


def test_cpu_torch_skips_only_the_cuda_builds():
    """Without a CUDA torch (this machine, CI) the install skips each CUDA extension with the
    reason recorded and still builds the CPU build of every kernel from the same headers."""
    import json

    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA torch: the CUDA builds are expected here")
    with open(os.path.join(REPO, "megatron_ar", "_ext", "build_report.json"),
              encoding="utf-8") as f:
        report = json.load(f)
    cuda = sorted(os.path.basename(os.path.dirname(p)) for p in
                  glob.glob(os.path.join(REPO, "csrc", "*", "*.cu")))
    assert cuda, "no CUDA kernels in csrc/"
    for name in dict.fromkeys(cuda):
        assert report[f"megatron_ar._ext.{name}"] == \
            f"skipped: torch {torch.__version__} is not a CUDA build"
        assert report[f"megatron_ar._ext.{name}_cpu"] == "built"
        from megatron_ar import _ext

        assert _ext.load(f"{name}_cpu") is not None

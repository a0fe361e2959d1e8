"""The srun/torchrun launchers pass shellcheck and their --dry-run plans without training."""
import glob
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(
    glob.glob(os.path.join(REPO, "examples", "*.sh"))
    + glob.glob(os.path.join(REPO, "examples", "slurm", "*"))
    + glob.glob(os.path.join(REPO, "examples", "torchrun", "*.sh"))
)


def test_launchers_exist():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert {"fanar_star_7b.sbatch", "fanar_prime_9b_cpt.sbatch", "fanar_star_7b.sh", "quickstart_cpu.sh"} <= names


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sbatch_dry_run_prints_plan():
    script = os.path.join(REPO, "examples", "slurm", "fanar_star_7b.sbatch")
    # The cluster's datasets are not here: planning without them needs --skip-input-checks ...
    proc = subprocess.run(["bash", script, "--dry-run", "--skip-input-checks"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout.lower()
    # the layout and batch arithmetic of 21 nodes x 8 GPUs, and a memory estimate
    assert "168" in out and "gib" in out, proc.stdout[-3000:]
    # ... and without it the dry run refuses, naming each missing dataset by its recipe key.
    refused = subprocess.run(["bash", script, "--dry-run", "--analytic-only"], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert refused.stderr.startswith("error: the recipe's inputs: model.tokenizer: ")
    assert "; data.datasets.ar: /data/" in refused.stderr


# Standard variables every shell has (not launcher settings).
_SHELL_VARS = {"PATH", "HOME", "PWD", "TMPDIR", "SECONDS", "RANDOM", "BASH_SOURCE", "PIPESTATUS"}


def _documented_variables():
    """Names in the table at the top of examples/cluster_env.sh (``#   NAME   default   meaning``)."""
    import re

    names = set()
    with open(os.path.join(REPO, "examples", "cluster_env.sh"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            m = re.match(r"#   ([A-Z][A-Z0-9_]*\*?)\s{2,}\S", line)
            if m:
                names.add(m.group(1))
    return names


def test_every_variable_the_examples_read_is_documented():
    """A variable a script reads from its environment (``${X:-...}``, ``${X:?...}``, ``${X-...}``,
    or referenced without being assigned in any script of examples/) has a row in the table."""
    import re

    texts = {p: open(p, encoding="utf-8").read() for p in SCRIPTS}
    assigned, read = set(), set()
    for text in texts.values():
        code = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
        assigned |= set(re.findall(r"(?:^|[\s;(])(?:export\s+|local\s+)?([A-Z][A-Z0-9_]*)=", code, re.M))
        read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-?=+])", code))
        read |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", code)) - assigned
    documented = _documented_variables()
    assert {"MASTER_ADDR", "NNODES", "ENV_ACTIVATE", "NCCL_IB_GID_INDEX"} <= documented  # the parser works
    missing = sorted(v for v in read - _SHELL_VARS - documented
                     if not any(d.endswith("*") and v.startswith(d[:-1]) for d in documented))
    assert not missing, f"read by examples/ scripts but not in examples/cluster_env.sh's table: {missing}"

"""The repo's sbatch script under a real Slurm (``slurm.py``: slurmctld + two slurmd nodes in
network namespaces, 2 CPUs each), unchanged except for the sizes its variables select: the tiny
training recipe (train_harness.py's, TP2 x PP2 + SP, distributed optimizer) on 2 nodes x 2
tasks over gloo, with MASTER_ADDR the first node's Slurm address.

Oracle: the same recipe as one single-host 4-process torchrun job. Every property is checked
against its per-step losses, grad norms and consumed samples, bit for bit:
- the 2 x 2 Slurm run reproduces it;
- ``scancel --signal=USR1`` mid-run: every rank saves a complete checkpoint, the job exits 0,
  requeues itself (``--requeue``, ``--open-mode=append``) and the second start resumes to the
  same numbers;
- one node's tasks killed (SIGKILL) inside a checkpoint's write-then-publish window: the job
  ends promptly (``srun --kill-on-bad-exit=1``), the unpublished checkpoint stays invisible, and
  a resubmission resumes from the last published one to the same numbers.

Data jobs on the same cluster: an ``sbatch --array=0-3`` of tools/preprocess_data.py (each task
takes its part of the inputs from SLURM_ARRAY_*), merged with tools/merge_datasets.py, equals
the one-process .bin/.idx byte for byte.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "training"))
from slurm import slurm_cluster  # noqa: E402,F401  (the fixture)
from train_harness import CACHE, REPO, read_metrics, read_metrics_lines, torchrun, write_recipe  # noqa: E402

pytestmark = pytest.mark.multiproc

STEPS = 6
# A schedule that fits 6 steps.
OVERRIDES = ("--lr-warmup-iters", "2", "--lr-cooldown-iters", "2")
SBATCH = os.path.join("examples", "slurm", "fanar_star_7b.sbatch")
FAULT_SAVE_SLEEP_ENV = "MEGATRON_AR_FAULT_SAVE_SLEEP_S"
TIMINGS = {}


@pytest.fixture(scope="module")
def train_data(bukhari_records, python_docs_paths):
    """tests/training's data (same builder and arguments: the cache is shared)."""
    from examples.quickstart.data import build_quickstart_data

    return build_quickstart_data(CACHE, vocab_size=2048, cloze_items=40, cloze_seed=7,
                                 n_ar=500, n_en=500, n_code=24, n_valid=24)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_data):
    """The oracle: one host, 4 processes (torchrun), uninterrupted."""
    d = tmp_path_factory.mktemp("slurm_ref")
    _recipe(d, train_data)
    t0 = time.time()
    torchrun(4, str(d / "recipe.yaml"), *OVERRIDES, "--save-interval", "100")
    TIMINGS["torchrun reference"] = time.time() - t0
    m = read_metrics(str(d / "run"))
    assert sorted(m) == list(range(STEPS))
    return m


def _recipe(d, data):
    """train_harness's recipe at ``d/recipe.yaml`` training into ``d/run``, without the
    evaluation section (the end-of-run evaluation only costs time here)."""
    import yaml

    path = write_recipe(str(d / "recipe.yaml"), data, str(d / "run"), STEPS)
    cfg = yaml.safe_load(open(path, encoding="utf-8"))
    cfg.pop("eval")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return str(d / "run")


def _submit(cluster, d, name, *extra, env=None):
    """sbatch the repo's script with the sizes of this test cluster; returns (job id, log path)."""
    data_recipe = str(d / "recipe.yaml")
    out = str(d / f"{name}-%j.out")
    job = cluster.sbatch(
        "-N2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "-J", name,
        "-o", out, SBATCH, *OVERRIDES, *extra,
        env=dict({"RECIPE": data_recipe, "GPUS_PER_NODE": "0", "PYTHON": sys.executable,
                  "LOG_DIR": str(d / "logs"), "OMP_NUM_THREADS": "1",
                  "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                  "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}, **(env or {})),
        cwd=REPO)
    return job, out.replace("%j", str(job))


def _log(path):
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""


def _finish(cluster, job, log, timeout=420):
    info = cluster.wait(job, timeout=timeout)
    return info, _log(log)


def _same_numbers(run_dir, ref, steps=range(STEPS)):
    got = read_metrics(run_dir)
    assert sorted(got) == list(steps), sorted(got)
    for s in steps:
        for key in ("loss", "grad_norm", "lr", "consumed_samples"):
            assert got[s][key] == ref[s][key], (s, key, got[s][key], ref[s][key])


def _wait_metrics_step(run_dir, step, cluster, job, log, timeout=300):
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                steps = [json.loads(x).get("step", -1) for x in f if x.strip().endswith("}")]
            if max(steps, default=-1) >= step:
                return
        if cluster.state(job) not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {job} ended ({cluster.state(job)}) before step {step}:\n{_log(log)[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"job {job}: no step {step} after {timeout} s:\n{_log(log)[-4000:]}")


def test_2x2_slurm_run_equals_single_host_run(slurm_cluster, reference, train_data, tmp_path):
    TIMINGS["cluster start-up"] = slurm_cluster.startup_s
    run_dir = _recipe(tmp_path, train_data)
    # ENV_ACTIVATE is sourced by the batch shell and by each of the 4 tasks
    acted = tmp_path / "activated"
    acted.mkdir()
    (tmp_path / "activate.sh").write_text(f'touch "{acted}/$$"\n')
    t0 = time.time()
    job, log = _submit(slurm_cluster, tmp_path, "parity", "--save-interval", "100",
                       env={"ENV_ACTIVATE": str(tmp_path / "activate.sh")})
    info, out = _finish(slurm_cluster, job, log)
    TIMINGS["2x2 slurm run"] = time.time() - t0
    assert info["JobState"] == "COMPLETED", out[-4000:]
    # the launcher's layout: 4 tasks, 2 per node, rendezvous at marns0's address, not `hostname`
    first = slurm_cluster.nodes[0]
    assert f"4 tasks, 2/node x 1 CPUs, master {first.addr}:" in out, out[-3000:]
    assert "layout TP=2 PP=2 VPP=1 DP=1" in out, out[-3000:]
    assert len(os.listdir(acted)) == 5, os.listdir(acted)
    _same_numbers(run_dir, reference)


def test_usr1_saves_exits_requeues_and_resumes_bit_exactly(slurm_cluster, reference, train_data, tmp_path):
    run_dir = _recipe(tmp_path, train_data)
    t0 = time.time()
    # a periodic save first (at step 2): the signal must not break later saves (the checkpoint
    # writer's helper processes receive it too)
    job, log = _submit(slurm_cluster, tmp_path, "preempt", "--save-interval", "2")
    _wait_metrics_step(run_dir, 2, slurm_cluster, job, log)
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "iter_0000002"))
    # as a pre-emption warning or --signal=USR1@T: reaches every task of the step
    slurm_cluster.cmd("scancel", "--signal=USR1", str(job))
    info, out = _finish(slurm_cluster, job, log)
    TIMINGS["usr1 + requeue (both starts)"] = time.time() - t0
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, out[-4000:])
    stops = [ln for ln in out.splitlines() if ln.startswith("launcher: training stopped at step ")]
    assert len(stops) == 1, out[-4000:]
    stopped = int(stops[0].split()[5])
    assert 3 <= stopped < STEPS, stops
    # the first start saved a complete checkpoint (every rank's RNG, the train state) and exited 0
    assert f"[checkpoint] stopping after step {stopped}: signal SIGUSR1" in out, out[-4000:]
    ck = os.path.join(run_dir, "checkpoints", f"iter_{stopped:07d}")
    assert sorted(os.listdir(os.path.join(ck, "rng"))) == [f"rank_{r:05d}.pt" for r in range(4)]
    assert json.load(open(os.path.join(ck, "train_state.json")))["consumed_samples"] == 16 * stopped
    # --open-mode=append: both starts in one log; the second resumed at the saved step
    assert f"restart 1) on marns[0-1]" in out and f"start at step {stopped} (consumed samples {16 * stopped})" in out
    _same_numbers(run_dir, reference)
    assert [r["step"] for r in read_metrics_lines(run_dir)] == list(range(STEPS))


def _node_task_trees(node):
    """The training tasks running on ``node`` and every process they started (megatron-core's
    checkpoint writer keeps a multiprocessing manager per rank): what a node crash takes down.
    Killing only the task processes would leave those children holding the step's stdout, and
    with proctrack/linuxproc (no cgroups here) slurmstepd then waits 60 s for that IO to close."""
    import psutil

    pids = subprocess.run(["ip", "netns", "pids", node.ns], capture_output=True, text=True).stdout.split()
    tasks = []
    for pid in map(int, pids):
        try:
            proc = psutil.Process(pid)
            if proc.cmdline()[1:3] == ["-m", "megatron_ar.train"]:
                tasks.append(proc)
        except psutil.Error:
            continue
    return tasks, [c for t in tasks for c in t.children(recursive=True)]


def test_node_failure_ends_job_and_resubmission_resumes(slurm_cluster, reference, train_data, tmp_path):
    run_dir = _recipe(tmp_path, train_data)
    ckpts = os.path.join(run_dir, "checkpoints")
    t0 = time.time()
    # every save waits 4 s between writing and publishing: the kill lands inside that window
    job, log = _submit(slurm_cluster, tmp_path, "nodefail", "--save-interval", "2",
                       env={FAULT_SAVE_SLEEP_ENV: "4"})
    staged = os.path.join(ckpts, ".tmp_iter_0000004", "train_state.json")
    deadline = time.time() + 300
    while not os.path.isfile(staged):
        if time.time() > deadline or slurm_cluster.state(job) not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {job} ({slurm_cluster.state(job)}) never staged step 4:\n{_log(log)[-4000:]}")
        time.sleep(0.1)
    # the first node: ranks 0 and 1, and rank 0 publishes (killing the other node's ranks here
    # would let rank 0 publish the save: every rank's shards are written before the sleep)
    tasks, children = _node_task_trees(slurm_cluster.nodes[0])
    assert len(tasks) == 2, tasks
    t_kill = time.time()
    for proc in tasks + children:
        try:
            proc.kill()
        except Exception:
            pass
    info, out = _finish(slurm_cluster, job, log, timeout=120)
    TIMINGS["node failure: kill -> job end"] = time.time() - t_kill
    assert info["JobState"] == "FAILED", (info, out[-4000:])
    assert time.time() - t_kill < 30, out[-3000:]
    # nothing of the killed save is visible: the pointer and the published directories are step 2's
    assert open(os.path.join(ckpts, "latest_checkpointed_iteration.txt")).read().strip() == "2"
    assert sorted(e for e in os.listdir(ckpts) if e.startswith("iter_")) == ["iter_0000002"]
    assert "launcher: training stopped" not in out  # a failure is not requeued
    job2, log2 = _submit(slurm_cluster, tmp_path, "resubmit", "--save-interval", "2")
    info2, out2 = _finish(slurm_cluster, job2, log2)
    TIMINGS["node failure (failed + resubmitted job)"] = time.time() - t0
    assert info2["JobState"] == "COMPLETED", out2[-4000:]
    assert "start at step 2 (consumed samples 32)" in out2, out2[-3000:]
    _same_numbers(run_dir, reference)
    print("\nslurm test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def test_array_job_preprocess_on_two_nodes_equals_single_run(slurm_cluster, tmp_path, bukhari_records):
    """``sbatch --array=0-3`` of tools/preprocess_data.py (no shard flags: each task takes its
    part from Slurm's SLURM_ARRAY_* variables) runs its tasks on both nodes; merge_datasets of the
    four shards equals the one-process output byte for byte."""
    import material

    src = tmp_path / "raw"
    src.mkdir()
    recs = [r for r in bukhari_records[:400] if r["arabic"].strip()]
    for f in range(6):
        with open(src / f"part{f}.jsonl", "w", encoding="utf-8") as fh:
            for r in recs[f * 50:(f + 1) * 50 + 7 * f]:
                fh.write(json.dumps({"text": r["arabic"] + "\n" + r["english"]["text"]},
                                    ensure_ascii=False) + "\n")
    tool = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
            str(src / "part*.jsonl"), "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", material.sentencepiece_model_path(), "--append-eod",
            "--workers", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    single = subprocess.run(tool + ["--output-prefix", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    t0 = time.time()
    wrap = " ".join(f"'{a}'" for a in tool + ["--output-prefix", str(tmp_path / "ar")])
    job = slurm_cluster.sbatch("--array=0-3", "-n1", "-c1", "--chdir", REPO, "--export=ALL",
                               "--output", str(tmp_path / "task-%a.out"), "--wrap", wrap, env=env)
    deadline = time.time() + 300
    while True:
        out = slurm_cluster.cmd("scontrol", "-o", "show", "job", str(job), check=False)
        states = re.findall(r"JobState=(\S+)", out)
        if states and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
                          for s in states):
            break
        assert time.time() < deadline, out
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("task-*.out")))
    assert states == ["COMPLETED"] * 4, (out, logs[-3000:])
    nodes = set(re.findall(r" NodeList=(\S+)", out))
    assert nodes == {h.name for h in slurm_cluster.nodes}, out  # both "hosts" took tasks
    TIMINGS["array preprocess (4 tasks)"] = time.time() - t0
    shards = sorted(tmp_path.glob("ar_shard*_of_4_text_document.idx"))
    assert len(shards) == 4, os.listdir(tmp_path)
    merge = subprocess.run([sys.executable, os.path.join(REPO, "tools", "merge_datasets.py"),
                            "--input", *map(str, shards), "--output-prefix",
                            str(tmp_path / "merged")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert merge.returncode == 0, merge.stderr[-3000:]
    for ext in (".bin", ".idx"):
        assert ((tmp_path / f"merged{ext}").read_bytes()
                == (tmp_path / f"one_text_document{ext}").read_bytes())

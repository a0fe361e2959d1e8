"""The torchrun launcher (examples/torchrun/) across two hosts emulated by network namespaces
(netns.py): two agents, one per host, each started through examples/torchrun/tiny_cpu.sh, form a
c10d rendezvous and train the CPU quickstart's tiny recipe (TP 2 x PP 2, gloo) on 2 hosts x 2
processes. Oracle: the same recipe run on one host as the quickstart runs it (plain
``torch.distributed.run --nproc_per_node 4``); losses, grad norms, learning rates and the eval
record must be equal bit for bit.

Failure modes end with one ``error:`` line (exit 2) within a bounded time, never a hang: agents
disagreeing on NNODES, one agent of two started (rendezvous timeout), an unreachable or
unresolvable master, NODE_RANK=0 on the wrong host. examples/cluster_env.sh: the NCCL/gloo
interface comes from the route to MASTER_ADDR (the namespace's eth0 for a peer or its own
address, lo for 127.0.0.1), NCCL_IB_GID_INDEX is set only on RoCE (fake sysfs trees: none,
InfiniBand, RoCE), ENV_ACTIVATE activates a venv.

Design choices
- The namespaces get a resolv.conf that fails at once (tests/cluster/netns.sh): c10d's
  TCPStore reverse-resolves ::1 / v4-mapped peer addresses, which /etc/hosts does not list, and the host's DNS server is unreachable from inside a namespace, so
  every store connection would otherwise stall ~10 s (5 s resolver timeout x 2 attempts) and
  time out at the short rendezvous timeouts used here. A real cluster has DNS.
- Rendezvous and store timeouts are a few seconds (RDZV_JOIN_TIMEOUT, RDZV_READ_TIMEOUT), so
  each failure test ends well under a minute.
- Short training (3 steps, 1 eval micro-batch, 8 cloze items): the check is the launch path and
  cross-host collectives, not learning (tests/training/ covers that).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import netns  # noqa: E402

pytestmark = pytest.mark.multiproc

REPO = os.path.dirname(os.path.dirname(HERE))
PREFIX, SUBNET = "marnt", "10.77.2"
SCRIPT = "examples/torchrun/tiny_cpu.sh"
RECIPE = "examples/recipes/tiny_cpu.yaml"
OVERRIDES = ["--train-iters", "3", "--lr-warmup-iters", "1", "--lr-cooldown-iters", "1",
             "--eval-iters", "1", "--mc-limit", "8", "--generate-tokens", "4", "--log-interval", "1"]
FAIL_BOUND_S = 50  # every failure mode must end within this


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHON=sys.executable)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME",
              "NCCL_IB_GID_INDEX", "LOCAL_ADDR", "RDZV_ID", "ENV_ACTIVATE"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hosts():
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"two-host torchrun tests need network namespaces: {reason}")
    with netns.hosts(PREFIX, SUBNET, 2) as hs:
        yield hs


@pytest.fixture(scope="module")
def quickstart_data():
    """The tiny recipe's data (.cache/quickstart), built as quickstart_cpu.sh's data step does;
    reused when already built with the same settings."""
    from examples.quickstart.data import build_quickstart_data

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return build_quickstart_data(".cache/quickstart", 2048, n_ar=1500, n_en=1500, n_code=40)
    finally:
        os.chdir(cwd)


def _start(host, env, *args):
    argv = ["bash", SCRIPT, *args]
    return subprocess.Popen(host.wrap(argv) if host else argv, cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _finish(procs, timeout):
    """Wait for all; kill every process group still running at ``timeout``. -> [(rc, out, err)]."""
    deadline = time.time() + timeout
    out = []
    try:
        for p in procs:
            try:
                o, e = p.communicate(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                o, e = p.communicate()
                pytest.fail(f"still running after {timeout} s (a hang):\n{e[-3000:]}")
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return out


def _error_line(rc, err):
    """The launcher's single `error:` line, which must also be the last line of stderr."""
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], (rc, err[-3000:])
    return errors[0]


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def test_two_hosts_x_two_processes_match_one_host_bit_for_bit(hosts, quickstart_data, tmp_path):
    # Reference: one host, 4 processes, as examples/quickstart_cpu.sh starts them.
    ref_dir = str(tmp_path / "one_host")
    t0 = time.time()
    ref = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
                          "--master_addr", "127.0.0.1", "--master_port", str(_port()),
                          "-m", "megatron_ar.train", "--config", RECIPE, "--run-dir", ref_dir, *OVERRIDES],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert ref.returncode == 0, ref.stderr[-4000:]
    t1 = time.time()
    # Two agents, one per host, through the launcher; the rendezvous host by name (/etc/hosts).
    run_dir = str(tmp_path / "two_hosts")
    common = dict(MASTER_ADDR=hosts[0].name, MASTER_PORT=29500, RDZV_JOIN_TIMEOUT=120,
                  RDZV_READ_TIMEOUT=60)
    procs = [_start(h, _env(NODE_RANK=i, **common), "--run-dir", run_dir, *OVERRIDES)
             for i, h in enumerate(hosts)]
    results = _finish(procs, 400)
    print(f"\nwall: one host x 4 {t1 - t0:.1f} s, two hosts x 2 {time.time() - t1:.1f} s")
    for i, (rc, _, err) in enumerate(results):
        assert rc == 0, f"host {i}:\n{err[-4000:]}"
    # Each node found its interface and address from the route to the master.
    assert f"node 0 ({hosts[0].addr} via eth0) of 2 x 2" in results[0][2]
    assert f"node 1 ({hosts[1].addr} via eth0) of 2 x 2" in results[1][2]
    assert "GLOO_SOCKET_IFNAME=eth0" in results[1][2]
    a, b = _metrics(ref_dir), _metrics(run_dir)
    train = [r for r in a if r.get("kind", "train") == "train"]
    assert [r["step"] for r in train] == [0, 1, 2]
    keys = ("step", "loss", "grad_norm", "lr", "consumed_samples", "phase")
    assert [{k: r.get(k) for k in keys} for r in a if r.get("kind", "train") == "train"] == \
           [{k: r.get(k) for k in keys} for r in b if r.get("kind", "train") == "train"]
    ev_a = [r for r in a if r.get("kind") == "eval"]
    ev_b = [r for r in b if r.get("kind") == "eval"]
    assert len(ev_a) == 1 and ev_a[0]["valid"] and ev_a[0]["tasks"]
    assert [(r["valid"], r["tasks"], r.get("generations")) for r in ev_a] == \
           [(r["valid"], r["tasks"], r.get("generations")) for r in ev_b]


def test_agents_disagreeing_on_nnodes_fail_naming_it(hosts):
    port = 29501
    common = dict(MASTER_ADDR=hosts[0].addr, MASTER_PORT=port, RDZV_JOIN_TIMEOUT=6, RDZV_READ_TIMEOUT=6)
    t0 = time.time()
    procs = [_start(hosts[0], _env(NODE_RANK=0, NNODES=2, **common)),
             _start(hosts[1], _env(NODE_RANK=1, NNODES=3, **common))]
    (rc0, _, err0), (rc1, _, err1) = _finish(procs, FAIL_BOUND_S)
    print(f"\nwall {time.time() - t0:.1f} s")
    line0 = _error_line(rc0, err0)
    assert "timed out after RDZV_JOIN_TIMEOUT=6s" in line0 and "NNODES=2" in line0, line0
    line1 = _error_line(rc1, err1)  # timed out too, or lost the store when the host gave up
    assert ("NNODES=3" in line1 or "rendezvous store" in line1), line1


def test_one_of_two_agents_started_times_out(hosts):
    t0 = time.time()
    p = _start(hosts[0], _env(NODE_RANK=0, NNODES=2, MASTER_ADDR=hosts[0].name, MASTER_PORT=29502,
                              RDZV_JOIN_TIMEOUT=5, RDZV_READ_TIMEOUT=5))
    [(rc, _, err)] = _finish([p], FAIL_BOUND_S)
    print(f"\nwall {time.time() - t0:.1f} s")
    line = _error_line(rc, err)
    assert line.startswith(f"error: rendezvous megatron-ar-tiny_cpu-n2 at {hosts[0].name}:29502 "
                           "timed out after RDZV_JOIN_TIMEOUT=5s: not all NNODES=2 agents joined"), line


def test_unreachable_or_wrong_master_fails_before_torchrun(hosts):
    ghost = f"{SUBNET}.99"  # in the subnet, no host
    t0 = time.time()
    p = _start(hosts[1], _env(NODE_RANK=1, MASTER_ADDR=ghost, MASTER_PORT=29503, RDZV_READ_TIMEOUT=4))
    [(rc, _, err)] = _finish([p], FAIL_BOUND_S)
    wall = time.time() - t0
    print(f"\nwall {wall:.1f} s")
    line = _error_line(rc, err)
    assert line.startswith(f"error: MASTER_ADDR={ghost} ({ghost}) port 29503 is not reachable from this "
                           f"node ({hosts[1].addr} via eth0) within RDZV_READ_TIMEOUT=4s"), line
    assert wall < 4 + 15
    assert "launcher:" not in err  # torchrun never started
    # a name that does not resolve, and NODE_RANK=0 on a host that does not own MASTER_ADDR
    p = _start(hosts[1], _env(NODE_RANK=1, MASTER_ADDR="no-such-host.invalid"))
    line = _error_line(*_finish([p], FAIL_BOUND_S)[0][::2])
    assert line == "error: MASTER_ADDR=no-such-host.invalid does not resolve to an IPv4 address on this node"
    p = _start(hosts[1], _env(NODE_RANK=0, MASTER_ADDR=hosts[0].name))
    line = _error_line(*_finish([p], FAIL_BOUND_S)[0][::2])
    assert line.startswith(f"error: NODE_RANK=0 hosts the rendezvous at MASTER_ADDR={hosts[0].name} "
                           f"({hosts[0].addr}), which is not an address of this node"), line


def _sourced(cmd, env, host=None):
    argv = ["bash", "-c", f"set -euo pipefail; source examples/cluster_env.sh; {cmd}"]
    p = subprocess.run(host.wrap(argv) if host else argv, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_interface_follows_the_route_to_master(hosts):
    show = 'echo "$NCCL_SOCKET_IFNAME $GLOO_SOCKET_IFNAME"'
    h0, h1 = hosts
    assert _sourced(show, _env(MASTER_ADDR=h1.name), h0) == "eth0 eth0"    # a peer
    assert _sourced(show, _env(MASTER_ADDR=h0.addr), h0) == "eth0 eth0"    # itself: not lo
    assert _sourced(show, _env(MASTER_ADDR="127.0.0.1"), h0) == "lo lo"
    assert _sourced(show, _env(MASTER_ADDR=h1.name, NCCL_SOCKET_IFNAME="ib0"), h0) == "ib0 eth0"
    assert _sourced('echo "${NCCL_SOCKET_IFNAME-unset}"', _env(), h0) == "unset"  # no master: NCCL picks


def _fake_sysfs(root, ports):
    """``ports``: [(device, link_layer, {gid index: (type, gid)})] as /sys/class/infiniband shows."""
    for dev, layer, gids in ports:
        port = root / dev / "ports" / "1"
        (port / "gids").mkdir(parents=True)
        (port / "gid_attrs" / "types").mkdir(parents=True)
        (port / "link_layer").write_text(layer + "\n")
        for i, (typ, gid) in gids.items():
            (port / "gids" / str(i)).write_text(gid + "\n")
            (port / "gid_attrs" / "types" / str(i)).write_text(typ + "\n")
    return str(root)


def test_gid_index_only_on_roce(tmp_path):
    show = 'echo "${NCCL_IB_GID_INDEX-unset}"'
    link_local = "fe80:0000:0000:0000:0ae0:cff4:fe12:3456"
    v4 = "0000:0000:0000:0000:0000:ffff:0a00:0001"
    table = {0: ("IB/RoCE v1", link_local), 1: ("RoCE v2", link_local), 2: ("IB/RoCE v1", v4),
             3: ("RoCE v2", v4)}
    none = tmp_path / "none"
    none.mkdir()
    assert _sourced(show, _env(IB_SYSFS=str(none))) == "unset"
    ib = _fake_sysfs(tmp_path / "ib", [("mlx5_0", "InfiniBand", {0: ("IB/RoCE v1", link_local)}),
                                       ("mlx5_1", "InfiniBand", {0: ("IB/RoCE v1", link_local)})])
    assert _sourced(show, _env(IB_SYSFS=ib)) == "unset"
    roce = _fake_sysfs(tmp_path / "roce", [("mlx5_0", "Ethernet", table), ("mlx5_1", "Ethernet", table)])
    assert _sourced(show, _env(IB_SYSFS=roce)) == "3"
    moved = {**table, 3: ("RoCE v2", link_local), 5: ("RoCE v2", v4)}
    roce5 = _fake_sysfs(tmp_path / "roce5", [("mlx5_0", "Ethernet", moved)])
    assert _sourced(show, _env(IB_SYSFS=roce5)) == "5"
    mixed = _fake_sysfs(tmp_path / "mixed", [("mlx5_0", "Ethernet", table), ("mlx5_1", "InfiniBand", {})])
    assert _sourced(show, _env(IB_SYSFS=mixed)) == "unset"
    assert _sourced(show, _env(IB_SYSFS=roce, NCCL_IB_GID_INDEX="1")) == "1"  # the user's wins


def test_env_activation(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    out = _sourced('echo "$VIRTUAL_ENV"; command -v python', _env(ENV_ACTIVATE=str(venv)))
    assert out.splitlines() == [str(venv), str(venv / "bin" / "python")]
    conda = tmp_path / "conda_env"
    (conda / "conda-meta").mkdir(parents=True)
    (conda / "bin").mkdir()
    env = _env(ENV_ACTIVATE=str(conda))
    env["PATH"] = "/usr/bin:/bin"  # no conda on PATH: the prefix's bin goes first
    assert _sourced('echo "$CONDA_PREFIX:${PATH%%:*}"', env) == f"{conda}:{conda}/bin"
    bad = subprocess.run(["bash", "-c", "set -euo pipefail; source examples/cluster_env.sh; echo reached"],
                         cwd=REPO, env=_env(ENV_ACTIVATE=str(tmp_path / "nothing")), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "reached" not in bad.stdout
    assert bad.stderr.strip() == (f"error: ENV_ACTIVATE={tmp_path / 'nothing'} is neither a file to source, "
                                  "a venv (bin/activate) nor a conda environment (conda-meta/)")

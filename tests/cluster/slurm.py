"""A real Slurm cluster on one machine for the launcher tests: ``munged`` and ``slurmctld`` in the
root network namespace, one ``slurmd -N <node>`` per network namespace (``netns.py``).

``cluster(n, cpus)`` is a context manager yielding a :class:`Cluster`; ``slurm_cluster`` is the
module-scoped pytest fixture over it (two nodes of 2 CPUs: ``-N2 --ntasks-per-node=2``). Every
file the cluster writes (slurm.conf, cgroup.conf, spool, state, logs, the munge key and socket,
pid files) lives in one temporary directory; teardown stops the daemons by pid (SIGTERM, then
SIGKILL), removes the namespaces and their /etc/hosts lines, and deletes the directory.

Design choices
- Debian's ``slurm-wlm`` 22.05 and ``munge`` (``.ci/install.sh`` installs them when root).
  ``unavailable_reason()`` names what is missing; the tests skip with it.
- The namespaces share the kernel's host name, so nodes are only told apart by Slurm's node
  names and addresses (``NodeName=marns0 NodeAddr=10.77.1.10``); the launcher under test must
  resolve the first node through ``scontrol``, never ``hostname``. ``SlurmctldHost`` must be
  this machine's host name (slurmctld refuses to start otherwise), with the bridge address in
  parentheses so the slurmd's in the namespaces reach it.
- Settings this kernel needs: ``cgroup/v1`` (auto-detection fails on the sandbox's cgroup
  mount), ``proctrack/linuxproc`` and ``task/none`` (no cgroup confinement), ``MailProg=/bin/true``.
- ``AuthInfo=cred_expire=10``: a requeued job waits ``cred_expire`` seconds before it may run
  again (default 120 s, slurm.conf(5)); 10 s, with a 1 s scheduling interval, keeps the
  requeue test short (measured: requeue -> second start 24 s with the default intervals, 11 s).
- munged runs as root with ``--force`` and its own key, socket and seed file, so it never touches
  the machine's /etc/munge or a system munged; Slurm finds it through ``AuthInfo=socket=``.
- Daemons run in the foreground (``-D``/``-F``) as our children with pid files, so teardown
  stops exactly what set-up started.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

PREFIX = "marns"
SUBNET = "10.77.1"
CTLD_PORT = 6917   # not the default 6817/6818: never a system Slurm's ports
SLURMD_PORT = 6918
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo",
            "squeue", "scancel")


def unavailable_reason() -> Optional[str]:
    """Why a Slurm test cluster cannot run here, or None."""
    reason = netns.unavailable_reason()
    if reason:
        return reason
    missing = [b for b in BINARIES if shutil.which(b) is None
               and not os.path.exists(os.path.join("/usr/sbin", b))]
    if missing:
        return ("Slurm/munge not installed (" + ", ".join(missing) + "): apt-get install slurm-wlm "
                "munge (.ci/install.sh does this when run as root)")
    return None


def _which(name: str) -> str:
    return shutil.which(name) or os.path.join("/usr/sbin", name)


@dataclasses.dataclass
class Cluster:
    root: str                       # the temporary directory holding all Slurm state
    conf: str                       # slurm.conf (SLURM_CONF for the client commands)
    nodes: List[netns.Host]
    cpus: int

    @property
    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def cmd(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        p = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def sbatch(self, *args: str, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> int:
        full = dict(self.env, **(env or {}))
        p = subprocess.run(["sbatch", "--parsable", *args], env=full, cwd=cwd,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return int(p.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.cmd("scontrol", "-o", "show", "job", str(job_id), check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def state(self, job_id: int) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait(self, job_id: int, timeout: float = 600, poll: float = 0.5) -> Dict[str, str]:
        """Wait until the job is finished (not pending/running/requeued); returns its record."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            info = self.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                        "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"):
                return info
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} still {self.state(job_id)} after {timeout:.0f} s")

    def idle_nodes(self) -> List[str]:
        out = self.cmd("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return [ln.split()[0] for ln in out.splitlines() if ln.split()[1:] == ["idle"]]

    def log(self, name: str) -> str:
        path = os.path.join(self.root, "log", name)
        return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""


def _conf(root: str, nodes: List[netns.Host], cpus: int) -> str:
    host = socket.gethostname()
    lines = [
        f"ClusterName={PREFIX}",
        f"SlurmctldHost={host}({SUBNET}.1)",
        f"SlurmctldPort={CTLD_PORT}",
        f"SlurmdPort={SLURMD_PORT}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root}/run/munge.sock,cred_expire=10",
        "CredType=cred/munge",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/spool/ctld",
        f"SlurmdSpoolDir={root}/spool/d-%n",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd-%n.log",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        # a pending job (a requeued one once eligible) starts within a second, not at the next
        # 60 s main-loop / 30 s backfill pass
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "KillWait=10",
        "MinJobAge=600",  # finished jobs stay visible to scontrol for the whole test module
    ]
    lines += [f"NodeName={h.name} NodeAddr={h.addr} CPUs={cpus} State=UNKNOWN" for h in nodes]
    lines.append(f"PartitionName=test Nodes={','.join(h.name for h in nodes)} Default=YES "
                 "MaxTime=INFINITE State=UP")
    path = os.path.join(root, "etc", "slurm.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "etc", "cgroup.conf"), "w", encoding="utf-8") as f:
        f.write("CgroupPlugin=cgroup/v1\n")
    return path


def _stop(procs: List[subprocess.Popen], timeout: float = 10) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    t0 = time.time()
    for p in procs:
        try:
            p.wait(timeout=max(0.1, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def cluster(n: int = 2, cpus: int = 2, start_timeout: float = 60) -> Iterator[Cluster]:
    """Start munged, slurmctld and ``n`` slurmd nodes of ``cpus`` CPUs; wait until all are idle."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = tempfile.mkdtemp(prefix="marns-slurm-")
    os.chmod(root, 0o755)
    for sub in ("etc", "spool/ctld", "log", "run", "munge"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.chmod(os.path.join(root, "munge"), 0o700)
    key = os.path.join(root, "munge", "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    procs: List[subprocess.Popen] = []

    def spawn(argv: List[str], name: str) -> subprocess.Popen:
        out = open(os.path.join(root, "log", name + ".out"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        procs.append(p)
        return p

    try:
        with netns.hosts(PREFIX, SUBNET, n) as nodes:
            try:
                spawn([_which("munged"), "-F", "--force", f"--key-file={key}",
                       f"--socket={root}/run/munge.sock", f"--pid-file={root}/run/munged.pid",
                       f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"], "munged")
                _wait_for(lambda: os.path.exists(f"{root}/run/munge.sock"), 15, "munged socket", root)
                conf = _conf(root, nodes, cpus)
                c = Cluster(root=root, conf=conf, nodes=nodes, cpus=cpus)
                spawn([_which("slurmctld"), "-D", "-i", "-f", conf], "slurmctld")
                for h in nodes:
                    spawn(h.wrap([_which("slurmd"), "-D", "-N", h.name, "-f", conf]), f"slurmd-{h.name}")
                _wait_for(lambda: sorted(c.idle_nodes()) == sorted(h.name for h in nodes),
                          start_timeout, "all nodes idle in sinfo", root, procs)
                yield c
            finally:
                # slurmd first (it ends the job steps it still runs), then the controller, munged
                _stop(procs[2:])
                _stop(procs[1:2])
                _stop(procs[:1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(pred, timeout: float, what: str, root: str, procs: Optional[List] = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        dead = [p.args[0] for p in procs or [] if p.poll() is not None]
        if dead:
            what += f" ({', '.join(dead)} exited)"
            break
        time.sleep(0.2)
    logs = []
    for name in sorted(os.listdir(os.path.join(root, "log"))):
        with open(os.path.join(root, "log", name), errors="replace") as f:
            logs.append(f"--- {name}\n{f.read()[-1500:]}")
    raise RuntimeError(f"Slurm test cluster: no {what}\n" + "\n".join(logs))


@pytest.fixture(scope="module")
def slurm_cluster():
    """Two Slurm nodes (namespaces marns0/marns1, 2 CPUs each) for the module; skipped, with
    the reason, where namespaces or Slurm are unavailable."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    t0 = time.time()
    with cluster(2, 2) as c:
        c.startup_s = time.time() - t0
        yield c

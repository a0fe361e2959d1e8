"""Run a function over input files (shards) with worker processes, progress and resume.

Design choices and trade-offs:

* **Input files are the unit of work** (as in Dolma / datatrove). Each finished shard leaves a
  small JSON done-marker holding its summary and a fingerprint of its input (size + mtime_ns)
  and of the tool's options, written *after* its outputs are published; a rerun skips shards
  whose marker matches and redoes everything else. Finer-grained checkpoints (within a shard)
  were rejected: they need seekable compressed input and make outputs depend on where a crash
  happened. A single huge input file is therefore one unit: split corpora into shards.
* **Spawn-safe parallelism.** Workers come from a ``spawn`` context (no fork of a process that
  may hold torch/tokenizers threads); the shard function must be a top-level function of an
  importable module and its options picklable. Progress flows back through a queue handed to
  the pool initializer (the only way a plain ``multiprocessing.Queue`` may reach pool workers)
  and is shown with tqdm over *on-disk* bytes, so the ETA is right for compressed inputs too.
  ``concurrent.futures`` rather than ``multiprocessing.Pool``: a worker that dies (OOM kill,
  segfault) raises ``BrokenProcessPool`` instead of hanging the run.
* Temps left by a killed run in the output folder are removed at start
  (:func:`megatron_ar.io.atomic.remove_stale_temps`), and an output that would overwrite its own
  input is refused.
* **Existing outputs are refused unless ``overwrite``** (:mod:`megatron_ar.io.outputs`'s rule):
  a ``.started.json`` marker is written *before* a shard starts and replaced by its
  ``.done.json`` after it, so a shard's existing outputs are known to be this tool's work for
  this input with these options (a killed run, ``--no-resume`` or an input changed since:
  redone, make-like) or not (other options, or no marker at all: refused with that reason).
  Files in the folder that are no shard's output are never touched.
* **Cluster scale without a coordinator** (:class:`ShardSpec`): ``--shard-index K
  --num-shards N`` (default: the Slurm array variables) makes a run process only its part of
  the sorted input list, so N array tasks on N nodes split a corpus with no shared state but
  the output folder. The rule (:func:`shard_inputs`): the sorted inputs are cut into N
  *contiguous* ranges balanced by on-disk bytes, file ``i`` going to shard
  ``floor(N * (bytes before i + size_i / 2) / total bytes)``. Contiguous (not round-robin), so
  concatenating the shards' outputs in shard order is the single-process order (what
  ``preprocess_data`` and dedup's "earlier inputs win" need); by bytes, so one huge file does
  not leave the other tasks idle. Every task computes the same split from the same listing
  (the rule reads only sizes, which do not change while the pipeline runs). Output names and
  done markers are per input, computed over the *whole* list, so outputs are byte-identical
  whatever N, and a failed task is rerun alone (the others' markers make them skip).
  A task given no input exits 0 with an empty summary. Concurrent tasks share the output
  folder safely: temps carry host and pid (:mod:`megatron_ar.io.atomic`), and a sharded run
  never removes the folder on failure (another task may be writing into it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

from megatron_ar.io.atomic import remove_stale_temps, write_json_atomic
from megatron_ar.io.outputs import OutputError, dirs_removed_on_failure, refuse_overlap
from megatron_ar.io.summary import merge_summaries

__all__ = ["ShardSpec", "ShardTask", "ShardRunner", "run_shards", "fingerprint", "shard_inputs",
           "shard_of_inputs"]

_PROGRESS_QUEUE = None  # set in pool workers by _init_worker


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Which part of the inputs this process handles: ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"--num-shards: must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"--shard-index: must be in [0, --num-shards {self.count}), "
                             f"got {self.index}")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def suffix(self) -> str:
        """``_shardK_of_N`` with K zero-padded to N's width (names sort in shard order)."""
        return f"_shard{self.index:0{len(str(self.count))}d}_of_{self.count}"

    @classmethod
    def resolve(cls, index: Optional[int] = None, count: Optional[int] = None,
                env: Optional[dict] = None) -> "ShardSpec":
        """Flags first, then a Slurm job array's variables, then 0 of 1.

        Index: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`` (arrays may
        start at 1 or step, ``--array=1-7:2``); count: ``SLURM_ARRAY_TASK_COUNT``. A variable
        that is not an integer, or one of the two given without the other, is an error naming
        it."""
        env = os.environ if env is None else env

        def var(name: str, default: Optional[int] = None) -> Optional[int]:
            v = env.get(name)
            if v is None or v == "":
                return default
            try:
                return int(v)
            except ValueError:
                raise ValueError(f"{name}={v!r}: not an integer") from None

        if index is None and "SLURM_ARRAY_TASK_ID" in env:
            tid = var("SLURM_ARRAY_TASK_ID")
            lo, step = var("SLURM_ARRAY_TASK_MIN", 0), var("SLURM_ARRAY_TASK_STEP", 1) or 1
            if (tid - lo) % step:
                raise ValueError(f"SLURM_ARRAY_TASK_ID={tid}: not SLURM_ARRAY_TASK_MIN={lo} plus a "
                                 f"multiple of SLURM_ARRAY_TASK_STEP={step}; pass --shard-index")
            index = (tid - lo) // step
            src_i = f"--shard-index (from SLURM_ARRAY_TASK_ID={tid} - SLURM_ARRAY_TASK_MIN={lo})"
        else:
            src_i = "--shard-index"
        src_n = "--num-shards"
        if count is None:
            count = var("SLURM_ARRAY_TASK_COUNT")
            src_n = f"--num-shards (from SLURM_ARRAY_TASK_COUNT={count})"
        if index is None and count is None:
            return cls()
        if index is None:
            raise ValueError(f"--num-shards {count} needs --shard-index (or SLURM_ARRAY_TASK_ID)")
        if count is None:
            raise ValueError(f"--shard-index {index} needs --num-shards (or "
                             "SLURM_ARRAY_TASK_COUNT)")
        if count < 1:
            raise ValueError(f"{src_n}: must be >= 1, got {count}")
        if not 0 <= index < count:
            raise ValueError(f"{src_i}: must be in [0, {count}), got {index}")
        return cls(index, count)


def shard_of_inputs(inputs: Sequence[str], count: int) -> list[int]:
    """The shard of each input: contiguous ranges of ``inputs`` (in the given, sorted, order)
    balanced by on-disk bytes (module docstring); by count when every file is empty."""
    sizes = [os.path.getsize(p) for p in inputs]
    total = sum(sizes)
    if total == 0:
        return [min(count - 1, i * count // max(1, len(inputs))) for i in range(len(inputs))]
    out, before = [], 0
    for s in sizes:
        # integer form of floor(count * (before + s/2) / total)
        out.append(min(count - 1, (count * (2 * before + s)) // (2 * total)))
        before += s
    return out


def shard_inputs(inputs: Sequence[str], shard: Optional[ShardSpec]) -> list[str]:
    """The inputs ``shard`` handles (all of them for None or 1 shard)."""
    if shard is None or not shard.sharded:
        return list(inputs)
    owner = shard_of_inputs(inputs, shard.count)
    return [p for p, k in zip(inputs, owner) if k == shard.index]


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


@dataclasses.dataclass
class ShardTask:
    """One unit of work handed to a tool's shard function ``fn(task) -> dict``.

    ``output_name`` is unique among the run's inputs (the input's base name, prefixed with a
    short hash of its path when two inputs share a base name); a tool writes its outputs as
    ``task.output_path()`` / ``task.output_path(suffix)`` with
    :func:`megatron_ar.io.atomic.atomic_output` (or another ``publish_*``).
    """

    index: int
    input_path: str
    out_dir: str
    output_name: str
    options: Any = None
    on_error: str = "fail"

    def output_path(self, suffix: str = "") -> str:
        return os.path.join(self.out_dir, self.output_name + suffix)

    def report(self, disk_bytes: int, docs: int) -> None:
        """Progress callback (pass as ``iter_records(progress=task.report)``)."""
        cb = getattr(self, "_callback", None)
        if cb is not None:
            cb(disk_bytes, docs)
        elif _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put((disk_bytes, docs))


def _call_shard(fn: Callable[[ShardTask], dict], task: ShardTask) -> tuple[int, dict]:
    return task.index, fn(task)


def _unique_names(inputs: Sequence[str]) -> list[str]:
    bases = [os.path.basename(p) for p in inputs]
    counts: dict[str, int] = {}
    for b in bases:
        counts[b] = counts.get(b, 0) + 1
    return [b if counts[b] == 1 else
            hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8] + "-" + b
            for p, b in zip(inputs, bases)]


def _fingerprint(path: str, options: Any) -> dict:
    st = os.stat(path)
    opt = json.dumps(dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options,
                     sort_keys=True, default=str)
    return {"input": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "options_sha1": hashlib.sha1(opt.encode()).hexdigest()}


def _default_outputs(task: ShardTask) -> list[str]:
    try:
        names = os.listdir(task.out_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(task.out_dir, n) for n in sorted(names)
            if n == task.output_name or n.startswith(task.output_name + ".")]


def fingerprint(paths: Sequence[str], options: Any) -> str:
    """One digest of ``paths`` (path, size, mtime) and ``options``: what a whole-run output
    (a tool's final file made from every shard) was made from."""
    fps = [_fingerprint(p, options) for p in paths]
    return hashlib.sha1(json.dumps(fps, sort_keys=True).encode()).hexdigest()


class ShardRunner:
    """Run ``fn`` over input shards with ``workers`` processes, progress, and resume.

    Done markers live in ``{out_dir}/.shards/{output_name}.done.json`` (or ``marker_dir``; a tool
    with several passes gives each its own). ``run()`` returns the merged summary of all shards
    (skipped ones included, read from their markers) plus ``shards``, ``shards_skipped``,
    ``seconds``, ``input_bytes``; ``self.results`` keeps each shard's own summary for tools that
    reduce differently.

    ``shard`` (:class:`ShardSpec`) restricts the run to that part of ``inputs`` (module
    docstring); names and markers stay those of the whole list. The summary then also holds
    ``shard_index``, ``num_shards`` and ``inputs_total``.
    """

    def __init__(self, inputs: Sequence[str], out_dir: str, fn: Callable[[ShardTask], dict], *,
                 workers: int = 1, desc: str = "shards", resume: bool = True, options: Any = None,
                 on_error: str = "fail", progress: bool = True, marker_dir: Optional[str] = None,
                 overwrite: bool = False,
                 outputs: Optional[Callable[[ShardTask], Sequence[str]]] = None,
                 shard: Optional[ShardSpec] = None):
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.inputs = list(inputs)
        self.out_dir = out_dir
        self.fn = fn
        self.workers = workers
        self.desc = desc
        self.resume = resume
        self.options = options
        self.on_error = on_error
        self.progress = progress
        self.marker_dir = marker_dir or os.path.join(out_dir, ".shards")
        self.overwrite = overwrite
        # the paths a shard writes (besides temps); default: out_dir entries named after it
        self.outputs = outputs or _default_outputs
        self.results: dict[int, dict] = {}  # per-shard summaries by input index, after run()
        self.shard = shard or ShardSpec()

    def tasks(self) -> list[ShardTask]:
        """This shard's tasks (all inputs unless ``shard``); indices and names are those of the
        whole input list, so they do not depend on the sharding."""
        names = _unique_names(self.inputs)
        mine = set(shard_inputs(self.inputs, self.shard))
        return [ShardTask(i, p, self.out_dir, n, self.options, self.on_error)
                for i, (p, n) in enumerate(zip(self.inputs, names)) if p in mine]

    def _marker(self, task: ShardTask) -> str:
        return os.path.join(self.marker_dir, task.output_name + ".done.json")

    def _started(self, task: ShardTask) -> str:
        return os.path.join(self.marker_dir, task.output_name + ".started.json")

    def _read_marker(self, task: ShardTask, started: bool = False) -> Optional[dict]:
        # a started marker beside a done one is newer (finishing removes it): read it first
        for path in ((self._started(task),) if started else ()) + (self._marker(task),):
            try:
                with open(path, encoding="utf-8") as f:
                    m = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(m, dict):
                return m
        return None

    def _load_done(self, task: ShardTask) -> Optional[dict]:
        if not self.resume:
            return None
        m = self._read_marker(task)
        if m is None or m.get("fingerprint") != _fingerprint(task.input_path, self.options):
            return None  # never finished, or input or options changed since: redo
        return m.get("summary")

    def _conflict(self, task: ShardTask) -> Optional[str]:
        """Why ``task``'s existing outputs are not this run's own work, or None."""
        existing = [p for p in self.outputs(task) if os.path.lexists(p)]
        if not existing:
            return None
        m = self._read_marker(task, started=True)
        if m is None:
            why = "no record of this tool writing it"
        else:
            old, new = m.get("fingerprint") or {}, _fingerprint(task.input_path, self.options)
            # same options, input since changed (or the same: a killed run): the output is this
            # tool's for this input, and make-like, the rerun redoes it
            if old.get("options_sha1") == new["options_sha1"] and old.get("input") == new["input"]:
                return None
            why = "written with other options"
        return f"{existing[0]} ({why})"

    def _check_outputs(self, todo: Sequence[ShardTask]) -> None:
        if self.overwrite:
            return
        bad = [c for c in (self._conflict(t) for t in todo) if c]
        if bad:
            shown = "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
            raise OutputError(f"--output-dir {self.out_dir}: {len(bad)} output(s) exist that this "
                              f"run would replace: {shown}; pass --overwrite to replace them")

    def _remove_stale_temps(self) -> None:
        """Temps of killed runs in the output folder, its direct subfolders and the markers."""
        dirs = [self.out_dir, self.marker_dir]
        with contextlib.suppress(FileNotFoundError):
            dirs += [e.path for e in os.scandir(self.out_dir) if e.is_dir(follow_symlinks=False)]
        remove_stale_temps(dict.fromkeys(dirs))

    def run(self) -> dict:
        # Output names follow the input names: an output folder that holds (or lies inside) an
        # input would write over it (megatron_ar.io.outputs).
        refuse_overlap([self.out_dir], self.inputs, key="--output-dir")
        if self.shard.sharded:  # other array tasks write into the same folders: never remove them
            return self._run()
        with dirs_removed_on_failure([self.out_dir, self.marker_dir]):
            return self._run()

    def _run(self) -> dict:
        t0 = time.time()
        os.makedirs(self.marker_dir, exist_ok=True)
        self._remove_stale_temps()
        tasks = self.tasks()
        total = 0
        summary: dict = {}
        todo: list[ShardTask] = []
        done_bytes = 0
        for t in tasks:
            size = os.path.getsize(t.input_path)
            total += size
            s = self._load_done(t)
            if s is None:
                todo.append(t)
            else:
                self.results[t.index] = s
                summary = merge_summaries(summary, s)
                done_bytes += size
        self._check_outputs(todo)
        for t in todo:  # started markers: a killed shard's outputs are recognisably ours
            write_json_atomic(self._started(t), {
                "fingerprint": _fingerprint(t.input_path, self.options)})
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=done_bytes, unit="B", unit_scale=True,
                       desc=self.desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        docs = [0]

        def on_progress(nbytes: int, ndocs: int) -> None:
            docs[0] += ndocs
            if bar is not None:
                bar.update(nbytes)
                bar.set_postfix(docs=docs[0], refresh=False)

        def finish(task: ShardTask, s: dict) -> None:
            nonlocal summary
            write_json_atomic(self._marker(task), {
                "fingerprint": _fingerprint(task.input_path, self.options), "summary": s})
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._started(task))
            self.results[task.index] = s
            summary = merge_summaries(summary, s)

        try:
            if self.workers == 1 or len(todo) <= 1:
                for t in todo:
                    t._callback = on_progress  # type: ignore[attr-defined]
                    s = self.fn(t)
                    del t._callback  # type: ignore[attr-defined]
                    finish(t, s)
            else:
                self._run_pool(todo, on_progress, finish)
        finally:
            if bar is not None:
                bar.close()
        summary["shards"] = len(tasks)
        summary["shards_skipped"] = len(tasks) - len(todo)
        summary["input_bytes"] = total
        summary["seconds"] = round(time.time() - t0, 3)
        if self.shard.sharded:
            summary.update(shard_index=self.shard.index, num_shards=self.shard.count,
                           inputs_total=len(self.inputs))
        return summary

    def _run_pool(self, todo, on_progress, finish) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp
        import queue as queue_mod

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        by_index = {t.index: t for t in todo}

        def drain(timeout: float) -> None:
            with contextlib.suppress(queue_mod.Empty):
                on_progress(*q.get(timeout=timeout))
                while True:
                    on_progress(*q.get_nowait())

        ex = cf.ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=ctx,
                                    initializer=_init_worker, initargs=(q,))
        try:
            pending = {ex.submit(_call_shard, self.fn, t) for t in todo}
            while pending:
                drain(0.1)
                done, pending = cf.wait(pending, timeout=0, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    idx, s = fut.result()  # re-raises the worker's exception (RecordError...)
                    finish(by_index[idx], s)
            drain(0.0)
        except BaseException:
            for p in list(getattr(ex, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    p.terminate()  # do not wait for other shards when one failed
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=True)


def run_shards(inputs: Sequence[str], out_dir: str, fn: Callable[[ShardTask], dict],
               workers: int = 1, desc: str = "shards", resume: bool = True, **kw) -> dict:
    """Functional form of :class:`ShardRunner` (``options=``, ``on_error=``, ``progress=``)."""
    return ShardRunner(inputs, out_dir, fn, workers=workers, desc=desc, resume=resume, **kw).run()

"""Multi-phase curricula with exact sample accounting over Megatron ``.bin/.idx`` datasets.

Global sample index -> (phase, dataset, epoch, sample of that epoch, document ids, token ranges)
is a pure function of the recipe's data section, the ``.idx`` files and the seed. Megatron-LM, Megatron-Bridge and torchtitan blend datasets but have no phases
with epoch-exact accounting; this module adds exactly that on top of megatron-core.

Design choices
- Each dataset is an endless *stream* of samples: epoch ``e`` is megatron-core's own
  ``GPTDataset`` over all its documents with ``num_samples=None`` (exactly one epoch: documents
  shuffled, packed into ``seq_length + 1`` windows by ``helpers_cpp.build_sample_idx``, samples
  shuffled) and a seed derived from (seed, dataset name, epoch). So every epoch is a fresh
  shuffle *and* a fresh packing of the same documents, each document appears once per epoch, and
  the only loss is Megatron's usual sub-sequence tail of each epoch. (One ``GPTDataset`` with
  ``num_samples`` > one epoch would shuffle documents across epochs: a document could appear
  twice before another appears once, so "epoch 2 ends here" would have no meaning.)
- A phase takes ``n_d`` consecutive samples from each of its datasets' streams, continuing where
  the previous phase stopped: a phase change never repeats or drops samples, and "1.5 epochs
  then 0.5 epochs" is exactly 2 epochs. ``n_d`` comes from :mod:`curriculum_plan` (exact
  largest-remainder shares); the interleaving inside a phase is megatron-core's
  ``helpers_cpp.build_exhaustive_blending_indices``, which emits exactly ``n_d`` samples of each
  dataset while keeping every prefix within about one sample of the target proportions.
- Indices are built once on rank 0 and cached: per-epoch ``GPTDataset`` indices in megatron's
  own cache format under ``cache_dir/gpt/<name>-<idx sha>/`` (keyed by the ``.idx`` hash because
  megatron's cache key does not include file contents), the curriculum index
  (``dataset_ids.npy`` int16, ``stream_pos.npy`` int64 per global sample, the same 10 bytes per
  sample as megatron's ``BlendedDataset``) under ``cache_dir/curriculum-<fingerprint>/``. Every
  cache entry is built in a private staging folder and published by rename; megatron's
  ``GPTDataset`` writes its ``.npy`` files in place, so we point it at the staging folder.
- Data state for resume is ``consumed_samples`` + seed + fingerprint + the manifest;
  :meth:`CurriculumDataset.load_state_dict` refuses a checkpoint whose fingerprint differs and
  lists what changed (dataset .idx, budget, share, seq length, ...).
- :class:`PretrainingSampler` has Megatron-LM's ``MegatronPretrainingSampler`` semantics
  (megatron-core 0.16 ships no sampler): consecutive global indices, micro batch ``m`` of DP rank
  ``r`` in a step is ``consumed + m*mbs*dp + r*mbs + [0, mbs)``; :func:`batch_layout` gives the
  same mapping for back-tracing a step.
- ``document_ids`` are megatron ``GPTDataset``'s: indices of IndexedDataset *sequences* (one per
  document with ``preprocess_data`` defaults), so ``IndexedDataset.get(doc, start, stop - start)``
  returns the exact tokens of a token range.

Trade-offs (stated honestly)
- Per-epoch indices cost disk: megatron's document/sample/shuffle index is ~12 bytes per sample
  per epoch (about 3 GB per trillion tokens at seq 4096) plus 10 bytes per curriculum sample.
- Each epoch loses its sub-sequence tail (< seq_length + 1 tokens per dataset epoch), exactly as
  Megatron's ``GPTDataset`` does; the plan reports samples, not raw tokens, for that reason.
- The interleaving inside a phase is deterministic (megatron's error-feedback order), not
  random; the randomness is in each dataset epoch's document and sample shuffles.
- A strict fingerprint blocks any recipe edit on resume; ``load_state_dict(...,
  allow_future_changes=True)`` relaxes it to edits of phases that have not started (appending a
  cool-down mid-run), which provably leaves the trained-on prefix unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
import torch

from megatron_ar.data.curriculum_config import (  # noqa: F401  (re-exported API)
    BlendGroup,
    CurriculumConfig,
    CurriculumConfigError,
    PhaseConfig,
    parse_token_count,
)
from megatron_ar.io.atomic import publish_dir, remove_stale_temps, temp_path, write_text_atomic
from megatron_ar.data.curriculum_plan import (  # noqa: F401  (re-exported API)
    CurriculumDataError,
    CurriculumPlan,
    DatasetStats,
    PhasePlan,
    build_manifest,
    collect_stats,
    diff_manifests,
    fingerprint_of,
    plan_curriculum,
    prefix_compatible,
)

logger = logging.getLogger(__name__)

__all__ = [
    # config (curriculum_config)
    "CurriculumConfig", "PhaseConfig", "BlendGroup", "CurriculumConfigError", "parse_token_count",
    # plan (curriculum_plan)
    "CurriculumPlan", "PhasePlan", "DatasetStats", "CurriculumDataError", "plan_curriculum",
    "collect_stats", "build_manifest", "fingerprint_of", "diff_manifests", "prefix_compatible",
    # data
    "CurriculumDataset", "SampleInfo", "CurriculumMismatchError", "PretrainingSampler", "batch_layout",
    "prepare_curriculum", "build_curriculum_index", "epoch_seed",
]


class CurriculumMismatchError(RuntimeError):
    """Cached indices or a checkpoint's data state belong to a different data/recipe."""


def epoch_seed(seed: int, dataset: str, epoch: int) -> int:
    """Seed of one dataset epoch's shuffles (numpy RandomState accepts < 2**32)."""
    h = hashlib.sha256(f"megatron_ar.curriculum/{seed}/{dataset}/{epoch}".encode()).digest()
    return int.from_bytes(h[:4], "little")


class _TokenIds:
    """The part of a tokenizer megatron's ``GPTDataset`` uses (eod/pad ids). A constant
    ``unique_identifiers`` keeps megatron's cache key independent of the tokenizer object: the
    indices do not depend on it."""

    vocab_size = None

    def __init__(self, eod: Optional[int], pad: Optional[int]):
        self._eod, self._pad = eod, pad

    @property
    def unique_identifiers(self) -> "OrderedDict[str, str]":
        return OrderedDict(cls="megatron_ar.data.curriculum")

    @property
    def eod(self) -> int:
        # Unknown eod: -2 matches no token id and does not collide with megatron's pad id (-1),
        # so the masks stay plain causal ones (the config refuses eod-dependent options).
        return -2 if self._eod is None else self._eod

    @property
    def pad(self) -> int:
        if self._pad is None:
            raise AttributeError("no pad id")  # megatron then uses its own pad id (-1)
        return self._pad


@dataclass(frozen=True)
class SampleInfo:
    """Where one global sample comes from (everything back-tracing needs)."""

    global_index: int
    phase: int
    phase_name: str
    dataset: str
    dataset_id: int
    group: str
    prefix: str
    stream_position: int  # position in the dataset's endless sample stream
    epoch: int
    epoch_sample: int  # index into that epoch's GPTDataset
    document_ids: Tuple[int, ...]
    token_ranges: Tuple[Tuple[int, int, int], ...]  # (document id, start, stop) half-open

    @property
    def num_tokens(self) -> int:
        return sum(b - a for _, a, b in self.token_ranges)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["token_ranges"] = [list(r) for r in self.token_ranges]
        d["document_ids"] = list(self.document_ids)
        d["num_tokens"] = self.num_tokens
        return d


# ---------------------------------------------------------------------------------- helpers
def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gpt_config(config: CurriculumConfig, prefix: str, seed: int, cache: str):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed, sequence_length=config.require_seq_length(), blend=([prefix], None),
        split="1,0,0", path_to_cache=cache, tokenizer=_TokenIds(config.eod_token_id, config.pad_token_id),
        reset_position_ids=config.reset_position_ids, reset_attention_mask=config.reset_attention_mask,
        eod_mask_loss=config.eod_mask_loss, create_attention_mask=config.create_attention_mask,
        add_extra_token_to_sequence=config.add_extra_token_to_sequence, mmap_bin_files=True)


def _open_indexed(name: str, prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path, get_idx_path

    for path in (get_idx_path(prefix), get_bin_path(prefix)):
        if not os.path.isfile(path):
            raise CurriculumDataError(f"data.datasets.{name}: file not found: {path}")
    ds = IndexedDataset(prefix, multimodal=False, mmap=True)
    idx = ds.index
    expected = int(idx.sequence_pointers[-1]) + int(idx.sequence_lengths[-1]) * idx.dtype_size
    actual = os.path.getsize(get_bin_path(prefix))
    if actual != expected:
        raise CurriculumDataError(f"data.datasets.{name}: {get_bin_path(prefix)} has {actual} bytes, "
                                  f"its .idx describes {expected} (truncated or mismatched pair)")
    return ds


def _gpt_cache_dir(cache_dir: str, stats: DatasetStats) -> str:
    return os.path.join(cache_dir, "gpt", f"{stats.name}-{stats.idx_sha256[:16]}")


def _dataset_label(stats: DatasetStats) -> str:
    """What megatron's GPTDataset records as ``dataset_path`` (part of its cache-file hash). Not
    the path: a location-independent label of the ``.idx`` content, so the cached indices stay
    valid when the data moves to another mount (megatron-core hashes ``dataset_path`` into the
    cache file names; the real path would make a moved dataset miss its own cache)."""
    return f"{stats.name}@idx-sha256:{stats.idx_sha256[:16]}"


def _epoch_marker(folder: str, epoch: int, seed: int, config: CurriculumConfig) -> str:
    """Marker of a published epoch, keyed by every setting that changes megatron's cache files
    (a marker of other settings must not claim their files)."""
    settings = json.dumps([config.require_seq_length(), config.add_extra_token_to_sequence,
                           config.reset_position_ids, config.reset_attention_mask,
                           config.eod_mask_loss, config.create_attention_mask, config.eod_token_id,
                           config.pad_token_id])
    tag = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return os.path.join(folder, f"epoch{epoch}-seed{seed}-{tag}.ok")


def _build_epoch(config: CurriculumConfig, stats: DatasetStats, indexed, epoch: int, cache_dir: str) -> None:
    """Build one dataset epoch's megatron indices in staging and publish them into the cache."""
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    final = _gpt_cache_dir(cache_dir, stats)
    seed = epoch_seed(config.seed, stats.name, epoch)
    marker = _epoch_marker(final, epoch, seed, config)
    if os.path.isfile(marker):
        return
    os.makedirs(final, exist_ok=True)
    # megatron's GPTDataset writes its .npy files in place under path_to_cache: give it a temp
    # folder of the io layer's convention (a killed build's leftover is recognisable and removed
    # by remove_stale_temps), then move the finished files into the shared epoch folder.
    staging = temp_path(os.path.join(final, f"epoch{epoch}"))
    remove_stale_temps([final])
    os.makedirs(staging, exist_ok=True)
    try:
        gd = GPTDataset(indexed, _dataset_label(stats), numpy.arange(stats.num_sequences, dtype=numpy.int32),
                        None, Split.train, _gpt_config(config, stats.prefix, seed, staging))
        if len(gd) != stats.samples_per_epoch:
            raise CurriculumDataError(
                f"data.datasets.{stats.name}: megatron GPTDataset built {len(gd)} samples for one "
                f"epoch, the plan expects {stats.samples_per_epoch}")
        del gd
        files = sorted(os.listdir(staging), key=lambda f: f.endswith("description.txt"))
        for f in files:  # description last: megatron treats the set as a cache hit only when complete
            os.replace(os.path.join(staging, f), os.path.join(final, f))
        write_text_atomic(marker, json.dumps({"dataset": stats.name, "epoch": epoch, "seed": seed,
                                              "files": files}))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_curriculum_index(plan: CurriculumPlan) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(dataset_ids int16, stream_pos int64) for every global sample of the curriculum."""
    from megatron.core.datasets import helpers

    names = list(plan.stats)
    dataset_ids = numpy.empty(plan.total_samples, dtype=numpy.int16)
    stream_pos = numpy.empty(plan.total_samples, dtype=numpy.int64)
    for ph in plan.phases:
        active = [dp for dp in ph.datasets if dp.samples > 0]  # the helper loops on zero sizes
        sizes = numpy.array([dp.samples for dp in active], dtype=numpy.int64)
        local = numpy.zeros(ph.samples, dtype=numpy.int16)
        local_sample = numpy.zeros(ph.samples, dtype=numpy.int64)
        helpers.build_exhaustive_blending_indices(local, local_sample, sizes, len(active))
        gid = numpy.array([names.index(dp.dataset) for dp in active], dtype=numpy.int16)
        base = numpy.array([dp.stream_start for dp in active], dtype=numpy.int64)
        sl = slice(ph.start_sample, ph.end_sample)
        dataset_ids[sl] = gid[local]
        stream_pos[sl] = base[local] + local_sample
    return dataset_ids, stream_pos


def prepare_curriculum(config: CurriculumConfig, cache_dir: str, plan: Optional[CurriculumPlan] = None,
                       manifest: Optional[Dict[str, Any]] = None) -> str:
    """Build (or find) every cached index the curriculum needs; returns the index folder.
    Single-process: call on one rank (``CurriculumDataset`` does this on rank 0)."""
    plan = plan or plan_curriculum(config)
    manifest = manifest or build_manifest(config, plan)
    fp = fingerprint_of(manifest)
    os.makedirs(cache_dir, exist_ok=True)
    consumed = {name: 0 for name in plan.stats}
    for ph in plan.phases:
        for dp in ph.datasets:
            consumed[dp.dataset] += dp.samples
    for name, st in plan.stats.items():
        epochs = -(-consumed[name] // st.samples_per_epoch)
        indexed = _open_indexed(name, st.prefix)
        for e in range(epochs):
            t0 = time.time()
            _build_epoch(config, st, indexed, e, cache_dir)
            logger.info("curriculum: dataset '%s' epoch %d/%d indices ready (%.1fs)", name, e + 1, epochs,
                        time.time() - t0)
        del indexed
    final = os.path.join(cache_dir, f"curriculum-{fp[:16]}")
    if os.path.isdir(final):
        return final
    # Content-addressed: a process that publishes the same fingerprint first wins ("keep").
    with publish_dir(final, exist="keep") as staging:
        t0 = time.time()
        dataset_ids, stream_pos = build_curriculum_index(plan)
        logger.info("curriculum: index of %d samples built in %.1fs", plan.total_samples, time.time() - t0)
        numpy.save(os.path.join(staging, "dataset_ids.npy"), dataset_ids)
        numpy.save(os.path.join(staging, "stream_pos.npy"), stream_pos)
        with open(os.path.join(staging, "manifest.json"), "w") as f:
            json.dump({"fingerprint": fp, **manifest}, f, indent=1)
    return final


# ---------------------------------------------------------------------------------- dataset
class CurriculumDataset(torch.utils.data.Dataset):
    """Random access to the curriculum: ``ds[global_idx]`` is megatron ``GPTDataset``'s item
    (``tokens``, ``labels``, ``loss_mask``, ``position_ids``, ``attention_mask``) plus
    ``dataset_id``, ``phase`` and ``index``. ``consumed_samples`` is advanced by the training
    loop (:meth:`advance`) and travels in :meth:`state_dict`."""

    def __init__(self, config: CurriculumConfig, cache_dir: Optional[str] = None):
        self.config = config
        self.cache_dir = cache_dir or config.cache_dir
        if not self.cache_dir:
            raise CurriculumConfigError("data.cache_dir: required to build the curriculum indices")
        rank0 = not _dist() or torch.distributed.get_rank() == 0
        payload: List[Any] = [None]
        if rank0:
            plan = plan_curriculum(config)
            manifest = build_manifest(config, plan)
            prepare_curriculum(config, self.cache_dir, plan, manifest)
            payload = [(plan, manifest)]
        if _dist():
            torch.distributed.broadcast_object_list(payload, src=0)
        self.plan, self.manifest = payload[0]
        self.fingerprint = fingerprint_of(self.manifest)
        self.index_dir = os.path.join(self.cache_dir, f"curriculum-{self.fingerprint[:16]}")
        self._load_index()
        self.names = list(self.plan.stats)
        self._spe = numpy.array([self.plan.stats[n].samples_per_epoch for n in self.names], dtype=numpy.int64)
        self._ends = numpy.array([ph.end_sample for ph in self.plan.phases], dtype=numpy.int64)
        self._groups = {(ph.index, dp.dataset): dp.group for ph in self.plan.phases for dp in ph.datasets}
        self._indexed: Dict[int, Any] = {}
        self._gpt: Dict[Tuple[int, int], Any] = {}
        self.consumed_samples = 0

    def _load_index(self) -> None:
        path = os.path.join(self.index_dir, "manifest.json")
        if not os.path.isfile(path):
            raise CurriculumMismatchError(f"{self.index_dir}: curriculum index missing (not prepared "
                                          "on rank 0, or cache_dir not shared between ranks)")
        with open(path) as f:
            cached = json.load(f)
        cached.pop("fingerprint", None)
        if fingerprint_of(cached) != self.fingerprint:
            changes = "\n  - ".join(diff_manifests(cached, self.manifest))
            raise CurriculumMismatchError(f"{path}: cached curriculum index does not match the recipe/data:\n  - {changes}")
        self.dataset_ids = numpy.load(os.path.join(self.index_dir, "dataset_ids.npy"), mmap_mode="r")
        self.stream_pos = numpy.load(os.path.join(self.index_dir, "stream_pos.npy"), mmap_mode="r")
        for arr, name in ((self.dataset_ids, "dataset_ids"), (self.stream_pos, "stream_pos")):
            if arr.shape != (self.plan.total_samples,):
                raise CurriculumMismatchError(f"{self.index_dir}/{name}.npy: shape {arr.shape}, "
                                              f"expected ({self.plan.total_samples},)")

    # -------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return self.plan.total_samples

    @property
    def seq_length(self) -> int:
        return self.plan.seq_length

    def phase_index(self, global_idx: int) -> int:
        return int(numpy.searchsorted(self._ends, global_idx, side="right"))

    def _check(self, idx: int) -> int:
        idx = int(idx)
        if not 0 <= idx < self.plan.total_samples:
            raise IndexError(f"global sample {idx} outside the curriculum (0..{self.plan.total_samples - 1})")
        return idx

    def _locate(self, idx: int) -> Tuple[int, int, int]:
        d = int(self.dataset_ids[idx])
        e, j = divmod(int(self.stream_pos[idx]), int(self._spe[d]))
        return d, e, j

    def epoch_dataset(self, dataset_id: int, epoch: int):
        """Megatron ``GPTDataset`` of one dataset epoch (opened from the cache, mmapped)."""
        key = (dataset_id, epoch)
        if key not in self._gpt:
            from megatron.core.datasets.gpt_dataset import GPTDataset
            from megatron.core.datasets.utils import Split

            st = self.plan.stats[self.names[dataset_id]]
            seed = epoch_seed(self.config.seed, st.name, epoch)
            folder = _gpt_cache_dir(self.cache_dir, st)
            if not os.path.isfile(_epoch_marker(folder, epoch, seed, self.config)):
                raise CurriculumMismatchError(f"{folder}: epoch {epoch} of dataset '{st.name}' is not in "
                                              "the cache (not prepared on rank 0?)")
            if dataset_id not in self._indexed:
                self._indexed[dataset_id] = _open_indexed(st.name, st.prefix)
            self._gpt[key] = GPTDataset(
                self._indexed[dataset_id], _dataset_label(st), numpy.arange(st.num_sequences, dtype=numpy.int32),
                None, Split.train, _gpt_config(self.config, st.prefix, seed, folder))
        return self._gpt[key]

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        idx = self._check(idx)
        d, e, j = self._locate(idx)
        item = self.epoch_dataset(d, e)[j]
        item["dataset_id"] = d
        item["phase"] = self.phase_index(idx)
        item["index"] = idx
        return item

    def sample_tokens(self, idx: int) -> numpy.ndarray:
        """The raw ``seq_length + 1`` token ids of a sample (what ``tokens``/``labels`` come from)."""
        idx = self._check(idx)
        d, e, j = self._locate(idx)
        from megatron_ar.compat.indexed import gpt_sample_tokens

        return gpt_sample_tokens(self.epoch_dataset(d, e), j)

    def describe_sample(self, idx: int) -> SampleInfo:
        idx = self._check(idx)
        d, e, j = self._locate(idx)
        gd = self.epoch_dataset(d, e)
        s = int(gd.shuffle_index[j])
        beg, off_b = (int(x) for x in gd.sample_index[s])
        end, off_e = (int(x) for x in gd.sample_index[s + 1])
        extra = int(self.config.add_extra_token_to_sequence)
        lengths = self._indexed[d].sequence_lengths
        ranges = []
        if beg == end:
            ranges.append((int(gd.document_index[beg]), off_b, off_e + extra))
        else:  # same walk as GPTDataset._query_document_sample_shuffle_indices
            for k in range(beg, end + 1):
                doc = int(gd.document_index[k])
                ranges.append((doc, off_b if k == beg else 0, int(lengths[doc]) if k < end else off_e + extra))
        p = self.phase_index(idx)
        name = self.names[d]
        return SampleInfo(
            global_index=idx, phase=p, phase_name=self.plan.phases[p].name, dataset=name, dataset_id=d,
            group=self._groups[(p, name)], prefix=self.plan.stats[name].prefix,
            stream_position=int(self.stream_pos[idx]), epoch=e, epoch_sample=j,
            document_ids=tuple(r[0] for r in ranges), token_ranges=tuple(ranges))

    def describe_batch(self, consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                       data_parallel_size: int, rank: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every sample of the global batch that starts at ``consumed_samples`` (one step), with
        the DP rank / micro batch / slot that trained on it (``rank``: only that DP rank)."""
        layout = batch_layout(consumed_samples, global_batch_size, micro_batch_size, data_parallel_size)
        rows = []
        for m in range(layout.shape[0]):
            for r in range(layout.shape[1]):
                if rank is not None and r != rank:
                    continue
                for k in range(layout.shape[2]):
                    info = self.describe_sample(int(layout[m, r, k])).to_dict()
                    rows.append({"rank": r, "micro_batch": m, "slot": k, **info})
        return rows

    # -------------------------------------------------------------- state
    def advance(self, num_samples: int) -> None:
        """Record that the training loop consumed ``num_samples`` more samples (one step)."""
        if num_samples < 0 or self.consumed_samples + num_samples > self.plan.total_samples:
            raise ValueError(f"advance({num_samples}): consumed_samples would be "
                             f"{self.consumed_samples + num_samples}, curriculum has {self.plan.total_samples}")
        self.consumed_samples += int(num_samples)

    def state_dict(self) -> Dict[str, Any]:
        n = self.consumed_samples
        return {
            "consumed_samples": n,
            "consumed_tokens": n * self.plan.seq_length,
            "seed": self.config.seed,
            "fingerprint": self.fingerprint,
            "phase": self.plan.phases[self.phase_index(n)].name if n < self.plan.total_samples else None,
            "manifest": self.manifest,
        }

    def load_state_dict(self, state: Dict[str, Any], allow_future_changes: bool = False) -> None:
        """Resume at ``state['consumed_samples']``; refuses data/recipe changes, naming them.
        ``allow_future_changes``: accept changes confined to phases that had not started (e.g. a
        cool-down phase appended mid-run): the samples already trained on are then identical."""
        for k in ("consumed_samples", "seed", "fingerprint"):
            if k not in state:
                raise KeyError(f"curriculum data state: missing key '{k}'")
        old = state.get("manifest")
        compatible = (allow_future_changes and old is not None
                      and not prefix_compatible(old, self.manifest, int(state["consumed_samples"])))
        if state["fingerprint"] != self.fingerprint and not compatible:
            changes = diff_manifests(old, self.manifest) if old else ["(checkpoint holds no manifest)"]
            if allow_future_changes and old is not None:
                changes += [f"not only future phases: {p}" for p in
                            prefix_compatible(old, self.manifest, int(state["consumed_samples"]))]
            raise CurriculumMismatchError(
                f"the checkpoint's data fingerprint {state['fingerprint'][:16]} differs from this "
                f"curriculum's {self.fingerprint[:16]}; changed since the checkpoint:\n  - "
                + "\n  - ".join(changes))
        if state["seed"] != self.config.seed:
            raise CurriculumMismatchError(f"data.seed: checkpoint {state['seed']} != recipe {self.config.seed}")
        n = int(state["consumed_samples"])
        if not 0 <= n <= self.plan.total_samples:
            raise ValueError(f"consumed_samples {n} outside 0..{self.plan.total_samples}")
        self.consumed_samples = n

    def sampler(self, micro_batch_size: int, data_parallel_rank: int = 0, data_parallel_size: int = 1,
                drop_last: bool = True) -> "PretrainingSampler":
        """A batch sampler for ``torch.utils.data.DataLoader(ds, batch_sampler=...)`` starting at
        ``consumed_samples``."""
        return PretrainingSampler(self.plan.total_samples, self.consumed_samples, micro_batch_size,
                                  data_parallel_rank, data_parallel_size, drop_last)


# ---------------------------------------------------------------------------------- sampling
class PretrainingSampler:
    """Megatron-LM ``MegatronPretrainingSampler`` semantics: yields this DP rank's micro batches
    of consecutive global indices from ``consumed_samples`` on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool = True):
        if total_samples <= 0:
            raise ValueError(f"total_samples: must be > 0, got {total_samples}")
        if not 0 <= consumed_samples <= total_samples:
            raise ValueError(f"consumed_samples: {consumed_samples} outside 0..{total_samples}")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size: must be > 0, got {micro_batch_size}")
        if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank: {data_parallel_rank} not in 0..{data_parallel_size - 1}")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        mbs, step = self.micro_batch_size, self.micro_batch_size * self.data_parallel_size
        first = self.data_parallel_rank * mbs
        c = self.consumed_samples
        while c + step <= self.total_samples:
            yield list(range(c + first, c + first + mbs))
            c += step
        if not self.drop_last and c < self.total_samples:
            tail = list(range(c, self.total_samples))[first:first + mbs]
            if tail:
                yield tail


def batch_layout(consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                 data_parallel_size: int) -> numpy.ndarray:
    """Global indices of the step starting at ``consumed_samples``: array
    ``[num_micro_batches, data_parallel_size, micro_batch_size]`` (PretrainingSampler order)."""
    per = micro_batch_size * data_parallel_size
    if global_batch_size % per:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by micro_batch_size "
                         f"x data_parallel_size = {per}")
    idx = consumed_samples + numpy.arange(global_batch_size, dtype=numpy.int64)
    return idx.reshape(global_batch_size // per, data_parallel_size, micro_batch_size)

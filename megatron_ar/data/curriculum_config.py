"""The ``data`` section of a recipe: datasets, phases, blends (typed, validated, key-naming errors).

Design choices
- Datasets are declared once by name (``data.datasets: {name: .bin/.idx prefix}``) and phases
  refer to them by name. The name, not the path, identifies a dataset's sample stream: a dataset
  used by two phases continues its stream across the phase change (no repeats, no drops), and
  moving the files to another mount does not change the curriculum.
- A phase has exactly one budget: ``tokens`` (``100B``, ``1.5e9`` ...) or ``epochs`` over its
  data. ``epochs: E`` means E times the phase's data volume (sum of the datasets' samples per
  epoch) at the phase's blend: with natural weights every dataset is read exactly E times, with
  explicit weights a dataset can be read more or less often (``tools/curriculum_plan.py`` prints
  the per-dataset epochs and warns above 4; Muennighoff et al. 2023, "Scaling Data-Constrained
  Language Models", find up to ~4 epochs about as good as fresh data).
- A blend is a mapping of named groups (``ar``/``en``/``code``) -> ``{weight, datasets}``;
  within a group datasets are mixed by their size unless given weights. Weights are relative
  (normalized per phase) and parsed as exact decimals, so 40/50/10 of 100 samples is 40/50/10.
- ``lr_schedule`` per phase is a hint carried for the training loop; it is not part of the data
  fingerprint. ``seq_length``/``global_batch_size``/``seed`` are run-level values stated once, in
  the recipe's ``model``/``schedule`` sections (:data:`RUN_LEVEL_KEYS`): the ``data`` mapping
  refuses them, and the recipe loader (``megatron_ar.training.config.load_config``) fills them
  with :meth:`CurriculumConfig.resolved`. This module parses only the ``data`` mapping; reading a
  recipe file is the training config's job (one reader for the whole recipe).
- ``bin_fingerprint`` (sampled | full | size) chooses how the data fingerprint covers ``.bin``
  content; the cost/coverage trade-off is stated in :mod:`curriculum_plan`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Mapping, Optional, Tuple



#: Curriculum fields that a recipe states once, in its run sections (filled by ``resolved``).
RUN_LEVEL_KEYS = {"seq_length": "model.seq_length", "global_batch_size": "schedule.global_batch_size",
                  "seed": "schedule.seed"}


class CurriculumConfigError(ValueError):
    """A recipe's data section is invalid; the message starts with the offending key."""


_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_token_count(value: Any, key: str) -> int:
    """``100B`` / ``1.5T`` / ``2e9`` / ``12345`` -> int tokens (must be a whole positive count)."""
    if isinstance(value, bool):
        raise CurriculumConfigError(f"{key}: expected a token count, got {value!r}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", value.upper())
        if not m:
            raise CurriculumConfigError(f"{key}: cannot parse token count {value!r} "
                                        "(examples: 100B, 1.5T, 2e9, 500000)")
        num = Fraction(m.group(1)) * _SUFFIX.get(m.group(2), 1)
    elif isinstance(value, (int, float)):
        num = Fraction(str(value))
    else:
        raise CurriculumConfigError(f"{key}: expected a token count, got {value!r}")
    if num.denominator != 1 or num <= 0:
        raise CurriculumConfigError(f"{key}: token count must be a positive whole number, got {value!r}")
    return int(num)


def _positive_decimal(value: Any, key: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CurriculumConfigError(f"{key}: expected a positive number, got {value!r}")
    try:
        num = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise CurriculumConfigError(f"{key}: expected a positive number, got {value!r}") from None
    if num <= 0:
        raise CurriculumConfigError(f"{key}: must be > 0, got {value!r}")
    return num


@dataclass(frozen=True)
class BlendGroup:
    """A named group of a phase's blend. ``weight`` None: the group is weighted by its size."""

    name: str
    datasets: Tuple[str, ...]
    weight: Optional[float] = None
    # Relative weights of the datasets inside the group; None: by their size.
    dataset_weights: Optional[Tuple[float, ...]] = None


@dataclass
class PhaseConfig:
    """One curriculum phase: its blend of dataset groups and exactly one budget (``tokens`` or
    ``epochs``); ``lr_schedule`` is a hint for the run plan (e.g. ``linear_to_zero``)."""

    name: str
    blend: List[BlendGroup]
    tokens: Optional[int] = None
    epochs: Optional[float] = None
    # Hint for the training loop (e.g. "cosine", "linear_to_zero" or a mapping); not fingerprinted.
    lr_schedule: Any = None


@dataclass
class CurriculumConfig:
    """The recipe's ``data`` section."""

    datasets: Dict[str, str]
    phases: List[PhaseConfig]
    seq_length: Optional[int] = None  # usually model.seq_length
    global_batch_size: Optional[int] = None  # usually schedule.global_batch_size
    seed: int = 1234
    cache_dir: Optional[str] = None
    # Round each phase up to whole global batches so phase changes fall on step boundaries; the
    # extra samples come from the same streams (they are consumed, not repeated).
    align_phases_to_global_batch: bool = True
    add_extra_token_to_sequence: bool = True  # Megatron GPTDataset semantics (seq_length + 1)
    max_epochs_warning: float = 4.0
    # __getitem__ behaviour, Megatron GPTDatasetConfig names; do not change the sample indices.
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    create_attention_mask: bool = True
    eod_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    # How the data fingerprint covers .bin content: sampled (default; first/last + 32 evenly
    # spaced 64 KiB blocks), full (every byte: slow on TB corpora) or size (size only).
    bin_fingerprint: str = "sampled"

    def __post_init__(self) -> None:
        if not isinstance(self.datasets, dict) or not self.datasets:
            raise CurriculumConfigError("data.datasets: must map dataset names to .bin/.idx prefixes")
        for name, prefix in self.datasets.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                raise CurriculumConfigError(f"data.datasets: invalid dataset name {name!r} "
                                            "(letters, digits, _ . - only)")
            if not isinstance(prefix, str) or not prefix:
                raise CurriculumConfigError(f"data.datasets.{name}: expected a .bin/.idx path prefix")
            if prefix.endswith((".bin", ".idx")):
                raise CurriculumConfigError(f"data.datasets.{name}: give the prefix without "
                                            f".bin/.idx, got {prefix!r}")
        if not self.phases:
            raise CurriculumConfigError("data.phases: at least one phase is required")
        names = set()
        for i, ph in enumerate(self.phases):
            key = f"data.phases[{i}]"
            if ph.name in names:
                raise CurriculumConfigError(f"{key}.name: duplicate phase name {ph.name!r}")
            names.add(ph.name)
            if (ph.tokens is None) == (ph.epochs is None):
                raise CurriculumConfigError(f"{key}: give exactly one budget, 'tokens' or 'epochs'")
            if ph.tokens is not None and (not isinstance(ph.tokens, int) or ph.tokens <= 0):
                raise CurriculumConfigError(f"{key}.tokens: must be a positive integer")
            if ph.epochs is not None:
                _positive_decimal(ph.epochs, f"{key}.epochs")
            if not ph.blend:
                raise CurriculumConfigError(f"{key}.blend: empty")
            seen: Dict[str, str] = {}
            weighted = [g.weight is not None for g in ph.blend]
            if any(weighted) and not all(weighted):
                raise CurriculumConfigError(f"{key}.blend: give a weight to every group or to none")
            for g in ph.blend:
                gkey = f"{key}.blend.{g.name}"
                if g.weight is not None:
                    _positive_decimal(g.weight, f"{gkey}.weight")
                if not g.datasets:
                    raise CurriculumConfigError(f"{gkey}.datasets: empty")
                if g.dataset_weights is not None:
                    if len(g.dataset_weights) != len(g.datasets):
                        raise CurriculumConfigError(f"{gkey}.datasets: weights and names differ in number")
                    for d, w in zip(g.datasets, g.dataset_weights):
                        _positive_decimal(w, f"{gkey}.datasets.{d}")
                for j, d in enumerate(g.datasets):
                    if d not in self.datasets:
                        raise CurriculumConfigError(
                            f"{gkey}.datasets[{j}]: unknown dataset {d!r} "
                            f"(declared in data.datasets: {', '.join(sorted(self.datasets))})")
                    if d in seen:
                        raise CurriculumConfigError(f"{gkey}.datasets[{j}]: dataset {d!r} is already "
                                                    f"in group {seen[d]!r} of this phase")
                    seen[d] = g.name
        for key, val, lo in (("data.seq_length", self.seq_length, 1),
                             ("data.global_batch_size", self.global_batch_size, 1)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < lo):
                raise CurriculumConfigError(f"{key}: must be a positive integer, got {val!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CurriculumConfigError(f"data.seed: must be a non-negative integer, got {self.seed!r}")
        if self.bin_fingerprint not in ("sampled", "full", "size"):
            raise CurriculumConfigError(f"data.bin_fingerprint: must be sampled, full or size, "
                                        f"got {self.bin_fingerprint!r}")
        if (self.eod_mask_loss or self.reset_position_ids or self.reset_attention_mask) \
                and self.eod_token_id is None:
            raise CurriculumConfigError("data.eod_token_id: required when eod_mask_loss, "
                                        "reset_position_ids or reset_attention_mask is set")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Optional[str] = None) -> "CurriculumConfig":
        """Build from the ``data`` mapping. Relative prefixes resolve against ``data.root``, else
        ``base_dir`` (the recipe file's folder), else the working directory."""
        if not isinstance(data, Mapping):
            raise CurriculumConfigError(f"data: expected a mapping, got {type(data).__name__}")
        names = ({f.name for f in dataclasses.fields(cls)} | {"root"}) - set(RUN_LEVEL_KEYS)
        for k in data:
            if k in RUN_LEVEL_KEYS:
                raise CurriculumConfigError(f"data.{k}: a run-level value, set it once as "
                                            f"{RUN_LEVEL_KEYS[k]} (the curriculum reads it from there)")
            if k not in names:
                raise CurriculumConfigError(f"data.{k}: unknown key (valid: {', '.join(sorted(names))})")
        root = data.get("root") or base_dir or os.getcwd()
        raw_ds = data.get("datasets")
        if not isinstance(raw_ds, Mapping):
            raise CurriculumConfigError("data.datasets: must map dataset names to .bin/.idx prefixes")
        datasets = {}
        for name, prefix in raw_ds.items():
            if not isinstance(prefix, str):
                raise CurriculumConfigError(f"data.datasets.{name}: expected a path prefix string")
            prefix = os.path.expanduser(prefix)
            datasets[str(name)] = os.path.normpath(prefix if os.path.isabs(prefix) else os.path.join(root, prefix))
        raw_phases = data.get("phases")
        if not isinstance(raw_phases, list):
            raise CurriculumConfigError("data.phases: expected a list of phases")
        phases = [_parse_phase(p, i) for i, p in enumerate(raw_phases)]
        kwargs = {k: data[k] for k in names - {"root", "datasets", "phases"} if k in data}
        if kwargs.get("cache_dir"):
            cd = os.path.expanduser(kwargs["cache_dir"])
            kwargs["cache_dir"] = cd if os.path.isabs(cd) else os.path.join(root, cd)
        for k in ("align_phases_to_global_batch", "add_extra_token_to_sequence", "reset_position_ids",
                  "reset_attention_mask", "eod_mask_loss", "create_attention_mask"):
            if k in kwargs and not isinstance(kwargs[k], bool):
                raise CurriculumConfigError(f"data.{k}: expected true/false, got {kwargs[k]!r}")
        return cls(datasets=datasets, phases=phases, **kwargs)

    def resolved(self, seq_length: Optional[int] = None, global_batch_size: Optional[int] = None,
                 seed: Optional[int] = None) -> "CurriculumConfig":
        """A copy with the run-level values filled in (values set in ``data`` must agree)."""
        upd = {}
        for key, val in (("seq_length", seq_length), ("global_batch_size", global_batch_size),
                         ("seed", seed)):
            if val is None:
                continue
            mine = getattr(self, key)
            default = next(f.default for f in dataclasses.fields(self) if f.name == key)
            if mine is not None and mine != default and mine != val:
                raise CurriculumConfigError(f"data.{key}: {mine!r} conflicts with the run's {key} {val!r}")
            upd[key] = val
        return dataclasses.replace(self, **upd) if upd else self

    def to_dict(self) -> Dict[str, Any]:
        """The ``data`` mapping a recipe would hold (run-level values left to the run sections);
        :meth:`from_dict` reads it back to an equal config."""
        out: Dict[str, Any] = {"datasets": dict(self.datasets),
                               "phases": [_phase_to_dict(ph) for ph in self.phases]}
        for f in dataclasses.fields(self):
            if f.name not in ("datasets", "phases") and f.name not in RUN_LEVEL_KEYS:
                out[f.name] = getattr(self, f.name)
        return out

    def require_seq_length(self) -> int:
        if self.seq_length is None:
            raise CurriculumConfigError("data.seq_length: unknown; set model.seq_length (or "
                                        "data.seq_length / the flat seq_length) in the recipe")
        return self.seq_length


def _phase_to_dict(ph: PhaseConfig) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": ph.name}
    if ph.tokens is not None:
        out["tokens"] = ph.tokens
    if ph.epochs is not None:
        out["epochs"] = ph.epochs
    if ph.lr_schedule is not None:
        out["lr_schedule"] = ph.lr_schedule
    blend: Dict[str, Any] = {}
    for g in ph.blend:
        ds: Any = list(g.datasets) if g.dataset_weights is None else dict(zip(g.datasets, g.dataset_weights))
        blend[g.name] = {"datasets": ds} if g.weight is None else {"weight": g.weight, "datasets": ds}
    out["blend"] = blend
    return out


def _parse_phase(raw: Any, i: int) -> PhaseConfig:
    key = f"data.phases[{i}]"
    if not isinstance(raw, Mapping):
        raise CurriculumConfigError(f"{key}: expected a mapping")
    allowed = {"name", "tokens", "epochs", "blend", "datasets", "lr_schedule"}
    for k in raw:
        if k not in allowed:
            raise CurriculumConfigError(f"{key}.{k}: unknown key (valid: {', '.join(sorted(allowed))})")
    name = str(raw.get("name", f"phase{i}"))
    tokens = parse_token_count(raw["tokens"], f"{key}.tokens") if raw.get("tokens") is not None else None
    epochs = raw.get("epochs")
    if epochs is not None:
        _positive_decimal(epochs, f"{key}.epochs")
        epochs = float(epochs) if not isinstance(epochs, int) else epochs
    if "blend" in raw and "datasets" in raw:
        raise CurriculumConfigError(f"{key}: give 'blend' or 'datasets', not both")
    if "datasets" in raw:  # shorthand: each dataset its own group, natural weights
        ds = raw["datasets"]
        if not isinstance(ds, list) or not ds:
            raise CurriculumConfigError(f"{key}.datasets: expected a non-empty list of dataset names")
        blend = [BlendGroup(name=str(d), datasets=(str(d),)) for d in ds]
    elif "blend" in raw:
        blend = _parse_blend(raw["blend"], f"{key}.blend")
    else:
        raise CurriculumConfigError(f"{key}.blend: missing (a mapping of groups, or 'datasets: [...]')")
    return PhaseConfig(name=name, blend=blend, tokens=tokens, epochs=epochs,
                       lr_schedule=raw.get("lr_schedule"))


def _parse_blend(raw: Any, key: str) -> List[BlendGroup]:
    if not isinstance(raw, Mapping) or not raw:
        raise CurriculumConfigError(f"{key}: expected a mapping of groups, e.g. "
                                    "{ar: {weight: 40, datasets: [ar_web]}, code: 10}")
    groups = []
    for gname, spec in raw.items():
        gkey = f"{key}.{gname}"
        if isinstance(spec, (int, float, str)) and not isinstance(spec, bool):
            # shorthand ``code: 10``: the group is the dataset of the same name
            groups.append(BlendGroup(name=str(gname), datasets=(str(gname),),
                                     weight=float(_positive_decimal(spec, gkey))))
            continue
        if not isinstance(spec, Mapping):
            raise CurriculumConfigError(f"{gkey}: expected a weight or {{weight, datasets}}")
        for k in spec:
            if k not in ("weight", "datasets"):
                raise CurriculumConfigError(f"{gkey}.{k}: unknown key (valid: datasets, weight)")
        weight = spec.get("weight")
        if weight is not None:
            weight = float(_positive_decimal(weight, f"{gkey}.weight"))
        ds = spec.get("datasets", [str(gname)])
        dweights = None
        if isinstance(ds, Mapping):
            names = tuple(str(d) for d in ds)
            dweights = tuple(float(_positive_decimal(w, f"{gkey}.datasets.{d}")) for d, w in ds.items())
        elif isinstance(ds, list) and all(isinstance(d, str) for d in ds):
            names = tuple(ds)
        else:
            raise CurriculumConfigError(f"{gkey}.datasets: expected a list of dataset names or "
                                        "a mapping name -> weight")
        groups.append(BlendGroup(name=str(gname), datasets=names, weight=weight, dataset_weights=dweights))
    return groups

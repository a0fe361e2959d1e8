"""Model-health report of a checkpoint (library behind ``tools/model_health.py``): the analysis
the autoresearch-v2 card reports (weight distributions, SVD effective rank, embedding PCA by
language, block-to-block similarity, sparsity), from an HF directory or a Megatron checkpoint,
streaming one tensor at a time.

Choices
- **Streaming**: tensors are read one at a time in HF naming (an HF directory through
  :class:`~megatron_ar.io.safetensors.SafetensorsReader`; a Megatron dist checkpoint through
  the conversion table, one megatron parameter at a time, as the HF export does), so memory is
  the largest tensor plus small per-layer sketches, never the model.
- **Effective rank** is Roy & Vetterli's (2007) entropy rank ``exp(H(p))`` with
  ``p = s / sum(s)`` over the singular values ``s``; the stable rank ``||W||_F^2 / ||W||_2^2``
  is reported beside it. Singular values come from ``torch.linalg.svdvals`` in fp32; a matrix
  with more than ``max_svd_rows`` rows (embeddings, LM heads) is reduced to that many rows
  sampled without replacement (seeded), which keeps its spectrum's shape but not its scale.
- **Block similarity**: for every per-layer tensor kind (``self_attn.q_proj.weight``, ...), a
  fixed seeded subset of up to ``sketch_size`` entries (the same positions in every layer) is
  kept; the cosine of two layers' sketches estimates the cosine of the full tensors (exact when
  the tensor is no larger than the sketch), and the block matrix is the mean over kinds. A
  duplicated block scores 1.
- **Sparsity / dead units**: exact zeros, near-zeros (``|w| < 1e-6 * max|w|``) and rows /
  columns whose norm is zero (a dead neuron of an MLP projection, a dead embedding row).
- **Embedding PCA by script**: each vocabulary entry is decoded with the checkpoint's
  tokenizer and classified as Arabic, Latin, digits, code symbols or other (by the Unicode
  blocks of its letters); the report gives per-script counts, centroids on the first two
  principal components and the explained variance; the PNG colours the points.
- Output: ``health.json`` and PNGs (matplotlib, optional: ``plots=False`` writes the JSON only)
  published together into ``out`` (:func:`megatron_ar.io.outputs.publish_into_dir`).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["HealthConfig", "iter_checkpoint_tensors", "tensor_stats", "effective_rank",
           "script_of", "model_health", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("health.json", "histograms.png", "spectra.png", "block_similarity.png",
                "embedding_pca.png")
_LAYER_RE = re.compile(r"^(?P<pre>.*?layers)\.(?P<idx>\d+)\.(?P<kind>.+)$")
SCRIPTS = ("arabic", "latin", "digits", "code", "other")
_CODE = set("{}[]()<>;:=+-*/%&|^!~#$@\\`'\",._?")


@dataclass
class HealthConfig:
    bins: int = 64
    max_svd_rows: int = 4096
    sketch_size: int = 65536
    pca_points: int = 8192        # embedding rows drawn in the PNG (all rows go into the PCA)
    seed: int = 0
    plots: bool = True

    def validate(self) -> None:
        for name in ("bins", "max_svd_rows", "sketch_size", "pca_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"HealthConfig.{name}: must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- reading
def iter_checkpoint_tensors(path: str) -> Tuple[Optional[int], Iterator[Tuple[str, torch.Tensor]]]:
    """(number of tensors or None, iterator of (HF name, tensor) one at a time) of an HF
    directory or a Megatron checkpoint; the checkpoint is opened and checked before this
    returns, so a damaged one fails here, not mid-iteration."""
    from megatron_ar.checkpoint import megatron_io as mio

    if os.path.isfile(os.path.join(path, mio.CONFIG_NAME)):
        from megatron_ar.checkpoint.mapping import to_hf, weight_table

        info = mio.read_checkpoint_info(path)
        mio.check_storage_complete(path)

        def megatron_tensors():
            with mio.single_process_group():
                layout = mio.layout_from_info(info)
                for e in weight_table(info.model_config):
                    param = mio.load_param(layout, path, e.megatron)
                    for name, t in to_hf(e, param, info.model_config).items():
                        yield name, t

        return None, megatron_tensors()
    from megatron_ar.io.safetensors import SafetensorsReader

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    reader = SafetensorsReader(path, error=ValueError)
    return len(reader.keys()), ((name, reader.get(name)) for name in reader.keys())


def find_tokenizer(path: str, tokenizer: Optional[str]):
    from tokenizers import Tokenizer

    for cand in ([tokenizer] if tokenizer else [path, os.path.join(path, "tokenizer")]):
        f = cand if cand.endswith(".json") else os.path.join(cand, "tokenizer.json")
        if os.path.isfile(f):
            return Tokenizer.from_file(f)
    if tokenizer:
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.json there")
    return None


# ----------------------------------------------------------------------------- statistics
def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's entropy effective rank of singular values ``s``."""
    s = s.double()
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def tensor_stats(t: torch.Tensor, cfg: HealthConfig, gen: torch.Generator) -> dict:
    x = t.detach().float()
    flat = x.flatten()
    amax = float(flat.abs().max()) if flat.numel() else 0.0
    lo, hi = float(flat.min()), float(flat.max())
    counts = torch.histc(flat, bins=cfg.bins, min=lo, max=hi if hi > lo else lo + 1.0)
    out = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
           "mean": float(flat.mean()), "std": float(flat.std()) if flat.numel() > 1 else 0.0,
           "absmax": amax, "histogram": {"min": lo, "max": hi, "counts": counts.long().tolist()},
           "zeros": int((flat == 0).sum()),
           "near_zero_frac": float((flat.abs() < 1e-6 * amax).float().mean()) if amax else 1.0}
    if x.ndim == 2:
        out["dead_rows"] = int((x.norm(dim=1) == 0).sum())
        out["dead_cols"] = int((x.norm(dim=0) == 0).sum())
        m = x
        if m.shape[0] > cfg.max_svd_rows:
            rows = torch.randperm(m.shape[0], generator=gen)[:cfg.max_svd_rows]
            m = m[rows]
            out["svd_rows_sampled"] = cfg.max_svd_rows
        s = torch.linalg.svdvals(m)
        out["singular_values"] = s.tolist()
        out["effective_rank"] = effective_rank(s)
        out["stable_rank"] = float((s.square().sum() / s[0].square()).item()) if s[0] > 0 else 0.0
        out["max_rank"] = int(min(m.shape))
    return out


def script_of(text: str) -> str:
    """Arabic / Latin / digits / code / other for a decoded vocabulary entry."""
    letters = [c for c in text if not c.isspace()]
    if not letters:
        return "other"
    arabic = sum(1 for c in letters if "\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f"
                 or "\u08a0" <= c <= "\u08ff" or "\ufb50" <= c <= "\ufdff"
                 or "\ufe70" <= c <= "\ufeff")
    if arabic * 2 >= len(letters):
        return "arabic"
    if all(c.isdigit() for c in letters):
        return "digits"
    if all(c in _CODE for c in letters):
        return "code"
    latin = sum(1 for c in letters if c.isascii() and c.isalpha()
                or "\u00c0" <= c <= "\u024f")
    if latin * 2 >= len(letters):
        return "latin"
    return "other"


def _sketch_index(numel: int, size: int, seed: int) -> Optional[torch.Tensor]:
    if numel <= size:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + numel)
    return torch.randperm(numel, generator=g)[:size]


def _embedding_pca(emb: torch.Tensor, tok, cfg: HealthConfig) -> dict:
    x = emb.float()
    x = x - x.mean(0, keepdim=True)
    # top-2 principal directions from the (hidden x hidden) covariance: cheap for any vocab
    cov = x.T @ x / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov.double())
    top = evecs[:, -2:].flip(1).float()
    coords = x @ top
    total = float(evals.clamp(min=0).sum())
    out: Dict[str, object] = {"explained_variance": [float(evals[-1]) / total,
                                                     float(evals[-2]) / total] if total else
                              [0.0, 0.0]}
    if tok is None:
        out["note"] = "no tokenizer.json next to the checkpoint (or --tokenizer): no scripts"
        return out | {"coords": coords}
    n = min(x.shape[0], tok.get_vocab_size())
    labels = [script_of(tok.decode([i])) for i in range(n)] + ["other"] * (x.shape[0] - n)
    by: Dict[str, List[int]] = {s: [] for s in SCRIPTS}
    for i, lab in enumerate(labels):
        by[lab].append(i)
    out["scripts"] = {s: {"count": len(ix), "centroid": coords[ix].mean(0).tolist() if ix
                          else None} for s, ix in by.items()}
    return out | {"coords": coords, "labels": labels}


# ----------------------------------------------------------------------------- driver
def model_health(path: str, out: str, config: Optional[HealthConfig] = None, *,
                 tokenizer: Optional[str] = None, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Analyse the checkpoint at ``path``; write ``health.json`` (+ PNGs) into ``out``; return
    the summary (per-layer figures, block similarity, PCA by script)."""
    from megatron_ar.io.outputs import publish_into_dir, refuse_overlap

    cfg = config or HealthConfig()
    cfg.validate()
    refuse_overlap([out], [path] + ([tokenizer] if tokenizer else []), key="--out")
    if cfg.plots:  # before the work, so a missing matplotlib fails first
        from megatron_ar.checkpoint.health_plots import pyplot

        pyplot()
    tok = find_tokenizer(path, tokenizer)
    gen = torch.Generator().manual_seed(cfg.seed)
    tensors: Dict[str, dict] = {}
    sketches: Dict[str, Dict[int, torch.Tensor]] = {}
    embedding = None
    from tqdm import tqdm

    total, stream = iter_checkpoint_tensors(path)
    bar = tqdm(total=total, desc="model health", unit="tensor", disable=not progress)
    for name, t in stream:
        tensors[name] = tensor_stats(t, cfg, gen)
        m = _LAYER_RE.match(name)
        if m and t.ndim >= 1:
            idx = _sketch_index(t.numel(), cfg.sketch_size, cfg.seed)
            flat = t.detach().float().flatten()
            sketches.setdefault(m.group("kind"), {})[int(m.group("idx"))] = \
                (flat if idx is None else flat[idx]).clone()
        if name.endswith("embed_tokens.weight") or name.endswith("wte.weight"):
            embedding = t.detach().float().clone()
        bar.update(1)
    bar.close()
    if not tensors:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    layers = sorted({i for kinds in sketches.values() for i in kinds})
    sim = np.zeros((len(layers), len(layers)))
    for kind, per in sketches.items():
        vecs = torch.stack([per[i] / per[i].norm().clamp(min=1e-30) for i in layers]) \
            if set(per) == set(layers) else None
        if vecs is not None:
            sim += (vecs @ vecs.T).double().numpy()
    kinds = [k for k, per in sketches.items() if set(per) == set(layers)]
    if kinds:
        sim /= len(kinds)
    pca = _embedding_pca(embedding, tok, cfg) if embedding is not None else None
    matrices = {k: v for k, v in tensors.items() if "effective_rank" in v}
    summary = {
        "checkpoint": os.path.abspath(path),
        "tensors": len(tensors),
        "parameters": int(sum(math.prod(v["shape"]) for v in tensors.values())),
        "layers": layers,
        "block_similarity": sim.tolist(),
        "block_similarity_kinds": sorted(kinds),
        "adjacent_similarity": [float(sim[i, i + 1]) for i in range(len(layers) - 1)],
        "lowest_effective_rank": sorted(
            ((k, v["effective_rank"] / v["max_rank"]) for k, v in matrices.items()),
            key=lambda kv: kv[1])[:5],
        "dead_rows_total": int(sum(v.get("dead_rows", 0) for v in tensors.values())),
        "zeros_total": int(sum(v["zeros"] for v in tensors.values())),
        "embedding_pca": None if pca is None else {k: v for k, v in pca.items()
                                                    if k not in ("coords", "labels")},
        "per_tensor": tensors,
    }
    with publish_into_dir(out, overwrite=overwrite, names=OUTPUT_NAMES) as tmp:
        with open(os.path.join(tmp, "health.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f)
        if cfg.plots:
            from megatron_ar.checkpoint.health_plots import write_plots

            write_plots(tmp, summary, pca, cfg)
    summary["out"] = os.path.abspath(out)
    return summary

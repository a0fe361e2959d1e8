"""The PNGs of the model-health report (:mod:`megatron_ar.checkpoint.health`): per-layer weight
histograms, singular-value spectra, the block-similarity heat map and the embedding PCA
coloured by script. matplotlib (Agg backend) is an optional dependency (``[plots]``)."""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

_KIND_RE = re.compile(r"layers\.(\d+)\.(.+)$")
COLOURS = {"arabic": "tab:green", "latin": "tab:blue", "digits": "tab:orange",
           "code": "tab:red", "other": "tab:gray"}


def pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("model-health plots need matplotlib: pip install "
                          "'megatron_ar[plots]' (or plots=False / --no-plots)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hist_tensors(per_tensor: dict):
    """One matrix kind per layer (the first 2-D kind seen) for the histogram grid."""
    kinds = {}
    for name, st in per_tensor.items():
        m = _KIND_RE.search(name)
        if m and len(st["shape"]) == 2:
            kinds.setdefault(m.group(2), []).append((int(m.group(1)), name))
    return kinds


def write_plots(folder: str, summary: dict, pca: Optional[dict], cfg) -> None:
    plt = pyplot()
    per = summary["per_tensor"]
    kinds = _hist_tensors(per)
    # histograms: one panel per matrix kind, one line per layer
    names = sorted(kinds)
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(8, 2.2 * max(1, len(names))),
                             squeeze=False)
    for ax, kind in zip(axes[:, 0], names):
        for layer, name in sorted(kinds[kind]):
            h = per[name]["histogram"]
            edges = np.linspace(h["min"], h["max"], len(h["counts"]) + 1)
            ax.plot(0.5 * (edges[1:] + edges[:-1]), h["counts"], lw=0.8, label=str(layer))
        ax.set_yscale("log")
        ax.set_title(kind, fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "histograms.png"), dpi=90)
    plt.close(fig)
    # spectra: normalised singular values per matrix kind
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(8, 2.2 * max(1, len(names))),
                             squeeze=False)
    for ax, kind in zip(axes[:, 0], names):
        for layer, name in sorted(kinds[kind]):
            s = np.asarray(per[name]["singular_values"])
            if s.size and s[0] > 0:
                ax.plot(s / s[0], lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{kind}: singular values / largest", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "spectra.png"), dpi=90)
    plt.close(fig)
    # block similarity
    fig, ax = plt.subplots(figsize=(5, 4.5))
    sim = np.asarray(summary["block_similarity"]) if summary["layers"] else np.zeros((1, 1))
    im = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title("block-to-block cosine similarity")
    fig.colorbar(im)
    fig.savefig(os.path.join(folder, "block_similarity.png"), dpi=90)
    plt.close(fig)
    # embedding PCA
    fig, ax = plt.subplots(figsize=(6, 5))
    if pca is not None:
        coords = pca["coords"].numpy()
        labels = pca.get("labels") or ["other"] * len(coords)
        rng = np.random.default_rng(cfg.seed)
        pick = rng.permutation(len(coords))[:cfg.pca_points]
        for script, colour in COLOURS.items():
            ix = [i for i in pick if labels[i] == script]
            if ix:
                ax.scatter(coords[ix, 0], coords[ix, 1], s=2, c=colour, label=script)
        ax.legend(markerscale=4)
        ev = pca["explained_variance"]
        ax.set_title(f"embedding PCA (PC1 {100 * ev[0]:.1f}%, PC2 {100 * ev[1]:.1f}%)")
    fig.savefig(os.path.join(folder, "embedding_pca.png"), dpi=90)
    plt.close(fig)

"""Document quality classifiers (library behind ``tools/quality_classifier.py``): train on
annotated samples, score corpora into ``quality_signals`` for ``filter_data`` rules.

Fanar (report Sec. 4.3.3) follows FineWeb-Edu (Lozhkov et al. 2024): an LLM scores a sample of
web documents 0-5 for educational value, a classification head is trained on a multilingual
embedding model (BGE-M3, Chen et al. 2024), and documents scored 0-1 are dropped (~20% of the
data). DCLM (Li et al. 2024) filters with a fastText bigram classifier instead. Both are here:

- ``backend="hf"``: any local HF encoder (``AutoModel``/``AutoTokenizer``), frozen. **Pooling**:
  the mean of the last hidden states over real tokens (attention-mask aware, so padding never
  enters the average; BGE-M3 itself uses the CLS vector, but mean pooling works for any encoder,
  including ones never trained for a CLS summary). **Head**: multinomial logistic regression
  (``head="linear"``) or one hidden GELU layer (``head="mlp"``), on embeddings standardised with
  the training split's mean/std (stored with the head), trained full-batch with AdamW and
  cross-entropy in torch (embeddings are computed once; the head is tiny). FineWeb-Edu trains a
  regression head and rounds; a classification head is used here because it gives a predictive
  distribution, which calibration needs and from which the expected score follows.
- ``backend="fasttext"``: ``fasttext.train_supervised`` (softmax loss, word bigrams by default,
  as DCLM). fastText reads supervised data only from a file of lines ``__label__<score> <text>``
  (its default label prefix; any token starting with it is a label), so each document is
  written on one line (whitespace runs, newlines included, become one space: fastText splits on
  whitespace anyway and ``predict`` refuses newlines) and a text token that starts with
  ``__label__`` is escaped with a leading ``_`` so it cannot become a label. Prediction uses
  the list form of ``predict`` (``multilinePredict``): fastText 0.9.3's single-string path calls
  ``np.array(..., copy=False)``, which numpy 2 rejects, and 0.9.2 wheels return wrong
  probabilities from the list path. fastText adds 1e-5 inside its log, so each row is
  renormalised to sum to 1.

Labels are the distinct integer scores of the annotations (0-5, or 0/1 for a binary task),
sorted; the model folder's ``classifier.json`` records them with the backend, encoder path and
pooling. **Calibration** is measured on a held-out split (stratified by label, seeded, never
trained on): accuracy of the arg-max; **ECE** (Guo et al. 2017), top-label confidence in
``bins`` equal-width bins ``((m-1)/M, m/M]``: ``sum_m n_m/n |acc_m - conf_m|``, in [0, 1];
**Brier** (Brier 1950), multi-class form ``mean_i sum_c (p_ic - 1[y_i = c])^2``, in [0, 2];
log-loss; the mean absolute error of the expected score; and the reliability table (per bin:
edges, count, mean confidence, accuracy) whose counts sum to the held-out size.

**Scoring** writes ``quality_signals[<prefix>_score]`` (expected score ``sum_c p_c * label_c``)
and/or ``quality_signals[<prefix>_p<label>]``; ``prefix`` must start with ``classifier`` so
``filter_data`` treats the fields as external signals (e.g. ``{signal: classifier_score, min:
1.5}`` drops the documents whose expected score is below 1.5). It runs per input file through
:class:`megatron_ar.io.shards.ShardRunner` (workers, resume, the outputs rule); the model
folder's digest is part of the options, so a retrained model redoes finished shards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.outputs import publish_into_dir, refuse_overlap
from megatron_ar.io.records import ErrorStats, RecordError, dump_record, iter_records
from megatron_ar.io.shards import ShardTask, run_shards

__all__ = ["TrainConfig", "ScoreConfig", "QualityClassifier", "load_annotations",
           "holdout_split", "calibration", "train_classifier", "score_files", "import_fasttext",
           "FASTTEXT_INSTALL"]

BACKENDS = ("fasttext", "hf")
HEADS = ("linear", "mlp")
FORMAT = "megatron_ar.quality_classifier/1"
CONFIG_NAME, HEAD_NAME, FASTTEXT_NAME, SUMMARY_NAME = (
    "classifier.json", "head.safetensors", "model.bin", "train_summary.json")
_OWNED = (CONFIG_NAME, HEAD_NAME, FASTTEXT_NAME, SUMMARY_NAME)
FASTTEXT_INSTALL = "pip install 'fasttext==0.9.3' (or pip install 'megatron_ar[fasttext]')"
_LABEL = "__label__"
_WS = re.compile(r"\s+")


def import_fasttext():
    """The fastText module, or ImportError naming the pip command."""
    try:
        import fasttext
    except ImportError:
        raise ImportError(f"--backend fasttext needs the fastText library: {FASTTEXT_INSTALL}"
                          ) from None
    return fasttext


# ----------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """annotations: JSONL files of ``{text_key: str, score_key: int}``; output: model folder.
    ``epochs``/``lr`` default per backend (hf head: 300 full-batch AdamW steps at 1e-2;
    fastText: 25 epochs at 0.5). ``dim``/``word_ngrams``/``threads`` are fastText's (threads > 1
    makes it non-deterministic); ``batch_size``/``max_length`` the encoder's."""

    annotations: Tuple[str, ...]
    output: str
    backend: str = "fasttext"
    encoder: Optional[str] = None
    head: str = "linear"
    hidden_size: int = 256
    epochs: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_length: int = 512
    dim: int = 64
    word_ngrams: int = 2
    threads: int = 1
    holdout_fraction: float = 0.1
    seed: int = 0
    bins: int = 10
    text_key: str = "text"
    score_key: str = "score"
    overwrite: bool = False

    def validate(self) -> None:
        if not self.annotations:
            raise ValueError("TrainConfig.annotations: no input files")
        for p in self.annotations:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"TrainConfig.annotations: {p}: no such file")
        if self.backend not in BACKENDS:
            raise ValueError(f"TrainConfig.backend: must be one of {', '.join(BACKENDS)}, "
                             f"got {self.backend!r}")
        if self.backend == "hf":
            if not self.encoder:
                raise ValueError("TrainConfig.encoder: --backend hf needs --encoder PATH (a local "
                                 "HF encoder folder)")
            if not os.path.isfile(os.path.join(self.encoder, "config.json")):
                raise FileNotFoundError(f"TrainConfig.encoder: {self.encoder}: no config.json "
                                        "(not a local HF model folder)")
        if self.head not in HEADS:
            raise ValueError(f"TrainConfig.head: must be one of {', '.join(HEADS)}, "
                             f"got {self.head!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("TrainConfig.holdout_fraction: must be in [0, 1), got "
                             f"{self.holdout_fraction}")
        for name in ("hidden_size", "batch_size", "max_length", "dim", "word_ngrams", "threads",
                     "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs: must be >= 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr: must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """model: a folder written by :func:`train_classifier`; fields: ``score`` (expected score),
    ``probs`` (one P(label) field per label) or ``both``; prefix: the signals' name prefix."""

    model: str
    prefix: str = "classifier"
    fields: str = "both"
    batch_size: int = 64
    text_key: str = "text"
    signals_key: str = "quality_signals"
    model_digest: str = ""  # set by score_files: a retrained model is new options (shards redone)

    def validate(self) -> None:
        if not self.prefix.startswith("classifier"):
            raise ValueError(f"ScoreConfig.prefix: must start with 'classifier' (filter rules "
                             f"read it as an external signal), got {self.prefix!r}")
        if self.fields not in ("score", "probs", "both"):
            raise ValueError(f"ScoreConfig.fields: must be score, probs or both, got "
                             f"{self.fields!r}")
        if self.batch_size < 1:
            raise ValueError(f"ScoreConfig.batch_size: must be >= 1, got {self.batch_size}")
        if not os.path.isfile(os.path.join(self.model, CONFIG_NAME)):
            raise FileNotFoundError(f"ScoreConfig.model: {self.model}: no {CONFIG_NAME} (not a "
                                    "folder written by quality_classifier train)")

    def field_names(self, labels: Sequence[int]) -> List[str]:
        out = [f"{self.prefix}_score"] if self.fields in ("score", "both") else []
        if self.fields in ("probs", "both"):
            out += [f"{self.prefix}_p{c}" for c in labels]
        return out


# ----------------------------------------------------------------------------- data
def load_annotations(paths: Sequence[str], text_key: str = "text", score_key: str = "score"
                     ) -> Tuple[List[str], List[int]]:
    """Texts and integer scores (0-5) of every record; a malformed line raises RecordError
    (``file:line: kind: detail``)."""
    texts, scores = [], []
    for path in paths:
        for line_no, rec in iter_records(path, required_keys=(text_key, score_key),
                                         text_key=text_key):
            s = rec[score_key]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s \
                    or s != int(s) or not 0 <= s <= 5:
                raise RecordError(path, line_no, "bad_type",
                                  f"{score_key!r} must be an integer 0-5, got {s!r}")
            texts.append(rec[text_key])
            scores.append(int(s))
    if len(set(scores)) < 2:
        raise ValueError(f"{', '.join(paths)}: need annotations with at least two distinct "
                         f"scores, found {sorted(set(scores))} in {len(scores)} records")
    return texts, scores


def holdout_split(y: Sequence[int], fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: per label, ``round(fraction * n_label)`` random documents held
    out (stratified, so a rare label is represented in both when it can be)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    hold = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        hold.extend(idx[:min(k, len(idx) - 1)].tolist())  # keep one of each label to train on
    mask = np.zeros(len(y), dtype=bool)
    mask[hold] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def calibration(probs: np.ndarray, y: np.ndarray, labels: Sequence[int], bins: int = 10) -> dict:
    """Accuracy, ECE, Brier, log-loss, expected-score MAE and the reliability table of
    predicted distributions ``probs`` (n x C) against label indices ``y`` (module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    n = len(y)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.digitize(conf, edges[1:-1], right=True)  # bin m holds ((m-1)/M, m/M]
    table, ece = [], 0.0
    for m in range(bins):
        sel = which == m
        k = int(sel.sum())
        row = {"lo": float(edges[m]), "hi": float(edges[m + 1]), "count": k,
               "confidence": None, "accuracy": None}
        if k:
            row["confidence"] = float(conf[sel].mean())
            row["accuracy"] = float(correct[sel].mean())
            ece += k / n * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    onehot = np.eye(len(labels))[y]
    lab = np.asarray(labels, dtype=np.float64)
    return {"holdout_docs": n, "accuracy": float(correct.mean()), "ece": float(ece),
            "ece_bins": bins, "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
            "log_loss": float(-np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0)).mean()),
            "expected_score_mae": float(np.abs(probs @ lab - lab[y]).mean()),
            "reliability": table}


# ----------------------------------------------------------------------------- back-ends
def _ft_line(text: str) -> str:
    return " ".join("_" + w if w.startswith(_LABEL) else w for w in _WS.split(text.strip()) if w)


class _Encoder:
    """A frozen HF encoder giving attention-mask-aware mean-pooled embeddings."""

    def __init__(self, path: str, max_length: int, batch_size: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            if self.tok.eos_token is None:
                raise ValueError(f"encoder {path}: its tokenizer has no pad or eos token")
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        limit = self.tok.model_max_length
        self.max_length = min(max_length, limit) if 0 < limit < 1_000_000 else max_length
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        torch = self.torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding
        out: List[Optional[np.ndarray]] = [None] * len(texts)
        bar = None
        if progress:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="doc", desc="embed", file=sys.stderr,
                       dynamic_ncols=True, mininterval=0.5)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            enc = self.tok([texts[i] for i in idx], padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            for j, i in enumerate(idx):
                out[i] = pooled[j].numpy()
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _build_head(kind: str, dim: int, classes: int, hidden: int):
    import torch.nn as nn

    if kind == "linear":
        return nn.Sequential(nn.Linear(dim, classes))
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, classes))


class QualityClassifier:
    """A trained classifier: ``predict_proba(texts)`` (n x len(labels)) and
    ``expected_score(probs)``. Load a model folder with :meth:`load`."""

    def __init__(self, meta: dict, *, encoder=None, head=None, norm=None, ft=None):
        self.meta = meta
        self.labels: List[int] = list(meta["labels"])
        self.backend: str = meta["backend"]
        self.encoder, self.head, self.norm, self.ft = encoder, head, norm, ft

    @classmethod
    def load(cls, folder: str, batch_size: int = 64) -> "QualityClassifier":
        path = os.path.join(folder, CONFIG_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format: expected {FORMAT!r}")
        if meta["backend"] == "fasttext":
            ft = import_fasttext().load_model(os.path.join(folder, FASTTEXT_NAME))
            return cls(meta, ft=ft)
        from safetensors.torch import load_file

        state = load_file(os.path.join(folder, HEAD_NAME))
        norm = (state.pop("norm.mean"), state.pop("norm.std"))
        head = _build_head(meta["head"], norm[0].numel(), len(meta["labels"]),
                           meta["hidden_size"])
        head.load_state_dict(state)
        enc = _Encoder(meta["encoder"], meta["max_length"], batch_size)
        return cls(meta, encoder=enc, head=head.eval(), norm=norm)

    def head_proba(self, emb: np.ndarray) -> np.ndarray:
        import torch

        x = (torch.from_numpy(emb) - self.norm[0]) / self.norm[1]
        with torch.inference_mode():
            return torch.softmax(self.head(x), dim=-1).double().numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.labels)))
        if self.backend == "hf":
            return self.head_proba(self.encoder.embed(texts))
        return _ft_proba(self.ft, texts, self.labels)

    def expected_score(self, probs: np.ndarray) -> np.ndarray:
        return probs @ np.asarray(self.labels, dtype=np.float64)


def _ft_proba(model, texts: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    col = {f"{_LABEL}{c}": j for j, c in enumerate(labels)}
    got_labels, got_probs = model.predict([_ft_line(t) for t in texts], k=-1)
    out = np.zeros((len(texts), len(labels)))
    for i, (ls, ps) in enumerate(zip(got_labels, got_probs)):
        for lab, p in zip(ls, ps):
            out[i, col[lab]] = p
    return out / out.sum(axis=1, keepdims=True)


def _train_fasttext(cfg: TrainConfig, texts, y, labels, tmp: str, progress: bool = False):
    ft = import_fasttext()
    train_file = os.path.join(tmp, "train.txt")
    with open(train_file, "w", encoding="utf-8") as f:
        for t, c in zip(texts, y):
            f.write(f"{_LABEL}{labels[c]} {_ft_line(t)}\n")
    try:
        model = ft.train_supervised(input=train_file, epoch=cfg.epochs or 25, lr=cfg.lr or 0.5,
                                    wordNgrams=cfg.word_ngrams, dim=cfg.dim, minCount=1,
                                    loss="softmax", thread=cfg.threads, seed=cfg.seed,
                                    verbose=2 if progress else 0)  # 2: its progress line
    except RuntimeError as e:  # "Encountered NaN.": diverged
        raise ValueError(f"TrainConfig.lr: fastText training failed ({e}); lower --lr") from None
    finally:
        os.remove(train_file)
    model.save_model(os.path.join(tmp, FASTTEXT_NAME))
    return QualityClassifier({"backend": "fasttext", "labels": list(labels)}, ft=model)


def _train_hf(cfg: TrainConfig, emb: np.ndarray, y: np.ndarray, labels, tmp: str):
    import torch
    from safetensors.torch import save_file

    x = torch.from_numpy(emb)
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    x = (x - mean) / std
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        head = _build_head(cfg.head, x.shape[1], len(labels), cfg.hidden_size)
    finally:
        torch.random.set_rng_state(gen_state)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr or 1e-2, weight_decay=cfg.weight_decay)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs or 300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), target)
        loss.backward()
        opt.step()
    if not math.isfinite(loss.item()):
        raise ValueError(f"TrainConfig.lr: the head's training loss diverged ({loss.item()}); "
                         "lower --lr")
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    state.update({"norm.mean": mean.contiguous(), "norm.std": std.contiguous()})
    save_file(state, os.path.join(tmp, HEAD_NAME))
    return QualityClassifier({"backend": "hf", "labels": list(labels)}, head=head.eval(),
                             norm=(mean, std)), loss.item()


# ----------------------------------------------------------------------------- train
def train_classifier(cfg: TrainConfig, progress: bool = False) -> dict:
    """Train on ``cfg.annotations`` (minus the held-out split), measure calibration on the
    held-out split, publish the model folder atomically; returns the summary. ``progress``: a
    progress bar over the encoder's documents (the slow part of ``backend="hf"``)."""
    cfg.validate()
    if cfg.backend == "fasttext":
        import_fasttext()  # before any work
    refuse_overlap([cfg.output], cfg.annotations, key="--output")
    t0 = time.time()
    texts, scores = load_annotations(cfg.annotations, cfg.text_key, cfg.score_key)
    labels = sorted(set(scores))
    y = np.asarray([labels.index(s) for s in scores])
    tr, ho = holdout_split(y, cfg.holdout_fraction, cfg.seed)
    meta = {"format": FORMAT, "backend": cfg.backend, "labels": labels,
            "text_key": cfg.text_key}
    summary: dict = {"backend": cfg.backend, "labels": labels, "docs": len(texts),
                     "train_docs": int(len(tr)), "label_counts": {
                         str(c): int((y == j).sum()) for j, c in enumerate(labels)}}
    with publish_into_dir(cfg.output, overwrite=cfg.overwrite, names=_OWNED,
                          key="--output") as tmp:
        if cfg.backend == "fasttext":
            meta.update(dim=cfg.dim, word_ngrams=cfg.word_ngrams, epochs=cfg.epochs or 25,
                        lr=cfg.lr or 0.5, label_format=f"{_LABEL}<score> <one-line text>")
            clf = _train_fasttext(cfg, [texts[i] for i in tr], y[tr], labels, tmp, progress)
            hold_probs = clf.predict_proba([texts[i] for i in ho])
        else:
            enc = _Encoder(cfg.encoder, cfg.max_length, cfg.batch_size)
            t1 = time.time()
            emb = enc.embed(texts, progress=progress)
            summary["embed_docs_per_s"] = round(len(texts) / max(time.time() - t1, 1e-9), 1)
            meta.update(encoder=os.path.abspath(cfg.encoder), pooling="mean",
                        max_length=enc.max_length, head=cfg.head, hidden_size=cfg.hidden_size,
                        embedding_dim=int(emb.shape[1]), epochs=cfg.epochs or 300,
                        lr=cfg.lr or 1e-2, weight_decay=cfg.weight_decay)
            clf, last_loss = _train_hf(cfg, emb[tr], y[tr], labels, tmp)
            summary["train_loss"] = last_loss
            hold_probs = clf.head_proba(emb[ho]) if len(ho) else np.zeros((0, len(labels)))
        summary["holdout"] = (calibration(hold_probs, y[ho], labels, cfg.bins) if len(ho)
                              else None)
        meta.update(holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
        summary["seconds"] = round(time.time() - t0, 3)
        for name, obj in ((CONFIG_NAME, meta), (SUMMARY_NAME, summary)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=True)
                f.write("\n")
    summary["output"] = cfg.output
    return summary


# ----------------------------------------------------------------------------- score
def model_digest(folder: str) -> str:
    """SHA-1 over the model folder's files (config, head or fastText model)."""
    h = hashlib.sha1()
    for name in (CONFIG_NAME, HEAD_NAME, FASTTEXT_NAME):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            h.update(name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


_LOADED: Dict[Tuple[str, str, int], QualityClassifier] = {}


def _classifier(cfg: ScoreConfig) -> QualityClassifier:
    key = (os.path.abspath(cfg.model), cfg.model_digest, cfg.batch_size)
    if key not in _LOADED:
        _LOADED[key] = QualityClassifier.load(cfg.model, cfg.batch_size)
    return _LOADED[key]


def score_shard(task: ShardTask) -> dict:
    cfg: ScoreConfig = task.options
    clf = _classifier(cfg)
    stats = ErrorStats()
    n = 0
    score_sum = 0.0
    argmax = {str(c): 0 for c in clf.labels}
    want_score = cfg.fields in ("score", "both")
    want_probs = cfg.fields in ("probs", "both")

    def flush(batch: list, out) -> None:
        nonlocal n, score_sum
        probs = clf.predict_proba([r[cfg.text_key] for r in batch])
        exp = clf.expected_score(probs)
        for rec, p, e in zip(batch, probs, exp):
            sig = rec.get(cfg.signals_key)
            sig = dict(sig) if isinstance(sig, dict) else {}
            if want_score:
                sig[f"{cfg.prefix}_score"] = float(e)
            if want_probs:
                sig.update({f"{cfg.prefix}_p{c}": float(q) for c, q in zip(clf.labels, p)})
            rec[cfg.signals_key] = sig
            out.write(dump_record(rec))
            argmax[str(clf.labels[int(p.argmax())])] += 1
            score_sum += float(e)
        n += len(batch)
        batch.clear()

    with atomic_output(task.output_path()) as out:
        batch: list = []
        for _, rec in iter_records(task.input_path, required_keys=(cfg.text_key,),
                                   text_key=cfg.text_key, on_error=task.on_error, stats=stats,
                                   progress=task.report):
            batch.append(rec)
            if len(batch) >= cfg.batch_size:
                flush(batch, out)
        if batch:
            flush(batch, out)
    return {"docs": n, "score_sum": score_sum, "predicted_label_counts": argmax,
            "errors": stats.as_dict()}


def score_files(inputs: Sequence[str], out_dir: str, config: ScoreConfig, *, workers: int = 1,
                on_error: str = "fail", resume: bool = True, progress: bool = True,
                overwrite: bool = False, shard=None) -> dict:
    """Score every record of ``inputs`` into ``out_dir`` (same names); returns the summary.
    ``shard`` (a ShardSpec, where the shard runner has one) restricts the run to one part of
    the inputs."""
    config.validate()
    config = dataclasses.replace(config, model_digest=model_digest(config.model))
    clf = _classifier(config)  # a bad model folder fails here, not in a worker
    kw = {} if shard is None else {"shard": shard}
    s = run_shards(inputs, out_dir, score_shard, workers=workers, desc="classifier",
                   resume=resume, options=config, on_error=on_error, progress=progress,
                   overwrite=overwrite, **kw)
    docs = s.get("docs", 0)
    s["mean_score"] = round(s.pop("score_sum", 0.0) / docs, 4) if docs else None
    s["fields"] = config.field_names(clf.labels)
    s["docs_per_s"] = round(docs / max(s["seconds"], 1e-9), 1)
    return s

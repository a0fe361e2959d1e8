"""KenLM perplexity of records (library behind ``tools/perplexity.py``), as Fanar's filtering
uses it (Fanar report, Sec. 4.3: KenLM models trained on Wikipedia, the public MSA model of
``edugp/kenlm``; per dataset the highest-perplexity 5% dropped, and in the last epoch the
lowest too). Filtering on the score is ``filter_data``'s percentile rules.

Choices
- **The model's own normalisation**: the edugp/kenlm models were trained on CCNet-normalised,
  SentencePiece-tokenised Wikipedia (Wenzek et al. 2020, CCNet), so a document is scored the
  same way: per line, lower-cased, accents (combining marks, which include Arabic diacritics)
  removed, digits -> 0, Unicode punctuation mapped to ASCII, non-printing characters removed;
  then SentencePiece pieces when ``sp_model`` is given (whitespace tokens otherwise). A model
  trained on other text should be scored with the normalisation it was trained with
  (``ccnet_normalize=False`` scores the raw text).
- **Document perplexity** is edugp's: ``10 ** (-sum of line log10 scores / (tokens + lines))``
  (each line scored with ``<s>``/``</s>``, the ``</s>`` counted), stored as
  ``quality_signals[<signal>]`` (default ``perplexity``) at full precision (edugp rounds to
  0.1, which ties documents at a percentile boundary).
- :func:`write_arpa` estimates a small interpolated absolute-discounting n-gram model
  (Ney et al. 1994) in ARPA format, for tests and toy corpora; KenLM's Python module only
  queries models. Real models come from ``lmplz`` or edugp/kenlm.
- Scoring runs per input file through :class:`megatron_ar.io.shards.ShardRunner` (workers,
  resume, the outputs rule); each worker loads the model once (a KenLM binary is mmapped).
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.records import ErrorStats, dump_record, iter_records
from megatron_ar.io.shards import ShardTask, run_shards

__all__ = ["ccnet_normalize", "PerplexityConfig", "doc_perplexity", "write_arpa",
           "perplexity_files"]

# CCNet's mapping of Unicode punctuation to ASCII (written here from its description)
_PUNCT = {"，": ",", "。": ". ", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"',
          "１": '"', "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":",
          "？": "?", "！": "!", "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ",
          "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]",
          "％": "%", "►": "-"}
_PUNCT_RE = re.compile("|".join(map(re.escape, _PUNCT)))
_DIGIT_RE = re.compile(r"\d")
_NON_PRINTING = re.compile("[" + "".join(map(chr, list(range(0, 32)) + list(range(127, 160))))
                           + "]")


def ccnet_normalize(line: str) -> str:
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = "".join(c for c in unicodedata.normalize("NFD", line)
                   if unicodedata.category(c) != "Mn")
    line = _DIGIT_RE.sub("0", line)
    line = _PUNCT_RE.sub(lambda m: _PUNCT[m.group(0)], line)
    return _NON_PRINTING.sub("", line)


@dataclass(frozen=True)
class PerplexityConfig:
    model: str
    sp_model: Optional[str] = None
    ccnet_normalize: bool = True
    signal: str = "perplexity"
    text_key: str = "text"
    signals_key: str = "quality_signals"

    def validate(self) -> None:
        import os

        for name in ("model", "sp_model"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"PerplexityConfig.{name}: {path}: no such file")
        if not self.signal.startswith("perplexity"):
            raise ValueError(f"PerplexityConfig.signal: must start with 'perplexity' (filter "
                             f"rules read it as an external signal), got {self.signal!r}")


class _Scorer:
    def __init__(self, cfg: PerplexityConfig):
        import kenlm

        self.cfg = cfg
        self.model = kenlm.Model(cfg.model)
        self.sp = None
        if cfg.sp_model:
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_file=cfg.sp_model)

    def line_tokens(self, line: str) -> List[str]:
        if self.cfg.ccnet_normalize:
            line = ccnet_normalize(line)
        if self.sp is not None:
            return self.sp.encode(line, out_type=str)
        return line.split()


def doc_perplexity(scorer: _Scorer, text: str) -> float:
    """edugp's document perplexity (module docstring); lines with no token are skipped."""
    log_score, length = 0.0, 0
    for line in text.split("\n"):
        toks = scorer.line_tokens(line)
        if not toks:
            continue
        log_score += scorer.model.score(" ".join(toks), bos=True, eos=True)
        length += len(toks) + 1
    return 10.0 ** (-log_score / length) if length else float("nan")


_SCORERS: Dict[PerplexityConfig, _Scorer] = {}


def perplexity_shard(task: ShardTask) -> dict:
    cfg: PerplexityConfig = task.options
    scorer = _SCORERS.get(cfg) or _SCORERS.setdefault(cfg, _Scorer(cfg))
    stats = ErrorStats()
    n = 0
    total = 0.0
    with atomic_output(task.output_path()) as out:
        for _, rec in iter_records(task.input_path, required_keys=(cfg.text_key,),
                                   text_key=cfg.text_key, on_error=task.on_error, stats=stats,
                                   progress=task.report):
            ppl = doc_perplexity(scorer, rec[cfg.text_key])
            sig = rec.get(cfg.signals_key)
            rec[cfg.signals_key] = {**(sig if isinstance(sig, dict) else {}), cfg.signal: ppl}
            out.write(dump_record(rec))
            n += 1
            if not math.isnan(ppl):
                total += math.log(ppl)
    return {"docs": n, "log_ppl_sum": total, "errors": stats.as_dict()}


def perplexity_files(inputs: Sequence[str], out_dir: str, config: PerplexityConfig, *,
                     workers: int = 1, on_error: str = "fail", resume: bool = True,
                     progress: bool = True, overwrite: bool = False, shard=None) -> dict:
    """Score every record of ``inputs`` into ``out_dir`` (same names); returns the summary."""
    config.validate()
    _Scorer(config)  # fails here (bad model file) rather than in a worker
    s = run_shards(inputs, out_dir, perplexity_shard, workers=workers, desc="perplexity",
                   resume=resume, options=config, on_error=on_error, progress=progress,
                   overwrite=overwrite, shard=shard)
    docs = s.get("docs", 0)
    s["geomean_perplexity"] = round(math.exp(s.get("log_ppl_sum", 0.0) / docs), 2) if docs else None
    s["docs_per_s"] = round(docs / max(s["seconds"], 1e-9), 1)
    return s


# ----------------------------------------------------------------------------- estimator
def write_arpa(sentences: Iterable[List[str]], path: str, order: int = 3,
               discount: float = 0.75) -> dict:
    """An interpolated absolute-discounting n-gram model of ``sentences`` (token lists) in ARPA
    format: ``p(w|h) = max(c(hw) - D, 0) / c(h) + D * N1+(h.) / c(h) * p(w|h')``, unigrams
    add-one smoothed over the vocabulary plus ``</s>`` and ``<unk>``. Every listed n-gram carries
    the interpolated probability and every context its back-off weight ``D * N1+(h.) / c(h)``,
    so a back-off query gives the same distribution. Returns n-gram counts per order."""
    if order < 1 or not 0 < discount < 1:
        raise ValueError(f"write_arpa: order >= 1 and 0 < discount < 1, got {order}, {discount}")
    counts: List[Counter] = [Counter() for _ in range(order + 1)]
    for toks in sentences:
        s = ["<s>"] + list(toks) + ["</s>"]
        for n in range(1, order + 1):
            for i in range(max(0, 1 if n == 1 else 0), len(s) - n + 1):
                counts[n][tuple(s[i:i + n])] += 1
    # context statistics from the n-gram counts: c(h) and N1+(h .)
    ctx_total: List[Dict[tuple, int]] = [defaultdict(int) for _ in range(order + 1)]
    ctx_types: List[Dict[tuple, int]] = [defaultdict(int) for _ in range(order + 1)]
    for n in range(2, order + 1):
        for g, c in counts[n].items():
            ctx_total[n][g[:-1]] += c
            ctx_types[n][g[:-1]] += 1
    uni = counts[1]
    vocab = sorted(g[0] for g in uni) + ["<unk>"]
    total = sum(uni.values()) + len(vocab)
    prob: List[Dict[tuple, float]] = [dict() for _ in range(order + 1)]
    for w in vocab:
        prob[1][(w,)] = (uni.get((w,), 0) + 1) / total
    for n in range(2, order + 1):
        for g, c in counts[n].items():
            h = g[:-1]
            bow = discount * ctx_types[n][h] / ctx_total[n][h]
            prob[n][g] = max(c - discount, 0) / ctx_total[n][h] + bow * prob[n - 1][g[1:]]

    def backoff(g: tuple) -> Optional[float]:
        n = len(g) + 1
        if n > order or g not in ctx_total[n]:
            return None
        return discount * ctx_types[n][g] / ctx_total[n][g]

    from megatron_ar.io.atomic import atomic_output as _out

    sizes = {1: len(vocab) + 1}
    for n in range(2, order + 1):
        sizes[n] = len(prob[n])
    with _out(path) as f:
        f.write("\\data\\\n")
        for n in range(1, order + 1):
            f.write(f"ngram {n}={sizes[n]}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            if n == 1:  # <s> is never predicted: log10 prob -99, as lmplz writes it
                b = backoff(("<s>",))
                f.write(f"-99\t<s>" + (f"\t{math.log10(b):.7f}" if b else "") + "\n")
            for g in sorted(prob[n]):
                b = backoff(g)
                line = f"{math.log10(prob[n][g]):.7f}\t{' '.join(g)}"
                if b is not None and n < order:
                    line += f"\t{math.log10(b):.7f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    return sizes

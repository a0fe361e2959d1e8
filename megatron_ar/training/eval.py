"""In-loop evaluation: validation loss and bits-per-byte per named set, multiple-choice
log-likelihood tasks (lm-evaluation-harness style), optional greedy generations.

Design choices
- Everything runs through the training step (:mod:`megatron_ar.models.step`: megatron-core's
  forward-only schedule), so evaluation works at every TP/PP/VPP/DP layout of the run, and the
  per-token negative log-likelihood comes from ``GPTModel(labels=...)`` (vocab-parallel cross
  entropy): no logits are gathered for loss, BPB or multiple-choice scoring. Sums are reduced
  over ranks on device tensors.
- A validation set is a ``.bin/.idx`` prefix read as a one-phase, one-epoch curriculum
  (``megatron_ar.data.curriculum``): same packing as training, a fixed seed, so every
  evaluation sees the same ``eval_iters x micro_batch x DP`` samples.
- Bits per byte = sum of target-token NLL (nats) / ln 2 / number of UTF-8 bytes those target
  tokens decode to. Bytes come from a per-token byte-length table built once from the
  tokenizer's vocabulary (:func:`token_byte_lengths`): byte-level BPE pieces are one byte per
  symbol, SentencePiece-style pieces are their UTF-8 length with the word-boundary marker as one
  space and ``<0xNN>`` byte-fallback pieces one byte, special tokens zero. The table lives on the
  device and the forward step counts the bytes of each micro-batch's targets there. This equals
  ``len(tokenizer.decode(ids).encode())`` except for a leading-space strip some decoders do at
  the start of a text (tested against ``decode``). BPB is tokenizer-independent, which is why the
  autoresearch card reports it; without a tokenizer (``model.tokenizer`` unset) it is omitted.
- Multiple choice follows lm-evaluation-harness: each (query, choice) pair is scored by the
  summed log-likelihood of the choice tokens given the query (tokenized separately, no special
  tokens, the query truncated from the left to fit); ``acc`` = argmax log-likelihood is gold,
  ``acc_norm`` = argmax of log-likelihood / character length of the choice. Requests are split
  across data-parallel ranks and summed back with one all-reduce.
- Generations (greedy) re-run the full forward each token: a debugging aid for a few prompts,
  not an inference engine.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from megatron_ar.models.step import (StepSpec, forward_logits, global_sums, is_reporter,
                                     run_schedule, token_mean)
from megatron_ar.runtime.device import group_tensor, group_zeros, to_device
from megatron_ar.training.loop import TrainState, collate, needs_data, sample_to_arrays


# ----------------------------------------------------------------------------------------------
# bytes per token
# ----------------------------------------------------------------------------------------------
def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id contributes to the detokenized text (see module docstring)."""
    spec = json.loads(tokenizer.to_str())
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    table = np.zeros(size, dtype=np.int64)
    dec = json.dumps(spec.get("decoder") or {})
    byte_level = '"ByteLevel"' in dec
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    for piece, i in vocab.items():
        if piece in special:
            table[i] = 0
        elif byte_level:
            table[i] = len(piece)  # one symbol per byte (GPT-2 byte-to-unicode map)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            table[i] = 1
        else:
            table[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return table


# ----------------------------------------------------------------------------------------------
# multiple-choice tasks
# ----------------------------------------------------------------------------------------------
class TaskError(ValueError):
    """A multiple-choice task file or request is malformed; the message names the file and line."""

    pass


def load_mc_task(path: str, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """Read a JSONL multiple-choice task: one ``{"query", "choices", "gold"}`` object per line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{n}: invalid JSON: {exc.msg}") from exc
            for k in ("query", "choices", "gold"):
                if k not in obj:
                    raise TaskError(f"{path}:{n}: missing key {k!r}")
            if not isinstance(obj["choices"], list) or len(obj["choices"]) < 2:
                raise TaskError(f"{path}:{n}: 'choices' must be a list of >= 2 strings")
            if not isinstance(obj["gold"], int) or not 0 <= obj["gold"] < len(obj["choices"]):
                raise TaskError(f"{path}:{n}: 'gold' must index 'choices' (0..{len(obj['choices']) - 1})")
            items.append(obj)
            if limit and len(items) >= limit:
                break
    if not items:
        raise TaskError(f"{path}: no items")
    return items


def mc_requests(items, tokenizer, seq_length: int) -> List[Dict[str, Any]]:
    """(query, choice) pairs -> token arrays of length ``seq_length`` with the choice's target
    positions in ``loss_mask``."""
    reqs = []
    for qi, it in enumerate(items):
        ctx = tokenizer.encode(it["query"], add_special_tokens=False).ids
        for ci, choice in enumerate(it["choices"]):
            cont = tokenizer.encode(choice, add_special_tokens=False).ids
            if not cont:
                raise TaskError(f"item {qi} choice {ci}: tokenizes to nothing")
            seq = (ctx + cont)[-(seq_length + 1):]
            n_cont = min(len(cont), len(seq) - 1)
            arr = np.zeros(seq_length + 1, dtype=np.int64)
            arr[:len(seq)] = seq
            mask = np.zeros(seq_length, dtype=np.float32)
            mask[len(seq) - 1 - n_cont:len(seq) - 1] = 1.0  # labels index = position + 1
            reqs.append({"tokens": arr[:-1], "labels": arr[1:], "loss_mask": mask,
                         "item": qi, "choice": ci})
    return reqs


def score_mc(items, loglik: Sequence[float]) -> Dict[str, float]:
    acc = acc_norm = 0
    k = 0
    for it in items:
        n = len(it["choices"])
        ll = np.asarray(loglik[k:k + n], dtype=np.float64)
        lens = np.asarray([max(len(c), 1) for c in it["choices"]], dtype=np.float64)
        acc += int(np.argmax(ll) == it["gold"])
        acc_norm += int(np.argmax(ll / lens) == it["gold"])
        k += n
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": len(items)}


class Evaluator:
    """Builds validation sets / tasks once; :meth:`evaluate` runs them all."""

    def __init__(self, state: TrainState):
        cfg = state.cfg
        self.cfg = cfg
        self.tokenizer = state.tokenizer
        # token id -> UTF-8 bytes, on the device, where the forward step indexes it with labels
        self.byte_table = (to_device(torch.from_numpy(token_byte_lengths(self.tokenizer)))
                           if self.tokenizer is not None else None)
        self.valid = {name: self._valid_dataset(name, prefix) for name, prefix in cfg.eval.valid_sets.items()}
        self.tasks = {}
        if cfg.eval.mc_tasks and self.tokenizer is None:
            raise TaskError("eval.mc_tasks: needs model.tokenizer to tokenize queries and choices")
        for name, path in cfg.eval.mc_tasks.items():
            items = load_mc_task(path, cfg.eval.mc_limit)
            self.tasks[name] = (items, mc_requests(items, self.tokenizer, cfg.model.seq_length))

    def _valid_dataset(self, name: str, prefix: str):
        from megatron_ar.data.curriculum import CurriculumDataset
        from megatron_ar.data.curriculum_config import BlendGroup, CurriculumConfig, PhaseConfig

        cfg = self.cfg
        cache = (getattr(cfg.data, "cache_dir", None) if cfg.data is not None else None) \
            or os.path.join(cfg.logging.run_dir, "data_cache")
        cc = CurriculumConfig(datasets={name: prefix},
                              phases=[PhaseConfig(name=f"valid-{name}",
                                                  blend=[BlendGroup(name=name, datasets=(name,))],
                                                  epochs=1)],
                              seq_length=cfg.model.seq_length, global_batch_size=None,
                              seed=cfg.schedule.seed, cache_dir=cache,
                              align_phases_to_global_batch=False)
        return CurriculumDataset(cc, cache_dir=cache)

    def validation(self, state: TrainState, ds) -> Dict[str, float]:
        s = self.cfg.schedule
        per = s.micro_batch_size * state.layout.dp
        n_micro = min(self.cfg.eval.eval_iters, len(ds) // per)
        if n_micro < 1:
            raise TaskError(f"eval.valid_sets: a validation set has {len(ds)} samples, fewer than "
                            f"micro_batch_size x DP = {per}")
        batches = None
        if needs_data(state.model):
            r = state.layout.dp_rank
            batches = [collate([sample_to_arrays(ds[m * per + r * s.micro_batch_size + k], state.seq_length)
                                for k in range(s.micro_batch_size)]) for m in range(n_micro)]
        out = run_schedule(state.model, batches, n_micro, s.micro_batch_size, state.seq_length,
                           forward_only=True,
                           spec=StepSpec(per_sample=True, byte_table=self.byte_table))
        t = global_sums(out, with_bytes=True)
        res = {"loss": token_mean(t), "tokens": float(t[1]), "samples": n_micro * per}
        if self.byte_table is not None and t[2] > 0:
            res["bytes"] = float(t[2])
            res["bpb"] = float(t[0] / math.log(2) / t[2])
        return res

    def multiple_choice(self, state: TrainState, items, reqs) -> Dict[str, float]:
        s = self.cfg.schedule
        mbs, dp, r = s.micro_batch_size, state.layout.dp, state.layout.dp_rank
        mine = list(range(r, len(reqs), dp))
        n_micro = max(1, math.ceil(len(mine) / mbs))
        # Every DP rank runs the same number of micro-batches (padding repeats a request).
        order = mine + [mine[-1] if mine else 0] * (n_micro * mbs - len(mine))
        batches = None
        if needs_data(state.model):
            batches = [collate([{k: reqs[i][k] for k in ("tokens", "labels", "loss_mask")}
                                for i in order[m * mbs:(m + 1) * mbs]]) for m in range(n_micro)]
        out = run_schedule(state.model, batches, n_micro, mbs, state.seq_length, forward_only=True,
                           spec=StepSpec(per_sample=True))
        ll = group_zeros(len(reqs), torch.float64)
        if is_reporter():
            flat = torch.cat([x["per_sample"].double() for x in out])[:len(mine)]
            ll[torch.tensor(mine, dtype=torch.long, device=ll.device)] = -flat
        if dist.is_initialized():
            dist.all_reduce(ll)
        return score_mc(items, ll.tolist())

    def generate(self, state: TrainState, prompt: str, max_new_tokens: int) -> str:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        seq = state.seq_length
        vocab = state.model_config.vocab_size
        new: List[int] = []
        for _ in range(max_new_tokens):
            ctx = (ids + new)[-seq:]
            tokens = torch.zeros(1, seq, dtype=torch.long)
            tokens[0, :len(ctx)] = torch.tensor(ctx)
            logits = forward_logits(state.model, tokens, vocab)
            t = group_tensor([-1.0], torch.float32)
            if logits is not None and is_reporter():
                t[0] = float(torch.argmax(logits[0, len(ctx) - 1]))
            if dist.is_initialized():
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            new.append(int(t.item()))
        return self.tokenizer.decode(new)

    def evaluate(self, state: TrainState) -> Dict[str, Any]:
        for chunk in state.model:
            chunk.eval()
        results: Dict[str, Any] = {"valid": {}, "tasks": {}, "generations": []}
        try:
            with torch.no_grad():
                for name, ds in self.valid.items():
                    results["valid"][name] = self.validation(state, ds)
                for name, (items, reqs) in self.tasks.items():
                    results["tasks"][name] = self.multiple_choice(state, items, reqs)
                if self.tokenizer is not None:
                    for p in self.cfg.eval.generate_prompts:
                        results["generations"].append(
                            {"prompt": p, "completion": self.generate(state, p, self.cfg.eval.generate_tokens)})
        finally:
            for chunk in state.model:
                chunk.train()
        return results

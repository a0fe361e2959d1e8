"""Multiple-choice cloze tasks from any list of texts, in the JSONL format the trainer evaluates
(``eval.mc_tasks``; read by :func:`megatron_ar.training.eval.load_mc_task`, scored by
``acc`` / ``acc_norm`` as lm-evaluation-harness does).

``{"query": str, "choices": [str, ...], "gold": int}`` per line.

Design choices
- A cloze item is a text without its last word (LAMBADA-style); the choices are the true last
  word and ``num_choices - 1`` distractors drawn from the last words of the other texts, so
  they are plausible endings of the same register and language (whitespace word split: no
  language-specific tokenizer). Same texts and seed -> same task. A model that learned the
  text's distribution ranks the true ending higher; a random model scores ~1/num_choices, which
  makes held-out text a cheap sanity signal during training.
- Choices carry the leading space (``" word"``): lm-evaluation-harness' target delimiter, so the
  choice tokens continue the query the way the text does.
- This module knows no corpus: the quickstart's Arabic (Quran / hadith) task is built from it
  in ``examples/quickstart/data.py``.
"""
from __future__ import annotations

import json
import random
from typing import Dict, List, Sequence


def build_cloze_items(texts: Sequence[str], n: int, num_choices: int = 4, seed: int = 1234,
                      min_words: int = 4) -> List[Dict]:
    """Up to ``n`` cloze items from ``texts`` with at least ``min_words`` words (last word to
    predict among ``num_choices``)."""
    if n < 1:
        raise ValueError(f"build_cloze_items: n (number of items) must be >= 1, got {n}")
    if num_choices < 2:
        raise ValueError(f"build_cloze_items: num_choices must be >= 2 (a gold answer and at "
                         f"least one distractor), got {num_choices}")
    rng = random.Random(seed)
    cands = [t.split() for t in texts if len(t.split()) >= min_words]
    if len(cands) < num_choices:
        raise ValueError(f"build_cloze_items: need at least {num_choices} texts with >= {min_words} words")
    endings = sorted({w[-1] for w in cands})
    picks = rng.sample(range(len(cands)), min(n, len(cands)))
    items = []
    for i in picks:
        words = cands[i]
        gold_word = words[-1]
        pool = [e for e in endings if e != gold_word]
        if len(pool) < num_choices - 1:
            continue
        choices = rng.sample(pool, num_choices - 1) + [gold_word]
        rng.shuffle(choices)
        items.append({"query": " ".join(words[:-1]), "choices": [" " + c for c in choices],
                      "gold": choices.index(gold_word)})
    if not items:
        raise ValueError(f"build_cloze_items: no item has {num_choices - 1} distinct distractor "
                         "endings; lower num_choices or give more texts")
    return items


def write_task(items: List[Dict], path: str) -> str:
    """Write ``items`` as JSONL to ``path`` atomically (:mod:`megatron_ar.io.atomic`); returns
    ``path``."""
    from megatron_ar.io.atomic import atomic_output

    with atomic_output(path) as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return path

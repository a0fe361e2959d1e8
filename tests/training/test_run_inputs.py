"""Inputs checked before any work (megatron_ar.training.inputs). Oracles: the token ids written
into the datasets with megatron-core's own IndexedDatasetBuilder, and Megatron-LM's padding rule
(multiple of 128 x TP)."""
import os

import numpy as np
import pytest

from megatron_ar.data.indexed import max_token_id
from megatron_ar.models import get_preset
from megatron_ar.training.config import ConfigError, load_config
from megatron_ar.training.inputs import input_problems

pytestmark = pytest.mark.unit


def _dataset(prefix, docs, dtype=np.uint16):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for d in docs:
        b.add_document(torch.tensor(d, dtype=torch.int64), [len(d)])
    b.finalize(prefix + ".idx")
    return prefix


def _recipe(tmp_path, datasets, extra=""):
    text = f"""\
model:
  preset: tiny-llama
  seq_length: 64
schedule: {{micro_batch_size: 2, global_batch_size: 4}}
data:
  cache_dir: {tmp_path / 'cache'}
  datasets: {{{', '.join(f'{k}: {v}' for k, v in datasets.items())}}}
  phases:
    - name: all
      tokens: 2000
      blend: {{all: {{weight: 1, datasets: [{', '.join(datasets)}]}}}}
{extra}"""
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return load_config(str(p))


def test_token_ids_beyond_the_padded_vocabulary_are_named(tmp_path):
    mc = get_preset("tiny-llama")  # vocab 250 -> 256 rows at TP=1 and TP=2 (128 x TP)
    ok = _dataset(str(tmp_path / "ok"), [[1, 2, 255], [7] * 50])
    bad = _dataset(str(tmp_path / "bad"), [[3, 4], [5, 300, 6]])
    cfg = _recipe(tmp_path, {"ar": ok, "en": bad})
    problems = input_problems(cfg, mc, tp=1)
    assert len(problems) == 1
    assert problems[0].startswith("data.datasets.en: ") and "token id 300" in problems[0]
    assert "padded vocabulary of 256" in problems[0]
    assert input_problems(_recipe(tmp_path, {"ar": ok}), mc, tp=2) == []


def test_max_token_id_is_cached_by_path_size_and_mtime(tmp_path):
    p = _dataset(str(tmp_path / "d"), [[9, 41, 2], [17]], dtype=np.int32)
    cache = str(tmp_path / "cache")
    assert max_token_id(p, cache_dir=cache) == 41
    assert len(os.listdir(os.path.join(cache, "token-ids"))) == 1
    # Same size and mtime, other bytes: the cached answer comes back (no second pass) ...
    st = os.stat(p + ".bin")
    data = np.fromfile(p + ".bin", dtype=np.int32)
    data[1] = 99
    data.tofile(p + ".bin")
    os.utime(p + ".bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert max_token_id(p, cache_dir=cache) == 41
    # ... and a changed mtime is a new key.
    os.utime(p + ".bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert max_token_id(p, cache_dir=cache) == 99
    assert max_token_id(p) == 99


def test_missing_paths_are_all_named(tmp_path):
    ok = _dataset(str(tmp_path / "ok"), [[1, 2, 3]])
    extra = f"""\
checkpoint: {{pretrained_checkpoint: {tmp_path / 'no-ckpt'}}}
eval:
  valid_sets: {{ar: {tmp_path / 'no-valid'}}}
  mc_tasks: {{cloze: {tmp_path / 'no-task.jsonl'}}}
"""
    cfg = _recipe(tmp_path, {"ar": ok, "en": str(tmp_path / "no-train")}, extra)
    cfg.model.tokenizer = str(tmp_path / "no-tok")
    problems = input_problems(cfg, get_preset("tiny-llama"), tp=1)
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["checkpoint.pretrained_checkpoint", "data.datasets.en",
                    "eval.mc_tasks.cloze", "eval.valid_sets.ar", "model.tokenizer"], problems


def test_dry_run_refuses_after_printing(tmp_path, capsys):
    from megatron_ar.training.dryrun import print_plan

    bad = _dataset(str(tmp_path / "bad"), [[3, 4000]] * 40)
    cfg = _recipe(tmp_path, {"ar": bad})
    with pytest.raises(ConfigError, match=r"data.datasets.ar: .*token id 4,000"):
        print_plan(cfg, 1, analytic_only=True)
    assert "inputs: 1 problem(s)" in capsys.readouterr().out
    print_plan(cfg, 1, analytic_only=True, check_inputs=False)
    assert "inputs: not checked" in capsys.readouterr().out

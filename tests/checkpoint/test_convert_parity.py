"""Converted checkpoints inside the real megatron_ar model at TP=2 x PP=2 and at PP=2 x VPP=2 x
DP=2 (one job of 4 gloo processes).

Oracles: transformers' fp32 logits of the original HF model (<= 1e-4 max abs, top-1 identical)
and megatron-core's own ``dist_checkpointing.save`` of the loaded TP=2 x PP=2 model: our
streamed checkpoint must have exactly its keys, global shapes, shard layout and values.
Covered on the way: padded vocab resharding (Gemma-2 converted for TP=1, padded 1152, loaded at
TP=2 whose model pads to 1280), tied embeddings on the last pipeline stage, sliding window
shorter than the sequence, soft-caps, GQA and head_dim != hidden/heads.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from mar_checkpoint_fixtures import tiny_hf_model, train_tiny_tokenizer
from mar_checkpoint_workers import parity_and_megatron_save
from megatron_ar.checkpoint import convert
from megatron_ar.runtime import run_multiprocess

pytestmark = pytest.mark.multiproc

SEQ = 48  # > Gemma-2 sliding window (8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bukhari_records):
    root = tmp_path_factory.mktemp("parity")
    texts = [r["arabic"] for r in bukhari_records[:300]] + \
            [r["english"]["text"] for r in bukhari_records[:300]]
    tok_dir = train_tiny_tokenizer(texts, str(root / "tok"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = tok(" ".join(texts[:4] + texts[300:304]))["input_ids"]
    tokens = torch.tensor(ids[: 2 * SEQ]).reshape(2, SEQ)
    dirs = {}
    for kind, tp in (("llama", 2), ("gemma2", 1)):
        hf = str(root / f"{kind}-hf")
        tiny_hf_model(kind).save_pretrained(hf)
        tok.save_pretrained(hf)
        meg = str(root / f"{kind}-meg")
        convert(kind, "hf", "megatron", hf, meg, target_tensor_parallel_size=tp,
                target_pipeline_parallel_size=2, progress=False)
        dirs[kind] = (hf, meg)
    return root, dirs, tokens


def test_parity_tp2_pp2_and_megatron_layout(setup):
    root, dirs, tokens = setup
    resaved = str(root / "llama-resaved-by-megatron")
    os.makedirs(resaved)
    cases = [(k, hf, meg, tokens) for k, (hf, meg) in dirs.items()]
    results = run_multiprocess(parity_and_megatron_save, 4, cases, 2, 2,
                               (dirs["llama"][1], resaved), timeout=600)
    for kind in dirs:
        r = results[0][kind]
        assert all(res[kind] == r for res in results)  # every rank reports the same numbers
        assert r["tensor_model_parallel_size"] == 2 and r["pipeline_model_parallel_size"] == 2
        assert r["num_positions"] == tokens.numel()
        assert r["max_abs_diff"] <= 1e-4, (kind, r)
        assert r["top1_agreement"] == 1.0, (kind, r)
    assert results[0]["gemma2"]["checkpoint_padded_vocab_size"] == 1152
    vpp = results[0]["llama-pp2-vpp2-dp2"]  # virtual pipeline: several model chunks per rank
    assert vpp["pipeline_model_parallel_size"] == 2 and vpp["tensor_model_parallel_size"] == 1
    assert vpp["max_abs_diff"] <= 1e-4 and vpp["top1_agreement"] == 1.0, vpp

    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    ours = FileSystemReader(dirs["llama"][1]).read_metadata().state_dict_metadata
    theirs = FileSystemReader(resaved).read_metadata().state_dict_metadata
    assert set(ours) == set(theirs)
    tensors = {k for k, v in theirs.items() if isinstance(v, TensorStorageMetadata)}
    assert len(tensors) == 9
    for k in tensors:
        assert ours[k].size == theirs[k].size, k
        chunks = lambda md: sorted((tuple(c.offsets), tuple(c.sizes)) for c in md.chunks)
        assert chunks(ours[k]) == chunks(theirs[k]), k
        a = {k: torch.empty(ours[k].size)}
        b = {k: torch.empty(theirs[k].size)}
        load(a, storage_reader=FileSystemReader(dirs["llama"][1]), no_dist=True)
        load(b, storage_reader=FileSystemReader(resaved), no_dist=True)
        assert torch.equal(a[k], b[k]), k


def test_compare_cli_single_process_exit_status(setup):
    """The CLI without torchrun (TP=PP=1): real numbers in the JSON last line; exit status 0
    within --tolerance, and 1 against an HF copy whose final norm has one weight moved by 0.5:
    the CLI must report the logit change transformers itself measures between the two copies."""
    from transformers import AutoModelForCausalLM

    from megatron_ar.tokenizers.io import tokens_from_text

    root, dirs, _ = setup
    hf, meg = dirs["gemma2"]
    text = root / "text.txt"
    text.write_text("The Prophet said: actions are judged by intentions. " * 20, encoding="utf-8")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def cli(hf_dir, tolerance):
        cmd = [sys.executable, "tools/checkpoint/compare_hf.py", "--hf-dir", hf_dir, "--megatron-dir",
               meg, "--tokenizer-dir", hf, "--text-file", str(text), "--seq-length", str(SEQ),
               "--tolerance", str(tolerance), "--json"]
        run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
        assert run.stdout.strip(), run.stderr[-3000:]
        return run, json.loads(run.stdout.strip().splitlines()[-1])

    run, summary = cli(hf, 1e-4)
    assert run.returncode == 0, run.stderr[-3000:]
    assert summary["passed"] is True and summary["tolerance"] == 1e-4
    assert summary["max_abs_diff"] <= 1e-4
    assert summary["top1_agreement"] == 1.0 and summary["num_positions"] == 2 * SEQ
    assert summary["tensor_model_parallel_size"] == 1

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = tokens_from_text(hf, text.read_text(encoding="utf-8"), 2, SEQ, model.config.vocab_size)
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        model.model.norm.weight[0] += 0.5
        moved = float((model(input_ids=tokens).logits - before).abs().max())
    assert moved > 1e-2  # far above the fp32 parity of the unperturbed pair
    bumped = str(root / "gemma2-hf-norm-moved")
    model.save_pretrained(bumped)
    run, summary = cli(bumped, moved / 2)
    assert run.returncode == 1, run.stderr[-3000:]
    assert summary["passed"] is False and summary["tolerance"] == moved / 2
    assert summary["max_abs_diff"] == pytest.approx(moved, abs=1e-4)

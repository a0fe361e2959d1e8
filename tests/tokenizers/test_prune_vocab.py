"""Gemma vocabulary pruning (Fanar report, section 6.4) on the real Gemma 256k tokenizer and real text.

Oracles: the original HF tokenizer (ids, via ``tokenizers``), transformers ``AutoTokenizer`` and
``AutoModelForCausalLM`` (a random tiny Gemma-2 with the full 256,000 vocabulary), and the
input text itself (round trip). The pruning run is the CLI, once per module, in a subprocess
so its peak RSS is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import material

pytestmark = pytest.mark.slow  # ~1 min of CPU on 2 cores, most of it the Gemma 256k-vocab pruning CLI

REPO = material.REPO
N_HADITH = 1200     # Arabic + English hadith pairs in the pruning corpus
DOC_STEP = 10       # every 10th Python doc file and stdlib module
HELDOUT_EXTRA = [
    "Emoji 😀🎉👍🏽 and CJK 中文字符 日本語のテキスト 한국어 🧪",
    "Ünïcödé façade — “quotes” ½ ∑ √ ∞ ≠ ≤",
    "עברית ελληνικά русский ქართული हिन्दी",
    "\ttabs\tand  double  spaces\n\nnew lines\r\n",
]


def _read(p: str) -> str:
    with open(p, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write_jsonl(path: str, texts) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def texts():
    recs = material.bukhari_records()
    docs = material.python_docs_paths()
    code = material.python_stdlib_paths()
    corpus = []
    for r in recs[:N_HADITH]:
        corpus += [r["arabic"], r["english"]["text"]]
    corpus += [_read(p) for p in docs[::DOC_STEP]] + [_read(p) for p in code[::DOC_STEP]]
    heldout = material.quran_lines("simple")[::4]
    for r in recs[-200:]:
        heldout += [r["arabic"], r["english"]["text"]]
    heldout += [_read(p) for p in docs[3::DOC_STEP * 6] + code[5::DOC_STEP * 6]]
    heldout += HELDOUT_EXTRA
    corpus = [t for t in corpus if t.strip()]
    return {"corpus": corpus, "heldout": heldout}


@pytest.fixture(scope="module")
def work(tmp_path_factory, texts):
    d = tmp_path_factory.mktemp("prune")
    _write_jsonl(str(d / "corpus.jsonl"), texts["corpus"])
    _write_jsonl(str(d / "heldout.jsonl"), texts["heldout"])
    return d


def _tiny_gemma2(path: str, tied: bool, shard: str | None, bf16: bool = False) -> str:
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=256000, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=32, max_position_embeddings=512, tie_word_embeddings=tied)
    torch.manual_seed(0 if tied else 1)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norms so every layer shapes the logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0, 0.5)
    if bf16:  # Gemma-2 ships bf16: exercises the raw-byte path numpy cannot represent
        model = model.to(torch.bfloat16)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kw)
    return path


@pytest.fixture(scope="module")
def tiny_untied(work):
    # 50 MB shards: embedding and LM head (65 MB each) land in separate shards + index json
    return _tiny_gemma2(str(work / "tiny-untied"), tied=False, shard="50MB")


@pytest.fixture(scope="module")
def pruned(work, tiny_untied, gemma_tokenizer_dir):
    out = str(work / "pruned")
    cmd = [sys.executable, "tools/prune_vocab.py", "--tokenizer", gemma_tokenizer_dir,
           "--corpus", str(work / "corpus.jsonl"), "--heldout", str(work / "heldout.jsonl"),
           "--target-vocab-size", "128256", "--output", out, "--checkpoint", tiny_untied,
           "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    c, h = summary["corpus"], summary["heldout"]
    print(f"\nprune_vocab: wall {wall:.1f}s, stages {summary['seconds']}, "
          f"peak RSS {summary['peak_rss_mb']:.0f} MiB\n"
          f"  kept protected/corpus(intermediate-only)/filled = {summary['kept_protected']}/"
          f"{summary['kept_from_corpus']}({summary['intermediate_only']})/"
          f"{summary['filled_by_rank']}\n"
          f"  corpus  {c['docs']} docs {c['chars']} chars: coverage {c['coverage']:.4%}, "
          f"tokens/word {c['tokens_per_word_before']:.4f} -> {c['tokens_per_word_after']:.4f}\n"
          f"  heldout {h['docs']} docs {h['chars']} chars: coverage {h['coverage']:.4%}, "
          f"tokens/word {h['tokens_per_word_before']:.4f} -> {h['tokens_per_word_after']:.4f}, "
          f"byte fallback {h['byte_fallback_rate_before']:.3%} -> "
          f"{h['byte_fallback_rate_after']:.3%}")
    return {"summary": summary, "out": out, "wall": wall}


@pytest.fixture(scope="module")
def old_tok(gemma_tokenizer_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(gemma_tokenizer_dir, "tokenizer.json"))


@pytest.fixture(scope="module")
def new_tok(pruned):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(pruned["out"], "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_new_tok(pruned):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pruned["out"])


@pytest.fixture(scope="module")
def id_map(pruned):
    return np.load(os.path.join(pruned["out"], "id_map.npy"))


@pytest.fixture(scope="module")
def bpe_model(gemma_tokenizer_dir):
    from megatron_ar.tokenizers.prune import load_bpe_tokenizer

    return load_bpe_tokenizer(gemma_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus_old_ids(old_tok, texts):
    return [np.asarray(e.ids, np.int64)
            for e in old_tok.encode_batch(texts["corpus"], add_special_tokens=False)]


def _new_ids(tok, batch):
    return [np.asarray(e.ids, np.int64) for e in tok.encode_batch(batch, add_special_tokens=False)]


def _mismatched_docs(tok, id_map, texts, old_ids) -> list[int]:
    news = _new_ids(tok, texts)
    return [i for i, (o, n) in enumerate(zip(old_ids, news))
            if len(o) != len(n) or not np.array_equal(id_map[o], n)]


def _closure_violations(bpe_model, keep: np.ndarray, tok) -> list[str]:
    """Kept multi-character tokens that no kept merge of ``tok`` builds (protected excluded)."""
    from megatron_ar.tokenizers.prune import _protected

    merges = json.loads(tok.to_str())["model"]["merges"]
    built = {a + b for a, b in merges}
    prot = _protected(bpe_model)
    return [bpe_model.tokens[i] for i in np.flatnonzero(keep & ~prot)
            if len(bpe_model.tokens[i]) > 1 and bpe_model.tokens[i] not in built]


# ------------------------------------------------------------------------------------- (a)


def test_vocab_is_exactly_target_and_specials_keep_ids(pruned, new_tok, hf_new_tok, id_map,
                                                       bpe_model):
    s = pruned["summary"]
    assert s["vocab_size"] == 128256
    assert new_tok.get_vocab_size() == 128256
    assert len(hf_new_tok) == 128256
    assert id_map.shape == (256000,) and id_map.dtype == np.int32
    kept = np.flatnonzero(id_map >= 0)
    assert len(kept) == 128256 and np.array_equal(id_map[kept], np.arange(128256))
    assert s["kept_protected"] + s["kept_from_corpus"] + s["filled_by_rank"] == 128256
    assert s["filled_by_rank"] > 0 and s["dropped_used_tokens"] == 0
    # every added/special token and byte token keeps its id (they are Gemma ids 0..472)
    for i in bpe_model.added_ids + list(bpe_model.byte_ids.values()):
        assert id_map[i] == i
        assert new_tok.id_to_token(i) == bpe_model.tokens[i]
    assert s["added_tokens_renumbered"] == 0
    for t in ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "\t"):
        assert new_tok.token_to_id(t) == id_map[bpe_model.vocab[t]]
    # kept tokens are the same strings under their new ids
    for i in kept[::997]:
        assert new_tok.id_to_token(int(id_map[i])) == bpe_model.tokens[i]
    # closed under merges: every kept non-protected multi-char token is built by a kept merge
    assert _closure_violations(bpe_model, id_map >= 0, new_tok) == []


# ------------------------------------------------------------------------------------- (b)


def test_lossless_on_pruning_corpus(pruned, new_tok, id_map, texts, corpus_old_ids):
    s = pruned["summary"]
    assert s["corpus_lossless"] is True and s["trace_mismatches"] == 0
    assert s["corpus"]["docs"] == len(texts["corpus"])
    bad = _mismatched_docs(new_tok, id_map, texts["corpus"], corpus_old_ids)
    assert bad == [], f"{len(bad)} docs differ, first: {texts['corpus'][bad[0]][:200]!r}"
    assert s["corpus"]["coverage"] == 1.0
    assert s["corpus"]["tokens_after"] == sum(len(o) for o in corpus_old_ids)


def test_transformers_autotokenizer_agrees(hf_new_tok, new_tok, texts):
    hf = hf_new_tok
    for t in texts["corpus"][::97] + HELDOUT_EXTRA:
        ids = hf(t)["input_ids"]
        assert ids == new_tok.encode(t).ids and ids[0] == 2  # <bos> prepended, id kept
        assert hf.decode(ids, skip_special_tokens=True) == t


def test_intermediate_tokens_are_required(bpe_model, texts, corpus_old_ids, pruned):
    """Why intermediates are counted: keeping only the tokens that appear in the corpus output
    (no intermediates, no fill) changes the segmentation of corpus text; keeping final +
    intermediate symbols (and nothing else) reproduces it exactly."""
    from megatron_ar.tokenizers.prune import _protected, build_pruned_tokenizer, select_vocab

    counts = np.bincount(np.concatenate(corpus_old_ids), minlength=bpe_model.size)
    s = pruned["summary"]
    exact = s["kept_protected"] + s["kept_from_corpus"]
    sel = select_vocab(bpe_model, counts, exact)
    assert sel.filled == 0 and sel.dropped_used == 0 and sel.intermediate_only > 0
    tok, idm = build_pruned_tokenizer(bpe_model, sel.keep)
    assert tok.get_vocab_size() == exact
    assert _mismatched_docs(tok, idm, texts["corpus"], corpus_old_ids) == []

    finals_only = _protected(bpe_model) | (counts > 0)
    tok2, idm2 = build_pruned_tokenizer(bpe_model, finals_only)
    bad = _mismatched_docs(tok2, idm2, texts["corpus"][::4], corpus_old_ids[::4])
    assert len(bad) > 0  # the reasoning in prune.py's docstring is load-bearing


def test_bpe_replay_matches_hf_tokenizer(bpe_model, old_tok, texts):
    from megatron_ar.tokenizers.prune import bpe_trace

    words = sorted({w for t in texts["corpus"][::7] for w in t.split()})[:4000]
    words += ["😀🎉", "中文字符", "\t\t\tx"]
    got = [bpe_trace(bpe_model, "\u2581" + w)[1] for w in words]
    want = [e.ids for e in old_tok.encode_batch([" " + w for w in words],
                                                add_special_tokens=False)]
    diff = [w for w, g, e in zip(words, got, want) if g != e]
    assert diff == []


def test_over_budget_keeps_closure_and_round_trips(bpe_model, texts, corpus_old_ids):
    """A target below what the corpus uses: most-used tokens win, the vocabulary stays closed
    under merges, and text still round-trips (dropped words fall back to smaller pieces)."""
    from megatron_ar.tokenizers.prune import _protected, build_pruned_tokenizer, select_vocab

    counts = np.bincount(np.concatenate(corpus_old_ids), minlength=bpe_model.size)
    target = int(_protected(bpe_model).sum()) + 4000
    sel = select_vocab(bpe_model, counts, target)
    assert int(sel.keep.sum()) == target and sel.dropped_used > 0 and sel.filled == 0
    tok, idm = build_pruned_tokenizer(bpe_model, sel.keep)
    assert _closure_violations(bpe_model, sel.keep, tok) == []
    sample = texts["corpus"][::23]
    encs = tok.encode_batch(sample, add_special_tokens=False)
    assert tok.decode_batch([e.ids for e in encs], skip_special_tokens=False) == sample
    # the most used token is kept and corpus coverage stays high
    all_old = np.concatenate(corpus_old_ids)
    assert sel.keep[np.argmax(counts)]
    assert (idm[all_old] >= 0).mean() > 0.9


# ------------------------------------------------------------------------------------- (c)


def test_heldout_round_trip(pruned, new_tok, old_tok, texts, id_map):
    held = texts["heldout"]
    encs = new_tok.encode_batch(held, add_special_tokens=False)
    dec = new_tok.decode_batch([e.ids for e in encs], skip_special_tokens=False)
    bad = [t for t, d in zip(held, dec) if t != d]
    assert bad == [], bad[0][:200]
    h = pruned["summary"]["heldout"]
    assert h["roundtrip_ok_after"] == h["docs"] == len(held)
    # the extra scripts really exercise byte fallback for characters pruned away
    byte_new = {int(id_map[i]) for i in range(217, 473)}
    extra_ids = [i for e in new_tok.encode_batch(HELDOUT_EXTRA[:3], add_special_tokens=False)
                 for i in e.ids]
    assert any(i in byte_new for i in extra_ids)
    assert h["byte_fallback_rate_after"] > h["byte_fallback_rate_before"]
    assert 0.9 < h["coverage"] < 1.0


# ------------------------------------------------------------------------------------- (d)


def _logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model, model(torch.tensor([ids])).logits[0]


def _in_corpus_text(texts) -> str:
    return texts["corpus"][0][:400] + " " + texts["corpus"][1][:400]


def test_pruned_checkpoint_logits_match(pruned, tiny_untied, old_tok, hf_new_tok, id_map, texts):
    import torch
    from safetensors import safe_open

    out = pruned["out"]
    ck = pruned["summary"]["checkpoint"]
    assert sorted(ck["tensors_pruned"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 128256
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    size = numel = 0
    for fn in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(out, fn), framework="pt") as sf:
            for k in sf.keys():
                t = sf.get_tensor(k)
                size += t.numel() * t.element_size()
                numel += t.numel()
                assert index["weight_map"][k] == fn
    assert index["metadata"]["total_size"] == size
    assert index["metadata"].get("total_parameters", numel) == numel

    text = _in_corpus_text(texts)
    old_ids = old_tok.encode(text).ids
    new_ids = hf_new_tok(text)["input_ids"]
    assert new_ids == id_map[old_ids].tolist()
    m_old, l_old = _logits(tiny_untied, old_ids)
    m_new, l_new = _logits(out, new_ids)
    assert tuple(m_new.get_input_embeddings().weight.shape) == (128256, 64)
    assert tuple(m_new.get_output_embeddings().weight.shape) == (128256, 64)
    kept = torch.from_numpy(np.flatnonzero(id_map >= 0))
    torch.testing.assert_close(l_new, l_old[:, kept], rtol=1e-5, atol=1e-6)
    assert l_old.abs().max() > 1e-2  # logits are not trivially zero


def test_tied_single_file_checkpoint(work, pruned, old_tok, id_map, texts):
    import torch
    from safetensors import safe_open

    from megatron_ar.tokenizers.prune_checkpoint import prune_checkpoint

    src = _tiny_gemma2(str(work / "tiny-tied"), tied=True, shard=None, bf16=True)
    assert os.path.isfile(os.path.join(src, "model.safetensors"))
    dst = work / "tiny-tied-pruned"
    dst.mkdir()
    info = prune_checkpoint(src, str(dst), id_map, progress=False)
    assert info["tensors_pruned"] == ["model.embed_tokens.weight"]
    with safe_open(os.path.join(src, "model.safetensors"), framework="pt") as a, \
            safe_open(str(dst / "model.safetensors"), framework="pt") as b:
        assert b.metadata() == a.metadata() and set(b.keys()) == set(a.keys())
        emb_a, emb_b = a.get_tensor("model.embed_tokens.weight"), b.get_tensor(
            "model.embed_tokens.weight")
        assert emb_b.dtype == torch.bfloat16
        assert torch.equal(emb_b, emb_a[torch.from_numpy(np.flatnonzero(id_map >= 0))])
    ids = old_tok.encode(_in_corpus_text(texts)).ids
    _, l_old = _logits(src, ids)
    m_new, l_new = _logits(str(dst), id_map[ids].tolist())
    assert m_new.config.tie_word_embeddings and m_new.config.vocab_size == 128256
    kept = torch.from_numpy(np.flatnonzero(id_map >= 0))
    torch.testing.assert_close(l_new, l_old[:, kept], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- (e)


def test_runs_in_bounded_time_and_memory(pruned):
    s = pruned["summary"]
    # recorded for the report; memory is asserted (the 17 MB tokenizer.json, two tokenizers and
    # one 65 MB tensor at a time fit far below this), wall time only printed (no timed tests)
    print(f"\nprune wall {pruned['wall']:.1f}s, peak RSS {s['peak_rss_mb']:.0f} MiB")
    assert 0 < s["peak_rss_mb"] < 2048


# ------------------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_culprit(work, gemma_tokenizer_dir, id_map, tiny_untied, bpe_model):
    from megatron_ar.tokenizers.io import TextInputError
    from megatron_ar.tokenizers.prune import PruneConfig, PruneError, prune_vocab, select_vocab
    from megatron_ar.tokenizers.prune_checkpoint import CheckpointPruneError, prune_checkpoint

    good = str(work / "corpus.jsonl")
    with pytest.raises(PruneError, match="corpus.*missing.jsonl"):
        prune_vocab(PruneConfig(gemma_tokenizer_dir, [str(work / "missing.jsonl")],
                                str(work / "o1")))
    with pytest.raises(PruneError, match="output.*contains the input.*corpus.jsonl"):
        prune_vocab(PruneConfig(gemma_tokenizer_dir, [good], str(work), overwrite=True))
    held = work / "held"
    held.mkdir(exist_ok=True)
    (held / "tokenizer.json").write_text("{}")
    with pytest.raises(PruneError, match=r"output.*already holds.*tokenizer.json.*--overwrite"):
        prune_vocab(PruneConfig(gemma_tokenizer_dir, [good], str(held)))
    with pytest.raises(PruneError, match="target_vocab_size.*256000"):
        select_vocab(bpe_model, np.zeros(bpe_model.size, np.int64), 300000)
    with pytest.raises(PruneError, match="target_vocab_size.*protected"):
        select_vocab(bpe_model, np.zeros(bpe_model.size, np.int64), 400)
    bad = work / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(TextInputError, match="bad.jsonl:2"):
        prune_vocab(PruneConfig(gemma_tokenizer_dir, [str(bad)], str(work / "o3"),
                                progress=False))
    assert not any(p.name.startswith("o3") for p in work.iterdir())  # nothing half-written
    with pytest.raises(CheckpointPruneError, match="config.json.*vocab_size"):
        prune_checkpoint(tiny_untied, str(work), id_map[:1000], progress=False)

"""tools/preprocess_data.py (issue 3, item 5): Megatron-LM byte format, round trips, errors,
resume after a kill.

Oracles: Megatron-LM's own tools/preprocess_data.py run from a Megatron-LM checkout when one is
available (the fetched mirror, or $MEGATRON_LM_DIR), and always a reference built in the test
with megatron-core's IndexedDatasetBuilder from megatron-core's / sentencepiece's tokenizers.
"""
import json
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import material

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIRROR = os.environ.get("MEGATRON_LM_DIR", "/work/.mirror/NVIDIA+Megatron-LM/repo")


def _write(path, recs):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _same_files(a_prefix, b_prefix):
    return all(_read(a_prefix + e) == _read(b_prefix + e) for e in (".bin", ".idx"))


@pytest.fixture(scope="module")
def records(bukhari_records):
    recs = [{"id": i, "text": r["arabic"], "en": r["english"]["text"]}
            for i, r in enumerate(bukhari_records[:90])]
    recs[17]["text"] = ""  # an empty document: Megatron-LM keeps it as a 0-sequence document
    return recs


@pytest.fixture(scope="module")
def files(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("pre")
    return {
        "dir": d,
        "all": _write(d / "all.jsonl", records),
        "shards": [_write(d / f"s{k}.jsonl", records[k * 30:(k + 1) * 30]) for k in range(3)],
    }


def _cfg(**kw):
    from megatron_ar.data.preprocess import PreprocessConfig

    kw.setdefault("tokenizer_type", "HuggingFaceTokenizer")
    kw.setdefault("tokenizer_model", material.gemma_tokenizer_dir())
    return PreprocessConfig(**kw)


def _megatron_lm_checkout(dst):
    """Extract tools/preprocess_data.py + megatron/{training,legacy} of the Megatron-LM release
    matching the installed megatron-core into dst (test-only; nothing enters the repo)."""
    import megatron.core

    if not os.path.isdir(MIRROR):
        pytest.skip(f"no Megatron-LM checkout at {MIRROR} (set MEGATRON_LM_DIR)")
    tag = f"core_v{megatron.core.__version__}"
    git = ["git", f"--git-dir={os.path.join(MIRROR, '.git') if os.path.isdir(os.path.join(MIRROR, '.git')) else MIRROR}"]
    if subprocess.run(git + ["rev-parse", "-q", "--verify", tag], capture_output=True).returncode:
        pytest.skip(f"Megatron-LM checkout has no tag {tag}")
    arch = subprocess.run(git + ["archive", tag, "tools/preprocess_data.py", "megatron/training",
                                 "megatron/legacy"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True)
    # megatron/training/__init__.py imports the whole training stack (triton, ...); the script
    # only needs the tokenizer/argument modules, so keep just the names those import.
    with open(os.path.join(dst, "megatron", "training", "__init__.py"), "w") as f:
        f.write("from .global_vars import get_args, get_timers, get_adlr_autoresume, "
                "get_tokenizer\n")
    return os.path.join(dst, "tools", "preprocess_data.py")


def test_byte_identical_to_megatron_lm_script(tmp_path, files):
    from megatron_ar.data.preprocess import preprocess

    script = _megatron_lm_checkout(tmp_path)
    src = _write(tmp_path / "in.jsonl", [json.loads(x) for x in open(files["all"], encoding="utf-8")])
    theirs = str(tmp_path / "theirs")
    # SentencePiece keeps their 5 tokenizer loads (main, 2 partitions, 2 pool workers) cheap;
    # the HF encode_batch path is pinned against megatron-core's per-document tokenize below,
    # and was checked against this script with the Gemma tokenizer too (same bytes).
    sp = material.sentencepiece_model_path()
    cmd = [sys.executable, script, "--input", src, "--output-prefix", theirs,
           "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp,
           "--append-eod", "--workers", "2", "--partitions", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    ours = str(tmp_path / "ours")
    s = preprocess(_cfg(input=[files["all"]], output_prefix=ours, append_eod=True, workers=2,
                        partitions=2, tokenizer_type="SentencePieceTokenizer",
                        tokenizer_model=sp), progress=False)
    assert s["documents"] == 90
    assert _same_files(theirs + "_text_document", ours + "_text_document")


def test_matches_megatron_core_reference_and_round_trips(tmp_path, files, records):
    """3 input shards, 2 keys, partitions=2: bytes equal a reference built with megatron-core's
    builder + megatron-core's tokenizer in Megatron-LM's round-robin document order."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
    from megatron_ar.data.preprocess import _encoder, preprocess

    # workers=1 keeps the shards in this process: a spawned worker re-imports megatron-core
    # (10+ s on 2 cores); the process pool itself is records.run_shards, tested by its owners
    # and by the dedup CLI test.
    cfg = _cfg(input=files["shards"], output_prefix=str(tmp_path / "ours"), json_keys=["text", "en"],
               append_eod=True, workers=1, partitions=2)
    s = preprocess(cfg, progress=False)
    tok = _encoder(cfg, 1).tok  # megatron-core's tokenizer object, already loaded by the run
    hf = tok._tokenizer.tokenizer  # the transformers tokenizer megatron-core wraps
    assert type(hf).__module__.startswith("transformers")
    order = list(range(0, 90, 2)) + list(range(1, 90, 2))
    total = 0
    for key in ("text", "en"):
        ids = {i: tok.tokenize(records[i][key]) for i in order}
        for i in (0, 5, 33):  # megatron-core's tokenizer agrees with transformers
            assert ids[i] == hf(records[i][key], add_special_tokens=False).input_ids
        ref = str(tmp_path / f"ref_{key}")
        b = IndexedDatasetBuilder(ref + ".bin", dtype=DType.optimal_dtype(tok.vocab_size))
        for i in order:
            doc = list(ids[i]) + ([tok.eod] if ids[i] else [])
            b.add_document(doc, [len(doc)] if doc else [])
            total += len(doc)
        b.finalize(ref + ".idx")
        ours = str(tmp_path / f"ours_{key}_document")
        assert _same_files(ref, ours), key
        ds = IndexedDataset(ours)
        assert len(ds.document_indices) - 1 == 90
        for pos in (0, 8, 45, 89):
            got = ds[int(ds.document_indices[pos])] if ids[order[pos]] else None
            if got is None:
                assert ds.document_indices[pos] == ds.document_indices[pos + 1]
                continue
            assert got[-1] == tok.eod
            assert tok.detokenize(got[:-1].tolist()) == records[order[pos]][key]
    assert s["documents"] == 90 and s["tokens"] == total
    assert s["bytes"] == sum(len(r[k].encode()) for r in records for k in ("text", "en"))
    assert s["encoder"] == ["hf-encode_batch"] and s["seconds"] > 0
    assert not os.path.exists(str(tmp_path / "ours.work"))  # work dir removed on success


def test_arabic_sentence_rules():
    from megatron_ar.data.sentence_split import make_splitter, split_rules

    t = "قال: نعم، ثم ذهب؛ هل جاء؟ «نعم.» وزنه 3.5 درهم!\nسطر جديد"
    assert split_rules(t) == ["قال: نعم،", "ثم ذهب؛", "هل جاء؟", "«نعم.»", "وزنه 3.5 درهم!",
                              "سطر جديد"]
    kept = split_rules(t, keep_newlines=True)
    assert "".join(kept) == t and kept[4] == "وزنه 3.5 درهم!\n"
    split, desc = make_splitter("auto")
    assert split(t)[0] == "قال: نعم،" and desc.startswith("auto")


def test_sentencepiece_split_sentences(tmp_path, files, records):
    """SentencePiece + Arabic --split-sentences: one sequence per sentence, bytes equal a
    reference from sentencepiece itself, and every sequence decodes to its sentence."""
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    from megatron_ar.data.preprocess import preprocess
    from megatron_ar.data.sentence_split import split_rules

    model = material.sentencepiece_model_path()
    cfg = _cfg(input=[files["shards"][0]], output_prefix=str(tmp_path / "sp"),
               tokenizer_type="SentencePieceTokenizer", tokenizer_model=model,
               split_sentences=True, lang="arabic", append_eod=True, workers=1)
    s = preprocess(cfg, progress=False)
    sp = spm.SentencePieceProcessor(model_file=model)
    ref = str(tmp_path / "ref")
    b = IndexedDatasetBuilder(ref + ".bin", dtype=np.uint16)  # vocab 32,000 < 65,500
    sents_by_doc = []
    for r in records[:30]:
        sents = [x for x in split_rules(r["text"]) if sp.encode(x)]
        sents_by_doc.append(sents)
        ids = [sp.encode(x) for x in sents]
        if ids:
            ids[-1] = ids[-1] + [sp.eos_id()]
        b.add_document([t for x in ids for t in x], [len(x) for x in ids])
    b.finalize(ref + ".idx")
    out = str(tmp_path / "sp_text_sentence")
    assert _same_files(ref, out)
    ds = IndexedDataset(out)
    n_sent = sum(map(len, sents_by_doc))
    assert len(ds) == n_sent == s["sentences_by_key"]["text"]
    assert n_sent > 3 * 29  # hadiths split into several sentences at ، ؛ ؟ .
    first = sents_by_doc[0]
    for k, sent in enumerate(first):
        seq = ds[k].tolist()
        if k == len(first) - 1:
            seq = seq[:-1]  # EOD
        assert sp.decode(seq) == sent


def test_malformed_line_reported_and_skipped(tmp_path, records, capsys):
    from megatron_ar.data.preprocess import preprocess
    from megatron_ar.io.records import RecordError

    lines = [json.dumps(r, ensure_ascii=False) for r in records[:6]]
    lines[2] = lines[2][:-5]  # truncated JSON on line 3
    lines[4] = json.dumps({"id": 4, "body": "no text key"})
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = str(tmp_path / "bad")
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: bad_json"):
        preprocess(_cfg(input=[str(p)], output_prefix=prefix, tokenizer_type="SentencePieceTokenizer",
                        tokenizer_model=material.sentencepiece_model_path()), progress=False)
    assert not os.path.exists(prefix + "_text_document.bin")
    tool = runpy.run_path(os.path.join(REPO, "tools", "preprocess_data.py"), run_name="tool")
    argv = ["--input", str(p), "--output-prefix", prefix, "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", material.sentencepiece_model_path(),
            "--workers", "1", "--no-progress", "--json"]
    assert tool["main"](argv) == 2
    assert "bad.jsonl:3: bad_json" in capsys.readouterr().err
    assert tool["main"](argv + ["--on-error", "skip"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"documents", "tokens", "bytes", "seconds"} <= set(summary)
    assert summary["documents"] == 4 and summary["errors"]["skipped"] == 2
    assert summary["errors"]["counts"] == {"bad_json": 1, "missing_key": 1}
    assert any("bad.jsonl:5: missing_key" in e for e in summary["errors"]["examples"])


def test_killed_run_resumes_with_identical_bytes(tmp_path, bukhari_records):
    from megatron_ar.data.preprocess import preprocess

    recs = [{"text": r["arabic"]} for r in bukhari_records[:700]]
    small = _write(tmp_path / "a_small.jsonl", recs[:20])
    big = _write(tmp_path / "b_big.jsonl", recs[20:])
    sp = material.sentencepiece_model_path()
    clean = str(tmp_path / "clean")
    preprocess(_cfg(input=[small, big], output_prefix=clean, tokenizer_type="SentencePieceTokenizer",
                    tokenizer_model=sp, append_eod=True, batch_size=64), progress=False)
    prefix = str(tmp_path / "run")
    marker = prefix + ".work/.shards/a_small.jsonl.done.json"
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", small,
           big, "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
           "--tokenizer-model", sp, "--append-eod", "--workers", "1", "--batch-size", "64",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        assert os.path.exists(marker), "first shard never finished"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not os.path.exists(prefix + "_text_document.bin")  # nothing final half-written
    s = preprocess(_cfg(input=[small, big], output_prefix=prefix, append_eod=True,
                        tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp,
                        batch_size=64), progress=False)
    assert s["shards_skipped"] == 1 and s["documents"] == 700
    assert _same_files(clean + "_text_document", prefix + "_text_document")


def test_normalize_arabic_flag(tmp_path, files, records):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_ar.data.indexed import tokenizer_from_flags
    from megatron_ar.data.preprocess import preprocess
    from megatron_ar.text.normalize import normalize_arabic

    sp = material.sentencepiece_model_path()
    preprocess(_cfg(input=[files["shards"][0]], output_prefix=str(tmp_path / "n"),
                    tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp,
                    normalize_arabic=True), progress=False)
    tok = tokenizer_from_flags("SentencePieceTokenizer", sp)
    ds = IndexedDataset(str(tmp_path / "n_text_document"))
    for i in (0, 3):
        text = records[i]["text"]
        assert normalize_arabic(text) != text  # diacritized hadith
        assert ds[i].tolist() == tok.tokenize(normalize_arabic(text))

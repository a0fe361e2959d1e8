"""tools/preprocess_data.py: Megatron-LM byte format, round trips, errors,
resume after a kill.

Oracle: a reference built in the test with megatron-core's IndexedDatasetBuilder from
megatron-core's / sentencepiece's tokenizers. Byte identity with Megatron-LM's own
tools/preprocess_data.py needs a Megatron-LM checkout, which is not a dependency of this
package: benchmarks/megatron_lm_preprocess_parity.py runs it.
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

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        "shards": [_write(d / f"s{k}.jsonl", records[k * 30:(k + 1) * 30]) for k in range(3)],
    }


def _cfg(**kw):
    from megatron_ar.data.preprocess import PreprocessConfig

    kw.setdefault("tokenizer_type", "HuggingFaceTokenizer")
    kw.setdefault("tokenizer_model", material.gemma_tokenizer_dir())
    return PreprocessConfig(**kw)


def test_matches_megatron_core_reference_and_round_trips(tmp_path, files, records):
    """3 input shards, 2 keys, partitions=2: bytes equal a reference built with megatron-core's
    builder + megatron-core's tokenizer in Megatron-LM's round-robin document order."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
    from megatron_ar.data.preprocess import _encoder, preprocess, tokenizer_files_sha256

    # workers=1 keeps the shards in this process: a spawned worker re-imports megatron-core
    # (10+ s on 2 cores); the process pool itself is records.run_shards, tested by its owners
    # and by the dedup CLI test.
    cfg = _cfg(input=files["shards"], output_prefix=str(tmp_path / "ours"), json_keys=["text", "en"],
               append_eod=True, workers=1, partitions=2)
    t0 = time.perf_counter()
    s = preprocess(cfg, progress=False)
    wall = time.perf_counter() - t0
    # megatron-core's tokenizer object, already loaded by the run
    tok = _encoder(cfg, 1, tokenizer_files_sha256(cfg)).tok
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
    assert s["encoder"] == ["hf-encode_batch"] and 0 < s["seconds"] <= wall + 5e-4  # the summary rounds to ms
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


def test_resume_redoes_shards_of_a_tokenizer_changed_in_place(tmp_path, bukhari_records):
    """A run fails after its first shard; the tokenizer is then retrained at the same path.
    The rerun must re-encode every shard: its bytes equal a clean run with the new tokenizer."""
    import shutil

    from megatron_ar.data.preprocess import preprocess
    from megatron_ar.io.records import RecordError
    from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer

    recs = [{"text": r["arabic"] + " " + r["english"]["text"]} for r in bukhari_records[:200]]
    first = _write(tmp_path / "a.jsonl", recs[:100])
    second = tmp_path / "b.jsonl"
    second.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")  # fails the first run
    for name, vocab in (("tokA", 1024), ("tokB", 2048)):
        train_tokenizer(TrainConfig(inputs=[first], output=str(tmp_path / name), algorithm="bpe",
                                    vocab_size=vocab, min_frequency=1, show_progress=False))
    tok = str(tmp_path / "tok")
    shutil.copytree(tmp_path / "tokA", tok)
    prefix = str(tmp_path / "run")
    with pytest.raises(RecordError):
        preprocess(_cfg(input=[first, str(second)], output_prefix=prefix, tokenizer_model=tok,
                        workers=1), progress=False)
    assert os.path.exists(prefix + ".work/.shards/a.jsonl.done.json")
    shutil.rmtree(tok)
    shutil.copytree(tmp_path / "tokB", tok)  # same path, other tokenizer
    _write(second, recs[100:])
    s = preprocess(_cfg(input=[first, str(second)], output_prefix=prefix, tokenizer_model=tok,
                        workers=1), progress=False)
    assert s["shards_skipped"] == 0
    clean = str(tmp_path / "clean")
    preprocess(_cfg(input=[first, str(second)], output_prefix=clean,
                    tokenizer_model=str(tmp_path / "tokB"), workers=1), progress=False)
    assert _same_files(clean + "_text_document", prefix + "_text_document")


def test_empty_input_is_refused_and_leaves_nothing(tmp_path):
    from megatron_ar.data.preprocess import preprocess

    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.jsonl: no tokens for --json-keys text \(0 "
                                         r"documents read\)"):
        preprocess(_cfg(input=[str(empty)], output_prefix=str(tmp_path / "e")), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl"]

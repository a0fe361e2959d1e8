"""Compressed inputs cut short or damaged: reported as ``bad_compression`` at the line where they
break, never as a clean end of file and never as text errors.

Oracles: the formats' own decoders (``zlib`` for gzip, ``zstandard``'s one-shot frame decoder)
give the bytes recoverable from the damaged file; the lines we yield must be exactly the
complete lines among them, and the error must be numbered as the line after them.
"""
import gzip
import json
import zlib

import pytest
import zstandard

from megatron_ar.io.atomic import atomic_output
from megatron_ar.io.compression import CompressedStreamError, open_text
from megatron_ar.io.records import ErrorStats, RecordError, dump_record, iter_records
from megatron_ar.io.shards import run_shards
from megatron_ar.text.annotate import AnnotateConfig, annotate_shard
from megatron_ar.tokenizers.io import TextInputError, iter_texts

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def docs(bukhari_records):
    return [{"id": r["id"], "text": r["arabic"], "en": r["english"]["text"]}
            for r in bukhari_records[:400]]


def _jsonl(docs) -> bytes:
    return "".join(dump_record(d) for d in docs).encode("utf-8")


def _recoverable_gz(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=31)
    return d.decompress(data)


def _recoverable_zst(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _check_truncated(path, docs, recovered: bytes):
    complete = recovered.count(b"\n")
    assert 0 < complete < len(docs)  # the cut falls inside the data, after some lines
    with pytest.raises(RecordError) as ei:
        list(iter_records(path))
    err = ei.value
    assert err.kind == "bad_compression" and err.line_no == complete + 1
    assert str(err).startswith(f"{path}:{complete + 1}: bad_compression: ")
    assert "compressed byte" in str(err)
    stats = ErrorStats()
    got = [r for _, r in iter_records(path, on_error="skip", stats=stats)]
    assert got == docs[:complete]
    assert stats.counts == {"bad_compression": 1}


def test_truncated_zst_is_not_a_clean_eof(tmp_path, docs):
    data = zstandard.ZstdCompressor(level=3).compress(_jsonl(docs))
    cut = data[: len(data) * 2 // 3]
    path = str(tmp_path / "cut.jsonl.zst")
    open(path, "wb").write(cut)
    # zstandard's streaming reader alone reads the cut file as a clean, shorter corpus
    short = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"),
                                                       read_across_frames=True).read()
    assert len(short) < len(_jsonl(docs))
    _check_truncated(path, docs, _recoverable_zst(cut))
    with pytest.raises(CompressedStreamError, match="truncated"):
        with open_text(path) as f:
            f.read()


def test_truncated_gz(tmp_path, docs):
    data = gzip.compress(_jsonl(docs), mtime=0)
    cut = data[: len(data) // 2]
    path = str(tmp_path / "cut.jsonl.gz")
    open(path, "wb").write(cut)
    _check_truncated(path, docs, _recoverable_gz(cut))


def test_damaged_checksums_and_trailing_garbage(tmp_path, docs):
    """Damage the decoders detect is ``bad_compression``: a wrong zstd content checksum or gzip
    CRC (found when the frame/member ends: the lines decoded by that last step are withheld,
    every line delivered is intact), and bytes after the last frame that are no frame (every
    line delivered)."""
    raw = _jsonl(docs)
    zst = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw))
    zst[-1] ^= 0xFF  # the frame's content checksum
    gz = bytearray(gzip.compress(raw, mtime=0))
    gz[-6] ^= 0xFF  # CRC32 in the member trailer
    garbage = zstandard.ZstdCompressor(level=3).compress(raw) + b"not a zstd frame at all"
    for name, data, exact in (("sum.jsonl.zst", zst, False), ("crc.jsonl.gz", gz, False),
                              ("tail.jsonl.zst", garbage, True)):
        path = str(tmp_path / name)
        open(path, "wb").write(bytes(data))
        stats = ErrorStats()
        got = [r for _, r in iter_records(path, on_error="skip", stats=stats)]
        assert stats.counts == {"bad_compression": 1}, name
        assert got == docs[:len(got)] and (len(got) == len(docs) if exact else len(got) > 0), name
        with pytest.raises(RecordError, match=rf"{name}:{len(got) + 1}: bad_compression"):
            list(iter_records(path))


def test_concatenated_frames_and_a_cut_second_frame(tmp_path, docs):
    first, second = docs[:150], docs[150:]
    z = zstandard.ZstdCompressor(level=3)
    f1, f2 = z.compress(_jsonl(first)), z.compress(_jsonl(second))
    whole = str(tmp_path / "two.jsonl.zst")
    open(whole, "wb").write(f1 + f2)
    assert [r for _, r in iter_records(whole)] == docs  # read across frames, as `zstd -d` does
    cut = str(tmp_path / "two-cut.jsonl.zst")
    open(cut, "wb").write(f1 + f2[: len(f2) // 2])
    recovered = _jsonl(first) + _recoverable_zst(f2[: len(f2) // 2])
    _check_truncated(cut, docs, recovered)


def test_our_writers_roundtrip_and_truncation_of_our_output(tmp_path, docs):
    for ext in (".jsonl.gz", ".jsonl.zst"):
        path = str(tmp_path / f"ours{ext}")
        with atomic_output(path) as f:
            for d in docs:
                f.write(dump_record(d))
        assert [r for _, r in iter_records(path)] == docs
        data = open(path, "rb").read()
        cut = str(tmp_path / f"ours-cut{ext}")
        open(cut, "wb").write(data[:-7])  # the trailer / frame end is missing
        with pytest.raises(RecordError, match="bad_compression"):
            list(iter_records(cut))


def test_shard_runner_skip_counts_bad_compression(tmp_path, docs):
    good, bad = tmp_path / "in" / "a.jsonl.gz", tmp_path / "in" / "b.jsonl.zst"
    good.parent.mkdir()
    good.write_bytes(gzip.compress(_jsonl(docs[:100]), mtime=0))
    data = zstandard.ZstdCompressor(level=3).compress(_jsonl(docs[100:]))
    bad.write_bytes(data[: len(data) // 2])
    complete = _recoverable_zst(data[: len(data) // 2]).count(b"\n")
    out = str(tmp_path / "out")
    with pytest.raises(RecordError, match=rf"b\.jsonl\.zst:{complete + 1}: bad_compression"):
        run_shards([str(good), str(bad)], out, annotate_shard, options=AnnotateConfig(),
                   progress=False)
    s = run_shards([str(good), str(bad)], out, annotate_shard, options=AnnotateConfig(),
                   on_error="skip", progress=False)
    assert s["errors"]["counts"] == {"bad_compression": 1}
    assert s["docs_in"] == 100 + complete


def test_tokenizer_reader_reports_truncation(tmp_path, docs):
    text = "".join(d["text"].replace("\n", " ") + "\n" for d in docs).encode("utf-8")
    data = zstandard.ZstdCompressor(level=3).compress(text)
    path = tmp_path / "ar.txt.zst"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TextInputError, match=r"ar\.txt\.zst:\d+: bad_compression"):
        list(iter_texts([str(path)]))
    jpath = tmp_path / "ar.jsonl.gz"
    jpath.write_bytes(gzip.compress(_jsonl(docs), mtime=0)[:-20])
    with pytest.raises(TextInputError, match=r"ar\.jsonl\.gz:\d+: bad_compression"):
        list(iter_texts([str(jpath)]))
    # an intact file reads exactly what was written
    path.write_bytes(data)
    assert list(iter_texts([str(path)])) == [d["text"].replace("\n", " ") for d in docs]
    assert json.loads(dump_record(docs[0])) == docs[0]

"""Bad input, misuse and damaged files against every tool: one table, one harness.

Each case runs a real tool's ``main`` in this process on a shared arena of real files (good ones
and damaged copies) and asserts: the exit status (2 = bad input, never a traceback), that the one
``error:`` line names the file, line or key at fault, that no input changed (SHA-256 of every
file in the arena before and after) and that nothing was left under the case's output names.
A new tool joins by adding rows to CASES; ``test_every_tool_is_in_the_table`` fails until it
does.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import shutil
import sys

import pytest

from megatron_ar.io.records import dump_record

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _hashes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def arena(tmp_path_factory, bukhari_records):
    """Shared inputs: good and damaged JSONL (plain/.gz/.zst), a tokenizer, a dataset and its
    damaged copies, recipes, an HF checkpoint with a truncated twin."""
    import zstandard

    from megatron_ar.data.preprocess import PreprocessConfig, preprocess
    from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer

    a = tmp_path_factory.mktemp("arena")
    docs = [{"id": f"b{r['id']}", "text": r["arabic"] + " " + r["english"]["text"]}
            for r in bukhari_records[:150]]
    body = "".join(dump_record(d) for d in docs).encode()
    (a / "good.jsonl").write_bytes(body)
    (a / "trunc.jsonl.gz").write_bytes(gzip.compress(body)[:-50])
    (a / "trunc.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body)[:-50])
    lines = body.decode().splitlines(keepends=True)
    (a / "badjson.jsonl").write_text("".join(lines[:3]) + '{"id": "x", "text": \n' +
                                     "".join(lines[3:6]), encoding="utf-8")
    (a / "badutf8.jsonl").write_bytes(b"".join(x.encode() for x in lines[:2]) +
                                      b'{"id": "u", "text": "\xff\xfe"}\n')
    (a / "notext.jsonl").write_text('{"id": 1, "body": "x"}\n', encoding="utf-8")
    (a / "empty.jsonl").write_text("", encoding="utf-8")
    train_tokenizer(TrainConfig(inputs=[str(a / "good.jsonl")], output=str(a / "tok"),
                                algorithm="bpe", vocab_size=1024, min_frequency=1,
                                show_progress=False))
    preprocess(PreprocessConfig(input=[str(a / "good.jsonl")], output_prefix=str(a / "ds"),
                                tokenizer_type="HuggingFaceTokenizer",
                                tokenizer_model=str(a / "tok"), append_eod=True), progress=False)
    ds = str(a / "ds_text_document")
    for name in ("dstrunc", "dsdmg"):
        for ext in (".bin", ".idx"):
            shutil.copy(ds + ext, str(a / name) + ext)
    with open(a / "dstrunc.bin", "r+b") as f:
        f.truncate(os.path.getsize(a / "dstrunc.bin") - 4)
    with open(a / "dsdmg.idx", "r+b") as f:
        f.write(b"NOTMMIDX")
    (a / "empty.yaml").write_text("# nothing\n", encoding="utf-8")
    for name, meta in (("ncnometa", None), ("ncbadmeta", '{"model_config": {"n_layer": 2}}')):
        (a / name).mkdir()
        (a / name / "model_000010.pt").write_bytes(b"not a checkpoint")
        if meta:
            (a / name / "meta_000010.json").write_text(meta, encoding="utf-8")
    (a / "badyaml.yaml").write_text("model:\n  preset: [\n", encoding="utf-8")
    (a / "unknown.yaml").write_text("model:\n  preset: tiny-llama\n  hidden_sise: 3\n",
                                    encoding="utf-8")
    (a / "rules_pct.yaml").write_text("rules:\n  - {signal: perplexity, max_percentile: 195}\n",
                                      encoding="utf-8")
    (a / "rules_bad.yaml").write_text("rules:\n  - {signal: no_such_signal, max: 1}\n",
                                      encoding="utf-8")
    import sys

    sys.path.insert(0, os.path.join(REPO, "tests", "checkpoint"))
    from mar_checkpoint_fixtures import tiny_hf_model

    tiny_hf_model("llama").save_pretrained(str(a / "hf"))
    shutil.copytree(a / "hf", a / "hftrunc")
    st = a / "hftrunc" / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) - 100)
    from megatron_ar.checkpoint.convert import convert

    convert("llama", "hf", "megatron", str(a / "hf"), str(a / "meg"), progress=False)
    shutil.copytree(a / "meg", a / "megtrunc")
    distcp = sorted((a / "megtrunc").rglob("*.distcp"))[0]
    with open(distcp, "r+b") as f:
        f.truncate(os.path.getsize(distcp) // 2)
    (a / "notarun").mkdir()
    (a / "ann_bad.jsonl").write_text('{"text": "a b", "score": 1}\n{"text": "c d", "score": '
                                     '"high"}\n', encoding="utf-8")
    # outputs of earlier runs: made with default options, and a file no tool wrote
    from megatron_ar.text.annotate import normalize_files
    from megatron_ar.text.histogram import signal_histograms

    normalize_files([str(a / "good.jsonl")], str(a / "normout"), progress=False)
    signal_histograms([str(a / "good.jsonl")], str(a / "histout"), progress=False)
    (a / "foreign").mkdir()
    (a / "foreign" / "good.jsonl").write_text("a user's own file\n", encoding="utf-8")
    (a / "cloze.jsonl").write_text('{"query": "q", "choices": [" a", " b"], "gold": 0}\n',
                                   encoding="utf-8")
    return a


def _tool(name):
    if name == "train":
        from megatron_ar.train import main

        return main
    if name.startswith("examples/"):
        return importlib.import_module(name.replace("/", ".")).main
    return importlib.import_module(f"megatron_ar_tools.{name.replace('/', '.')}").main


# (id, tool, argv with {a} = arena and {o} = this case's output folder, what the error names)
CASES = [
    ("normalize-trunc-gz", "normalize_text", "--input {a}/trunc.jsonl.gz --output-dir {o}/n "
     "--workers 1 --no-progress", "trunc.jsonl.gz:"),
    ("normalize-out-holds-input", "normalize_text", "--input {a}/good.jsonl --output-dir {a} "
     "--workers 1 --no-progress", "contains the input"),
    ("normalize-missing", "normalize_text", "--input {a}/nope.jsonl --output-dir {o}/n "
     "--no-progress", "nope.jsonl"),
    ("normalize-other-options", "normalize_text", "--input {a}/good.jsonl --output-dir "
     "{a}/normout --no-remove-diacritics --workers 1 --no-progress",
     "good.jsonl (written with other options); pass --overwrite"),
    ("signals-foreign-output", "quality_signals", "--input {a}/good.jsonl --output-dir "
     "{a}/foreign --workers 1 --no-progress", "(no record of this tool writing it)"),
    ("histogram-other-options", "signal_histogram", "--input {a}/good.jsonl --output-dir "
     "{a}/histout --samples 2 --workers 1 --no-progress", "made from other inputs or options"),
    ("boilerplate-trunc-zst", "strip_boilerplate", "--input {a}/trunc.jsonl.zst --output-dir "
     "{o}/b --no-progress", "trunc.jsonl.zst:"),
    ("boilerplate-out-holds-input", "strip_boilerplate", "--input {a}/good.jsonl --output-dir "
     "{a} --no-progress", "contains the input"),
    ("boilerplate-bad-fraction", "strip_boilerplate", "--input {a}/good.jsonl --output-dir "
     "{o}/b --min-fraction 1.5 --no-progress", "BoilerplateConfig.min_fraction"),
    ("perplexity-missing-model", "perplexity", "--input {a}/good.jsonl --output-dir {o}/p "
     "--model {a}/nomodel.arpa --no-progress", "PerplexityConfig.model: "),
    ("perplexity-bad-signal", "perplexity", "--input {a}/good.jsonl --output-dir {o}/p "
     "--model {a}/good.jsonl --signal ppl --no-progress", "PerplexityConfig.signal"),
    ("classifier-bad-score", "quality_classifier", "train --annotations {a}/ann_bad.jsonl "
     "--output {o}/m", "ann_bad.jsonl:2: bad_type: 'score'"),
    ("classifier-no-score", "quality_classifier", "train --annotations {a}/good.jsonl "
     "--output {o}/m", "good.jsonl:1: missing_key"),
    ("classifier-output-holds-input", "quality_classifier", "train --annotations "
     "{a}/ann_bad.jsonl --output {a}", "contains the input"),
    ("classifier-hf-no-encoder", "quality_classifier", "train --annotations {a}/ann_bad.jsonl "
     "--output {o}/m --backend hf", "TrainConfig.encoder"),
    ("classifier-missing-model", "quality_classifier", "score --model {a}/nomodel --input "
     "{a}/good.jsonl --output-dir {o}/s --no-progress", "ScoreConfig.model: "),
    ("classifier-not-a-model", "quality_classifier", "score --model {a}/hf --input "
     "{a}/good.jsonl --output-dir {o}/s --no-progress", "no classifier.json"),
    ("classifier-bad-prefix", "quality_classifier", "score --model {a}/hf --input "
     "{a}/good.jsonl --output-dir {o}/s --prefix edu --no-progress", "ScoreConfig.prefix: must start"),
    ("filter-pct-out-of-range", "filter_data", "--input {a}/good.jsonl --output-dir {o}/f "
     "--rules {a}/rules_pct.yaml --no-progress", "max_percentile must be in [0, 100]"),
    ("signals-trunc-zst", "quality_signals", "--input {a}/trunc.jsonl.zst --output-dir {o}/q "
     "--workers 1 --no-progress", "trunc.jsonl.zst:"),
    ("signals-bad-utf8", "quality_signals", "--input {a}/badutf8.jsonl --output-dir {o}/q "
     "--workers 1 --no-progress", "badutf8.jsonl:3"),
    ("histogram-bad-json", "signal_histogram", "--input {a}/badjson.jsonl --output-dir {o}/h "
     "--workers 1 --no-progress", "badjson.jsonl:4"),
    ("filter-bad-rules", "filter_data", "--input {a}/good.jsonl --output-dir {o}/f --rules "
     "{a}/rules_bad.yaml --workers 1 --no-progress", "no_such_signal"),
    ("filter-missing-rules", "filter_data", "--input {a}/good.jsonl --output-dir {o}/f --rules "
     "{a}/nope.yaml --workers 1 --no-progress", "nope.yaml"),
    ("dedup-output-is-input", "dedup", "--input {a}/good.jsonl --output {a}/good.jsonl "
     "--workers 1 --no-progress", "is the input"),
    ("dedup-trunc-zst", "dedup", "--input {a}/trunc.jsonl.zst --output {o}/d.jsonl --workers 1 "
     "--no-progress", "trunc.jsonl.zst:"),
    ("dedup-existing-output", "dedup", "--input {a}/good.jsonl --output {a}/empty.jsonl "
     "--workers 1 --no-progress", "exists; pass --overwrite"),
    ("preprocess-missing-key", "preprocess_data", "--input {a}/notext.jsonl --output-prefix "
     "{o}/p --tokenizer-type HuggingFaceTokenizer --tokenizer-model {a}/tok --workers 1",
     "notext.jsonl:1"),
    ("preprocess-empty", "preprocess_data", "--input {a}/empty.jsonl --output-prefix {o}/p "
     "--tokenizer-type HuggingFaceTokenizer --tokenizer-model {a}/tok --workers 1",
     "empty.jsonl: no tokens"),
    ("preprocess-existing", "preprocess_data", "--input {a}/good.jsonl --output-prefix {a}/ds "
     "--tokenizer-type HuggingFaceTokenizer --tokenizer-model {a}/tok --workers 1",
     "ds_text_document.bin: exists"),
    ("preprocess-missing-tokenizer", "preprocess_data", "--input {a}/good.jsonl --output-prefix "
     "{o}/p --tokenizer-type HuggingFaceTokenizer --tokenizer-model {a}/notok --workers 1",
     "PreprocessConfig.tokenizer_model: /"),
    ("merge-trunc-bin", "merge_datasets", "--input {a}/ds_text_document {a}/dstrunc "
     "--output-prefix {o}/m", "dstrunc.bin: "),
    ("merge-damaged-idx", "merge_datasets", "--input {a}/dsdmg --output-prefix {o}/m",
     "dsdmg.idx: damaged"),
    ("merge-output-is-input", "merge_datasets", "--input {a}/ds_text_document --output-prefix "
     "{a}/ds_text_document", "is the input"),
    ("info-damaged-idx", "dataset_info", "{a}/dsdmg", "dsdmg.idx: damaged"),
    ("info-missing", "dataset_info", "{a}/nods", "nods.bin: no such"),
    ("dump-out-of-range", "dump_document", "{a}/ds_text_document 100000", "100000"),
    ("dump-trunc", "dump_document", "{a}/dstrunc 0", "dstrunc.bin: "),
    ("train-tok-output-holds-input", "train_tokenizer", "--input {a}/good.jsonl --output {a} "
     "--algorithm bpe --vocab-size 1024 --overwrite", "contains the input"),
    ("train-tok-bad-vocab", "train_tokenizer", "--input {a}/good.jsonl --output {o}/t "
     "--vocab-size 1000", "TrainConfig.vocab_size"),
    ("train-tok-trunc-gz", "train_tokenizer", "--input {a}/trunc.jsonl.gz --output {o}/t "
     "--algorithm bpe --vocab-size 1024", "trunc.jsonl.gz:"),
    ("merge-tok-output-is-source", "merge_tokenizers", "--tokenizer {a}/tok --tokenizer "
     "{a}/tok --target-vocab-size 1024 --output {a}/tok --overwrite", "is the input"),
    ("eval-tok-missing", "eval_tokenizer", "--tokenizer {a}/notok --input {a}/good.jsonl",
     "notok"),
    ("eval-tok-trunc-zst", "eval_tokenizer", "--tokenizer {a}/tok --input {a}/trunc.jsonl.zst",
     "trunc.jsonl.zst:"),
    ("prune-output-holds-corpus", "prune_vocab", "--tokenizer {a}/tok --corpus {a}/good.jsonl "
     "--target-vocab-size 512 --output {a} --overwrite", "contains the input"),
    ("prune-missing-corpus", "prune_vocab", "--tokenizer {a}/tok --corpus {a}/nope.jsonl "
     "--target-vocab-size 512 --output {o}/pr", "nope.jsonl"),
    ("plan-empty-recipe", "curriculum_plan", "{a}/empty.yaml", "empty.yaml: the recipe is empty"),
    ("plan-bad-yaml", "curriculum_plan", "{a}/badyaml.yaml", "badyaml.yaml:3: invalid YAML"),
    ("memory-world-0", "estimate_memory", "--config " + os.path.join(
        REPO, "examples", "recipes", "fanar_star_7b.yaml") + " --world-size 0 --analytic-only",
     "world size: must be a positive integer, got 0"),
    ("memory-unknown-key", "estimate_memory", "--config {a}/unknown.yaml --world-size 8 "
     "--analytic-only", "unknown.yaml:3: model.hidden_sise"),
    ("memory-tp-heads", "estimate_memory", "--config " + os.path.join(
        REPO, "examples", "recipes", "fanar_star_7b.yaml") + " --world-size 168 "
     "--tensor-model-parallel-size 3 --analytic-only", "must divide num_attention_heads=32"),
    ("backtrace-not-a-run", "backtrace", "--run-dir {a}/notarun --step 0", "no config.yaml"),
    ("plot-not-a-run", "plot_run", "{a}/notarun --out-dir {o}/plots", "notarun"),
    ("convert-trunc-safetensors", "checkpoint/convert", "--model-type llama --loader hf --saver "
     "megatron --load-dir {a}/hftrunc --save-dir {o}/meg", "hftrunc/model.safetensors"),
    ("convert-trunc-distcp", "checkpoint/convert", "--model-type llama --loader megatron "
     "--saver hf --load-dir {a}/megtrunc --save-dir {o}/hf", ".distcp"),
    ("prune-trunc-checkpoint", "prune_vocab", "--tokenizer {a}/tok --corpus {a}/good.jsonl "
     "--target-vocab-size 512 --output {o}/pr --checkpoint {a}/hftrunc", "hftrunc"),
    ("convert-save-is-load", "checkpoint/convert", "--model-type llama --loader hf --saver "
     "megatron --load-dir {a}/hf --save-dir {a}/hf --overwrite", "is the input"),
    ("convert-wrong-type", "checkpoint/convert", "--model-type gemma2 --loader hf --saver "
     "megatron --load-dir {a}/hf --save-dir {o}/meg", "llama"),
    ("convert-nanochat-no-meta", "checkpoint/convert", "--model-type nanochat --loader nanochat "
     "--saver megatron --load-dir {a}/ncnometa --save-dir {o}/meg", "ncnometa/meta_000010.json"),
    ("convert-nanochat-bad-meta", "checkpoint/convert", "--model-type nanochat --loader nanochat "
     "--saver megatron --load-dir {a}/ncbadmeta --save-dir {o}/meg", "missing ['n_embd'"),
    ("health-missing", "model_health", "{a}/nockpt --out {o}/h --no-plots", "nockpt"),
    ("health-out-is-input", "model_health", "{a}/hf --out {a}/hf --no-plots", "is the input"),
    ("health-trunc-distcp", "model_health", "{a}/megtrunc --out {o}/h --no-plots", ".distcp"),
    ("compare-missing-megatron", "checkpoint/compare_hf", "--hf-dir {a}/hf --megatron-dir "
     "{a}/nomeg --text-file {a}/good.jsonl", "nomeg"),
    ("cloze-zero-items", "examples/quickstart/build_cloze_task", "-n 0 --out {o}/c.jsonl",
     "n (number of items) must be >= 1"),
    ("cloze-one-choice", "examples/quickstart/build_cloze_task", "--num-choices 1 --out "
     "{o}/c.jsonl", "num_choices must be >= 2"),
    ("cloze-existing-out", "examples/quickstart/build_cloze_task", "--out {a}/cloze.jsonl",
     "cloze.jsonl: exists; pass --overwrite"),
    ("cloze-out-folder-missing", "examples/quickstart/build_cloze_task", "--out {o}/no/c.jsonl",
     "/no does not exist"),
    ("quickdata-zero-docs", "examples/quickstart/build_data", "--out {o}/q --n-ar 0",
     "--n-ar: must be >= 1"),
    ("train-empty-recipe", "train", "--config {a}/empty.yaml --dry-run", "the recipe is empty"),
    ("train-unknown-key", "train", "--config {a}/unknown.yaml --dry-run",
     "unknown.yaml:3: model.hidden_sise"),
    ("train-tp-heads", "train", "--config " + os.path.join(REPO, "examples", "recipes",
                                                             "fanar_star_7b.yaml")
     + " --dry-run --analytic-only --world-size 168 --tensor-model-parallel-size 3",
     "tensor_model_parallel_size=3 must divide"),
    ("train-attention-cannot-cap", "train", "--config " + os.path.join(
        REPO, "examples", "recipes", "fanar_prime_9b_cpt.yaml") + " --dry-run --analytic-only "
     "--skip-input-checks --world-size 168 --attention-backend sdpa",
     "model.attention_backend: 'sdpa' cannot run this model here"),
    ("train-attention-unknown", "train", "--config " + os.path.join(
        REPO, "examples", "recipes", "fanar_prime_9b_cpt.yaml") + " --dry-run --analytic-only "
     "--skip-input-checks --world-size 168 --attention-backend flash",
     "model.attention_backend: must be one of auto, unfused, sdpa, flex, te"),
    ("train-missing-data", "train", "--config " + os.path.join(REPO, "examples", "recipes",
                                                                 "fanar_star_7b.yaml")
     + " --dry-run --analytic-only --world-size 168", "data.datasets.ar: /data/"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, arena, tmp_path, capsys):
    _, tool, argv, named = case
    out = tmp_path / "out"
    out.mkdir()
    argv = argv.format(a=arena, o=out).split()
    before = _hashes(arena)
    rc = _tool(tool)(argv)
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert rc == 2, (rc, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and named in errors[0], err[-3000:]
    assert _hashes(arena) == before, "an input changed"
    # nothing under the case's output folder: no file, no temp, no empty folder a failed run
    # created (PREFIX.work, an output dir holding only markers)
    left = sorted(os.path.relpath(os.path.join(d, f), out) for d, ds, fs in os.walk(out)
                  for f in fs + ds)
    assert not left, left


def test_every_tool_is_in_the_table():
    tools = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(REPO, "tools"))
             if f.endswith(".py") and not f.startswith("_")}
    tools |= {"checkpoint/" + os.path.splitext(f)[0]
              for f in os.listdir(os.path.join(REPO, "tools", "checkpoint"))
              if f.endswith(".py") and not f.startswith("_")}
    tools |= {"examples/quickstart/" + n for n in ("build_data", "build_cloze_task")}
    covered = {c[1] for c in CASES}
    assert tools - covered == set(), f"tools without bad-input cases: {sorted(tools - covered)}"
    assert "train" in covered


@pytest.mark.parametrize("tool,argv", [
    ("eval_tokenizer", "--tokenizer {a}/tok --input {a}/good.jsonl --plot {o}/p.png"),
    ("plot_run", "{a}/notarun --out-dir {o}/plots"),
])
def test_plots_without_matplotlib(tool, argv, arena, tmp_path, capsys, monkeypatch):
    """matplotlib is optional: without it a plotting flag is bad input (exit 2, one line saying
    what to install), found before any work."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = _tool(tool)(argv.format(a=arena, o=tmp_path).split())
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert [x for x in err.splitlines() if x.startswith("error: ")] == [
        x for x in err.splitlines() if "needs matplotlib: pip install 'megatron_ar[plots]'" in x]
    assert "%|" not in err  # no progress bar: the check came before any work
    assert os.listdir(tmp_path) == []

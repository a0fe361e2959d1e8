"""examples/slurm/data_pipeline.sbatch: its --dry-run plan (job arrays chained with afterok),
and every stage body run for real as the array tasks Slurm would start (SLURM_ARRAY_* set by
hand, as for a task resubmitted alone: the script passes the task id as --shard-index) on real
hadith text, down to the merged indexed dataset. That 4-task
arrays give the one-process outputs is tests/data/test_sharded_pipeline.py's part.
Shellcheck runs over it in tests/examples/test_launchers.py (every examples/slurm/* file)."""
import json
import os
import subprocess
import sys

import pytest

import material

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join("examples", "slurm", "data_pipeline.sbatch")


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHON=sys.executable, **kw)
    return env


def test_dry_run_plan():
    env = _env(INPUT="/data/raw/*.jsonl.gz", WORK="/scratch/ar", TOKENIZER_MODEL="/m/tok",
               NUM_SHARDS="8", SBATCH_ARGS="--partition=cpu --account=ar")
    p = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    subs = [ln for ln in p.stdout.splitlines() if ln.startswith("sbatch ")]
    stages = [ln.split()[-1] for ln in subs]
    assert stages == ["normalize", "bp_count", "bp_strip", "signals", "filter", "dedup_keys",
                      "dedup_cluster", "dedup_write", "preprocess", "merge"]
    for prev, (stage, ln) in zip([None] + stages, zip(stages, subs)):
        assert ("--array=0-7" in ln) == (stage not in ("dedup_cluster", "merge")), ln
        assert (f"--dependency=afterok:<{prev}>" in ln) == (prev is not None), ln
        assert "--partition=cpu --account=ar" in ln
    assert "--mem=300G" in subs[6]
    assert "'/scratch/ar/7_tokens/ar_shard*_of_8_text_document.idx'" in p.stdout
    # with a KenLM model the perplexity stage joins the chain, before the filter reads it
    p = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=REPO, capture_output=True, text=True,
                       env={**env, "KENLM_MODEL": "/m/ar.bin"}, timeout=60)
    line = [ln for ln in p.stdout.splitlines() if ln.endswith(" perplexity")]
    assert len(line) == 1 and "--dependency=afterok:<signals>" in line[0]
    assert "'--input' '/scratch/ar/4_perplexity/*'" in p.stdout
    # a missing required variable is named
    env.pop("WORK")
    p = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "WORK" in p.stderr


def test_stage_bodies_as_array_tasks(tmp_path, bukhari_records):
    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [r for r in bukhari_records[:300] if r["arabic"].strip()]
    for f in range(3):
        with open(raw / f"p{f}.jsonl", "w", encoding="utf-8") as fh:
            for i, r in enumerate(recs[f * 60:(f + 1) * 60 + 20]):  # overlaps: cross-file dups
                fh.write(json.dumps({"id": f"{f}-{i}", "text": "موقع السنة | الرئيسية\n"
                                     + r["arabic"], "metadata": {"url": f"https://s.example/{f}/{i}"}},
                                    ensure_ascii=False) + "\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - signal: word_count\n    min: 5\n")
    n = 2
    env = _env(INPUT=str(raw / "*.jsonl"), WORK=str(tmp_path / "w"), NUM_SHARDS=str(n),
               RULES=str(rules), TOKENIZER_TYPE="SentencePieceTokenizer",
               TOKENIZER_MODEL=material.sentencepiece_model_path(), CPUS_PER_TASK="1",
               OUTPUT_PREFIX=str(tmp_path / "final" / "ar"))
    summaries = {}
    for stage in ["normalize", "bp_count", "bp_strip", "signals", "filter", "dedup_keys",
                  "dedup_cluster", "dedup_write", "preprocess", "merge"]:
        tasks = range(n) if stage not in ("dedup_cluster", "merge") else [None]
        for t in tasks:  # the script submits --array=0-(N-1); a task rerun alone is a 1-array
            e = dict(env)
            if t is not None:
                e.update(SLURM_ARRAY_TASK_ID=str(t), SLURM_ARRAY_TASK_MIN=str(t),
                         SLURM_ARRAY_TASK_COUNT="1")
            p = subprocess.run(["bash", SCRIPT, stage], cwd=REPO, env=e, capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, (stage, t, p.stderr[-2000:])
            summaries.setdefault(stage, []).append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert sum(s["lines_removed"] for s in summaries["bp_strip"]) == 240  # the site header
    cluster = summaries["dedup_cluster"][0]
    assert cluster["docs_in"] == 240 and cluster["duplicates"] >= 40  # the overlaps
    merged = summaries["merge"][0]
    assert merged["documents"] == cluster["docs_out"] == sum(s["docs_out"] for s in
                                                             summaries["dedup_write"])
    assert os.path.isfile(tmp_path / "final" / "ar_text_document.bin")
    made = [s["shard_index"] for s in summaries["preprocess"] if s["documents"]]
    assert merged["inputs"] == [str(tmp_path / "w" / "7_tokens" / f"ar_shard{k}_of_2_text_document")
                                for k in made]

"""wandb logging: a real 2-process training run (TP1 x PP2) logs to wandb in
offline mode; we read back what wandb recorded (its own ``.wandb`` transaction log, decoded with
wandb's protobuf ``Record`` schema) and compare it with metrics.jsonl and TensorBoard.

Run: first launch stops after step 3 (``--exit-interval``, checkpoint), the second resumes to
step 6 in the same wandb run. No network: WANDB_MODE=offline, every wandb folder under tmp.
"""
import glob
import json
import math
import os
import struct
import sys

import pytest

from train_harness import read_metrics, torchrun, write_recipe

pytestmark = pytest.mark.multiproc

STEPS = 6
PROJECT = "megatron-ar-test"


# ------------------------------------------------------------------------------ .wandb reader
def read_wandb_records(path):
    """Records of a ``run-<id>.wandb`` file. The file is wandb's transaction log: a 7-byte header
    (``:W&B``, magic 0xBEE1, version 0) then LevelDB log framing (32 KiB blocks; each chunk:
    crc32 u32, length u16, type u8 = full/first/middle/last) around serialized
    ``wandb_internal_pb2.Record`` messages. wandb >= 0.18 ships no Python reader any more (the
    Go core reads it), so the framing is decoded here and the payload by wandb's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, path
    block, pos, out, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer too small for a header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero fill to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        parts.append(chunk)
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
        assert kind in (1, 2, 3, 4), f"{path}: bad chunk type {kind} at {pos}"
    return out


def wandb_history(records):
    """step -> {key: value} (merged over the history records of that step)."""
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") != "history":
            continue
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        step = row.get("_step", r.history.step.num)
        rows.setdefault(step, {}).update(row)
    return rows


def wandb_config(records):
    """The run config: set at init (the run record) and by later config records."""
    cfg = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        updates = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for u in updates:
            cfg[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    return cfg


def _value(v):
    return v["value"] if isinstance(v, dict) and "value" in v else v


# ------------------------------------------------------------------------------ the runs
@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, train_data):
    pytest.importorskip("wandb", reason="wandb not installed (pip install wandb)")
    d = tmp_path_factory.mktemp("train_wandb")
    run_dir = str(d / "run")
    save_dir = str(d / "wb")
    recipe = write_recipe(str(d / "recipe.yaml"), train_data, run_dir, STEPS)
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(d / "wandb_env"), "WANDB_SILENT": "true",
           "WANDB_CACHE_DIR": str(d / "wandb_cache"), "WANDB_CONFIG_DIR": str(d / "wandb_config"),
           "WANDB_DATA_DIR": str(d / "wandb_data"), "WANDB_DISABLE_GIT": "true",
           "WANDB_DISABLE_CODE": "true"}
    common = ["--tensor-model-parallel-size", "1", "--no-sequence-parallel", "--save-interval", "3",
              "--eval-interval", "3", "--eval-iters", "1", "--mc-limit", "4", "--lr-warmup-iters", "1",
              "--lr-cooldown-iters", "2",
              "--wandb-project", PROJECT, "--wandb-exp-name", "wandb-e2e", "--wandb-save-dir", save_dir]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        log1 = torchrun(2, recipe, *common, "--exit-interval", "3")
        run_id_first = open(os.path.join(run_dir, "wandb_run_id.txt")).read().strip()
        log2 = torchrun(2, recipe, *common)
    files = sorted(glob.glob(os.path.join(save_dir, "wandb", "offline-run-*", "run-*.wandb")))
    return {"dir": run_dir, "save_dir": save_dir, "tmp": d, "log": log1 + log2, "files": files,
            "id_first": run_id_first, "metrics": read_metrics(run_dir),
            "evals": read_metrics(run_dir, kind="eval")}


def test_one_wandb_run_resumed_by_one_process(wandb_run):
    run_id = open(os.path.join(wandb_run["dir"], "wandb_run_id.txt")).read().strip()
    assert run_id == wandb_run["id_first"] and len(run_id) >= 8
    # one .wandb log per launch: only the last rank (last pipeline stage) logs
    assert len(wandb_run["files"]) == 2, wandb_run["files"]
    for f in wandb_run["files"]:
        assert f.endswith(f"run-{run_id}.wandb")
        runs = [r.run for r in read_wandb_records(f) if r.WhichOneof("record_type") == "run"]
        assert runs and {r.run_id for r in runs} == {run_id}
        assert runs[0].project == PROJECT and runs[0].display_name == "wandb-e2e"
    first, second = (wandb_history(read_wandb_records(f)) for f in wandb_run["files"])
    assert sorted(s for s in first if "train/loss" in first[s]) == [0, 1, 2]
    assert sorted(s for s in second if "train/loss" in second[s]) == [3, 4, 5]
    assert "wandb run" in wandb_run["log"] and "(resumed)" in wandb_run["log"]
    # WANDB_DIR is not used when --wandb-save-dir is given; nothing lands in the working tree
    assert not os.path.exists(os.path.join(str(wandb_run["tmp"]), "wandb_env", "wandb"))


def test_logged_scalars_equal_metrics_jsonl_and_tensorboard(wandb_run):
    hist = {}
    for f in wandb_run["files"]:
        for s, row in wandb_history(read_wandb_records(f)).items():
            hist.setdefault(s, {}).update(row)
    m = wandb_run["metrics"]
    assert sorted(m) == list(range(STEPS))
    from megatron_ar.training.builder import model_config_from
    from megatron_ar.training.config import load_config
    from megatron_ar.training.metrics import flop_shape, flops_per_step

    cfg = load_config(os.path.join(wandb_run["dir"], "config.yaml"))
    flops_per_token = flops_per_step(flop_shape(model_config_from(cfg), cfg.parallel.tensor_model_parallel_size),
                                     16, 64) / (16 * 64)
    for s in range(STEPS):
        row, rec = hist[s], m[s]
        # loss/lr/grad norm are all-reduced or global: bit-identical to rank 0's metrics.jsonl
        assert row["train/loss"] == rec["loss"] and math.isfinite(rec["loss"])
        assert row["train/lr"] == rec["lr"] and row["train/grad_norm"] == rec["grad_norm"]
        assert row["train/consumed_tokens"] == rec["consumed_tokens"] == (s + 1) * 16 * 64
        assert row["train/phase"] == rec["phase"] == "broad"
        assert row[f"train/loss_by_phase/{rec['phase']}"] == rec["loss"]
        # throughput is timed by the logging rank itself (its own step time, so not rank 0's):
        # tokens/s and TFLOP/s share that time, TFLOP/s per device = tokens/s x FLOPs per token
        # (Megatron's formula) / 2 devices; MFU = TFLOP/s / peak
        assert rec["tokens_per_s"] == pytest.approx(16 * 64 / rec["step_time"], rel=1e-9)
        assert row["train/tokens_per_s"] > 0
        assert row["train/tflops_per_device"] == pytest.approx(
            row["train/tokens_per_s"] * flops_per_token / 2 / 1e12, rel=1e-9)
        assert row["train/mfu"] == pytest.approx(row["train/tflops_per_device"] / 989.0, rel=1e-12)
    evals = wandb_run["evals"]
    assert sorted(evals) == [2, 5]
    for s, ev in evals.items():
        for name in ("ar", "en"):
            assert hist[s][f"valid/{name}/loss"] == ev["valid"][name]["loss"]
            assert hist[s][f"valid/{name}/bpb"] == ev["valid"][name]["bpb"] > 0
        assert hist[s]["tasks/quran_cloze/acc"] == ev["tasks"]["quran_cloze"]["acc"]
        assert hist[s]["tasks/quran_cloze/acc_norm"] == ev["tasks"]["quran_cloze"]["acc_norm"]
    # the same scalar names as TensorBoard, and TensorBoard's (float32) values agree
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(wandb_run["dir"], "tensorboard"))
    acc.Reload()
    tb_tags = set(acc.Tags()["scalars"])
    wb_tags = {k for row in hist.values() for k in row if not k.startswith("_") and k != "train/phase"}
    assert tb_tags == wb_tags, (tb_tags ^ wb_tags)
    for ev in acc.Scalars("train/loss"):
        assert ev.value == pytest.approx(hist[ev.step]["train/loss"], rel=1e-6)


def test_resolved_config_is_logged(wandb_run):
    import yaml

    recs = [r for f in wandb_run["files"] for r in read_wandb_records(f)]
    cfg = wandb_config(recs)
    saved = yaml.safe_load(open(os.path.join(wandb_run["dir"], "config.yaml")))
    for section in ("model", "parallel", "optimizer", "schedule", "checkpoint", "eval", "logging"):
        assert _value(cfg[section]) == saved[section], section
    assert _value(cfg["schedule"])["global_batch_size"] == 16
    assert _value(cfg["logging"])["wandb_project"] == PROJECT
    derived = _value(cfg["derived"])
    assert (derived["tp"], derived["pp"], derived["dp"], derived["train_iters"]) == (1, 2, 1, STEPS)
    state = json.load(open(glob.glob(os.path.join(wandb_run["dir"], "checkpoints", "iter_*",
                                                  "train_state.json"))[-1]))
    assert derived["data_fingerprint"] == state["data_fingerprint"]


# ------------------------------------------------------------------------------ not configured
def test_flags_use_megatron_names():
    from megatron_ar.training.config import load_config

    cfg = load_config(overrides=["--wandb-project", "p", "--wandb-exp-name", "e", "--wandb-save-dir", "/x"])
    assert (cfg.logging.wandb_project, cfg.logging.wandb_exp_name, cfg.logging.wandb_save_dir) == ("p", "e", "/x")
    assert load_config(overrides=[]).logging.wandb_project is None


def test_wandb_absent_or_unconfigured_writes_nothing(tmp_path, monkeypatch, capsys):
    """wandb not importable: configured -> one warning, training goes on; unconfigured -> silent
    (wandb is never imported). Neither creates a wandb folder or a run-id file."""
    import types

    from megatron_ar.models.presets import get_preset
    from megatron_ar.training.config import load_config
    from megatron_ar.training.metrics import flop_shape, flops_per_step
    from megatron_ar.training.wandb_logger import WandbLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # "import wandb" raises ImportError
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    for project in (None, "p"):
        cfg = load_config(overrides=["--logging.run_dir", str(run_dir), "--seq-length", "64"]
                          + (["--wandb-project", project] if project else []))
        assert WandbLogger.configured(cfg) == bool(project)
        cb = WandbLogger(cfg, get_preset("tiny-llama"))
        state = types.SimpleNamespace(cfg=cfg, seq_length=64, iteration=0)
        cb.on_train_start(state)
        cb.on_step_end(state, {"step": 0})  # no-ops without a wandb run
        cb.log_eval(state, {})
        cb.close()
        assert cb.run is None
        assert cb.flops == flops_per_step(flop_shape(get_preset("tiny-llama"), cfg.parallel.tensor_model_parallel_size),
                                          cfg.schedule.global_batch_size, 64)
    assert capsys.readouterr().out.count("wandb is not installed") == 1  # only the configured case
    assert not (tmp_path / "wb").exists() and not (tmp_path / "wandb").exists()
    assert not run_dir.exists() or not any("wandb" in x for x in os.listdir(run_dir))


def test_unconfigured_training_run_has_no_wandb(run_a):
    """The shared reference run (no wandb_project; wandb installed): no wandb files at all."""
    assert "wandb" not in run_a["log"]
    names = [n for _, dirs, files in os.walk(run_a["dir"]) for n in dirs + files]
    assert names and not [n for n in names if "wandb" in n]

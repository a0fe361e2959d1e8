"""Helpers for the training tests (recipes, torchrun launches with kill/signal points,
metrics reading). A plain module, not a conftest, so imports are unambiguous."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "training-tests-v2")
STEPS = 60  # length of the shared reference run (conftest.py: run_a)


RECIPE = """\
model:
  preset: tiny-llama
  seq_length: 64
  tokenizer: {tokenizer}
  overrides: {{vocab_size: 2048, hidden_size: 128, ffn_hidden_size: 352, num_attention_heads: 4,
              num_query_groups: 2, kv_channels: 32}}
parallel:
  tensor_model_parallel_size: 2
  pipeline_model_parallel_size: 2
  sequence_parallel: true
  use_distributed_optimizer: true
optimizer:
  lr: 1.0e-2
  min_lr: 1.0e-3
  weight_decay: 0.01
schedule:
  micro_batch_size: 4
  global_batch_size: 16
  train_iters: {train_iters}
  lr_warmup_iters: 5
  lr_decay_style: cosine-cooldown
  lr_cooldown_iters: 10
data:
  datasets: {{ar: {ar}, en: {en}, code: {code}}}
  cache_dir: {cache}
  phases:
    - name: broad
      tokens: 25600
      blend:
        ar: {{weight: 40, datasets: [ar]}}
        en: {{weight: 50, datasets: [en]}}
        code: {{weight: 10, datasets: [code]}}
    - name: arabic
      tokens: 40960
      blend:
        ar: {{weight: 80, datasets: [ar]}}
        en: {{weight: 20, datasets: [en]}}
checkpoint:
  save_interval: 10
  keep_last: 5
logging:
  run_dir: {run_dir}
eval:
  eval_interval: {train_iters}
  eval_iters: 2
  valid_sets: {{ar: {valid_ar}, en: {valid_en}}}
  mc_tasks: {{quran_cloze: {cloze}}}
  mc_limit: 16
"""


def write_recipe(path, data, run_dir, train_iters=60, cache=None):
    text = RECIPE.format(tokenizer=data["tokenizer"], train_iters=train_iters, ar=data["ar"],
                         en=data["en"], code=data["code"], valid_ar=data["valid_ar"],
                         valid_en=data["valid_en"], cloze=data["cloze"], run_dir=run_dir,
                         cache=cache or os.path.join(CACHE, "index-cache"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_ENTRY = ("-m", "megatron_ar.train")


def torchrun_cmd(nproc, recipe, *overrides, entry=TRAIN_ENTRY):
    """``entry``: what torchrun starts (the train module, or a test driver script around it)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            *entry, "--config", recipe, *overrides]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torchrun(nproc, recipe, *overrides, timeout=400, entry=TRAIN_ENTRY):
    """Run a training job to completion; fail the test with its log tail on error."""
    for attempt in range(3):  # a fresh port when another job took ours (EADDRINUSE)
        p = subprocess.run(torchrun_cmd(nproc, recipe, *overrides, entry=entry), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
        if p.returncode == 0 or not ("EADDRINUSE" in out or "Address already in use" in out):
            break
    if p.returncode != 0:
        pytest.fail(f"training exited {p.returncode}:\n{(p.stdout + p.stderr)[-6000:]}")
    return p.stdout


def torchrun_kill_at(nproc, recipe, run_dir, step_done, need_ckpt, *overrides, timeout=400):
    """Start a job, SIGKILL its whole process group as soon as step ``step_done`` (0-based) is
    logged and checkpoint ``need_ckpt`` is published. Returns the last logged step."""
    proc = subprocess.Popen(torchrun_cmd(nproc, recipe, *overrides), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    pointer = os.path.join(run_dir, "checkpoints", "latest_checkpointed_iteration.txt")
    t0 = time.time()
    last = -1
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                out = proc.stdout.read()
                pytest.fail(f"job ended (rc {proc.returncode}) before step {step_done}:\n{out[-4000:]}")
            if os.path.isfile(metrics):
                with open(metrics, encoding="utf-8") as f:
                    steps = [json.loads(x).get("step", -1) for x in f if x.strip().endswith("}")]
                last = max(steps, default=-1)
            ck = int(open(pointer).read()) if os.path.isfile(pointer) else -1
            if last >= step_done and ck >= need_ckpt:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return last
            time.sleep(0.05)
        pytest.fail("timed out waiting for the kill point")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_metrics(run_dir, kind="train"):
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind", "train") == kind:
                out[r["step"]] = r
    return out


def torchrun_signal_at(nproc, recipe, run_dir, step_done, sig, *overrides, timeout=400):
    """Start a job and send ``sig`` to its worker processes (as Slurm's ``--signal`` does to the
    tasks) once step ``step_done`` is logged; wait for the job to exit. Returns (rc, output)."""
    import psutil

    proc = subprocess.Popen(torchrun_cmd(nproc, recipe, *overrides), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    sent = False
    try:
        while time.time() - t0 < timeout and proc.poll() is None:
            if not sent and os.path.isfile(metrics):
                with open(metrics, encoding="utf-8") as f:
                    steps = [json.loads(x).get("step", -1) for x in f if x.strip().endswith("}")]
                if max(steps, default=-1) >= step_done:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        child.send_signal(sig)
                    sent = True
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=max(1, timeout - (time.time() - t0)))
        return proc.returncode, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def copy_checkpoint(src_run, iteration, dst_run):
    """Start ``dst_run`` from a copy of ``src_run``'s checkpoint ``iteration`` (pointer included)."""
    import shutil

    os.makedirs(os.path.join(dst_run, "checkpoints"), exist_ok=True)
    name = f"iter_{iteration:07d}"
    shutil.copytree(os.path.join(src_run, "checkpoints", name), os.path.join(dst_run, "checkpoints", name))
    with open(os.path.join(dst_run, "checkpoints", "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))


def data_of(run):
    """The ``write_recipe`` data arguments of an existing run (from its recipe)."""
    import yaml

    cfg = yaml.safe_load(open(run["recipe"]))
    ds = cfg["data"]["datasets"]
    return {"tokenizer": cfg["model"]["tokenizer"], "ar": ds["ar"], "en": ds["en"], "code": ds["code"],
            "valid_ar": cfg["eval"]["valid_sets"]["ar"], "valid_en": cfg["eval"]["valid_sets"]["en"],
            "cloze": cfg["eval"]["mc_tasks"]["quran_cloze"]}


FAULT_SAVE_SLEEP_ENV = "MEGATRON_AR_FAULT_SAVE_SLEEP_S"  # checkpointing.py's test hook


def torchrun_kill_during_save(nproc, recipe, run_dir, iteration, *overrides, sleep_s=300, timeout=400):
    """Start a job with the checkpoint fault hook on (every save sleeps ``sleep_s`` after its
    files are written, before it is published) and SIGKILL its whole process group once the
    unpublished ``.tmp_iter_<iteration>`` holds its last file (train_state.json), i.e. inside
    the write-then-publish window. Returns the path of that unpublished directory."""
    env = dict(_env(), **{FAULT_SAVE_SLEEP_ENV: str(sleep_s)})
    proc = subprocess.Popen(torchrun_cmd(nproc, recipe, *overrides), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tmp = os.path.join(run_dir, "checkpoints", f".tmp_iter_{iteration:07d}")
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                out = proc.stdout.read()
                pytest.fail(f"job ended (rc {proc.returncode}) before saving {iteration}:\n{out[-4000:]}")
            if os.path.isfile(os.path.join(tmp, "train_state.json")):
                time.sleep(0.5)  # inside the sleep window: all ranks wait at the hook
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return tmp
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {tmp}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def read_metrics_lines(run_dir, kind="train"):
    """All records of ``kind`` in metrics.jsonl in file order (duplicates kept)."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r.get("kind", "train") == kind]


def converted_tiny_llama(directory, tensor_parallel_size=2):
    """A random tiny HF Llama (fp32, seed 0, vocab 2048 to fit the test tokenizer) saved under
    ``directory/hf`` and converted with megatron_ar.checkpoint to ``directory/megatron``, the
    shared starting point of the continual-pretraining and precision tests.
    Returns ``(hf_model, megatron_dir)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_ar.checkpoint import convert

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(cfg).float().eval()
    hf_dir, mg_dir = os.path.join(str(directory), "hf"), os.path.join(str(directory), "megatron")
    hf.save_pretrained(hf_dir, safe_serialization=True)
    convert("llama", "hf", "megatron", hf_dir, mg_dir,
            target_tensor_parallel_size=tensor_parallel_size, progress=False)
    return hf, mg_dir

"""nanochat checkpoints (``model_<step>.pt`` + ``meta_<step>.json``, as nanochat's
``checkpoint_manager.save_checkpoint`` writes them) <-> megatron_ar dist checkpoints.

Design choices
- The one name/shape table is :func:`megatron_ar.models.nanochat.weight_table`; import and
  export both go through it (``nanochat_to_megatron`` / ``megatron_to_nanochat``), so a tensor
  the table does not name, or a table tensor the file lacks, is an error naming it.
- Bit-exact round trip: nanochat saves mixed dtypes (its embeddings in the compute dtype, bf16
  on GPUs; everything else fp32). The megatron checkpoint is fp32 (every bf16/fp16 value is
  exact in fp32) and ``model_config.json``'s ``source`` records each tensor's dtype, the key
  order, the ``_orig_mod.`` prefix of a compiled model, the step and the meta JSON; export
  restores all of them. nanochat's vocab pad rows (to 64) are kept inside Megatron's padding.
- The model file is read whole (``torch.load``, ``weights_only``): nanochat's own format is one
  pickle, so nothing streams on the nanochat side; the megatron side streams as the HF path does.
- Outputs are published atomically (temporary directory, then renamed / merged in).
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Dict, Optional

import torch

from megatron_ar.checkpoint import megatron_io as mio
from megatron_ar.checkpoint.errors import CheckpointError
from megatron_ar.io.outputs import OutputError, check_dir_output, publish_into_dir, refuse_overlap
from megatron_ar.models.config import ConfigError

SOURCE_FORMAT = "nanochat"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OWNED = dict(names=(".metadata", "metadata.json", "common.pt", "model_config.json"),
             patterns=("*.distcp",))


def find_last_step(load_dir: str) -> int:
    """The largest ``<step>`` of ``model_<step>.pt`` in ``load_dir`` (nanochat's
    ``find_last_step``)."""
    steps = [int(m.group(1)) for f in glob.glob(os.path.join(load_dir, "model_*.pt"))
             if (m := re.fullmatch(r"model_(\d+)\.pt", os.path.basename(f)))]
    if not steps:
        raise CheckpointError(f"{load_dir}: no model_<step>.pt")
    return max(steps)


def _dtype_name(dtype: torch.dtype, where: str) -> str:
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise CheckpointError(f"{where}: unsupported dtype {dtype}")


def _check_output(save_dir: str, inputs, overwrite: bool, owned: Dict[str, Any]) -> str:
    save_dir = os.path.abspath(save_dir)
    try:
        refuse_overlap([save_dir], inputs, key="--save-dir")
        check_dir_output(save_dir, overwrite=overwrite, key="--save-dir", **owned)
    except OutputError as exc:
        raise CheckpointError(str(exc)) from None
    return save_dir


def import_nanochat(load_dir: str, save_dir: str, step: Optional[int] = None,
                    overwrite: bool = False, progress=None) -> Dict[str, Any]:
    """nanochat checkpoint -> megatron_ar dist checkpoint (TP=1 layout, any TP/PP loads it)."""
    from megatron_ar.models.nanochat import config_from_meta, nanochat_to_megatron, weight_table
    from megatron_ar.models.tp import VOCAB_PARAMS

    step = find_last_step(load_dir) if step is None else int(step)
    model_path = os.path.join(load_dir, f"model_{step:06d}.pt")
    meta_path = os.path.join(load_dir, f"meta_{step:06d}.json")
    for path in (model_path, meta_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: not found")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        cfg = config_from_meta(meta)
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None
    raw = torch.load(model_path, map_location="cpu", weights_only=True)
    keys = list(raw)
    prefix = "_orig_mod." if keys and all(k.startswith("_orig_mod.") for k in keys) else ""
    dtypes = {k.removeprefix(prefix): _dtype_name(v.dtype, f"{model_path}: {k}")
              for k, v in raw.items()}
    try:
        full = nanochat_to_megatron(raw, cfg, keep_vocab_padding=True)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{model_path}: {exc.args[0]}") from None
    save_dir = _check_output(save_dir, [load_dir], overwrite, OWNED)
    padded = mio.target_padded_vocab(cfg, 1)
    with mio.single_process_group():
        layout = mio.make_layout(cfg, padded, torch.float32)
    table_names = {e.megatron for e in weight_table(cfg)}
    if set(layout.params) != table_names:
        raise CheckpointError(f"model parameters {sorted(set(layout.params) ^ table_names)[:6]} "
                              "are not in the nanochat table")

    def source(name: str) -> torch.Tensor:
        t = full[name].float()
        shape = layout.params[name][0]
        if name in VOCAB_PARAMS and t.shape[0] < shape[0]:
            t = torch.cat([t, t.new_zeros((shape[0] - t.shape[0],) + tuple(t.shape[1:]))])
        return t

    with publish_into_dir(save_dir, overwrite=overwrite, key="--save-dir", **OWNED) as tmp:
        with mio.single_process_group():
            n = mio.save_streaming(layout, tmp, source, progress=progress)
        info = mio.CheckpointInfo(
            model_config=cfg, padded_vocab_size=padded, dtype="float32",
            source={"format": SOURCE_FORMAT, "step": step, "meta": meta, "prefix": prefix,
                    "keys": [k.removeprefix(prefix) for k in keys], "dtypes": dtypes})
        mio.write_checkpoint_info(tmp, info)
    return {"direction": "nanochat->megatron", "step": step, "num_tensors": len(keys),
            "numel": sum(v.numel() for v in raw.values()), "items_written": n,
            "save_dir": save_dir, "vocab_size": cfg.vocab_size, "padded_vocab_size": padded,
            "dtype": "float32"}


def export_nanochat(load_dir: str, save_dir: str, overwrite: bool = False,
                    progress=None) -> Dict[str, Any]:
    """megatron_ar dist checkpoint of a nanochat model -> ``model_<step>.pt`` +
    ``meta_<step>.json`` (step, meta, dtypes and key order from the import when it came from
    nanochat; else step 0, fp32, the table's order)."""
    from megatron_ar.models.nanochat import megatron_to_nanochat, meta_model_config, weight_table

    info = mio.read_checkpoint_info(load_dir)
    cfg = info.model_config
    src = info.source if info.source.get("format") == SOURCE_FORMAT else {}
    step = int(src.get("step", 0))
    names = (f"model_{step:06d}.pt", f"meta_{step:06d}.json")
    save_dir = _check_output(save_dir, [load_dir], overwrite, dict(names=names))
    with mio.single_process_group():
        layout = mio.layout_from_info(info)
        mio.validate_checkpoint_keys(layout, load_dir)
        full = {}
        for e in weight_table(cfg):
            if e.megatron not in layout.params:
                raise CheckpointError(f"{load_dir}: no tensor {e.megatron!r} (not a nanochat "
                                      "model checkpoint?)")
            full[e.megatron] = mio.load_param(layout, load_dir, e.megatron)
            if progress is not None:
                progress(e.megatron)
    state = megatron_to_nanochat(full, cfg)
    dtypes = src.get("dtypes", {})
    order = src.get("keys") or list(state)
    if sorted(order) != sorted(state):
        raise CheckpointError(f"{load_dir}/model_config.json: source.keys do not match the table")
    prefix = src.get("prefix", "")
    out = {prefix + k: state[k].to(_DTYPES[dtypes.get(k, "float32")]) for k in order}
    meta = src.get("meta") or {"step": step, "model_config": meta_model_config(cfg)}
    with publish_into_dir(save_dir, overwrite=overwrite, key="--save-dir",
                          names=names) as tmp:
        torch.save(out, os.path.join(tmp, names[0]))
        with open(os.path.join(tmp, names[1]), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)  # as nanochat's save_checkpoint
    return {"direction": "megatron->nanochat", "step": step, "num_tensors": len(out),
            "numel": sum(v.numel() for v in out.values()), "save_dir": save_dir,
            "vocab_size": cfg.vocab_size,
            "dtype": "+".join(sorted({str(v.dtype).removeprefix("torch.") for v in out.values()}))}

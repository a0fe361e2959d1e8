"""HF <-> Megatron checkpoint conversion (library behind ``tools/checkpoint/convert.py``).

Design choices
- Streaming both ways (peak memory ~ the largest parameter plus one shard, not the model): HF
  tensors are read one at a time (headers validated by ``safe_open``, bytes read straight into
  the tensor) and pulled by the dist-checkpoint writer when it reaches them;
  export reads one megatron parameter with ``dist_checkpointing.load`` and streams its HF
  tensors into pre-planned safetensors shards (:mod:`megatron_ar.io.safetensors`,
  :mod:`megatron_ar.checkpoint.megatron_io`). Measured by ``benchmarks/convert_memory.py``:
  1.12B-parameter fp32 Llama (4.49 GB), peak RSS / checkpoint bytes 0.216 (import) and 0.230
  (export), of which ~0.43 GB is the fixed cost of torch + megatron-core + transformers.
- Trade-off: one parameter is held whole while its shards are written (QKV and gate/up need
  the whole HF tensors anyway), so the peak grows with the largest tensor: for Gemma-2-9B the
  256k x 3584 bf16 embedding (1.8 GB) sets it at a few GB, far below a 24 GB machine.
- Validate everything before writing anything: model type vs ``config.json``, every expected
  tensor present with the expected shape (derived from the meta model), no unused tensors, a
  single dtype. A tied checkpoint that still carries ``lm_head.weight`` is accepted only if it
  equals the embedding.
- Output goes to a temporary directory next to the target, published on success and removed
  on any error (:func:`megatron_ar.io.outputs.publish_into_dir`). A ``save_dir`` that already
  holds a checkpoint is refused unless ``overwrite=True``, which replaces only the checkpoint's
  own files (:data:`OWNED_OUTPUTS`); other files in it are never deleted. A ``save_dir`` that
  is, holds or lies inside the load or tokenizer directory is refused.
- The Megatron checkpoint keeps the HF dtype (bf16 stays bf16) so the round trip is
  bit-identical; training casts on load as it needs.
- Tokenizer files are copied from ``tokenizer_dir`` when given (an error if it has none), else
  from the source checkpoint when present (HF dir, or ``<megatron dir>/tokenizer``).
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch

from megatron_ar.checkpoint import megatron_io as mio
from megatron_ar.checkpoint.errors import CheckpointError, ConfigMismatchError
from megatron_ar.checkpoint.hf_io import TOKENIZER_FILES, copy_tokenizer_files
from megatron_ar.checkpoint.mapping import (
    check_model_type,
    expected_hf_shapes,
    to_hf,
    to_megatron,
    weight_table,
)
from megatron_ar.io.outputs import OutputError, check_dir_output, publish_into_dir, refuse_overlap
from megatron_ar.io.safetensors import SafetensorsReader, ShardedSafetensorsWriter
from megatron_ar.models.config import ConfigError, ModelConfig

LOADERS = ("hf", "megatron", "nanochat")
SAVERS = ("megatron", "hf", "nanochat")
#: What each saver owns in ``save_dir`` (megatron_ar.io.outputs): these are replaced with
#: ``overwrite`` (stale ones removed, so no old shard outlives the new index), anything else in
#: the directory is left alone.
OWNED_OUTPUTS = {
    "megatron": dict(names=(".metadata", "metadata.json", "common.pt", "model_config.json",
                            "tokenizer"), patterns=("*.distcp",)),
    "hf": dict(names=("config.json", "generation_config.json", "model.safetensors.index.json")
               + TOKENIZER_FILES, patterns=("*.safetensors",)),
}


@dataclass
class ConversionResult:
    """Summary of one conversion (``--json`` prints it as the last line)."""

    direction: str
    model_type: str
    load_dir: str
    save_dir: str
    num_parameters: int  # megatron parameters (tensors) converted
    num_elements: int  # total elements, vocab padding excluded
    bytes_written: int
    vocab_size: int
    padded_vocab_size: int
    target_tensor_parallel_size: int
    target_pipeline_parallel_size: int
    dtype: str
    seconds: float
    peak_rss_bytes: int  # ru_maxrss of this process (includes everything before convert())
    rss_before_streaming_bytes: int  # RSS after imports/planning, before the first tensor
    tokenizer_files: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="tensor", leave=False)

    def __call__(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name[-48:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load_hf_config(load_dir: str, model_type: str):
    from transformers import AutoConfig

    path = os.path.join(load_dir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: not an HF checkpoint directory")
    try:
        hf_cfg = AutoConfig.from_pretrained(load_dir)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if hf_cfg.model_type != model_type:
        raise ConfigMismatchError(f"{path}: model_type is {hf_cfg.model_type!r} but "
                                  f"--model-type is {model_type!r}")
    try:
        from megatron_ar.models.hf import from_hf_config

        return from_hf_config(hf_cfg)
    except ConfigError as exc:
        raise ConfigMismatchError(f"{path}: {exc}") from exc


def _check_parallel(cfg: ModelConfig, tp: int, pp: int) -> None:
    for name, v in (("target tensor-parallel size", tp), ("target pipeline-parallel size", pp)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if cfg.num_attention_heads % tp or cfg.groups % tp:
        raise ConfigMismatchError(f"target tensor-parallel size {tp} must divide "
                                  f"num_attention_heads={cfg.num_attention_heads} and "
                                  f"num_query_groups={cfg.groups}")
    if cfg.ffn_hidden_size % tp:
        raise ConfigMismatchError(f"target tensor-parallel size {tp} must divide "
                                  f"ffn_hidden_size={cfg.ffn_hidden_size}")
    if cfg.num_layers % pp:
        raise ConfigMismatchError(f"target pipeline-parallel size {pp} must divide "
                                  f"num_layers={cfg.num_layers}")


def _single_dtype(reader: SafetensorsReader, names: List[str]) -> torch.dtype:
    dtypes: Dict[torch.dtype, str] = {}
    for n in names:
        dtypes.setdefault(reader.dtype(n), n)
    if len(dtypes) != 1:
        detail = ", ".join(f"{n} is {d}" for d, n in dtypes.items())
        raise CheckpointError(f"{reader.directory}: tensors have mixed dtypes ({detail})")
    return next(iter(dtypes))


def _hf_to_megatron(model_type, load_dir, tmp, tp, pp, progress) -> Dict[str, Any]:
    cfg = _load_hf_config(load_dir, model_type)
    _check_parallel(cfg, tp, pp)
    entries = weight_table(cfg)
    needed = [h for e in entries for h in e.hf]
    with SafetensorsReader(load_dir, error=CheckpointError) as reader:
        present = set(reader.keys())
        missing = [n for n in needed if n not in present]
        if missing:
            raise CheckpointError(f"{load_dir}: tensor {missing[0]!r} is missing from the HF "
                                  f"checkpoint ({len(missing)} missing in all)")
        unused = sorted(present - set(needed))
        if cfg.tie_embeddings and "lm_head.weight" in unused:
            if not torch.equal(reader.get("lm_head.weight"),
                               reader.get("model.embed_tokens.weight")):
                raise CheckpointError(f"{load_dir}: config ties embeddings but "
                                      f"lm_head.weight ({reader.file_of('lm_head.weight')}) "
                                      f"differs from model.embed_tokens.weight")
            unused.remove("lm_head.weight")
        if unused:
            raise CheckpointError(f"{load_dir}: unused tensor(s) not in the {model_type} mapping: "
                                  + ", ".join(f"{n} ({reader.file_of(n)})" for n in unused[:8])
                                  + (f" ... ({len(unused)} in all)" if len(unused) > 8 else ""))
        dtype = _single_dtype(reader, needed)
        padded = mio.target_padded_vocab(cfg, tp)
        with mio.single_process_group():
            layout = mio.make_layout(cfg, padded, dtype)
            by_name = {e.megatron: e for e in entries}
            extra = sorted(set(layout.params) - set(by_name))
            lacking = sorted(set(by_name) - set(layout.params))
            if extra or lacking:
                raise CheckpointError(f"mapping/model disagree for {model_type}: model params "
                                      f"without mapping {extra[:5]}, mapped names not in the "
                                      f"model {lacking[:5]}")
            for e in entries:
                for name, shape in expected_hf_shapes(e, layout.params[e.megatron][0],
                                                      cfg).items():
                    if reader.shape(name) != shape:
                        raise CheckpointError(
                            f"{os.path.join(load_dir, reader.file_of(name))}: tensor {name!r} "
                            f"has shape {reader.shape(name)}, config.json implies {shape}")

            def source(name: str) -> torch.Tensor:
                e = by_name[name]
                return to_megatron(e, [reader.get(h) for h in e.hf], cfg, padded)

            bar = _Progress(len(layout.params), "hf->megatron", progress)
            rss0 = _rss_bytes()
            try:
                mio.save_streaming(layout, tmp, source, target_tp=tp, progress=bar)
            finally:
                bar.close()
        info = mio.CheckpointInfo(
            model_config=cfg, padded_vocab_size=padded, tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp, dtype=mio.dtype_name(dtype),
            source={"format": "hf", "path": os.path.abspath(load_dir)})
        mio.write_checkpoint_info(tmp, info)
        numel = sum(_numel(reader.shape(n)) for n in needed)
    return dict(cfg=cfg, padded=padded, dtype=mio.dtype_name(dtype), n=len(entries), numel=numel,
                rss0=rss0)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _megatron_to_hf(model_type, load_dir, tmp, progress, max_shard_bytes) -> Dict[str, Any]:
    info = mio.read_checkpoint_info(load_dir)
    cfg = info.model_config
    if cfg.family != model_type:
        raise ConfigMismatchError(f"{os.path.join(load_dir, mio.CONFIG_NAME)}: model family is "
                                  f"{cfg.family!r} but --model-type is {model_type!r}")
    check_model_type(model_type)
    from megatron_ar.models.hf import to_hf_config

    try:
        hf_cfg = to_hf_config(cfg)
    except ConfigError as exc:
        raise ConfigMismatchError(f"{os.path.join(load_dir, mio.CONFIG_NAME)}: {exc}") from exc
    hf_cfg.dtype = info.dtype
    entries = weight_table(cfg)
    with mio.single_process_group():
        layout = mio.layout_from_info(info)
        mio.validate_checkpoint_keys(layout, load_dir)
        plan = []
        for e in entries:
            for name, shape in expected_hf_shapes(e, layout.params[e.megatron][0], cfg).items():
                plan.append((name, shape, layout.dtype))
        writer = ShardedSafetensorsWriter(tmp, plan, max_shard_bytes=max_shard_bytes,
                                          error=CheckpointError)
        bar = _Progress(len(entries), "megatron->hf", progress)
        rss0 = _rss_bytes()
        try:
            for e in entries:
                param = mio.load_param(layout, load_dir, e.megatron)
                for name, tensor in to_hf(e, param, cfg).items():
                    writer.write(name, tensor)
                del param
                bar(e.megatron)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
    hf_cfg.save_pretrained(tmp)
    return dict(cfg=cfg, padded=info.padded_vocab_size, dtype=info.dtype, n=len(entries),
                numel=sum(_numel(s) for _, s, _ in plan), rss0=rss0)


def _nanochat(model_type, loader, saver, load_dir, save_dir, overwrite, progress, step
              ) -> ConversionResult:
    from megatron_ar.checkpoint.nanochat_io import export_nanochat, import_nanochat

    if model_type != "nanochat" or {loader, saver} != {"nanochat", "megatron"}:
        raise ValueError(f"unsupported conversion {model_type!r} {loader!r} -> {saver!r}; "
                         "nanochat converts as: --model-type nanochat, nanochat <-> megatron")
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"load directory {load_dir!r} does not exist")
    start = time.time()
    bar = _Progress(None, f"{loader}->{saver}", progress)
    try:
        if loader == "nanochat":
            r = import_nanochat(load_dir, save_dir, step=step, overwrite=overwrite, progress=bar)
        else:
            r = export_nanochat(load_dir, save_dir, overwrite=overwrite, progress=bar)
    finally:
        bar.close()
    return ConversionResult(
        direction=r["direction"], model_type=model_type, load_dir=os.path.abspath(load_dir),
        save_dir=r["save_dir"], num_parameters=r["num_tensors"], num_elements=r["numel"],
        bytes_written=_dir_bytes(r["save_dir"]), vocab_size=r["vocab_size"],
        padded_vocab_size=r.get("padded_vocab_size", r["vocab_size"]),
        target_tensor_parallel_size=1, target_pipeline_parallel_size=1, dtype=r["dtype"],
        seconds=round(time.time() - start, 3), peak_rss_bytes=_peak_rss_bytes(),
        rss_before_streaming_bytes=_rss_bytes())


def convert(model_type: str, loader: str, saver: str, load_dir: str, save_dir: str,
            target_tensor_parallel_size: int = 1, target_pipeline_parallel_size: int = 1,
            tokenizer_dir: Optional[str] = None, overwrite: bool = False, progress: bool = True,
            max_shard_bytes: int = 5 * 1024 ** 3, step: Optional[int] = None) -> ConversionResult:
    """Convert ``load_dir`` (format ``loader``) into ``save_dir`` (format ``saver``).

    ``hf -> megatron``: HF safetensors + config.json -> megatron-core torch_dist checkpoint +
    ``model_config.json``, vocab padded to a multiple of 128 x ``target_tensor_parallel_size``,
    shards laid out for that TP (any TP/PP can load it). ``megatron -> hf``: the inverse,
    loadable by ``AutoModelForCausalLM.from_pretrained``. Target sizes are ignored on export.
    ``nanochat -> megatron`` / ``megatron -> nanochat`` (``model_type`` ``nanochat``): nanochat's
    ``model_<step>.pt`` + ``meta_<step>.json`` (``step``: default the latest), see
    :mod:`megatron_ar.checkpoint.nanochat_io`; bit-exact round trip, TP=1 layout.
    Raises :class:`CheckpointError` subclasses naming the key/file on bad input.
    """
    if "nanochat" in (loader, saver):
        return _nanochat(model_type, loader, saver, load_dir, save_dir, overwrite, progress, step)
    check_model_type(model_type)
    if loader not in LOADERS or saver not in SAVERS or loader == saver:
        raise ValueError(f"unsupported conversion {loader!r} -> {saver!r}; supported: "
                         "hf -> megatron, megatron -> hf")
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"load directory {load_dir!r} does not exist")
    save_dir = os.path.abspath(save_dir)
    owned = OWNED_OUTPUTS[saver]
    try:
        refuse_overlap([save_dir], [load_dir, tokenizer_dir], key="--save-dir")
        check_dir_output(save_dir, overwrite=overwrite, key="--save-dir", **owned)
    except OutputError as exc:
        raise CheckpointError(str(exc)) from None
    start = time.time()
    with publish_into_dir(save_dir, overwrite=overwrite, key="--save-dir", **owned) as tmp:
        if loader == "hf":
            facts = _hf_to_megatron(model_type, load_dir, tmp, target_tensor_parallel_size,
                                    target_pipeline_parallel_size, progress)
            tok_dst = os.path.join(tmp, "tokenizer")
            tok_src = load_dir
        else:
            facts = _megatron_to_hf(model_type, load_dir, tmp, progress, max_shard_bytes)
            tok_dst = tmp
            tok_src = os.path.join(load_dir, "tokenizer")
        if tokenizer_dir is not None:
            copied = copy_tokenizer_files(tokenizer_dir, tok_dst)
        elif os.path.isdir(tok_src) and any(os.path.isfile(os.path.join(tok_src, n))
                                            for n in TOKENIZER_FILES):
            copied = copy_tokenizer_files(tok_src, tok_dst)
        else:
            copied = []
    cfg: ModelConfig = facts["cfg"]
    return ConversionResult(
        direction=f"{loader}->{saver}", model_type=model_type,
        load_dir=os.path.abspath(load_dir), save_dir=save_dir,
        num_parameters=facts["n"], num_elements=facts["numel"],
        bytes_written=_dir_bytes(save_dir), vocab_size=cfg.vocab_size,
        padded_vocab_size=facts["padded"],
        target_tensor_parallel_size=target_tensor_parallel_size,
        target_pipeline_parallel_size=target_pipeline_parallel_size, dtype=facts["dtype"],
        seconds=round(time.time() - start, 3), peak_rss_bytes=_peak_rss_bytes(),
        rss_before_streaming_bytes=facts["rss0"],
        tokenizer_files=copied)

"""Convert checkpoints between HF transformers (safetensors) and megatron-core dist_checkpointing.

    python tools/checkpoint/convert.py --model-type llama --loader hf --saver megatron \
        --load-dir HF_DIR --save-dir MEGATRON_DIR \
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2 [--json]
    python tools/checkpoint/convert.py --model-type llama --loader megatron --saver hf \
        --load-dir MEGATRON_DIR --save-dir HF_DIR [--tokenizer-dir DIR] [--json]
    python tools/checkpoint/convert.py --model-type nanochat --loader nanochat --saver megatron \
        --load-dir NANOCHAT_CKPT_DIR [--step N] --save-dir MEGATRON_DIR   (and back)

Thin CLI over :func:`megatron_ar.checkpoint.convert` (see its docstring for the format and the
meaning of the target sizes). Shows a progress bar and finishes with a summary; ``--json`` puts
the summary as one JSON object on the last stdout line. Exit status 2 on invalid input.
"""
import sys

from megatron_ar.checkpoint import convert
from megatron_ar_tools._cli import add_progress, cli_main, emit_json, parser


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--model-type", required=True, help="llama, gemma2 or nanochat")
    p.add_argument("--loader", required=True, choices=["hf", "megatron", "nanochat"])
    p.add_argument("--saver", required=True, choices=["megatron", "hf", "nanochat"])
    p.add_argument("--step", type=int, default=None,
                   help="nanochat loader: the model_<step>.pt to read (default: the latest)")
    p.add_argument("--load-dir", required=True)
    p.add_argument("--save-dir", required=True)
    p.add_argument("--target-tensor-parallel-size", type=int, default=1,
                   help="TP the Megatron checkpoint is laid out and vocab-padded for (any TP "
                        "can load it)")
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1,
                   help="PP recorded in the checkpoint (validated against the layer count)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="copy tokenizer files from here (default: from the source checkpoint)")
    p.add_argument("--max-shard-size-gb", type=float, default=5.0,
                   help="HF export: maximum safetensors shard size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save-dir")
    add_progress(p)
    a = p.parse_args(argv)
    result = convert(
        a.model_type, a.loader, a.saver, a.load_dir, a.save_dir,
        target_tensor_parallel_size=a.target_tensor_parallel_size,
        target_pipeline_parallel_size=a.target_pipeline_parallel_size,
        tokenizer_dir=a.tokenizer_dir, overwrite=a.overwrite, progress=not a.no_progress,
        max_shard_bytes=int(a.max_shard_size_gb * 1024 ** 3), step=a.step)
    r = result.to_dict()
    print(f"converted {r['direction']} ({r['model_type']}): {r['num_parameters']} tensors, "
          f"{r['num_elements']:,} elements, {r['bytes_written'] / 1e6:.1f} MB written to "
          f"{r['save_dir']} in {r['seconds']:.1f} s; vocab {r['vocab_size']} (padded "
          f"{r['padded_vocab_size']}), dtype {r['dtype']}, peak RSS "
          f"{r['peak_rss_bytes'] / 1e6:.0f} MB")
    if a.json:
        emit_json(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())

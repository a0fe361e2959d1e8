"""Compare logits of a converted Megatron checkpoint with its HF original (run under torchrun).

    torchrun --nproc_per_node 4 tools/checkpoint/compare_hf.py --hf-dir HF --megatron-dir MEG \
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \
        --text-file sample.txt [--text-file more.txt] [--tolerance 1e-3] [--json]

World size must equal TP x PP (gloo on CPU, nccl on GPU). Prints max |logit diff| and top-1
agreement per text file and overall; with ``--json`` the last stdout line (rank 0) is
``{"max_abs_diff": ..., "top1_agreement": ..., ...}``. Exit status 1 when max |diff| exceeds
``--tolerance`` (on every rank), 2 on invalid input. A single process may run it without
torchrun when TP = PP = 1. Thin CLI over :func:`megatron_ar.checkpoint.compare_with_hf`.
"""
import os
import sys

from megatron_ar.io.rank import print_rank
from megatron_ar_tools._cli import EXIT_DIFFERENCE, cli_main, emit_json, fail, parser


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--megatron-dir", required=True)
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument("--text-file", action="append", required=True,
                   help="text to tokenize (repeatable: one comparison per file)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="default: --hf-dir, then <megatron-dir>/tokenizer")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=1e-3, help="max allowed |logit diff|")
    a = p.parse_args(argv)

    from megatron_ar.checkpoint import compare_with_hf, read_checkpoint_info
    from megatron_ar.checkpoint.compare import find_tokenizer_dir
    from megatron_ar.runtime import destroy_distributed, find_free_port, init_distributed
    from megatron_ar.tokenizers.io import tokens_from_text

    tp, pp = a.tensor_model_parallel_size, a.pipeline_model_parallel_size
    single = "RANK" not in os.environ
    if single and tp * pp != 1:
        return fail("run under torchrun with --nproc_per_node = TP x PP")
    info = read_checkpoint_info(a.megatron_dir)
    tok_dir = find_tokenizer_dir(a.tokenizer_dir, a.hf_dir,
                                 os.path.join(a.megatron_dir, "tokenizer"))
    batches = []
    for path in a.text_file:
        with open(path, encoding="utf-8") as f:
            batches.append(tokens_from_text(tok_dir, f.read(), a.batch_size, a.seq_length,
                                            info.model_config.vocab_size))
    kwargs = {}
    if single:
        kwargs = dict(rank=0, world_size=1, master_addr="127.0.0.1", master_port=find_free_port())
    layout = init_distributed(tp=tp, pp=pp, **kwargs)
    if layout.world_size != tp * pp:
        destroy_distributed()
        return fail(f"world size {layout.world_size} != TP x PP = {tp * pp}")
    try:
        result = compare_with_hf(a.hf_dir, a.megatron_dir, batches, names=a.text_file)
    finally:
        destroy_distributed()
    ok = result["max_abs_diff"] <= a.tolerance
    result.update({"tolerance": a.tolerance, "passed": ok})
    for b in result["per_batch"]:
        print_rank(f"{b['name']}: max |diff| {b['max_abs_diff']:.3e}, mean |diff| "
                   f"{b['mean_abs_diff']:.3e}, top-1 agreement {b['top1_agreement']:.4f} "
                   f"({b['num_positions']} positions)")
    print_rank(f"TP={tp} PP={pp}: max |logit diff| {result['max_abs_diff']:.3e} "
               f"(tolerance {a.tolerance:g}), top-1 agreement {result['top1_agreement']:.4f} -> "
               f"{'PASS' if ok else 'FAIL'}")
    if a.json and layout.rank == 0:
        emit_json(result)
    return 0 if ok else EXIT_DIFFERENCE


if __name__ == "__main__":
    sys.exit(main())

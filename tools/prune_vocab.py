#!/usr/bin/env python3
"""Prune a byte-fallback BPE vocabulary (Gemma-2 256,000 -> 128,256 for Fanar Prime) on a corpus,
optionally rewriting an HF safetensors checkpoint's embedding/LM-head rows to match
(thin CLI over megatron_ar.tokenizers.prune.prune_vocab; see its docstring for the method).

Example:
  python tools/prune_vocab.py --tokenizer gemma-2-9b --corpus ar.jsonl en.jsonl code.jsonl \\
      --target-vocab-size 128256 --output out/gemma-pruned --checkpoint gemma-2-9b \\
      --heldout heldout.jsonl --json

OUT gets tokenizer.json, tokenizer_config.json, special_tokens_map.json, id_map.npy (int32,
id_map[old_id] = new_id or -1), prune_summary.json and, with --checkpoint, config.json and the
pruned safetensors (a complete HF model dir). Exit status 1 if the corpus does not re-encode to
map(old ids) although every used token fit (a bug to report), 2 on bad input.
"""
import sys

from megatron_ar.tokenizers.prune import PruneConfig, prune_vocab
from megatron_ar_tools._cli import EXIT_DIFFERENCE, cli_main, emit_json, parser


def _table(res) -> str:
    rows = [("vocab_size", f"{res.original_vocab_size} -> {res.vocab_size}"),
            ("kept: protected / corpus / filled",
             f"{res.kept_protected} / {res.kept_from_corpus} / {res.filled_by_rank}"),
            ("  of corpus tokens, intermediate-only", res.intermediate_only),
            ("corpus tokens dropped (over budget)", res.dropped_used_tokens),
            ("corpus_lossless", f"{res.corpus_lossless} "
                                f"({res.corpus_docs_mismatched} docs differ)"),
            ("merges kept", res.merges_kept)]
    for name, st in (("corpus", res.corpus), ("held-out", res.heldout)):
        if not st:
            continue
        rows += [(f"{name}: docs / words", f"{st['docs']} / {st['words']}"),
                 (f"{name}: coverage (orig tokens kept)", f"{st['coverage']:.4%}"),
                 (f"{name}: tokens/word before -> after",
                  f"{st['tokens_per_word_before']:.4f} -> {st['tokens_per_word_after']:.4f}"),
                 (f"{name}: byte-fallback rate before -> after",
                  f"{st['byte_fallback_rate_before']:.4%} -> {st['byte_fallback_rate_after']:.4%}")]
        if "roundtrip_ok_after" in st:
            rows.append((f"{name}: decode(encode(x)) == x",
                         f"{st['roundtrip_ok_after']}/{st['docs']} "
                         f"(original tokenizer {st['roundtrip_ok_before']}/{st['docs']})"))
    if res.checkpoint:
        rows.append(("checkpoint tensors pruned", ", ".join(res.checkpoint["tensors_pruned"])))
    rows += [("seconds", res.seconds.get("total")), ("peak RSS MiB", f"{res.peak_rss_mb:.0f}"),
             ("output", res.output)]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{w}}: {v}" for k, v in rows)


@cli_main
def main(argv=None) -> int:
    p = parser(__doc__, full_doc=True)
    p.add_argument("--tokenizer", required=True, help="dir with tokenizer.json (or its path)")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="plain text (one document per line) or JSONL ('text' key) files")
    p.add_argument("--target-vocab-size", type=int, default=128256)
    p.add_argument("--output", required=True, help="new output directory")
    p.add_argument("--checkpoint", default=None, help="HF safetensors checkpoint dir to prune")
    p.add_argument("--heldout", nargs="*", default=[], help="held-out text files for the report")
    p.add_argument("--text-key", default="text")
    p.add_argument("--batch-docs", type=int, default=512)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    res = prune_vocab(PruneConfig(
        tokenizer=a.tokenizer, corpus=a.corpus, output=a.output,
        target_vocab_size=a.target_vocab_size, checkpoint=a.checkpoint, heldout=a.heldout,
        text_key=a.text_key, batch_docs=a.batch_docs, overwrite=a.overwrite, progress=True))
    print(_table(res))
    if a.json:
        emit_json(res.to_json())
    return 0 if res.corpus_lossless or res.dropped_used_tokens else EXIT_DIFFERENCE


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""JSONL -> Megatron indexed dataset ({prefix}_{key}_{document|sentence}.bin/.idx).

Same flags and byte-identical output as Megatron-LM's tools/preprocess_data.py, plus: several
inputs/globs, .gz/.zst, Arabic sentence splitting, --normalize-arabic, --on-error, resume of
finished input shards, --json summary. Thin CLI over megatron_ar.data.preprocess.preprocess.

Example:
  python tools/preprocess_data.py --input corpus/*.jsonl.gz --output-prefix data/ar \
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model path/to/tokenizer \
      --append-eod --workers 16 --json

On a cluster, an array task per part (--shard-index/--num-shards, default from
SLURM_ARRAY_TASK_ID/COUNT) writes {prefix}_shardK_of_N_{key}_{level}.bin/.idx; join them with
  python tools/merge_datasets.py --input 'data/ar_shard*_of_4_text_document' \
      --output-prefix data/ar_text_document
(byte-identical to the single run).
"""
import os
import sys

from megatron_ar.data.preprocess import PreprocessConfig, preprocess
from megatron_ar_tools._cli import (add_on_error, add_progress, add_resume, add_shard_selection,
                                    add_workers, cli_main, emit_summary, parser, shard_spec)


def build_parser():
    p = parser(__doc__, full_doc=True)
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                   help="JSONL file(s) or globs (plain/.gz/.zst), taken in sorted order")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to extract from each JSON record (one dataset per key)")
    g.add_argument("--split-sentences", action="store_true",
                   help="split documents into sentences (output level 'sentence')")
    g.add_argument("--keep-newlines", action="store_true",
                   help="keep newlines between sentences when splitting")
    g.add_argument("--lang", default="auto",
                   help="sentence splitting: 'auto' (per document: Arabic rules or punkt/"
                        "rules), 'arabic', or an NLTK punkt language such as 'english'")
    g.add_argument("--normalize-arabic", action="store_true",
                   help="apply megatron_ar.text.normalize.normalize_arabic before tokenizing")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True,
                   help="HuggingFaceTokenizer, SentencePieceTokenizer, GPTSentencePieceTokenizer, "
                        "Llama2Tokenizer, GPT2BPETokenizer, ... (megatron-core build_tokenizer)")
    g.add_argument("--tokenizer-model", default=None, help="tokenizer dir / .model file")
    g.add_argument("--vocab-file", default=None)
    g.add_argument("--merge-file", default=None)
    g.add_argument("--tokenizer-special-tokens", nargs="+", default=None)
    g.add_argument("--tokenizer-hf-include-special-tokens", action="store_true")
    g.add_argument("--tokenizer-hf-use-fast", action="store_true")
    g.add_argument("--tokenizer-sentencepiece-legacy", action="store_true")
    g.add_argument("--trust-remote-code", action="store_true")
    g = p.add_argument_group("tokenization process")
    g.add_argument("--append-eod", action="store_true",
                   help="append the tokenizer's EOD token to every non-empty document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path of the outputs without suffix")
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing .bin/.idx outputs (refused otherwise)")
    g = p.add_argument_group("runtime")
    add_workers(g, default=os.cpu_count() or 1,
                help="cores to use: processes over input files x tokenizer threads")
    g.add_argument("--partitions", type=int, default=1,
                   help="Megatron-LM partitions: only the output document order depends on it "
                        "(round-robin over input lines)")
    g.add_argument("--keep-sequential-samples", action="store_true",
                   help="contiguous partitions (output in input order)")
    g.add_argument("--log-interval", type=int, default=1000,
                   help="accepted for compatibility; progress is a tqdm bar over input bytes")
    g.add_argument("--batch-size", type=int, default=512, help="documents per encode batch")
    g.add_argument("--no-fast", action="store_true",
                   help="encode text by text through megatron-core's tokenize (slow path)")
    add_on_error(g)
    add_resume(g)
    add_progress(g)
    add_shard_selection(g)
    return p


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    cfg = PreprocessConfig(
        input=a.input, output_prefix=a.output_prefix, tokenizer_type=a.tokenizer_type,
        tokenizer_model=a.tokenizer_model, vocab_file=a.vocab_file, merge_file=a.merge_file,
        json_keys=a.json_keys, append_eod=a.append_eod, split_sentences=a.split_sentences,
        keep_newlines=a.keep_newlines, lang=a.lang, workers=a.workers,
        partitions=a.partitions, keep_sequential_samples=a.keep_sequential_samples,
        log_interval=a.log_interval, normalize_arabic=a.normalize_arabic,
        on_error=a.on_error, batch_size=a.batch_size,
        tokenizer_special_tokens=a.tokenizer_special_tokens,
        tokenizer_hf_include_special_tokens=a.tokenizer_hf_include_special_tokens,
        tokenizer_hf_use_fast=a.tokenizer_hf_use_fast,
        tokenizer_sentencepiece_legacy=a.tokenizer_sentencepiece_legacy,
        trust_remote_code=a.trust_remote_code, fast=not a.no_fast, overwrite=a.overwrite)
    summary = preprocess(cfg, resume=not a.no_resume, progress=not a.no_progress,
                         shard=shard_spec(a))
    emit_summary("preprocess_data", summary, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

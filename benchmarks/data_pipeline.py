#!/usr/bin/env python3
"""Throughput per core of every data-pipeline stage, each run single-process with 1 worker (and
1 tokenizer / C++ thread) on the same real corpus: what one array task of
examples/slurm/data_pipeline.sbatch does per core, to size --array and --time for a corpus.

Stages: normalize, strip_boilerplate (both passes), quality_signals, perplexity (KenLM, a
bigram model estimated here on other hadiths), filter_data (absolute rules; records without
signals get them computed, as in the pipeline after quality_signals they would not), dedup
stage 1 (key files) and stage 2 (union-find from the key files only, then writing the kept
set; its "MB/s" is the corpus it decides for), preprocess_data (SentencePiece, Mistral v1).
Every stage reads the same raw corpus (Sahih al-Bukhari, Arabic and English texts as web-like
records of three sites), so the figures are comparable; docs/s and MB/s (on-disk JSONL bytes)
are wall-clock over the stage's library call, whose process CPU time is printed beside it
(~ wall: one core).

``--dedup-memory`` measures stage 2's memory per document: a fresh process runs stage 2 (kept
set only, no writing) on the key files of two corpus sizes (distinct documents: copies beyond
the material are word-shuffled), its peak RSS (VmHWM, reset after the imports through
/proc/self/clear_refs) minus its RSS then; (growth2 - growth1) / (n2 - n1). RSS, not
tracemalloc: the C++ union-find's own allocations count.

Usage: python benchmarks/data_pipeline.py [--docs N] [--json] [--dedup-memory]
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _material  # noqa: E402

from megatron_ar.io.summary import print_json_line  # noqa: E402

SITES = ["https://sunnah.example/h/", "http://www.hadith.example.org/p?id=", "blog.example/"]
HEADS = ["Sunnah Library | Home | Books | Search", "حديث شريف — الصفحة الرئيسية", ""]


def texts():
    recs = _material.bukhari_records()
    return [t for r in recs for t in (r["arabic"], r["english"]["text"]) if t.strip()]


def write_corpus(d, n, files=4, shuffle_seed=None):
    """``n`` records over ``files`` files; with ``shuffle_seed``, copies beyond the material
    are word-shuffled (distinct documents, for the memory measurement)."""
    base = texts()
    rng = random.Random(shuffle_seed or 0)
    os.makedirs(d, exist_ok=True)
    paths = [os.path.join(d, f"part{f}.jsonl") for f in range(files)]
    fhs = [open(p, "w", encoding="utf-8") for p in paths]
    for k in range(n):
        t = base[k % len(base)]
        if k >= len(base) and shuffle_seed is not None:
            w = t.split()
            rng.shuffle(w)
            t = " ".join(w)
        s = k % 3
        text = (HEADS[s] + "\n" if HEADS[s] else "") + t.strip()
        fhs[k * files // n].write(json.dumps({"id": f"d{k}", "text": text, "metadata": {
            "url": f"{SITES[s]}{k}"}}, ensure_ascii=False) + "\n")
    for f in fhs:
        f.close()
    return paths


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stages(paths, tmp):
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess
    from megatron_ar.text.annotate import annotate_files, normalize_files
    from megatron_ar.text.boilerplate import strip_boilerplate
    from megatron_ar.text.dedup import DedupConfig, dedup_files, dedup_keys
    from megatron_ar.text.filters import FilterConfig, FilterRule, filter_files

    cfg = DedupConfig(threads=1)
    o = lambda name: os.path.join(tmp, name)  # noqa: E731
    kw = dict(workers=1, progress=False)
    out = {
        "normalize": lambda: normalize_files(paths, o("norm"), **kw),
        "strip_boilerplate": lambda: strip_boilerplate(paths, o("bp"), progress=False),
        "quality_signals": lambda: annotate_files(paths, o("sig"), **kw),
    }
    try:
        import kenlm  # noqa: F401

        from megatron_ar.text.perplexity import PerplexityConfig, ccnet_normalize, \
            perplexity_files, write_arpa

        arpa = o("lm.arpa")  # estimated outside the timing
        train = [r["arabic"] for r in _material.bukhari_records()[::7]]
        write_arpa([ccnet_normalize(t).split() for t in train], arpa, order=2)
        out["perplexity"] = lambda: perplexity_files(paths, o("ppl"), PerplexityConfig(model=arpa),
                                                     **kw)
    except ImportError:
        print("kenlm not installed: no perplexity stage", file=sys.stderr)
    rules = (FilterRule("word_count", min=20), FilterRule("mean_word_length", max=10),
             FilterRule("duplicate_line_fraction", max=0.3))
    out["filter_data"] = lambda: filter_files(paths, o("flt"), FilterConfig(rules=rules), **kw)
    out["dedup_stage1_keys"] = lambda: dedup_keys(paths, o("dd.work"), cfg, workers=1,
                                                  progress=False)
    out["dedup_stage2_cluster"] = lambda: dedup_files(paths, o("kept.jsonl"), None, cfg,
                                                      work_dir=o("dd.work"), stage="cluster",
                                                      progress=False)
    def pre(inputs, prefix):
        return preprocess(PreprocessConfig(
            input=inputs, output_prefix=prefix, tokenizer_type="SentencePieceTokenizer",
            tokenizer_model=_material.sentencepiece_model_path(), append_eod=True, workers=1),
            progress=False)

    # megatron-core's import and the tokenizer's load, once per process, outside the timing
    warm = write_corpus(o("warm"), 8, files=1)
    pre(warm, o("warm/tok"))
    out["preprocess_data"] = lambda: pre(paths, o("tok"))
    return out


def run(args):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(os.path.join(tmp, "raw"), args.docs)
        mb = sum(os.path.getsize(p) for p in paths) / 1e6
        rows = {}
        for name, fn in stages(paths, tmp).items():
            c0, t0 = _cpu(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            rows[name] = {"docs_per_s": round(args.docs / wall, 1), "mb_per_s": round(mb / wall, 3),
                          "docs_per_cpu_s": round(args.docs / cpu, 1),
                          "mb_per_cpu_s": round(mb / cpu, 3),
                          "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}
            r = rows[name]
            print(f"{name:22s} {r['docs_per_s']:9.1f} docs/s {r['mb_per_s']:7.3f} MB/s wall | "
                  f"{r['docs_per_cpu_s']:9.1f} docs/s {r['mb_per_cpu_s']:7.3f} MB/s per CPU-s "
                  f"({wall:.2f} s wall, {cpu:.2f} s CPU)", file=sys.stderr)
    res = {"docs": args.docs, "corpus_mb": round(mb, 3), "workers": 1, "stages": rows}
    if args.dedup_memory:
        res["dedup_stage2_memory"] = dedup_memory(args.mem_docs)
    return res


_STAGE2 = """
import json, sys
from megatron_ar.text.dedup import DedupConfig, dedup_files
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
paths, work = json.loads(sys.argv[1]), sys.argv[2]
with open('/proc/self/clear_refs', 'w') as f:  # reset VmHWM (the peak) after the imports
    f.write('5')
base = status('VmRSS')
s = dedup_files(paths, None, None, DedupConfig(threads=1), work_dir=work, stage='cluster',
                progress=False)
print(json.dumps({'docs': s['docs_in'], 'base_rss_kb': base, 'peak_rss_kb': status('VmHWM')}))
"""


def dedup_memory(sizes):
    from megatron_ar.text.dedup import DedupConfig, dedup_keys

    pts = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_corpus(os.path.join(tmp, "raw"), n, files=8, shuffle_seed=1)
            dedup_keys(paths, os.path.join(tmp, "w"), DedupConfig(threads=1), progress=False)
            # stage 2 alone in a fresh process: kept set, no writing (what one node holds)
            p = subprocess.run([sys.executable, "-c", _STAGE2, json.dumps(paths),
                                os.path.join(tmp, "w")], capture_output=True, text=True,
                               check=True)
            pt = json.loads(p.stdout.strip().splitlines()[-1])
            pt["growth_kb"] = pt["peak_rss_kb"] - pt["base_rss_kb"]
            pts.append(pt)
    (a, b) = pts[0], pts[-1]
    per_doc = (b["growth_kb"] - a["growth_kb"]) * 1024 / (b["docs"] - a["docs"])
    print(f"dedup stage 2 peak RSS growth over the imports: {a['docs']} docs "
          f"{a['growth_kb'] / 1024:.1f} MiB, {b['docs']} docs {b['growth_kb'] / 1024:.1f} MiB: "
          f"{per_doc:.0f} bytes/doc", file=sys.stderr)
    return {"points": pts, "bytes_per_doc": round(per_doc, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=14000, help="corpus size (documents)")
    p.add_argument("--dedup-memory", action="store_true",
                   help="also measure dedup stage 2 bytes per document (two corpus sizes)")
    p.add_argument("--mem-docs", type=int, nargs=2, default=[40000, 200000])
    p.add_argument("--json", action="store_true", help="the results as one JSON line last")
    args = p.parse_args()
    res = run(args)
    if args.json:
        print_json_line(res)


if __name__ == "__main__":
    main()

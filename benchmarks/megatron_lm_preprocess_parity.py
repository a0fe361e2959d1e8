#!/usr/bin/env python3
"""Byte identity of tools/preprocess_data.py (megatron_ar) with Megatron-LM's own
tools/preprocess_data.py, same input, tokenizer and flags; exit status 0 when the .bin/.idx
files are identical, 1 when they differ, 2 when the comparison cannot run.

Megatron-LM is not a dependency of megatron_ar, so this check lives here and not in tests/: it
needs a Megatron-LM git checkout (``--megatron-lm-dir`` or ``$MEGATRON_LM_DIR``) that has the tag
of the installed megatron-core (``core_v<version>``), and the Python modules Megatron-LM's script
imports beyond megatron-core (its tokenizer modules import ``six``, for one). Nothing is
installed here: a missing module is named with the pip command that provides it.

What runs: ``git archive <tag>`` extracts tools/preprocess_data.py and megatron/{training,legacy}
into a temporary directory; megatron/training/__init__.py is cut down to the names the script's
imports need (the full one imports the whole training stack, triton included). Both tools then
write Sahih al-Bukhari records (90 by default, one of them empty: Megatron-LM keeps it as a
0-sequence document) with the SentencePiece tokenizer (Mistral v1; five tokenizer loads on the
Megatron-LM side stay cheap), --append-eod, 2 workers, 2 partitions.

Usage: python benchmarks/megatron_lm_preprocess_parity.py --megatron-lm-dir ~/Megatron-LM
"""
import argparse
import filecmp
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def extract_megatron_lm(checkout: str, tag: str, dst: str) -> str:
    """tools/preprocess_data.py + megatron/{training,legacy} of ``tag`` under ``dst``."""
    git_dir = os.path.join(checkout, ".git") if os.path.isdir(os.path.join(checkout, ".git")) else checkout
    git = ["git", f"--git-dir={git_dir}"]
    if subprocess.run(git + ["rev-parse", "-q", "--verify", tag], capture_output=True).returncode:
        raise SystemExit(f"error: {checkout} has no tag {tag} (the installed megatron-core's release); "
                         f"git fetch --tags there")
    arch = subprocess.run(git + ["archive", tag, "tools/preprocess_data.py", "megatron/training",
                                 "megatron/legacy"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dst], input=arch, check=True)
    with open(os.path.join(dst, "megatron", "training", "__init__.py"), "w") as f:
        f.write("from .global_vars import get_args, get_timers, get_adlr_autoresume, get_tokenizer\n")
    return os.path.join(dst, "tools", "preprocess_data.py")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--megatron-lm-dir", default=os.environ.get("MEGATRON_LM_DIR"),
                   help="Megatron-LM git checkout (default: $MEGATRON_LM_DIR)")
    p.add_argument("--tag", default=None, help="default: core_v<installed megatron-core version>")
    p.add_argument("--records", type=int, default=90)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partitions", type=int, default=2)
    a = p.parse_args(argv)
    if not a.megatron_lm_dir or not os.path.isdir(a.megatron_lm_dir):
        print("error: pass --megatron-lm-dir (or set MEGATRON_LM_DIR) to a Megatron-LM git checkout",
              file=sys.stderr)
        return 2

    import megatron.core

    import _material as material
    from megatron_ar.data.preprocess import PreprocessConfig, preprocess

    tag = a.tag or f"core_v{megatron.core.__version__}"
    sp = material.sentencepiece_model_path()
    recs = [{"id": i, "text": r["arabic"]} for i, r in enumerate(material.bukhari_records()[:a.records])]
    recs[min(17, len(recs) - 1)]["text"] = ""
    with tempfile.TemporaryDirectory() as tmp:
        script = extract_megatron_lm(a.megatron_lm_dir, tag, tmp)
        src = os.path.join(tmp, "in.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        theirs, ours = os.path.join(tmp, "theirs"), os.path.join(tmp, "ours")
        cmd = [sys.executable, script, "--input", src, "--output-prefix", theirs,
               "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp, "--append-eod",
               "--workers", str(a.workers), "--partitions", str(a.partitions)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
        if res.returncode:
            missing = re.findall(r"No module named '([^'.]+)", res.stderr)
            if missing:
                print(f"error: Megatron-LM {tag}'s tools/preprocess_data.py needs the module "
                      f"{missing[-1]!r}, which is not installed: pip install {missing[-1]}", file=sys.stderr)
            else:
                print(f"error: Megatron-LM's script failed:\n{res.stderr[-3000:]}", file=sys.stderr)
            return 2
        s = preprocess(PreprocessConfig(input=[src], output_prefix=ours, append_eod=True,
                                        workers=a.workers, partitions=a.partitions,
                                        tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp),
                       progress=False)
        same = all(filecmp.cmp(theirs + "_text_document" + e, ours + "_text_document" + e, shallow=False)
                   for e in (".bin", ".idx"))
    print(f"Megatron-LM {tag} vs megatron_ar: {s['documents']} documents, {s['tokens']} tokens -> "
          f"{'byte-identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

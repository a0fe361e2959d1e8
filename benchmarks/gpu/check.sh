#!/usr/bin/env bash
# The GPU check of megatron_ar: one run on a single-GPU machine (H200) in under 8 minutes.
#
# The machine has Python 3.12, a CUDA torch, transformers, tensorboard, pyyaml, safetensors,
# tokenizers and numpy, but no megatron-core, no Transformer Engine (so the local spec is used)
# and no network. Prepare, on a CPU machine with the repository's test material, from the
# repository root:
#   python benchmarks/gpu/prepare.py        # -> .gpu-check/ (~7 MB: corpus, tokenizer, tiny
#                                           #    HF + converted checkpoints, fp32 CPU losses)
#   pip download "megatron-core>=0.16.1,<0.20" --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 -d .whl    # the newest cp312 wheel megatron_ar.compat
#                                                   # supports (0.19.2 on 2026-12-02), ~2.4 MB
# Both folders are git-ignored; the device tool carries them. Run it from the repository root:
#   run(command="bash benchmarks/gpu/check.sh", carry=[".whl", ".gpu-check"], timeout_s=540)
# Every figure is printed and written to $OUT/gpu_check.json (the tool returns $OUT's files).
# Parts and pass criteria: benchmarks/gpu/check.py. The script's own time guard ends the parts
# by ~7.5 minutes (CHECK_BUDGET_S, default 440 s for check.py after the install).
# Arguments go to check.py (e.g. --parts env,logits). To rule megatron-core's fusions out on a
# second try: command="MEGATRON_AR_FUSIONS=off bash benchmarks/gpu/check.sh".
# Exit status: 0 when every part passed or was skipped, 1 otherwise.
set -u
START=$SECONDS
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 1
OUT="${OUT:-$REPO/.gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TOTAL_S="${CHECK_TOTAL_S:-460}"

fail_early() {  # a result file even when nothing could run
    echo "gpu check: $1" >&2
    "$PY" - "$OUT/gpu_check.json" "$1" <<'EOF'
import json, sys
json.dump({"failed": ["setup"], "error": sys.argv[2]}, open(sys.argv[1], "w"), indent=1)
EOF
    exit 1
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
"$PY" --version

echo "== megatron-core"
if ! "$PY" -c "import megatron.core" 2>/dev/null; then
    TAG="cp$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    # The newest wheel brought along (GPU containers run the newest megatron-core that
    # megatron_ar.compat supports; MCORE_WHEEL=0.16 picks an older one for a comparison).
    shopt -s nullglob
    WHEELS=(.whl/megatron_core-"${MCORE_WHEEL:-}"*-"$TAG"-*.whl)
    [ ${#WHEELS[@]} -gt 0 ] || fail_early "no megatron_core-*-$TAG-*.whl under .whl/ (see the header)"
    WHL="$(printf '%s\n' "${WHEELS[@]}" | sort -V | tail -1)"
    SITE="$(mktemp -d /tmp/mcore-site.XXXXXX)"
    # --no-deps: megatron-core needs only torch, numpy and packaging, which the machine has.
    if ! PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check \
            --no-deps --no-index --target "$SITE" "$WHL"; then
        echo "pip failed; unpacking the wheel (a zip laid out as site-packages)"
        "$PY" -m zipfile -e "$WHL" "$SITE" || fail_early "could not install $WHL"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(basename "$WHL") into $SITE"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' || fail_early "imports failed (output above)"
import importlib
for name in ("torch", "megatron.core", "transformers", "yaml", "safetensors", "tokenizers",
             "numpy", "megatron_ar"):
    m = importlib.import_module(name)
    print(f"{name:<14} {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
[ -f .gpu-check/reference.json ] || fail_early ".gpu-check/reference.json missing: run benchmarks/gpu/prepare.py and carry .gpu-check"

# Megatron-LM's setting for TP/SP overlap (and megatron_ar's check); quiet tokenizers/NCCL.
export CUDA_DEVICE_MAX_CONNECTIONS=1 TOKENIZERS_PARALLELISM=false NCCL_DEBUG=WARN
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

BUDGET=$(( TOTAL_S - (SECONDS - START) ))
echo "== check.py (budget ${BUDGET} s)"
timeout --kill-after=10 $(( BUDGET + 15 )) "$PY" benchmarks/gpu/check.py --folder .gpu-check \
    --out "$OUT/gpu_check.json" --budget "$BUDGET" "$@"
RC=$?
echo "gpu check: exit $RC after $(( SECONDS - START )) s; results in $OUT/gpu_check.json"
exit $RC

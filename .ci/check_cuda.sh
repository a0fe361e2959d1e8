#!/usr/bin/env bash
# Compile-checks every csrc/**/*.cu with this machine's nvcc (no GPU, no CUDA torch needed: the
# .cu files include no torch header). Prints one line per file; exits non-zero on the first
# failure. Without nvcc it says so and exits 0 (tests/packaging/test_cuda_sources.py skips).
# Target: sm_90 (H100/H200, the clusters megatron_ar is used on); MAR_CUDA_ARCH overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "nvcc not found: CUDA sources not compile-checked"; exit 0
fi
arch=${MAR_CUDA_ARCH:-sm_90}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
find csrc -name '*.cu' | sort | while read -r f; do
  nvcc -std=c++17 -O3 -arch="$arch" -Icsrc/include -Xcompiler -Wall -c "$f" -o "$out/x.o"
  echo "ok $f ($arch)"
done

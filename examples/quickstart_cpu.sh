#!/usr/bin/env bash
# CPU quickstart (README): from a fresh clone, on 2+ cores (installs what it needs first):
#   1. builds a small mixed Arabic / English / code corpus from locally installed real text,
#      trains a 2,048-token MorphBPE tokenizer and preprocesses to Megatron .bin/.idx;
#   2. trains a tiny Fanar-Star-shaped Llama with TP=2 x PP=2 (4 gloo processes, sequence
#      parallel, distributed optimizer) through a two-phase curriculum (broad -> Arabic),
#      evaluating validation loss / bits-per-byte per language and an Arabic cloze task;
#   3. exports the last checkpoint to Hugging Face format and generates a continuation
#      with transformers.
# Extra arguments go to the trainer (e.g. --train-iters 50).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUN=runs/quickstart
PY=${PYTHON:-python3}

bash .ci/install.sh

$PY -m examples.quickstart.build_data --out .cache/quickstart

$PY -m torch.distributed.run --nproc_per_node 4 --master_port "${MASTER_PORT:-29517}" \
  -m megatron_ar.train --config examples/recipes/tiny_cpu.yaml --run-dir "$RUN" "$@"

ITER=$(cat "$RUN/checkpoints/latest_checkpointed_iteration.txt")
CKPT=$(printf '%s/checkpoints/iter_%07d' "$RUN" "$ITER")
$PY tools/checkpoint/convert.py --model-type llama --loader megatron --saver hf --overwrite \
  --load-dir "$CKPT" --save-dir "$RUN/hf" --tokenizer-dir .cache/quickstart/tokenizer

$PY tools/plot_run.py "$RUN"

$PY - "$RUN/hf" <<'PYEOF'
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
prompt = "قال رسول الله صلى الله عليه وسلم"
ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
out = model.generate(ids, max_new_tokens=24, do_sample=False)
print("prompt:     ", prompt)
print("continuation:", tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
PYEOF

#!/usr/bin/env bash
# Every GPU check of the harness in one run, for a machine with one CUDA GPU and no internet
# (the uv environment already synced). Prints every figure; about 8 minutes on an H100.
#   bash bench/gpu_check.sh [OUT_DIR]
# It works on a throwaway clone of this checkout, so the ledger and runs/ here are untouched.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
work="$(mktemp -d)/harness"
git clone -q "$here" "$work"
ln -s "$here/.venv" "$work/.venv"
cd "$work"
export PATH="$work/.venv/bin:$PATH" PYTHONUNBUFFERED=1
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "device"
python - <<'PY'
import torch
print(f"torch {torch.__version__} cuda {torch.version.cuda} device {torch.cuda.get_device_name(0)}")
print(f"memory {torch.cuda.get_device_properties(0).total_memory / 1e9:.1f} GB")
PY

step "smoke on CUDA (shape checks on, 30 steps of the cuda config)"
just smoke 2>&1 | tail -7

step "determinism: the cuda config twice with seed 0, 20M tokens each"
just determinism --budget-tokens 20000000 2>&1 | tail -4

step "benchmark: default preset and GPT-2-small shape, 150 s of training each"
python bench/bench.py --wall-s 150 --configs default gpt2-small baby | tee "$out/bench.jsonl"

step "a short scored run: just eval --budget-tokens 100000000"
just eval --budget-tokens 100000000 2>&1 | tail -12

gpus="$(python -c 'import torch; print(torch.cuda.device_count())')"
if [ "$gpus" -ge 2 ]; then
  step "one run on 2 GPUs (torchrun, DDP), twice: same val_bpb expected"
  for _ in 1 2; do just eval --nproc 2 --budget-tokens 20000000 2>&1 | grep -E '^(val_bpb|tokens_per_s|mfu|status):'; done
fi

cp results.tsv "$out/results.tsv"
echo "figures: $out/bench.jsonl, $out/results.tsv"

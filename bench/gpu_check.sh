#!/usr/bin/env bash
# Every GPU check of the harness in one run, on a machine with a CUDA GPU and no internet. It prints
# every figure, and keeps them in OUT_DIR (bench.jsonl, results.tsv, check.log).
#   bash bench/gpu_check.sh [OUT_DIR]
# The environment: ./.venv when it has torch with CUDA and the project's packages (after `uv sync`).
# Otherwise a venv on the python that already has torch (GPU clouds, containers): a .pth line lets it
# see that torch, and the other packages come from WHEELS=DIR (wheels downloaded elsewhere, see
# bench/README.md) or from the package index. ANCHOR=PATH/nanogpt_on_referee.py adds nanoGPT's figures
# on the same GPU. `--setup-only` stops once the environment is ready.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
setup_only=0
[ "${1:-}" = "--setup-only" ] && { setup_only=1; shift; }
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
imports="einops jaxtyping beartype loguru polars tyro git filelock numpy scipy submitit tqdm just"
die() { echo "gpu_check: $*" >&2; exit 2; }

# $1 has torch, the project's packages and, on PATH beside it, the `just` binary
ready() {
  "$1" -c "import torch, importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" ${imports/ just/} 2>/dev/null &&
    PATH="$(dirname "$1"):$PATH" command -v just >/dev/null
}

if [ -x "$here/.venv/bin/python" ] && ready "$here/.venv/bin/python"; then
  venv="$here/.venv"
else
  system_python="${PYTHON:-python3}"
  torch_site="$("$system_python" -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parents[1])' 2>/dev/null)" \
    || die "no python with torch here: run \`uv sync\` (needs the package index), or set PYTHON=/path/to/a/python/with/torch"
  venv="$(mktemp -d)/venv"
  "$system_python" -m venv "$venv"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$torch_site" > "$site/system_torch.pth"  # that python's torch (and whatever else it has), not a copy
  PATH="$PATH:$(cd "$torch_site/../../.." && pwd)/bin"  # and its scripts, for the packages it already has
  mapfile -t needs < <("$venv/bin/python" - "$here/pyproject.toml" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[<>=!~ ]", d)[0] not in ("torch", "matplotlib", "huggingface-hub")) + "\npytest")
PY
)
  source_args=(${WHEELS:+--no-index --find-links "$WHEELS"})
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${source_args[@]}" "${needs[@]}" \
    || die "could not install ${needs[*]}${WHEELS:+ from $WHEELS}; on a machine with the index: pip download --python-version $("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') --only-binary=:all: -d wheels ${needs[*]}, carry wheels/ here, and run WHEELS=wheels bash bench/gpu_check.sh"
  ready "$venv/bin/python" || die "the environment in $venv still lacks one of: torch $imports"
fi
echo "gpu_check: environment $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
[ "$setup_only" = 1 ] && exit 0

# A throwaway clone of this checkout's committed state, so the ledger and runs/ here are untouched.
work="$(mktemp -d)/harness"
git clone -q "$here" "$work"
ln -s "$venv" "$work/.venv"
cd "$work"
export PATH="$venv/bin:$PATH" PYTHONUNBUFFERED=1  # (the system python's bin stays on PATH, after it)
exec > >(tee "$out/check.log") 2>&1
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "device"
python -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"torch {torch.__version__} cuda {torch.version.cuda} {p.name} {p.total_memory / 1e9:.0f} GB, {torch.cuda.device_count()} GPUs")'

step "GPU tests: determinism, causality probe, bf16 autocast, the strict-mode crash row"
python -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -4

step "smoke on CUDA (shape checks on)"
just smoke 2>&1 | tail -7

step "determinism at the cuda preset: seed 0 twice, 10M tokens each (wall_s, tokens/s and MFU of a scored run)"
just determinism --budget-tokens 10000000 2>&1 | grep -E '^(val_bpb|wall_s|tokens_per_s|mfu|eval_s|first|second|deterministic):'

step "the workers' wall on CUDA (Landlock): every row's isolation and status, and any error"
awk -F'\t' 'NR==1{for(i=1;i<=NF;i++) c[$i]=i; next} {print $c["isolation"], $c["status"], $c["error"]}' results.tsv | sort | uniq -c

step "the price of determinism: the cuda preset, strict and not (50M tokens each)"
python bench/bench.py --configs default --budget-tokens 50000000 2>/dev/null | tee -a "$out/bench.jsonl"
python bench/bench.py --configs default --budget-tokens 50000000 --no-deterministic 2>/dev/null | tee -a "$out/bench.jsonl"

step "where the deterministic step goes: the top kernels (just profile)"
python bench/bench.py --profile --configs default 2>/dev/null | head -30

step "GPT-2-small shape, deterministic (40M tokens)"
python bench/bench.py --configs gpt2-small --budget-tokens 40000000 2>/dev/null | tee -a "$out/bench.jsonl"

if [ -n "${ANCHOR:-}" ]; then
  step "nanoGPT's model.py on our referee, same GPU (45 s each)"
  WALL_S=45 CONFIGS=gpt2s,baby python "$ANCHOR" 2>/dev/null | tee -a "$out/bench.jsonl"
fi

gpus="$(python -c 'import torch; print(torch.cuda.device_count())')"
if [ "$gpus" -ge 2 ]; then
  step "one run on 2 GPUs (torchrun, DDP), twice: the same val_bpb expected"
  for _ in 1 2; do just eval --nproc 2 --budget-tokens 20000000 2>&1 | grep -E '^(val_bpb|tokens_per_s|mfu|status):'; done
fi

cp results.tsv "$out/results.tsv"
echo "figures: $out/bench.jsonl, $out/results.tsv, $out/check.log"

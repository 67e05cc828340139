#!/usr/bin/env bash
# A stand-in of the GPU machine, on a CPU: rehearses benchmarks/gpu_evidence.sh the way the device runs it.
#   1. a venv OUTSIDE the repository with exactly the device's torch 2.11.0, triton 3.6.0 and torchvision 0.26.0
#      (PyPI's CUDA builds: they import and run on a machine without a GPU) plus numpy (< 2.4, see below) and
#      pytest; nothing of
#      ours (no deepspeed, no DALI, no project install);
#   2. .whl/ built by `gpu_evidence.sh --prepare` if absent (DeepSpeed and its pure-Python deps);
#   3. a copy of the tracked tree (git ls-files, working-tree content) plus .whl/: what the device receives;
#   4. `gpu_evidence.sh OUT --dry-run` there with that venv's python (it installs the project and DeepSpeed
#      offline, imports alr_fast.loss.triton, runs the interpreter kernel tests in full: INTERP_TESTS=all), and
#      tests/test_kernel_compile.py (compiles every kernel variant for sm_90 with triton 3.6's ptxas);
#   5. the small outputs copied to RESULTS_DIR (default benchmarks/results/gpu_standin/).
#
#   bash scripts/gpu_standin.sh [WORK_DIR] [RESULTS_DIR]     # WORK_DIR default /tmp/alr_gpu_standin (~5 GB)
#
# Environment: PYTHON_BASE (the interpreter the venv is made from, default python3.11), PREPARE_PYTHON (runs
# --prepare: needs torch, default python3).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/alr_gpu_standin}
RESULTS=${2:-$REPO/benchmarks/results/gpu_standin}
PYBASE=${PYTHON_BASE:-python3.11}
VENV="$WORK/venv"
TORCH=2.11.0 TRITON=3.6.0 TORCHVISION=0.26.0
mkdir -p "$WORK"
case $(cd "$WORK" && pwd)/ in "$REPO"/*) echo "gpu_standin: WORK_DIR must be outside the repository" >&2; exit 2 ;; esac
log() { echo "[gpu_standin $(date -u +%H:%M:%S)] $*"; }

if ! "$VENV/bin/python" -c "import torch, triton, torchvision as tv; assert torch.__version__.split('+')[0] == '$TORCH' \
    and triton.__version__ == '$TRITON' and tv.__version__.split('+')[0] == '$TORCHVISION'" 2> /dev/null; then
  log "building $VENV: torch==$TORCH triton==$TRITON torchvision==$TORCHVISION (PyPI), numpy, pytest"
  rm -rf "$VENV"
  "$PYBASE" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "torch===$TORCH" "triton==$TRITON" "torchvision===$TORCHVISION" numpy pytest
fi
# triton 3.6's interpreter turns 1-element arrays into ints with int(), which numpy >= 2.4 refuses ("only
# 0-dimensional arrays can be converted"): every interpreted launch with a loop over a scalar argument fails.
# The device runs compiled kernels (numpy plays no part there); the stand-in keeps numpy below 2.4.
"$VENV/bin/python" -c "import numpy; assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4)" 2> /dev/null \
  || "$VENV/bin/python" -m pip install --quiet "numpy<2.4"
"$VENV/bin/python" -c "import sys, torch, triton, torchvision; print('stand-in venv: python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda build', torch.version.cuda, 'triton', triton.__version__, 'torchvision', \
torchvision.__version__, 'cuda available', torch.cuda.is_available())"

if ! compgen -G "$REPO/.whl/deepspeed-*.whl" > /dev/null; then
  log "no .whl/: gpu_evidence.sh --prepare"
  PYTHON=${PREPARE_PYTHON:-python3} bash "$REPO/benchmarks/gpu_evidence.sh" --prepare
fi

log "copying the tracked tree and .whl/ to $WORK/tree"
rm -rf "$WORK/tree" "$WORK/out"
mkdir -p "$WORK/tree"
(cd "$REPO" && git ls-files -z | xargs -0 cp --parents -t "$WORK/tree")
cp -r "$REPO/.whl" "$WORK/tree/.whl"
du -sm "$WORK/tree/.whl" | awk '{print "carried .whl/: " $1 " MiB"}'
SHA=$(git -C "$REPO" rev-parse HEAD)
[[ -z $(git -C "$REPO" status --porcelain --untracked-files=no) ]] || SHA="$SHA-dirty"

log "gpu_evidence.sh --dry-run in the copy (python: the stand-in venv)"
rc=0
(cd "$WORK/tree" && env -u PYTHONPATH -u TRITON_INTERPRET PYTHON="$VENV/bin/python" GIT_SHA="$SHA" INTERP_TESTS=all \
  TIER_A_S=3600 TIER_B_S=900 TIER_C_S=300 bash benchmarks/gpu_evidence.sh "$WORK/out" --dry-run) \
  2>&1 | tee "$WORK/evidence.log" || rc=$?
log "tests/test_kernel_compile.py with triton $TRITON (sm_90, ptxas)"
crc=0
(cd "$WORK/tree" && env -u TRITON_INTERPRET PYTHONPATH="$WORK/out/.site" "$VENV/bin/python" -m pytest -q \
  -p no:cacheprovider tests/test_kernel_compile.py) > "$WORK/out/compile_test.log" 2>&1 || crc=$?
tail -n 3 "$WORK/out/compile_test.log"
(cd "$WORK/tree" && env -u TRITON_INTERPRET PYTHONPATH="$WORK/out/.site" "$VENV/bin/python" tests/test_kernel_compile.py) \
  > "$WORK/out/compile_variants.json" 2> "$WORK/out/compile_variants.err" || crc=$?

mkdir -p "$RESULTS"
cp "$WORK/out/summary.txt" "$WORK/out/tiers.json" "$WORK/out/env.log" "$WORK/out/compile_test.log" \
  "$WORK/out/compile_variants.json" "$RESULTS/"
cp "$WORK/out"/bench_loss_*.json "$WORK/out"/bench_loss_*.md "$WORK/out"/tier_*.log "$RESULTS/" 2> /dev/null || true
cp "$WORK/evidence.log" "$RESULTS/evidence.log"
{
  echo "# GPU stand-in run (CPU): gpu_evidence.sh --dry-run with the device's torch/triton"
  echo
  echo "Made by \`scripts/gpu_standin.sh\` at $(date -u +%Y-%m-%dT%H:%M:%SZ), git $SHA, on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores, no GPU)."
  echo
  echo '```'
  cat "$WORK/out/summary.txt"
  echo "compile test (triton $TRITON): $(tail -n 1 "$WORK/out/compile_test.log")"
  echo '```'
} > "$RESULTS/README.md"
log "results in $RESULTS (evidence rc=$rc, compile rc=$crc)"
[[ $rc -eq 0 && $crc -eq 0 ]]

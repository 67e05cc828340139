#!/usr/bin/env bash
# One command for the GPU evidence, in tiers, within ~8 minutes on one GPU:
#   (a) the GPU-only kernel tests (pytest -m gpu) and bench_loss.py (trainer + large shapes; the goal shape with
#       torch.compile) and bench_baselines.py (the baselines: fused vs eager): needs only torch + triton;
#   (b) bench_train.py, ResNet-50 at 224 px in bf16, CE vs ALR, torchvision input (real JPEG fixture made here);
#       needs DeepSpeed: installed from ./.whl/ (no network) when it is not importable;
#   (c) DALI GPU decode (bench_data.py), only if a DALI wheel is in ./.whl/ or DALI is importable.
# Each tier writes JSON into OUT_DIR as soon as it completes (tiers.json is rewritten after every tier), and a
# one-screen summary is printed at the end (also OUT_DIR/summary.txt).
#
#   bash benchmarks/gpu_evidence.sh OUT_DIR            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_evidence.sh OUT_DIR --dry-run  # CPU (CI): every command with tiny or check-only args
#
# Environment: PYTHON (default python3), TIER_A_S / TIER_B_S / TIER_C_S (per-tier time limits in seconds).
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1; shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
TIER_A_S=${TIER_A_S:-270}
TIER_B_S=${TIER_B_S:-150}
TIER_C_S=${TIER_C_S:-60}
declare -A STATUS
declare -A SECONDS_USED
T0=$SECONDS

log() { echo "[gpu_evidence $(date -u +%H:%M:%S)] $*"; }

write_tiers() {  # tiers.json: status and seconds of every tier so far
  local first=1
  {
    echo "{"
    echo "  \"dry_run\": $([[ $DRY == 1 ]] && echo true || echo false),"
    echo "  \"git_sha\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\","
    echo "  \"tiers\": {"
    for t in a b c; do
      [[ -n ${STATUS[$t]:-} ]] || continue
      [[ $first == 1 ]] || echo ","
      first=0
      printf '    "%s": {"status": "%s", "seconds": %s}' "$t" "${STATUS[$t]}" "${SECONDS_USED[$t]}"
    done
    echo ""
    echo "  }"
    echo "}"
  } > "$OUT/tiers.json"
}

run_step() {  # run_step TIER LIMIT_S LOGNAME cmd... : runs with a time limit, logs to OUT/LOGNAME.log
  local tier=$1 limit=$2 name=$3; shift 3
  log "tier $tier: $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "tier $tier: '$name' exited with $rc (see $OUT/$name.log)"
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
  fi
  return $rc
}

finish_tier() {  # finish_tier TIER RC START
  local tier=$1 rc=$2 start=$3
  if [[ $rc -eq 0 ]]; then STATUS[$tier]=ok; elif [[ $rc -eq 124 || $rc -eq 137 ]]; then STATUS[$tier]=timeout
  else STATUS[$tier]=failed; fi
  SECONDS_USED[$tier]=$((SECONDS - start))
  write_tiers
}

# ---------------------------------------------------------------------------------------------- tier (a)
start=$SECONDS
rc=0
if [[ $DRY == 1 ]]; then
  run_step a 120 tier_a_tests "$PY" -m pytest -q -m gpu --collect-only tests/test_kernel_alr.py \
    tests/test_kernel_host_path.py || rc=$?
  run_step a 120 tier_a_bench_loss "$PY" benchmarks/bench_loss.py --B 8 --K 4 --dtypes bf16 --impls eager \
    --calls 1 --reps 1 --warmup 0 --out "$OUT" --tag dry_run || rc=$?
else
  "$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" > "$OUT/tier_a_env.log" 2>&1 || rc=$?
  run_step a 150 tier_a_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_kernel_alr.py \
    tests/test_kernel_host_path.py --junitxml "$OUT/tier_a_tests.xml" || rc=$?
  run_step a 90 tier_a_bench_loss "$PY" benchmarks/bench_loss.py --grid trainer --grid large --dtypes bf16 \
    --impls fused_unique fused eager --out "$OUT" --tag grid || rc=$?
  run_step a 60 tier_a_bench_loss_compile "$PY" benchmarks/bench_loss.py --B 1024 --K 1000 --dtypes bf16 fp32 \
    --out "$OUT" --tag goal || rc=$?
  run_step a 45 tier_a_bench_baselines "$PY" benchmarks/bench_baselines.py --B 1024 4096 --K 10 1000 \
    --dtypes bf16 --out "$OUT" || rc=$?
fi
finish_tier a $rc $start

# ---------------------------------------------------------------------------------------------- tier (b)
start=$SECONDS
rc=0
FIXTURE="$OUT/fixture_c1m"
if ! "$PY" -c "import deepspeed" > /dev/null 2>&1; then
  if compgen -G ".whl/deepspeed-*.whl" > /dev/null; then
    log "tier b: installing DeepSpeed from .whl/ (no network)"
    if [[ $DRY == 1 ]]; then
      log "tier b (dry run): would run: $PY -m pip install --no-index --find-links .whl deepspeed"
    else
      "$PY" -m pip install --quiet --no-index --find-links .whl deepspeed > "$OUT/tier_b_pip.log" 2>&1 || rc=$?
    fi
  else
    log "tier b: DeepSpeed is not importable and no .whl/deepspeed-*.whl travelled: skipped"
    rc=3
  fi
fi
TRAIN_ARGS=(--recipe clothing1m --data-root "$FIXTURE" --model resnet50 --batch-size 64
            --set data.loader=torch --set data.image_size=224 --set train.precision=bf16 --set train.device=cuda
            --set data.subset_size=256 --out "$OUT" --tag resnet50_bf16)
if [[ $rc -eq 0 ]]; then
  if [[ $DRY == 1 ]]; then
    run_step b 120 tier_b_bench_train "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]/train.device=cuda/train.device=auto}" \
      --dry-run || rc=$?
  else
    run_step b 60 tier_b_fixture "$PY" -m alr_fast data make-fixture --dataset clothing1m --out "$FIXTURE" \
      --layout b --num-train 512 --num-test 64 --image-size 500x375 || rc=$?
    [[ $rc -ne 0 ]] || run_step b "$TIER_B_S" tier_b_bench_train "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
      --steps 10 --blocks 2 --warmup-steps 3 || rc=$?
  fi
fi
finish_tier b $rc $start

# ---------------------------------------------------------------------------------------------- tier (c)
start=$SECONDS
rc=0
if ! "$PY" -c "import nvidia.dali" > /dev/null 2>&1; then
  if compgen -G ".whl/nvidia_dali*.whl" > /dev/null; then
    if [[ $DRY == 1 ]]; then
      log "tier c (dry run): would run: $PY -m pip install --no-index --find-links .whl nvidia-dali-cuda130"
    else
      "$PY" -m pip install --quiet --no-index --find-links .whl nvidia-dali-cuda130 > "$OUT/tier_c_pip.log" 2>&1 \
        || rc=$?
    fi
  else
    log "tier c: DALI is not importable and no .whl/nvidia_dali*.whl travelled: skipped"
    rc=3
  fi
fi
if [[ $rc -eq 0 ]]; then
  if [[ $DRY == 1 ]]; then
    run_step c 60 tier_c_bench_data "$PY" benchmarks/bench_data.py --help || rc=$?
  else
    run_step c "$TIER_C_S" tier_c_bench_data "$PY" benchmarks/bench_data.py --images 384 --repeats 3 \
      --out "$OUT" --tag gpu || rc=$?
  fi
fi
[[ $rc -eq 3 ]] && STATUS[c]=skipped
finish_tier c $rc $start
[[ ${STATUS[b]} == failed && -z $(compgen -G ".whl/deepspeed-*.whl") ]] && STATUS[b]=skipped && write_tiers

# ---------------------------------------------------------------------------------------------- summary
{
  echo "gpu_evidence: $( [[ $DRY == 1 ]] && echo DRY RUN || echo GPU RUN ), $((SECONDS - T0)) s, out $OUT"
  for t in a b c; do echo "  tier $t: ${STATUS[$t]} (${SECONDS_USED[$t]} s)"; done
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("bench_loss_*.json")):
    rows = json.loads(f.read_text())["rows"]
    print(f"  {f.name}: {len(rows)} rows")
    for r in rows:
        if "error" in r:
            print(f"    {r['dtype']} B={r['B']} K={r['K']} {r['impl']}: {r['error'][:80]}")
        elif (r["B"], r["K"]) in ((1024, 1000), (8192, 1000), (256, 32000), (32, 262144)) or r["B"] * r["K"] <= 2560:
            s = r["step"]
            print(f"    {r['dtype']} B={r['B']:5d} K={r['K']:6d} {r['impl']:12s} step dev {s['device_us']['median']:8.1f} us"
                  f" host {s['host_us']['median']:7.1f} us {r['model_gbs']:7.1f} GB/s ({100 * r['copy_share']:4.1f} %)"
                  f" launches {r['fwd']['launches']}/{s['launches']} syncs {r.get('host_syncs')}")
for f in sorted(out.glob("bench_train_*.json")):
    d = json.loads(f.read_text())
    res = d["results"]
    print(f"  {f.name}: {d['model']} bs {d['batch_size']} {d['precision']}: CE {res['ce']['images_per_s']:.0f} img/s,"
          f" ALR {res['alr']['images_per_s']:.0f} img/s, ALR loss share {100 * d['alr_overhead_share_from_loss_timing']:.1f} %")
for f in sorted(out.glob("bench_data_*.json")):
    print(f"  {f.name}: written")
xml = out / "tier_a_tests.xml"
if xml.exists():
    import xml.etree.ElementTree as ET
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    print(f"  GPU tests: {s.get('tests')} run, {s.get('failures')} failed, {s.get('errors')} errors, {s.get('skipped')} skipped")
EOF
} | tee "$OUT/summary.txt"
[[ ${STATUS[a]} == ok ]]

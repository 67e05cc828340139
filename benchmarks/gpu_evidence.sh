#!/usr/bin/env bash
# The GPU evidence in one command of at most ~8 minutes on one GPU, as the device receives the repository
# (the tracked tree plus the carried .whl/, no network, its own python with torch and triton). Tiers in order
# of value; each writes its JSON into OUT_DIR as soon as it has it (tiers.json after every tier), so a cut-off
# keeps every finished figure; a one-screen summary ends the run (OUT_DIR/summary.txt).
#   install  the project (pip --no-deps --no-index --target OUT/.site, build requirements from .whl/; falls back
#            to --no-build-isolation, then to PYTHONPATH) and DeepSpeed + its pure-Python deps from .whl/;
#            then `import alr_fast.loss.triton` from outside the tree
#   a        correctness on the hardware: bench_loss --oracle-only (float64 oracle, every dtype/mode/reduction,
#            duplicate indices, NaN rows) and the GPU-only kernel tests (pytest -m gpu)
#   b        timing: bench_loss (CUDA-graph replay, L2 flushed; vs F.cross_entropy, the eager reference,
#            torch.compile of the unique fast path; the fused kernel as the trainer calls it; split-K check),
#            and bench_baselines.py (the baselines' fused kernels vs eager; GPU run only)
#   c        end to end: ResNet-50 bf16 images/s, CE vs ALR, torchvision loader (bench_train.py, DeepSpeed).
#            DALI "mixed" cannot be measured there: its wheels (~476 MB) exceed the 64 MiB that travel.
#
#   bash benchmarks/gpu_evidence.sh --prepare          # on a networked machine: build .whl/ (checks its size)
#   bash benchmarks/gpu_evidence.sh OUT_DIR            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_evidence.sh OUT_DIR --dry-run  # CPU: the same steps, Triton interpreter, tiny shapes
#
# Environment: PYTHON (default python3); GIT_SHA (recorded when the copy has no .git); TIER_A_S / TIER_B_S /
# TIER_C_S (time limits, s); INTERP_TESTS (dry run: pytest -k expression selecting the interpreter kernel
# tests; "all" runs both files whole).
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run] | $0 --prepare" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python3}
DS_VERSION=0.19.8
# DeepSpeed's runtime dependencies that a torch image may lack (torch, numpy and packaging are there; tqdm came
# with timm/lightning on the device but not in the stand-in's bare venv: it travels too).
DS_DEPS=(einops hjson msgpack ninja psutil py-cpuinfo pydantic pydantic-core annotated-types typing-inspection
         typing-extensions nvidia-ml-py tqdm)
WHL_LIMIT_MB=48  # of the 64 MiB that may travel besides the tracked tree

if [[ ${1:-} == --prepare ]]; then
  [[ $# -eq 1 ]] || usage
  mkdir -p .whl
  set -e
  # DeepSpeed is an sdist: build a py3-none-any wheel here (no ops compiled: DS_BUILD_OPS=0 by default).
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "deepspeed==$DS_VERSION"
  # pydantic and pydantic-core must match: take the pair this python has (DeepSpeed installed and tested here).
  pyd=$("$PY" -c 'import pydantic; print(pydantic.VERSION)')
  pyd_core=$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')
  # Pure-Python deps once (with setuptools>=77, wheel and packaging: the offline project build); compiled ones
  # (msgpack, pydantic-core, psutil) for every CPython the image may have.
  "$PY" -m pip download --quiet --no-deps -d .whl einops hjson ninja py-cpuinfo "pydantic==$pyd" annotated-types \
    typing-inspection typing-extensions nvidia-ml-py tqdm "setuptools>=77" wheel packaging
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download --quiet --no-deps -d .whl --only-binary=:all: --python-version "$v" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      msgpack psutil "pydantic-core==$pyd_core"
  done
  set +e
  size_mb=$(du -sm .whl | cut -f1)
  ls -1 .whl
  echo "prepare: .whl/ holds ${size_mb} MiB (limit ${WHL_LIMIT_MB} MiB of the 64 MiB that travel)"
  [[ $size_mb -le $WHL_LIMIT_MB ]] || { echo "prepare: .whl/ is too large" >&2; exit 1; }
  exit 0
fi

[[ $# -ge 1 ]] || usage
OUT=$1; shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done
[[ $OUT == --* ]] && usage
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TIER_A_S=${TIER_A_S:-110}
TIER_B_S=${TIER_B_S:-170}
TIER_C_S=${TIER_C_S:-150}
INTERP_TESTS=${INTERP_TESTS:-"gradient_into_the_logits or mean_count"}
declare -A STATUS SECONDS_USED
INSTALL=none
T0=$SECONDS
[[ $DRY == 1 ]] && export TRITON_INTERPRET=1 || unset TRITON_INTERPRET

log() { echo "[gpu_evidence $(date -u +%H:%M:%S)] $*"; }

write_tiers() {  # tiers.json: how the project was installed, status and seconds of every tier so far
  {
    echo "{"
    echo "  \"dry_run\": $([[ $DRY == 1 ]] && echo true || echo false),"
    echo "  \"git_sha\": \"${GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}\","
    echo "  \"install\": \"$INSTALL\","
    echo "  \"elapsed_s\": $((SECONDS - T0)),"
    echo "  \"tiers\": {"
    local first=1
    for t in install a b c; do
      [[ -n ${STATUS[$t]:-} ]] || continue
      [[ $first == 1 ]] || echo ","
      first=0
      printf '    "%s": {"status": "%s", "seconds": %s}' "$t" "${STATUS[$t]}" "${SECONDS_USED[$t]}"
    done
    echo ""
    echo "  }"
    echo "}"
  } > "$OUT/tiers.json.tmp" && mv "$OUT/tiers.json.tmp" "$OUT/tiers.json"
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
  elif [[ $rc -eq 3 ]]; then STATUS[$tier]=skipped; else STATUS[$tier]=failed; fi
  SECONDS_USED[$tier]=$((SECONDS - start))
  write_tiers
}

# ------------------------------------------------------------------------------------------------- install
start=$SECONDS
rc=0
SITE="$OUT/.site"
DEPS="$OUT/.deps"
rm -rf "$SITE" "$DEPS"
"$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, \
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  > "$OUT/env.log" 2>&1 || rc=$?
# The project, without network: build requirements (setuptools>=77, wheel) from .whl/ when they travelled
# (without .whl/, e.g. CI's dry run, that attempt cannot succeed: straight to the python's own setuptools).
: > "$OUT/install.log"
if compgen -G ".whl/setuptools-*.whl" > /dev/null \
    && "$PY" -m pip install --no-deps --no-index --find-links .whl --target "$SITE" . >> "$OUT/install.log" 2>&1; then
  INSTALL=pip-target
elif "$PY" -m pip install --no-deps --no-index --no-build-isolation --target "$SITE" . >> "$OUT/install.log" 2>&1
then
  INSTALL=pip-target-no-build-isolation
else
  INSTALL=pythonpath  # nothing to build: the package imports from the tree (no path mapping)
  log "install: pip could not install the project offline (see $OUT/install.log); using PYTHONPATH=$REPO"
fi
[[ $INSTALL == pythonpath ]] && export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
  || export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed (tier c) and its deps from .whl/ unless importable; --no-deps with the explicit list: never torch.
# Imported once or twice in all (each import costs seconds): DS_OK is reused by tier c.
ds_version() { "$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)" > "$OUT/deepspeed.log" 2>&1; }
DS_OK=0
if ds_version; then
  DS_OK=1
elif compgen -G ".whl/deepspeed-*.whl" > /dev/null; then
  if "$PY" -m pip install --no-deps --no-index --find-links .whl --target "$DEPS" "deepspeed==$DS_VERSION" \
      "${DS_DEPS[@]}" >> "$OUT/install.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$DEPS"
    ds_version && DS_OK=1
  else
    log "install: DeepSpeed from .whl/ failed (see $OUT/install.log)"
  fi
fi
(cd "$OUT" && "$PY" -c "import alr_fast.loss.triton as k, os; assert k.HAS_FUSED_ALR, 'no triton'; \
print('alr_fast.loss.triton from', os.path.relpath(k.__file__, '$REPO'), 'interpreted' if k.INTERPRETED else 'compiled')") \
  >> "$OUT/env.log" 2>&1 || rc=$?
cat "$OUT/deepspeed.log" >> "$OUT/env.log"
[[ $DS_OK == 1 ]] || echo "deepspeed: not importable" >> "$OUT/env.log"
sed 's/^/    /' "$OUT/env.log"
finish_tier install $rc $start
if [[ $rc -ne 0 ]]; then
  log "install: alr_fast.loss.triton does not import; stopping"
  cat "$OUT/env.log"
  exit 1
fi

# ---------------------------------------------------------------------- tier (a): correctness on the hardware
start=$SECONDS
rc=0
if [[ $DRY == 1 ]]; then
  run_step a "$TIER_A_S" tier_a_oracle "$PY" benchmarks/bench_loss.py --dry-run --oracle-only --out "$OUT" \
    --tag dry_run_oracle || rc=$?
  if [[ $INTERP_TESTS == all ]]; then sel=(); else sel=(-k "$INTERP_TESTS"); fi
  run_step a "$TIER_A_S" tier_a_tests "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_alr.py \
    tests/test_kernel_host_path.py "${sel[@]}" --junitxml "$OUT/tier_a_tests.xml" || rc=$?
  run_step a 120 tier_a_gpu_collect "$PY" -m pytest -q -m gpu --collect-only -p no:cacheprovider \
    tests/test_kernel_alr.py tests/test_kernel_host_path.py || rc=$?
else
  run_step a 60 tier_a_oracle "$PY" benchmarks/bench_loss.py --oracle-only --out "$OUT" --tag oracle || rc=$?
  run_step a "$TIER_A_S" tier_a_tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_kernel_alr.py \
    tests/test_kernel_host_path.py --junitxml "$OUT/tier_a_tests.xml" || rc=$?
fi
finish_tier a $rc $start

# ------------------------------------------------------------------------------------------- tier (b): timing
start=$SECONDS
rc=0
if [[ $DRY == 1 ]]; then
  run_step b "$TIER_B_S" tier_b_bench_loss "$PY" benchmarks/bench_loss.py --dry-run --no-oracle --split-check \
    --dtypes bf16 --out "$OUT" || rc=$?
else
  run_step b "$TIER_B_S" tier_b_bench_loss "$PY" benchmarks/bench_loss.py --grid trainer --grid large \
    --dtypes bf16 --no-oracle --split-check --out "$OUT" --tag grid || rc=$?
  # The baselines' fused kernels (ELR, GCE, SCE, bootstrapping) vs eager; it has no CPU dry run.
  run_step b 45 tier_b_bench_baselines "$PY" benchmarks/bench_baselines.py --B 1024 4096 --K 10 1000 \
    --dtypes bf16 --out "$OUT" || rc=$?
fi
finish_tier b $rc $start

# ----------------------------------------------------------------------------------------- tier (c): end to end
start=$SECONDS
rc=0
FIXTURE="$OUT/fixture_c1m"
TRAIN_ARGS=(--recipe clothing1m --data-root "$FIXTURE" --model resnet50 --batch-size 64
            --set data.loader=torch --set data.image_size=224 --set train.precision=bf16
            --set data.subset_size=256 --out "$OUT" --tag resnet50_bf16)
if [[ $DS_OK != 1 ]]; then
  log "tier c: DeepSpeed is not importable and did not install from .whl/ (run --prepare first): skipped"
  rc=3
elif [[ $DRY == 1 ]]; then
  run_step c 120 tier_c_bench_train "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" --set train.device=auto \
    --dry-run || rc=$?
else
  run_step c 60 tier_c_fixture "$PY" -m alr_fast data make-fixture --dataset clothing1m --out "$FIXTURE" \
    --layout b --num-train 512 --num-test 64 --image-size 500x375 || rc=$?
  [[ $rc -ne 0 ]] || run_step c "$TIER_C_S" tier_c_bench_train "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
    --set train.device=cuda --steps 10 --blocks 2 --warmup-steps 3 || rc=$?
fi
finish_tier c $rc $start

# -------------------------------------------------------------------------------------------------- summary
{
  echo "gpu_evidence: $( [[ $DRY == 1 ]] && echo DRY RUN || echo GPU RUN ), $((SECONDS - T0)) s, install: $INSTALL"
  sed -n 1p "$OUT/env.log" | sed 's/^/  python, torch, triton, cuda, device: /'
  for t in install a b c; do echo "  tier $t: ${STATUS[$t]:-not run} (${SECONDS_USED[$t]:-0} s)"; done
  echo "  DALI mixed (GPU) decode: not measurable on this machine (its wheels exceed what can travel)"
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("bench_loss_*.json")):
    d = json.loads(f.read_text())
    if d["oracle"]:
        bad = [o for o in d["oracle"] if not o.get("ok")]
        print(f"  {f.name}: float64 oracle {len(d['oracle']) - len(bad)}/{len(d['oracle'])} cases pass"
              + "".join(f"\n    FAIL {o['case']} {o.get('error', '')}" for o in bad[:5]))
    if d["copy_bandwidth_gbs"]:
        print(f"  {f.name}: copy bandwidth {d['copy_bandwidth_gbs']:.0f} GB/s, {len(d['rows'])} timed rows")
    keep = {(1024, 1000), (4096, 1000), (8192, 1000), (256, 21841), (32, 262144)}
    for r in d["rows"]:
        if "error" in r:
            print(f"    {r['dtype']} B={r['B']} K={r['K']} {r['impl']}: {r['error'][:90]}")
        elif (r["B"], r["K"]) in keep or d["dry_run"]:
            s = r["step"]
            print(f"    {r['dtype']} B={r['B']:5d} K={r['K']:6d} {r['impl']:14s} {s['median']:9.1f} us "
                  f"{r['model_gbs']:7.1f} GB/s ({100 * r['copy_share']:5.1f} %) launches {r['launches']} "
                  f"syncs {r['host_syncs']}")
    for sc in d.get("split_check", []):
        print(f"    split-K check: " + (sc["error"] if "error" in sc else
              f"B={sc['B']} K={sc['K']} split {sc['split_k']['median']:.1f} us vs two sweeps "
              f"{sc['two_sweep']['median']:.1f} us, same gradient {sc['same_gradient']}"))
for f in sorted(out.glob("bench_train_*.json")):
    d = json.loads(f.read_text())
    if d.get("dry_run"):
        print(f"  {f.name}: dry run (arguments and config valid)")
        continue
    res = d["results"]
    print(f"  {f.name}: {d['model']} bs {d['batch_size']} {d['precision']}: CE {res['ce']['images_per_s']:.0f} img/s,"
          f" ALR {res['alr']['images_per_s']:.0f} img/s")
xml = out / "tier_a_tests.xml"
if xml.exists():
    import xml.etree.ElementTree as ET
    s = ET.parse(xml).getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    print(f"  kernel tests: {s.get('tests')} run, {s.get('failures')} failed, {s.get('errors')} errors, "
          f"{s.get('skipped')} skipped")
EOF
} | tee "$OUT/summary.txt"
[[ ${STATUS[a]} == ok ]]

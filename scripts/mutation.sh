#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (a `mutation` extra, pinned in constraints.txt).
# Not in CI (minutes per module). docs/mutation.md has the method, the scores and the triage of survivors.
#
#   scripts/mutation.sh                 # every module below
#   scripts/mutation.sh metrics bank    # some of them (the keys of MODULES)
#
# For each module it copies the repository's files (tracked and untracked, not ignored) to a scratch directory
# ($MUTATION_WORK, default /tmp/alr_fast_mutation/<key>), writes a [mutmut] section there naming the module's
# file(s) and the fast tests that cover it, and runs `mutmut run`: mutmut first records which of those tests
# reach each function, then runs only those tests against each mutant (in a forked process, the tests already
# imported). Results go to $MUTATION_OUT (default benchmarks/results/mutation/): <key>.txt (every mutant and
# its status), <key>.survivors.diff (the diff of each surviving mutant) and a line in summary.tsv.
# The checkout itself is never modified. Python: $PYTHON, else .venv/bin/python, else python.
set -euo pipefail

ROOT=${MUTATION_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY=$ROOT/.venv/bin/python
else PY=python; fi
OUT=${MUTATION_OUT:-$ROOT/benchmarks/results/mutation}
WORK=${MUTATION_WORK:-${TMPDIR:-/tmp}/alr_fast_mutation}

# key -> files mutated (mutmut only_mutate globs, space separated) | tests run against them (pytest arguments)
declare -A MODULES=(
  [reference]="alr_fast/loss/reference.py|tests/test_functional.py tests/test_grad_output.py"
  [torch_fast]="alr_fast/loss/torch_fast.py|tests/test_functional.py tests/test_grad_output.py"
  [loss_api]="alr_fast/loss/contract.py alr_fast/loss/functional.py alr_fast/loss/triton/alr_loss.py|tests/test_functional.py tests/test_grad_output.py tests/test_loss_api.py tests/test_kernel_alr.py::test_module_wrapper tests/test_kernel_alr.py::test_input_errors_name_the_argument tests/test_kernel_alr.py::test_functional_backend_dispatch"
  [sharding]="alr_fast/loss/sharding.py|tests/test_data_shards.py tests/test_bank.py"
  [bank]="alr_fast/loss/bank.py|tests/test_bank.py"
  [metrics]="alr_fast/train/metrics.py|tests/test_metrics.py tests/test_bank.py"
  [schedule]="alr_fast/train/schedule.py|tests/test_schedule.py"
  [noise]="alr_fast/data/noise.py|tests/test_noise.py"
  [exports]="alr_fast/train/exports.py|tests/test_exports.py"
  [evaluation]="alr_fast/train/evaluation.py|tests/test_evaluation.py"
)
ORDER=(metrics sharding noise schedule evaluation exports bank torch_fast reference loss_api)

keys=("$@")
[[ ${#keys[@]} -gt 0 ]] || keys=("${ORDER[@]}")
for key in "${keys[@]}"; do
  [[ -n "${MODULES[$key]:-}" ]] || { echo "mutation.sh: unknown module '$key' (known: ${ORDER[*]})" >&2; exit 2; }
done

"$PY" -c "import mutmut" 2>/dev/null || {
  echo "mutation.sh: mutmut is not installed for $PY (pip install -e '.[mutation]' -c constraints.txt)" >&2; exit 2; }
mkdir -p "$OUT"
commit=$(git -C "$ROOT" rev-parse --short HEAD)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo "+changes" || true)
[[ -f "$OUT/summary.tsv" ]] || printf 'module\tcommit\tmutants\tkilled\tsurvived\ttimeout\tother\tseconds\n' >"$OUT/summary.tsv"

for key in "${keys[@]}"; do
  files=${MODULES[$key]%%|*}
  tests=""
  for t in ${MODULES[$key]#*|}; do  # a test file this checkout does not have yet is left out (and said so)
    if [[ -e "$ROOT/${t%%::*}" ]]; then tests="$tests $t"; else echo "mutation.sh: $key: no ${t%%::*} here, skipped" >&2; fi
  done
  dir=$WORK/$key
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$dir" 2>/dev/null) || true
  if [[ " $files " == *" alr_fast/loss/triton/alr_loss.py "* ]]; then
    # Only the public module ALRLoss is in scope in the kernel's file: the rest (launch logic, the Triton
    # programs) is marked no-mutate in the scratch copy. (mutmut never mutates decorated functions such as
    # @triton.jit programs anyway.)
    f=$dir/alr_fast/loss/triton/alr_loss.py
    "$PY" - "$f" <<'PYEOF'
import sys
path = sys.argv[1]
lines = open(path).read().split("\n")
i = lines.index(next(l for l in lines if l.startswith("class ALRLoss(")))
lines = ["# pragma: no mutate start"] + lines[:i] + ["# pragma: no mutate end"] + lines[i:]
open(path, "w").write("\n".join(lines))
PYEOF
  fi
  {
    echo "[mutmut]"
    echo "source_paths = alr_fast"
    echo "only_mutate ="; for f in $files; do echo "    $f"; done
    echo "pytest_add_cli_args_test_selection ="; for t in $tests; do echo "    $t"; done
    # A mutant whose tests take 5x their normal time + 20 s (an endless loop, a huge batch) counts as a timeout.
    echo "timeout_multiplier = 5.0"
    echo "timeout_constant = 20.0"  # the machine may be busy: a slow start is not a timeout
    printf 'pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n    -m\n    not slow and not gpu\n'
  } >"$dir/setup.cfg"
  echo "== $key: mutating $files; tests: $tests (scratch: $dir)"
  start=$(date +%s)
  # mutmut puts mutants/ first on sys.path; a PYTHONPATH pointing at a checkout would shadow it.
  (cd "$dir" && env -u PYTHONPATH "$PY" -m mutmut run >"$dir/run.log" 2>&1) || {
    echo "mutation.sh: mutmut run failed for $key (see $dir/run.log)" >&2; tail -20 "$dir/run.log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  (cd "$dir" && env -u PYTHONPATH "$PY" -m mutmut results --all true) | sed 's/^ *//' | sort -V >"$OUT/$key.txt"
  : >"$OUT/$key.survivors.diff"
  for m in $(awk -F': ' '$2 == "survived" {print $1}' "$OUT/$key.txt"); do
    (cd "$dir" && env -u PYTHONPATH "$PY" -m mutmut show "$m") >>"$OUT/$key.survivors.diff" 2>&1
    echo >>"$OUT/$key.survivors.diff"
  done
  awk -F': ' -v key="$key" -v commit="$commit$dirty" -v secs="$secs" '
    { n++; s[$2]++ }
    END { other = n - s["killed"] - s["survived"] - s["timeout"];
          printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", key, commit, n, s["killed"], s["survived"], s["timeout"], other, secs }
  ' "$OUT/$key.txt" | tee -a "$OUT/summary.tsv"
done

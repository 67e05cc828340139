#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (a `mutation` extra, pinned in constraints.txt).
# Not in CI (minutes per module). docs/mutation.md has the method, the scores and the triage of survivors.
#
#   scripts/mutation.sh                 # every module below
#   scripts/mutation.sh metrics bank    # some of them (the keys of MODULES)
#   scripts/mutation.sh --survivors metrics   # after adding tests: rerun only the mutants that survived (timed out, had no test) in the
#                                       # last full run of that module (same scratch copy and mutants, the
#                                       # checkout's tests/ copied in), results in <key>.after.txt
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
# Mutants tested at once (mutmut's --max-children); default: mutmut's own (one per CPU). On a shared machine
# use MUTATION_JOBS=1 or 2 (and `nice`).
JOBS=()
[[ -n "${MUTATION_JOBS:-}" ]] && JOBS=(--max-children "$MUTATION_JOBS")

# key -> files mutated (mutmut only_mutate globs) | the fast tests run against them (pytest paths or node ids;
# end-to-end training runs and the loaders' image decoding are left out: they would cost minutes per mutant)
S=tests/test_data_shards.py; BL=tests/test_baselines.py; AO=tests/test_alr_object.py; SC=tests/test_schedule.py; EV=tests/test_evaluation.py
declare -A MODULES=(
  [reference]="alr_fast/loss/reference.py|tests/test_functional.py tests/test_grad_output.py"
  [torch_fast]="alr_fast/loss/torch_fast.py|tests/test_functional.py tests/test_grad_output.py tests/test_torch_fast.py"
  [loss_api]="alr_fast/loss/contract.py alr_fast/loss/functional.py alr_fast/loss/triton/autograd.py|tests/test_loss_api_units.py tests/test_functional.py tests/test_grad_output.py $BL::test_stateless_matches_oracle $BL::test_stateless_nan_rows_padding_and_incoming_gradient $BL::test_elr_matches_oracle $BL::test_elr_duplicates_are_sequential_in_batch_order $BL::test_elr_nan_rows_padding_incoming_gradient_and_assume_unique $BL::test_errors_name_the_argument tests/test_kernel_alr.py::test_module_wrapper tests/test_kernel_alr.py::test_input_errors_name_the_argument tests/test_kernel_alr.py::test_functional_backend_dispatch"
  [alr_object]="alr_fast/loss/alr.py|tests/test_alr_object_units.py $AO::test_values_match_the_oracle_through_warmup_ramp_and_refinement $AO::test_selc_and_ce_methods $AO::test_auto_warmup_decides_as_the_rule_on_the_signal_it_measures $AO::test_two_simulated_ranks_route_global_indices_and_refuse_foreign_ones $AO::test_device_flag_refuses_a_foreign_index_without_a_host_check $AO::test_state_dict_reshards_two_to_one_and_to_three_exactly $AO::test_gather_state_dicts_on_one_rank_and_refused_for_ranks_without_a_process_group $AO::test_export_writes_the_trainers_files_from_every_rank $AO::test_bad_arguments_are_named $BL::test_alr_object_runs_each_baseline"
  [sharding]="alr_fast/loss/sharding.py|$S::test_sharding_matches_the_rule_written_out $S::test_sharding_rejects_bad_ranks $S::test_bank_plan_and_resharding_agree_on_ownership $S::test_array_loader_odd_n_every_sample_every_epoch_no_batch_of_one tests/test_bank.py tests/test_sharding.py"
  [bank]="alr_fast/loss/bank.py|tests/test_bank.py tests/test_bank_small_print.py"
  [metrics]="alr_fast/train/metrics.py|tests/test_metrics.py tests/test_bank.py"
  [schedule]="alr_fast/loss/schedule.py alr_fast/train/schedule.py|$SC::test_plateau_fires_at_the_first_flat_epoch $SC::test_peak_of_a_noisy_validation_accuracy $SC::test_noisy_plateau_window_smooths_the_wiggles $SC::test_no_stall_means_max_epochs_and_no_rise_means_no_stall $SC::test_min_epochs_and_loss_signals $SC::test_resume_in_the_middle_gives_the_same_decision $SC::test_rule_errors_name_the_problem $SC::test_ramp_values_per_step $SC::test_schedule_from_config_refines_from_the_fixed_warmup_and_never_for_ce $SC::test_prediction_counts_match_numpy $SC::test_collapse_guard_flags_a_jump_and_reports_it_once $SC::test_config_fields_are_validated tests/test_schedule_units.py"
  [noise]="alr_fast/data/noise.py|tests/test_noise.py"
  [exports]="alr_fast/train/exports.py alr_fast/loss/bank_export.py|tests/test_exports.py tests/test_alr_object.py::test_export_writes_the_trainers_files_from_every_rank tests/test_alr_object.py::test_state_dict_reshards_two_to_one_and_to_three_exactly tests/test_alr_object_units.py tests/test_exports_units.py"
  [evaluation]="alr_fast/train/evaluation.py|$EV::test_topk_hand_computed $EV::test_topk_matches_a_sort_reference $EV::test_noisy_val_rows_are_stratified_deterministic_and_proper $EV::test_noisy_val_slice_is_disjoint_from_training_rows $EV::test_selection_state_tie_and_no_validation_split $EV::test_fill_padding_rows_copies_valid_rows_without_a_host_sync_shape tests/test_evaluation_units.py"
)
ORDER=(metrics sharding noise schedule evaluation exports bank torch_fast reference loss_api alr_object)

survivors=0
if [[ "${1:-}" == "--survivors" ]]; then survivors=1; shift; fi
keys=("$@")
[[ ${#keys[@]} -gt 0 ]] || keys=("${ORDER[@]}")
for key in "${keys[@]}"; do
  [[ -n "${MODULES[$key]:-}" ]] || { echo "mutation.sh: unknown module '$key' (known: ${ORDER[*]})" >&2; exit 2; }
done

"$PY" -c "import mutmut" 2>/dev/null || {
  echo "mutation.sh: mutmut is not installed for $PY (pip install -e '.[mutation]' -c constraints.txt)" >&2; exit 2; }
mkdir -p "$OUT"
[[ -f "$OUT/summary.tsv" ]] || printf 'module\tcommit\tmutants\tkilled\tsurvived\ttimeout\tother\tseconds\n' >"$OUT/summary.tsv"

rerun_survivors() {  # $1 = key
  local key=$1 dir=$WORK/$1 t names
  [[ -f "$OUT/$key.txt" && -d "$dir/mutants" ]] || { echo "mutation.sh: no earlier run of $key to rerun" >&2; exit 2; }
  names=$(awk -F': ' '$2 == "survived" || $2 == "timeout" || $2 == "no tests" {print $1}' "$OUT/$key.txt")  # a hang is not a kill, nor a mutant no test reached
  [[ -n "$names" ]] || { echo "== $key: no survivors"; return; }
  cp "$ROOT"/tests/*.py "$dir/tests/" && cp "$ROOT"/tests/*.py "$dir/mutants/tests/"  # mutmut runs from mutants/
  for t in ${MODULES[$key]#*|}; do  # test files added since the full run join the selection
    t=${t%%::*}
    if [[ -e "$ROOT/$t" ]] && ! grep -q "^    $t" "$dir/setup.cfg"; then
      sed -i "s|^pytest_add_cli_args_test_selection =\$|&\n    $t|" "$dir/setup.cfg"
    fi
  done
  cp "$dir/setup.cfg" "$dir/mutants/setup.cfg"
  echo "== $key: rerunning $(echo "$names" | wc -l) survivors with the checkout's tests"
  (cd "$dir" && env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" -m mutmut run "${JOBS[@]}" $names >"$dir/rerun.log" 2>&1) || {
    echo "mutation.sh: mutmut rerun failed for $key (see $dir/rerun.log)" >&2; exit 1; }
  (cd "$dir" && env -u PYTHONPATH "$PY" -m mutmut results --all true) | sed 's/^ *//' | sort -V \
    | grep -F -f <(echo "$names" | sed 's/$/:/') >"$OUT/$key.after.txt"
  : >"$OUT/$key.after.survivors.diff"
  names=$(awk -F': ' '$2 == "survived" {print $1}' "$OUT/$key.after.txt")
  [[ -z "$names" ]] || "$PY" "$ROOT/scripts/mutation_diff.py" "$dir" $names >"$OUT/$key.after.survivors.diff"
  awk -F': ' '{ s[$2]++ } END { printf "after: %d reran, %d killed, %d survived, %d other\n", NR, s["killed"], s["survived"], NR - s["killed"] - s["survived"] }' "$OUT/$key.after.txt"
}

for key in "${keys[@]}"; do
  if (( survivors )); then rerun_survivors "$key"; continue; fi
  files=${MODULES[$key]%%|*}
  commit=$(git -C "$ROOT" rev-parse --short HEAD)  # per module: the checkout may move during a long run
  dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo "+changes" || true)
  tests=""
  for t in ${MODULES[$key]#*|}; do  # a test file this checkout does not have yet is left out (and said so)
    if [[ -e "$ROOT/${t%%::*}" ]]; then tests="$tests $t"; else echo "mutation.sh: $key: no ${t%%::*} here, skipped" >&2; fi
  done
  dir=$WORK/$key
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$dir" 2>/dev/null) || true
  if [[ " $files " == *" alr_fast/loss/triton/autograd.py "* ]]; then
    # Only the public module ALRLoss is in scope in the kernel's file: the rest (launch logic, the Triton
    # programs) is marked no-mutate in the scratch copy. (mutmut never mutates decorated functions such as
    # @triton.jit programs anyway.)
    f=$dir/alr_fast/loss/triton/autograd.py
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
    # Workers are forked from a server that has imported the tests but run no torch op (a process forked
    # after torch started its thread pool can deadlock); one torch thread per worker for the same reason.
    echo "process_isolation = forkserver"
    printf 'pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -q\n    -m\n    not slow and not gpu\n'
  } >"$dir/setup.cfg"
  echo "== $key: mutating $files; tests: $tests (scratch: $dir)"
  start=$(date +%s)
  # mutmut puts mutants/ first on sys.path; a PYTHONPATH pointing at a checkout would shadow it.
  (cd "$dir" && env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" -m mutmut run "${JOBS[@]}" >"$dir/run.log" 2>&1) || {
    echo "mutation.sh: mutmut run failed for $key (see $dir/run.log)" >&2; tail -20 "$dir/run.log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  (cd "$dir" && env -u PYTHONPATH "$PY" -m mutmut results --all true) | sed 's/^ *//' | sort -V >"$OUT/$key.txt"
  : >"$OUT/$key.survivors.diff"
  names=$(awk -F': ' '$2 == "survived" {print $1}' "$OUT/$key.txt")
  [[ -z "$names" ]] || "$PY" "$ROOT/scripts/mutation_diff.py" "$dir" $names >"$OUT/$key.survivors.diff"
  awk -F': ' -v key="$key" -v commit="$commit$dirty" -v secs="$secs" '
    { n++; s[$2]++ }
    END { other = n - s["killed"] - s["survived"] - s["timeout"];
          printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", key, commit, n, s["killed"], s["survived"], s["timeout"], other, secs }
  ' "$OUT/$key.txt" | tee -a "$OUT/summary.tsv"
done

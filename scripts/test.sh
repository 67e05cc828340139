#!/usr/bin/env bash
# README command 2: set up the environment if missing, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k noise, -x, -m "not slow").
# The tests run on 2 worker processes (pytest-xdist), each test file on one worker (its module fixtures are built
# once): many tests wait on subprocesses, launchers and timeouts, and one process kept a 2-core machine ~60 % busy.
# ALR_FAST_TEST_WORKERS=1 runs them in this process, one after the other; `-n N` on the command line wins.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
workers="${ALR_FAST_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != "1" ] && [ "$workers" != "0" ]; then
  parallel=(-n "$workers" --dist loadfile)
  for a in "$@"; do
    case "$a" in -n|-n[0-9]*|--numprocesses|--numprocesses=*) parallel=() ;; esac
  done
fi
# The suite's multi-rank runs need several GiB of RAM at once; /dev/shm (tmpfs) counts against it. DeepSpeed's
# CPU all-reduce workspaces (~66 MB per rank) are left there by runs outside alr_fast's trainer (which unlinks
# its own): say so, rather than fail later with a rank killed for memory.
stale=$(ls /dev/shm 2>/dev/null | grep -c '^deepspeed_allreduce_buffer_' || true)
if [ "${stale:-0}" -gt 0 ]; then
  echo "[test.sh] warning: $stale DeepSpeed all-reduce workspaces in /dev/shm ($(du -ch /dev/shm/deepspeed_allreduce_buffer_* 2>/dev/null | tail -1 | cut -f1) of RAM): left by DeepSpeed runs that ended; 'rm /dev/shm/deepspeed_allreduce_buffer_*' frees them when no DeepSpeed job runs" >&2
fi
exec "$ROOT/.venv/bin/python" -m pytest ${parallel[@]+"${parallel[@]}"} "$@"

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
exec "$ROOT/.venv/bin/python" -m pytest ${parallel[@]+"${parallel[@]}"} "$@"

#!/usr/bin/env bash
# README command 1: set up the environment if missing, then run the embedded demo (CE vs SELC vs ALR on CPU).
# Extra arguments go to `python -m alr_fast demo` (e.g. --out runs/demo --epochs 20).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m alr_fast demo "$@"

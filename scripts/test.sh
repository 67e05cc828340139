#!/usr/bin/env bash
# README command 2: set up the environment if missing, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k noise, -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"

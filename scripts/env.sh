#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and prints nothing else on success.
# Source it or run it; the other scripts call it first. Re-installs when pyproject.toml or constraints.txt change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.alr_fast_stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[env] creating $VENV (torch, torchvision, triton, deepspeed, DALI: ~5 GB, a few minutes the first time)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # The constraints pin the tested versions; every extra of pyproject.toml is installed (train, demo, dali, test,
  # bench, timm, examples; not [mutation], a local tool): the core alone (torch, numpy) is what `pip install alr_fast` gives a user's own loop.
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[train,demo,dali,test,bench,timm,examples]" >&2
  # DeepSpeed JIT-compiles its CPU shared-memory comm op on first use (~30 s); build it now, once per environment,
  # so the first run is not slowed down. Cached under .venv/torch_extensions.
  # Built into this venv's own folder (alr_fast.train.runtime.prepare_deepspeed_comm_op says why).
  "$VENV/bin/python" - >&2 <<'PYEOF'
from alr_fast.train.runtime import prepare_deepspeed_comm_op
prepare_deepspeed_comm_op(2)
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
PYEOF
  echo "$want" > "$STAMP"
  echo "[env] ready: $VENV" >&2
fi

"""The core install (`pip install alr_fast`: torch + numpy only) runs the documented own-loop example.

Builds a fresh virtual environment with the machine's local CPU torch wheel (`pip install torch==2.13.0` finds
it; no multi-GB CUDA download) and the project installed from a copy of its sources with its core dependencies
only, then runs the example of docs/own-loop.md there, outside the repository. A stray module-level import of an
extra (DeepSpeed, tensorboard, matplotlib, DALI, torchvision, scikit-learn, mlxtend, timm) makes it fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("deepspeed", "tensorboard", "matplotlib", "nvidia", "torchvision", "sklearn", "mlxtend", "timm", "tqdm",
          "cleanlab", "PIL")


def doc_example(path: Path = ROOT / "docs" / "own-loop.md") -> str:
    """The Python block right after the ``<!-- own-loop-example -->`` marker."""
    text = path.read_text()
    m = re.search(r"<!-- own-loop-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"{path}: no python block after <!-- own-loop-example -->"
    return m.group(1)


def test_doc_example_is_short():
    lines = [ln for ln in doc_example().splitlines() if ln.strip()]
    assert len(lines) <= 21


@pytest.mark.slow
def test_core_install_runs_the_own_loop_example(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET")}
    venv = tmp_path / "core"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, env=env)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]  # no .pyc: CI time
    subprocess.run([*pip, "torch==2.13.0"], check=True, env=env)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "alr_fast", src / "alr_fast", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*pip, str(src)], check=True, env=env)
    listed = subprocess.run([py, "-m", "pip", "list", "--format", "json"], check=True, env=env,
                            capture_output=True, text=True).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert "alr-fast" in installed
    assert not installed & {"deepspeed", "tensorboard", "matplotlib", "torchvision", "scikit-learn", "mlxtend",
                            "nvidia-dali-cuda130", "timm", "tqdm"}, sorted(installed)
    check = doc_example() + (
        "\nimport sys\n"
        f"extras = [m for m in sys.modules if m.split('.')[0] in {EXTRAS!r}]\n"
        "print('EXTRAS', extras)\n"
        "print('GIVEN', (noisy == clean).float().mean().item())\n"
        "print('REFINED', (alr.refined_labels() == clean[alr.global_index]).float().mean().item())\n"
        "print('FILE', alr_fast.__file__)\n"
    )
    (tmp_path / "run").mkdir()
    script = tmp_path / "run" / "example.py"
    script.write_text("import alr_fast\n" + check)
    out = subprocess.run([py, str(script)], cwd=tmp_path / "run", env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if ln.split(" ", 1)[0].isupper())
    assert lines["EXTRAS"] == "[]"
    assert str(venv) in lines["FILE"]  # the installed copy, not the repository
    assert float(lines["REFINED"]) > float(lines["GIVEN"]) + 0.1
    for name in ("soft_labels.npy", "labels.npy", "refined_labels.csv", "class_names.json", "exports.json"):
        assert (tmp_path / "run" / "alr_run" / name).is_file()
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0]
    print(f"core install: {size} MB in {venv}")

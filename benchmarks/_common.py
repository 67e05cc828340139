"""What every benchmark records about the run: git state, command, time, machine load, CPU model."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def relative(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (no machine paths in results)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata() -> dict:
    """git sha (and whether the tree was dirty), the command line, UTC time, the 1-minute load average."""
    return {
        "git_sha": git("rev-parse", "HEAD") or os.environ.get("GIT_SHA"),  # a copy without .git: given
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(shlex.quote(a) for a in ["python", relative(sys.argv[0]), *sys.argv[1:]]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # shared machine?
    }


def read_jsonl(path: Path) -> list[dict]:
    """The records of a study's resume file (one JSON object per line); [] if it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append finished records to a study's resume file, so an interrupted study can skip them."""
    with Path(path).open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)

"""``python -m alr_fast.deepspeed [deepspeed options] launchers/train.py ...``: the ``deepspeed`` launcher
(one node), passing a preemption's exit status through.

What the ``deepspeed`` launcher (0.19) does with a signal to its process group: its front process (``deepspeed``,
deepspeed/launcher/runner.py) installs no handler on one node, so SIGTERM kills it at once (status 143, its ranks
still running) and SIGINT ends it with a ``KeyboardInterrupt`` traceback; the per-node process it starts
(deepspeed/launcher/launch.py, same process group, as are the ranks) SIGTERMs each rank's process tree in turn,
waits up to 30 s for each, SIGKILLs what is left and exits 1. The ranks also get the group's signal directly,
so each receives it twice. When a rank exits non-zero on its own (75 after a signal sent to the ranks only),
launch.py SIGTERMs the others and exits with that status, which the front process passes on.

This wrapper runs the front process in this process (same options) and starts launch.py in a session of its own,
as torchrun starts its ranks: a signal to the job's process group then reaches this process alone, which
forwards it once to launch.py (a second signal is forwarded too: launch.py SIGTERMs the ranks again, which exit
at once when it comes 2 s or more after the first: :class:`alr_fast.train.runtime.StopSignals`). Each rank gets one SIGTERM, finishes its step, writes its part of one checkpoint and reports
status 75 (:func:`alr_fast.train.runtime.report_exit_status`); when every rank did, this wrapper prints one line
and exits 75. Otherwise it exits as ``deepspeed`` would, except that a launch.py killed by a signal gives
128 + the signal's number (``deepspeed`` exits 0 then). Several nodes (pdsh and the other multi-node runners)
are left to deepspeed unchanged: their ranks do not see this process's environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from alr_fast.torchrun import all_ranks_preempted, report_preempted
from alr_fast.train.runtime import EXIT_PREEMPTED, EXIT_STATUS_DIR_ENV

__all__ = ["main"]

_LOCAL_LAUNCH = "deepspeed.launcher.launch"


def main(argv: list[str] | None = None) -> int:
    from deepspeed.launcher import runner

    argv = list(sys.argv[1:] if argv is None else argv)
    status_dir = Path(tempfile.mkdtemp(prefix="alr_fast_exit_"))
    os.environ[EXIT_STATUS_DIR_ENV] = str(status_dir)  # inherited by launch.py and the ranks
    started: list[subprocess.Popen] = []
    pending: list[int] = []  # a signal that came before launch.py was started: forwarded once it is
    real_popen = subprocess.Popen

    class _Popen(real_popen):
        """subprocess.Popen for the front process: launch.py on this node in a session of its own."""

        def __init__(self, args, *rest, **kw):
            local = isinstance(args, (list, tuple)) and _LOCAL_LAUNCH in [str(a) for a in args[:4]]
            if local:
                kw["start_new_session"] = True
            super().__init__(args, *rest, **kw)
            if local:
                started.append(self)
                for signum in pending:
                    os.kill(self.pid, signum)

    def forward(signum, frame):
        alive = [p for p in started if p.poll() is None]
        if not started:
            pending.append(signum)
        for p in alive:
            os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    subprocess.Popen = _Popen
    code: int | str | None = 0
    try:
        try:
            runner.main(argv)
        except SystemExit as e:
            code = e.code
        if all_ranks_preempted(status_dir):
            report_preempted("deepspeed", f"launch.py exited {started[-1].returncode}" if started else "no launch.py")
            return EXIT_PREEMPTED
        if started and started[-1].returncode is not None and started[-1].returncode < 0:
            return 128 - started[-1].returncode
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    finally:
        subprocess.Popen = real_popen
        for s, h in previous.items():
            signal.signal(s, h)
        os.environ.pop(EXIT_STATUS_DIR_ENV, None)
        shutil.rmtree(status_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m alr_fast.torchrun [torchrun options] launchers/train.py ...``: torchrun, passing a preemption's
exit status through.

torchrun starts each rank in a session of its own, so a signal to torchrun's process group (a scheduler's
SIGTERM, Ctrl-C in a terminal) reaches torchrun alone; torchrun forwards it once to every rank, which finish
their step, write one checkpoint and exit with status 75 (:data:`alr_fast.train.runtime.EXIT_PREEMPTED`).
torchrun itself then raises ``SignalException`` and exits 1 with a traceback (or, when the ranks were signalled
directly, ``ChildFailedError``: exit 1), so a scheduler sees a failure instead of "run me again"; no torchrun
option changes that. This wrapper runs torchrun in the same process (same options, same behaviour otherwise) and
exits 75, with one line instead of the traceback, when every rank it started reported status 75 (each rank
writes its report as soon as the stop checkpoint is complete: :func:`alr_fast.train.runtime.report_exit_status`,
in the folder this wrapper names in ``ALR_FAST_EXIT_STATUS_DIR``); in every other case it ends as torchrun
would. With several nodes, run it as the launcher on every node (each reports its own ranks).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from alr_fast.train.runtime import EXIT_PREEMPTED, EXIT_STATUS_DIR_ENV, all_ranks_reported
from alr_fast.util.logs import configure_console

__all__ = ["main", "all_ranks_preempted", "report_preempted"]


def all_ranks_preempted(status_dir: Path) -> bool:
    """True when every local rank reported status 75 (``<status> <local world size>`` files)."""
    return all_ranks_reported(status_dir, EXIT_PREEMPTED)


def report_preempted(launcher: str, how: str) -> None:
    """The launcher process's one line: ``[alr_fast] WARNING: every rank stopped with a checkpoint (...)``."""
    configure_console(rank=0)  # this launcher process's own message, on stderr
    logging.getLogger(f"alr_fast.{launcher}").warning(
        "every rank stopped with a checkpoint (%s: %s); exit status %d: run again with --resume", launcher, how,
        EXIT_PREEMPTED)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    status_dir = Path(tempfile.mkdtemp(prefix="alr_fast_exit_"))
    os.environ[EXIT_STATUS_DIR_ENV] = str(status_dir)  # inherited by the ranks torchrun starts
    try:
        torchrun_main(list(sys.argv[1:] if argv is None else argv))
        return 0
    except (SignalException, ChildFailedError) as e:
        if all_ranks_preempted(status_dir):
            report_preempted("torchrun", type(e).__name__)
            return EXIT_PREEMPTED
        raise
    finally:
        os.environ.pop(EXIT_STATUS_DIR_ENV, None)
        shutil.rmtree(status_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

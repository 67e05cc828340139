"""``python -m alr_fast.torchrun [torchrun options] launchers/train.py ...``: torchrun, passing a preemption's
exit status through.

When torchrun itself receives SIGTERM or SIGINT it forwards the signal to the ranks, which finish their step,
write one checkpoint and exit with status 75 (:data:`alr_fast.train.runtime.EXIT_PREEMPTED`); torchrun then
raises and exits 1 with a traceback, so a scheduler sees a failure instead of "run me again". This wrapper runs
torchrun in the same process (same options, same behaviour otherwise) and exits 75 when every rank it started
exited 75; in every other case it ends as torchrun would. Each rank reports its status in a folder this
wrapper names in ``ALR_FAST_EXIT_STATUS_DIR`` (alr_fast/cli.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from alr_fast.train.runtime import EXIT_PREEMPTED
from alr_fast.util.logs import configure_console

__all__ = ["main", "all_ranks_preempted"]


def all_ranks_preempted(status_dir: Path) -> bool:
    """True when every local rank wrote ``<status> <local world size>`` with status 75."""
    reports = [p.read_text().split() for p in Path(status_dir).glob("rank*")]
    if not reports:
        return False
    sizes = {int(r[1]) for r in reports if len(r) == 2}
    return (len(sizes) == 1 and len(reports) == sizes.pop()
            and all(len(r) == 2 and int(r[0]) == EXIT_PREEMPTED for r in reports))


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    status_dir = Path(tempfile.mkdtemp(prefix="alr_fast_exit_"))
    os.environ["ALR_FAST_EXIT_STATUS_DIR"] = str(status_dir)  # inherited by the ranks torchrun starts
    try:
        torchrun_main(list(sys.argv[1:] if argv is None else argv))
        return 0
    except (SignalException, ChildFailedError) as e:
        if all_ranks_preempted(status_dir):
            configure_console(rank=0)  # this launcher process's own message, on stderr
            logging.getLogger("alr_fast.torchrun").warning(
                "every rank stopped with a checkpoint (%s); exit status %d: run again with --resume",
                type(e).__name__, EXIT_PREEMPTED)
            return EXIT_PREEMPTED
        raise
    finally:
        shutil.rmtree(status_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

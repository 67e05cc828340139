"""Messages through Python's :mod:`logging`: the logger ``alr_fast`` and its children (``alr_fast.train``, ...).

Library modules only create loggers and log; nothing here runs at import time. Handlers are added by

* the command line (:func:`configure_console`): ``[alr_fast] ...`` lines on stderr; rank 0 shows its messages,
  every other rank only its warnings and errors (prefixed with the rank), so N ranks do not repeat each line;
* the trainer, for the length of a run (:func:`run_log`): ``<out>/train.log`` with timestamps, rank 0 only.

A user's own loop keeps control of logging: without either, ``alr_fast`` adds no handler and sets no level
(Python's default then shows warnings on stderr and drops the rest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable

__all__ = ["LOGGER", "configure_console", "release_console", "run_log", "file_only", "verbosity"]

LOGGER = "alr_fast"

_CONSOLE_KEY = "alr_fast_console"


def file_only() -> dict:
    """``extra=`` of a record that goes to train.log but not to the command line's console (the per-epoch
    line while a progress bar shows the same numbers)."""
    return {_CONSOLE_KEY: False}


def verbosity() -> int:
    """The verbosity the command line was given (``-v`` = 1, ``-vv`` = 2), or ``ALR_FAST_VERBOSE`` (a count)."""
    value = os.environ.get("ALR_FAST_VERBOSE", "")
    try:
        return max(0, int(value))
    except ValueError:
        return 1 if value else 0


class _Stderr(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is at the time of each message (a test's capture,
    a redirected stream), not as it was when the handler was made."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _ConsoleFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _CONSOLE_KEY, True) is False:
            return False
        return self.rank == 0 or record.levelno >= logging.WARNING


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, rank: int):
        super().__init__()
        self.prefix = "[alr_fast]" if rank == 0 else f"[alr_fast rank {rank}]"

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"{self.prefix} {level}{text}"


def _rank_from_env() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def configure_console(verbose: int = 0, rank: int | None = None) -> logging.Handler:
    """The command line's logging: ``alr_fast``'s messages on stderr (INFO and up; DEBUG with ``verbose``),
    rank 0's all, other ranks' warnings and errors. Replaces the handler an earlier call added (a process that
    runs ``main()`` twice gets each message once). ``rank``: from ``$RANK`` (set by torchrun and deepspeed)
    when not given. ``verbose`` is also put in ``ALR_FAST_VERBOSE`` for the modules that quiet third-party
    start-up messages (:func:`alr_fast.train.runtime.quiet_deepspeed_import`) and for child processes."""
    rank = _rank_from_env() if rank is None else rank
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if getattr(h, "_alr_fast_console", False):
            logger.removeHandler(h)
    handler = _Stderr()
    handler._alr_fast_console = True
    handler._alr_fast_restore = (logger.level, os.environ.get("ALR_FAST_VERBOSE"))
    handler.addFilter(_ConsoleFilter(rank))
    handler.setFormatter(_ConsoleFormatter(rank))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        os.environ["ALR_FAST_VERBOSE"] = str(verbose)
    return handler


def release_console(handler: logging.Handler) -> None:
    """Undo :func:`configure_console` (the command line's ``main()`` returning inside a longer process, e.g. a
    test): the handler removed, the logger's level and ``ALR_FAST_VERBOSE`` as they were."""
    logger = logging.getLogger(LOGGER)
    logger.removeHandler(handler)
    level, verbose = handler._alr_fast_restore
    logger.setLevel(level)
    if verbose is None:
        os.environ.pop("ALR_FAST_VERBOSE", None)
    else:
        os.environ["ALR_FAST_VERBOSE"] = verbose


@contextlib.contextmanager
def run_log(path: Path | str | None, level_of: Callable[[BaseException], int] = lambda e: logging.ERROR):
    """While the block runs, ``alr_fast``'s messages also go to ``path`` (appended: a resumed run continues
    the file), one line each: time, level, logger, message. ``None`` (a rank other than 0): nothing. When no
    level was set on the ``alr_fast`` logger, it is INFO for the block (so the file gets the run's messages)
    and unset again after. When no handler is configured at all (a plain script), warnings also go to stderr
    for the block, as Python's default would show them without the file. An exception that leaves the block
    is written to the file alone (at ``level_of(exception)``; whoever catches it reports it) and goes on."""
    if path is None:
        yield None
        return
    logger = logging.getLogger(LOGGER)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    set_level = logger.level == logging.NOTSET
    if set_level:
        logger.setLevel(logging.INFO)
    fallback = None
    if not logger.hasHandlers():  # Python's last-resort handler would stop once the file is added
        fallback = _Stderr()
        fallback.setLevel(logging.WARNING)
        fallback.setFormatter(_ConsoleFormatter(0))
        logger.addHandler(fallback)
    logger.addHandler(handler)
    try:
        yield handler
    except BaseException as e:
        handler.handle(logger.makeRecord(logger.name, level_of(e), __file__, 0, "%s: %s", (type(e).__name__, e),
                                         None))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        if fallback is not None:
            logger.removeHandler(fallback)
        if set_level:
            logger.setLevel(logging.NOTSET)

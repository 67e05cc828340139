"""Test helper, not part of alr_fast: with ALR_TEST_OPEN_LOG=DIR set, every process started with this folder on
PYTHONPATH appends each file it opens whose name ends in '.tar' to DIR/open.<RANK>.<pid>.log (Python's audit
hook 'open' event: independent of what the trainer reports about itself)."""

import os
import sys

_LOG = os.environ.get("ALR_TEST_OPEN_LOG")
if _LOG:
    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            if name.endswith(".tar"):
                path = os.path.join(_LOG, f"open.{os.environ.get('RANK', 'none')}.{os.getpid()}.log")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # os.open: no audit recursion
                os.write(fd, (os.path.realpath(name) + "\n").encode())
                os.close(fd)

    sys.addaudithook(_hook)

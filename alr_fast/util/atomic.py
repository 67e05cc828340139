"""Write a file so that readers see either the old complete file or the new complete file, never a part.

The new content goes to a temporary file in the same folder, is flushed to disk (``fsync``), and is renamed
over the target (``os.replace``, atomic on POSIX within one filesystem); the folder is fsynced so the rename
survives a crash. On any error (disk full, quota, I/O error) the temporary file is removed, the target is left
as it was, and the error propagates with the target's path in its message.

    with atomic_path(out / "pred_probs.npy") as tmp:     # write anything to ``tmp`` ...
        np.save(tmp, array)                               # ... it becomes ``out/pred_probs.npy`` on success
    write_text_atomic(out / "summary.json", text)

A full disk is named as such: the error reads ``writing <path>: No space left on device`` (``errno`` ENOSPC),
also from :func:`torch_save`, where ``torch.save`` itself only reports an internal assertion.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic", "write_bytes_atomic", "fsync_dir", "torch_save", "os_error"]


def os_error(e: OSError, path: str | Path) -> OSError:
    """``e`` with ``path`` in its message (``writing <path>: <reason>``), keeping its errno."""
    if str(path) in str(e):
        return e
    return OSError(e.errno, f"writing {path}: {e.strerror or e}")


class _RecordingFile:
    """A file object that remembers the first OSError of its writes (torch.save replaces it by a RuntimeError
    without errno: ``enforce fail at inline_container.cc``)."""

    def __init__(self, f):
        self.f, self.error, self.name = f, None, f.name

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            self.error = self.error or e
            raise

    def write(self, b):
        return self._call(self.f.write, b)

    def flush(self):
        return self._call(self.f.flush)


def torch_save(obj, path: str | Path) -> None:
    """``torch.save(obj, path)``, flushed to disk; a failed write (disk full, quota, I/O error) raises OSError
    ``writing <path>: <reason>`` with its errno instead of torch's RuntimeError."""
    import torch

    with open(path, "wb") as f:
        rec = _RecordingFile(f)
        try:
            torch.save(obj, rec)
            rec.flush()
            os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            cause = rec.error or (e if isinstance(e, OSError) else None)
            if cause is None:
                raise
            raise os_error(cause, path) from None


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on a folder; the rename still happened
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path next to ``target``; on a clean exit it is fsynced and renamed to ``target``."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    # Keep the suffix last: np.save and friends append '.npy' to names that lack it.
    tmp = tmp.with_name(tmp.name + target.suffix) if target.suffix else tmp
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and str(target) not in str(e):
            raise os_error(e, target) from e
        raise
    fsync_dir(target.parent)


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | Path, text: str) -> None:
    write_bytes_atomic(target, text.encode())

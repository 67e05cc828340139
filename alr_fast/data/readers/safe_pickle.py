"""Load user-supplied pickles of numpy arrays without running arbitrary code.

CIFAR's python batches and the CIFAR-N label files (``CIFAR-10_human.pt``, a ``torch.save`` zip whose
``data.pkl`` holds a dict of numpy arrays) are pickles. A plain ``pickle.load`` of a user's file can execute
anything, and torch >= 2.6 refuses these files under ``weights_only=True``. This unpickler resolves only the
globals that rebuild numpy arrays:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` (numpy 1.x / 2.x names),
* ``numpy.ndarray``, ``numpy.dtype``,
* ``_codecs.encode`` (how protocol 2 stores ``bytes`` written by Python 3),
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (protocol 5's array form; it
  only wraps a byte buffer in an array).

Anything else (torch tensors included) fails with an error naming the file and the global.
"""

from __future__ import annotations

import _codecs
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["safe_load_numpy_pickle", "UnsafePickleError"]


def _np_attr(module: str, name: str):
    # numpy 2 moved numpy.core -> numpy._core; resolve either spelling to the installed numpy's object.
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _np_attr("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _np_attr("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _np_attr("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _np_attr("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            hint = " (it holds torch tensors; expected numpy arrays)" if module.startswith("torch") else ""
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name}; only numpy arrays are allowed in this "
                f"file{hint}"
            )
        return make()

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self.source}: contains torch storages (persistent id {pid!r}); expected a dict of numpy arrays"
        )


def safe_load_numpy_pickle(path: str | Path, *, encoding: str = "latin1"):
    """Unpickle ``path`` (a plain pickle or a ``torch.save`` zip) allowing only numpy arrays and builtins."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkls) != 1:
                raise ValueError(f"{path}: a torch.save zip must hold one data.pkl, found {pkls}")
            payload = zf.read(pkls[0])
        source = f"{path}:{pkls[0]}"
    else:
        payload = path.read_bytes()
        source = str(path)
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(payload), source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{source}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from e

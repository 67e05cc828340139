"""Find listed images that are missing or do not decode (used by ``data check`` and ``skip_unreadable``).

Each image is opened with PIL and fully decoded in JPEG draft mode (DCT scaling to about 1/8 of the size:
every entropy-coded byte is still read, so truncated or corrupt streams fail, at a fraction of the cost of a
full decode). PIL is stricter than DALI's decoder here: DALI decodes some corrupt streams with only a
warning, so a file PIL rejects is skipped by both loaders.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from alr_fast.data.readers.records import SampleTable

__all__ = ["UnreadableImage", "image_problem", "scan_images", "UnreadableImagesWarning"]


class UnreadableImagesWarning(UserWarning):
    """Raised (as a warning) when a loader skips unreadable images; it says how many."""


@dataclass
class UnreadableImage:
    index: int
    """Global index of the sample."""
    path: str
    where: str
    """'list-file:line' that listed it (or its path)."""
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.where}: index {self.index}: {self.path}: {self.reason}"


def image_problem(path: str) -> str | None:
    """None if ``path`` exists and decodes, else a short reason."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return "missing (no such file)"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        # PIL reports truncation / corrupt data as OSError, bad headers as UnidentifiedImageError/SyntaxError.
        return f"does not decode ({type(e).__name__}: {e})"
    return None


def _problems(paths: list[str]) -> list[str | None]:
    return [image_problem(p) for p in paths]


def scan_images(table: SampleTable, indices: np.ndarray | None = None, *, workers: int = 1,
                chunk: int = 256) -> list[UnreadableImage]:
    """Check the images of ``indices`` (default: every row) of a file-backed table; returns the bad ones."""
    if table.paths is None:
        return []
    idx = table.global_index if indices is None else np.asarray(indices, dtype=np.int64)
    paths = [str(table.path(int(i))) for i in idx]
    chunks = [paths[s : s + chunk] for s in range(0, len(paths), chunk)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(_problems, chunks) for r in part]
    else:
        results = [r for part in map(_problems, chunks) for r in part]
    return [UnreadableImage(int(i), p, table.where(int(i)), r) for i, p, r in zip(idx.tolist(), paths, results) if r]

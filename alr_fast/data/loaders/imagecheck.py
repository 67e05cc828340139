"""Find listed images that are missing or do not decode (used by ``data check`` and ``skip_unreadable``).

Each image is opened with PIL and fully decoded in JPEG draft mode (DCT scaling to about 1/8 of the size:
every entropy-coded byte is still read, so truncated or corrupt streams fail, at a fraction of the cost of a
full decode). PIL is stricter than DALI's decoder here: DALI decodes some corrupt streams with only a
warning, so a file PIL rejects is skipped by both loaders.

An image of more than :data:`MAX_IMAGE_PIXELS` pixels (PIL's decompression-bomb limit, 89,478,485: e.g.
9459 x 9459; a dataset image is a few megapixels) is unreadable like any other: named, reported by
``data check``, left out with ``skip_unreadable`` and an error naming it otherwise. The size is read from the
header, before anything is decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from alr_fast.data.readers.records import SampleTable

__all__ = ["UnreadableImage", "image_problem", "scan_images", "UnreadableImagesWarning", "MAX_IMAGE_PIXELS",
           "open_image", "bytes_problem", "rgb_image"]

MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width x height) alr_fast decodes: PIL's default ``Image.MAX_IMAGE_PIXELS``."""


class ImageTooLarge(OSError):
    """An image over :data:`MAX_IMAGE_PIXELS` (refused before decoding)."""


def open_image(path):
    """``PIL.Image.open(path)``, refusing an image over :data:`MAX_IMAGE_PIXELS` with :class:`ImageTooLarge`
    (PIL itself only warns up to twice its limit and raises a non-OSError above it)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"too large ({e})") from None
    if im.width * im.height > MAX_IMAGE_PIXELS:
        w, h = im.width, im.height
        im.close()
        raise ImageTooLarge(f"too large ({w} x {h} = {w * h} pixels; the limit is {MAX_IMAGE_PIXELS})")
    return im



def rgb_image(im, *, exif_transpose: bool = False):
    """A PIL image as 8-bit RGB, the way both the torchvision loader and the review sheet read images.

    Grayscale, palette, RGBA/LA (alpha dropped, as torchvision's loader does), CMYK and YCbCr go through PIL's
    ``convert('RGB')``. 16-bit and 32-bit integer images (PIL modes ``I;16*`` and ``I``, e.g. 16-bit PNG or
    TIFF) are scaled to 8 bits first (``v >> 8`` for 16-bit data), where a plain ``convert`` would saturate
    every value above 255 to white; float images (mode ``F``) are clipped to [0, 255]. With
    ``exif_transpose`` the EXIF orientation tag is applied first (a photo taken sideways comes out upright).
    """
    from PIL import Image, ImageOps

    if exif_transpose:
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        a = a >> 8 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else a
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


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


def bytes_problem(data: bytes) -> str | None:
    """None if the encoded image ``data`` (a tar member) decodes, else a short reason."""
    import io

    if not data:
        return "does not decode (empty member)"
    return image_problem(io.BytesIO(data))


def image_problem(path) -> str | None:
    """None if ``path`` (or a file object) exists and decodes, else a short reason."""
    from PIL import UnidentifiedImageError

    if isinstance(path, str) and not os.path.isfile(path):
        return "missing (no such file)"
    try:
        with open_image(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except ImageTooLarge as e:
        return str(e)
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
    if table.tar is not None:  # tar members: read by offset here, decoded in this process
        return [UnreadableImage(i, str(table.path(i)), table.where(i), r) for i in idx.tolist()
                if (r := bytes_problem(table.read_bytes(i)))]
    paths, escaped = [], {}
    for i in idx.tolist():
        try:
            paths.append(str(table.open_path(i)))
        except ValueError as e:  # a symlink out of a confined table's root
            paths.append(str(table.path(i)))
            escaped[i] = f"refused: {str(e).split(': ', 1)[1]}"
    chunks = [paths[s : s + chunk] for s in range(0, len(paths), chunk)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for part in pool.map(_problems, chunks) for r in part]
    else:
        results = [r for part in map(_problems, chunks) for r in part]
    results = [escaped.get(i, r) for i, r in zip(idx.tolist(), results)]
    return [UnreadableImage(int(i), p, table.where(int(i)), r) for i, p, r in zip(idx.tolist(), paths, results) if r]

"""Review sheet: the most suspect labels of a run, as images a person can check.

    python -m alr_fast review RUN_DIR [--top 100] [--html] [--by auto|oos|bank]

Reads ``RUN_DIR/refined_labels.csv`` (streamed: only the top rows are kept) and ranks the samples by the
out-of-sample probability of their given label when a crossval ran (``oos_suspect_rank``), else by the bank's
mass left on the given label (``suspect_rank``). Writes ``review.png`` (a grid: given label -> suggested label
and its confidence), ``review.csv`` (``path`` = the image file; ``source`` = the list file and line that
listed it, when a list file did) and, with ``--html``, ``review.html`` (images inlined, one self-contained
file), and prints the top rows. The images come from the run's dataset: the embedded arrays, the on-disk
arrays (CIFAR) or the image files listed by the dataset (read from their paths).
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from alr_fast.util.atomic import atomic_path, write_text_atomic

__all__ = ["review_run", "suspects", "ReviewImages"]


def suspects(csv_path: Path, top: int, by: str = "auto") -> tuple[str, list[dict]]:
    """(ranking used, the ``top`` most suspect rows of ``refined_labels.csv``, most suspect first)."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if by == "auto":
            by = "oos" if "oos_suspect_rank" in header else "bank"
        key = {"oos": "oos_suspect_rank", "bank": "suspect_rank"}[by]
        if key not in header:
            raise ValueError(f"{csv_path}: no column {key!r} (ranking --by {by}); columns are {header}")
        best = heapq.nsmallest(top, reader, key=lambda r: int(r[key]))
    rows = []
    for r in best:
        if by == "oos":
            suggested, conf = int(r["oos_label"]), float(r["oos_confidence"])
            given_p = float(r["oos_given_prob"])
        else:
            suggested, conf = int(r["refined_label"]), float(r["confidence"])
            given_p = None
        rows.append({"rank": int(r[key]), "global_index": int(r["global_index"]), "given_label": int(r["given_label"]),
                     "suggested_label": suggested, "confidence": conf, "given_prob": given_p})
    return by, rows


def _refinement_note(run: Path) -> str | None:
    """The run's note when its bank never refined a label (alr_fast.train.metrics.refinement_note), from
    summary.json; None without one (a crossval folder, a run still going)."""
    from alr_fast.train.metrics import refinement_note

    path = run / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    if not {"method", "epochs"} <= s.keys():
        return None
    return refinement_note(s["method"], s.get("refine_from_epoch"), int(s["epochs"]), s.get("num_changed"))


def _load_config(run: Path):
    from alr_fast.config import config_from_dict

    for name in ("config.json", "crossval_config.json"):
        if (run / name).exists():
            return config_from_dict(json.loads((run / name).read_text()))
    raise FileNotFoundError(f"{run}: no config.json or crossval_config.json (is this a run folder?)")


class ReviewImages:
    """The training images of a run's dataset by global index, as uint8 [H, W, C] arrays (and file paths)."""

    def __init__(self, cfg, data_root: str | None = None):
        from alr_fast.data.readers.embedded import EMBEDDED_DATASETS, load_embedded

        d = cfg.data
        self.table = self.arrays = None
        if d.dataset in EMBEDDED_DATASETS:
            s = load_embedded(d.dataset, d.test_fraction)
            self.arrays = s.train_images.numpy().transpose(0, 2, 3, 1)
            self.class_names = list(s.class_names)
            return
        from alr_fast.data.readers import read_split

        root = data_root or d.data_root
        if not root:
            raise ValueError(f"{d.dataset}: the run's config has no data.data_root; pass --data-root")
        source = d.webvision_source if d.dataset == "webvision" else "google"
        # Only the images are needed: the rows are the same whatever labels or noise the run applied.
        self.table = read_split(d.dataset, root, "train", source=source, cifar_n=d.cifar_n, label_set=d.label_set,
                                noise_file=d.noise_file, noise_key=d.noise_key,
                                **({"manifest": d.manifest} if d.dataset == "manifest" else {}))
        self.class_names = list(self.table.class_names)

    def path(self, i: int) -> str:
        """The image file of sample ``i`` (``<dataset>/train[i]`` for in-memory datasets)."""
        if self.table is None:
            return f"embedded[{i}]"
        if self.table.paths is None:
            return f"{self.table.name}/{self.table.split}[{i}]"
        return str(self.table.path(i))

    def source(self, i: int) -> str:
        """Where sample ``i`` is listed ('list-file:line'), or '' when no list file names it."""
        if self.table is None or self.table.list_file is None or self.table.list_lines is None:
            return ""
        return self.table.where(i)

    def image(self, i: int) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[i]
        if self.table.images is not None:
            return self.table.images[i]
        from alr_fast.data.loaders.imagecheck import open_image, rgb_image

        source = io.BytesIO(self.table.read_bytes(i)) if self.table.tar is not None else self.table.open_path(i)
        with open_image(source) as im:
            # Upright as the user's own data is trained (EXIF applied); the benchmark datasets as published.
            im = rgb_image(im, exif_transpose=self.table.confined or self.table.tar is not None)
            im.thumbnail((160, 160))
            return np.asarray(im)


def _names(run: Path, fallback: list[str]) -> list[str]:
    p = run / "class_names.json"
    return json.loads(p.read_text()) if p.exists() else fallback


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (or a tab / carriage return) would be
    read as a formula (``=HYPERLINK(...)``), so it gets a leading apostrophe (OWASP's CSV-injection advice)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _short(s: str, n: int = 14) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _plot(rows: list[dict], images: list[np.ndarray], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(10, max(1, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(1.75 * cols, 2.2 * nrows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r, img in zip(axes.flat, rows, images):
        gray = img.shape[-1] == 1
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, interpolation="nearest")
        ax.set_title(f"#{r['rank']}  i={r['global_index']}", fontsize=7, color="0.35", loc="left")
        # parse_math=False: a class name is text, never mathtext ('cls_$5' would not render at all).
        ax.text(0.5, -0.04, f"{_short(names[r['given_label']])} → {_short(names[r['suggested_label']])}\n"
                f"{r['confidence']:.0%}", transform=ax.transAxes, ha="center", va="top", fontsize=9,
                parse_math=False)
    fig.suptitle(title + "\ngiven label → suggested label, confidence", fontsize=10, parse_math=False)
    fig.tight_layout(h_pad=2.2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _png_b64(img: np.ndarray) -> str:
    from PIL import Image

    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    if max(im.size) < 96:  # small digits: enlarge without smoothing so they stay legible
        scale = max(1, 96 // max(im.size))
        im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _html(rows: list[dict], images: list[np.ndarray], names: list[str], paths: list[str], title: str,
          path: Path) -> None:
    cells = []
    for r, img, p in zip(rows, images, paths):
        gp = "" if r["given_prob"] is None else f"<br>p(given) {r['given_prob']:.3f}"
        cells.append(
            f'<div class="c"><img src="data:image/png;base64,{_png_b64(img)}" alt="sample {r["global_index"]}">'
            f"<div>#{r['rank']} &middot; i={r['global_index']}<br><b>{html.escape(names[r['given_label']])}</b> &rarr; "
            f"<b>{html.escape(names[r['suggested_label']])}</b> ({r['confidence']:.0%}){gp}<br>"
            f'<span class="p">{html.escape(p)}</span></div></div>')
    write_text_atomic(
        path,
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:sans-serif;margin:1em}.g{display:flex;flex-wrap:wrap;gap:10px}"
        ".c{width:170px;font-size:12px;border:1px solid #ddd;padding:4px}.c img{max-width:160px;max-height:160px;"
        "image-rendering:pixelated}.p{color:#888;font-size:10px;word-break:break-all}</style></head><body><h2>"
        + html.escape(title) + "</h2><p>given label &rarr; suggested label (confidence); most suspect first.</p>"
        "<div class='g'>" + "".join(cells) + "</div></body></html>\n")


def review_run(run_dir: str | Path, *, top: int = 100, html: bool = False, by: str = "auto",
               data_root: str | None = None, quiet: bool = False) -> dict:
    """Write review.png, review.csv (and review.html) into ``run_dir``; returns their paths and the rows."""
    run = Path(run_dir)
    csv_path = run / "refined_labels.csv"
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path}: not found (run `python -m alr_fast train` or `crossval` first)")
    if top < 1:
        raise ValueError(f"review --top: must be >= 1, got {top}")
    by, rows = suspects(csv_path, top, by)
    cfg = _load_config(run)
    src = ReviewImages(cfg, data_root)
    names = _names(run, src.class_names)
    images = [src.image(r["global_index"]) for r in rows]
    paths = [src.path(r["global_index"]) for r in rows]
    sources = [src.source(r["global_index"]) for r in rows]
    how = ("out-of-sample probability of the given label (crossval)" if by == "oos"
           else "soft-label mass left on the given label (the bank)")
    title = f"{run.name}: {len(rows)} most suspect labels of {cfg.data.dataset}, ranked by {how}"
    note = _refinement_note(run) if by == "bank" else None
    if note:  # a short run: the bank's labels are the given ones; the sheet says so above its tiles
        title += f"\nNOTE: {note}"
    out = {"png": run / "review.png", "csv": run / "review.csv", "by": by, "rows": rows}
    _plot(rows, images, names, out["png"], title)
    with atomic_path(out["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "global_index", "given_label", "given_name", "suggested_label", "suggested_name",
                    "confidence", "given_prob", "path", "source"])
        for r, p, where in zip(rows, paths, sources):
            w.writerow([r["rank"], r["global_index"], r["given_label"], _cell(names[r["given_label"]]),
                        r["suggested_label"], _cell(names[r["suggested_label"]]), f"{r['confidence']:.6f}",
                        "" if r["given_prob"] is None else f"{r['given_prob']:.6f}", _cell(p), _cell(where)])
    if html:
        out["html"] = run / "review.html"
        _html(rows, images, names, paths, title, out["html"])
    if not quiet:
        print(title)
        print(f"{'rank':>5} {'index':>8}  {'given':<16} {'suggested':<16} {'conf':>6}  path")
        for r, p in list(zip(rows, paths))[:20]:
            print(f"{r['rank']:>5} {r['global_index']:>8}  {_short(names[r['given_label']], 16):<16} "
                  f"{_short(names[r['suggested_label']], 16):<16} {r['confidence']:>6.1%}  {p}")
        print("written: " + ", ".join(str(out[k]) for k in ("png", "csv", "html") if k in out))
    return out

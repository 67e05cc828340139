"""The user's own data: ImageFolder trees and manifest files (alr_fast/data/readers/generic.py), and what real
collections contain (docs/data.md, "Bad cases"): each case is an error naming the file, or a documented count.

The reference for the ImageFolder order is written independently here (pathlib.rglob, sorted POSIX paths); the
image-mode expectations are computed with numpy from the pixels written.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alr_fast.cli import main
from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.imagecheck import rgb_image, scan_images
from alr_fast.data.readers import read_split
from alr_fast.data.readers.generic import IMAGE_EXTENSIONS, read_imagefolder, read_manifest
from alr_fast.data.tools.check import check_dataset

ROOT = Path(__file__).resolve().parents[1]


def _img(path: Path, color=(200, 30, 60), size=(12, 10), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def _reference_imagefolder(folder: Path):
    """Independent of the reader: rglob, keep image extensions, drop hidden parts, sort the POSIX paths."""
    rel = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return rel, [classes.index(r.split("/")[0]) for r in rel], classes


# ----------------------------------------------------------------------------------------------- ImageFolder
def test_imagefolder_index_order_labels_and_classes(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    names = ["b", "a b", "Z", "é", "c,d", "ä", "_x"]
    exts = [".jpg", ".JPG", ".jpeg", ".PNG", ".png", ".webp", ".bmp", ".tif", ".TIFF"]
    for i in range(40):
        cls = names[int(rng.integers(len(names)))]
        depth = "/".join(f"s{int(rng.integers(3))}" for _ in range(int(rng.integers(0, 3))))
        ext = exts[i % len(exts)]
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF"}[ext.lower()]
        _img(root / cls / depth / f"img {i}{ext}", fmt=fmt)
    (root / "empty class").mkdir()
    table = read_imagefolder(root)
    rel, labels, classes = _reference_imagefolder(root)
    assert table.paths == rel and table.labels.tolist() == labels and table.class_names == classes
    assert table.split == "train" and table.image_root == root
    assert "empty class" in table.class_names and table.extra["empty_classes"] == ["empty class"]
    # code-point order: 'Z' < '_x' < 'a b' < 'b' < 'c,d' < 'ä' < 'é'
    assert table.class_names == ["Z", "_x", "a b", "b", "c,d", "empty class", "ä", "é"]


def test_imagefolder_split_folders_and_their_errors(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _img(root / split / c / f"{i}.jpg")
    assert read_split("imagefolder", root, "val").class_names == ["cat", "dog"]
    from alr_fast.data.readers import dataset_splits

    assert dataset_splits("imagefolder", root) == ("train", "val", "test")
    _img(root / "test" / "cow" / "0.jpg")
    with pytest.raises(ValueError, match=r"test/cow: class folder 'cow' of split 'test' is not a class"):
        read_imagefolder(root, "test")
    (root / "stray").mkdir()
    with pytest.raises(ValueError, match=r"stray: folder beside train/"):
        read_imagefolder(root, "train")


def test_imagefolder_hidden_non_image_loose_files_are_counted(tmp_path):
    root = tmp_path / "d"
    _img(root / "cat" / "1.jpg")
    _img(root / "cat" / ".hidden.jpg")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    _img(root / "cat" / ".ipynb_checkpoints" / "2.jpg")
    (root / "cat" / "notes.txt").write_text("x")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    (root / "readme.md").write_text("x")
    (root / ".DS_Store").write_bytes(b"\0")
    t = read_imagefolder(root)
    assert t.paths == ["cat/1.jpg"]
    assert t.extra["skipped"] == {"hidden": 3, "non_image": 2, "outside_class_folder": 1}
    assert any(p.endswith("notes.txt") for p in t.extra["skipped_examples"]["non_image"])
    summary, _ = check_dataset("imagefolder", root)
    assert summary["layout"]["train"]["skipped"]["non_image"] == 2


def test_imagefolder_symlinks_inside_followed_outside_refused_loops_counted(tmp_path):
    root = tmp_path / "d"
    outside = tmp_path / "elsewhere"
    _img(root / "cat" / "a.jpg")
    _img(root / "shared" / "s.jpg")
    os.symlink(root / "shared", root / "cat" / "linked")          # a folder inside the root: followed
    os.symlink(root / "cat" / "a.jpg", root / "cat" / "b.jpg")      # a file inside: followed
    os.symlink(root / "cat", root / "cat" / "loop")                 # a loop: walked once, counted
    t = read_imagefolder(root)
    assert t.paths == ["cat/a.jpg", "cat/b.jpg", "cat/linked/s.jpg", "shared/s.jpg"]
    assert t.extra["skipped"] == {"folder_seen_twice": 1}
    _img(outside / "x.jpg")
    os.symlink(outside / "x.jpg", root / "cat" / "out.jpg")
    with pytest.raises(ValueError, match=r"cat/out.jpg: symlink to .*elsewhere/x.jpg, outside the dataset root"):
        read_imagefolder(root)
    os.unlink(root / "cat" / "out.jpg")
    os.symlink(outside, root / "dog")
    with pytest.raises(ValueError, match=r"d/dog: symlink to .*elsewhere, outside the dataset root"):
        read_imagefolder(root)


def test_imagefolder_broken_symlink_is_listed_unreadable_not_dropped(tmp_path):
    root = tmp_path / "d"
    _img(root / "cat" / "a.jpg")
    os.symlink(root / "cat" / "gone.jpg", root / "cat" / "z.jpg")
    t = read_imagefolder(root)
    assert t.paths == ["cat/a.jpg", "cat/z.jpg"]
    bad = scan_images(t)
    assert [(b.index, b.reason.split(" ")[0]) for b in bad] == [(1, "missing")]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 file names")
def test_imagefolder_non_utf8_name_is_an_error_naming_its_bytes(tmp_path):
    root = tmp_path / "d"
    _img(root / "cat" / "a.jpg")
    bad = os.fsencode(root / "cat") + b"/caf\xe9.jpg"
    with open(bad, "wb") as f:
        f.write((root / "cat" / "a.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"caf\\xe9.jpg'?: file name is not valid UTF-8"):
        read_imagefolder(root)


def test_imagefolder_without_images_or_classes(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        read_imagefolder(tmp_path / "d")
    (tmp_path / "d" / "cat").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        read_imagefolder(tmp_path / "d")


# -------------------------------------------------------------------------------------------------- manifest
def _manifest_rows(n=9):
    return [{"path": f"img/{i}, x.jpg", "label": ["cat", "dog", "cow"][i % 3], "split": "test" if i >= n - 2 else "train"}
            for i in range(n)]


def _write(root: Path, rows, fmt: str, header=("path", "label", "split")):
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"manifest.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(header), delimiter="," if fmt == "csv" else "\t",
                               extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_manifest_formats_give_the_same_table(tmp_path, fmt):
    rows = _manifest_rows()
    _write(tmp_path / fmt, rows, fmt)
    t = read_manifest(tmp_path / fmt, "train")
    train = [r for r in rows if r["split"] == "train"]
    assert t.paths == [r["path"] for r in train]
    assert t.class_names == ["cat", "cow", "dog"]  # built: sorted names over every split
    assert [t.class_names[i] for i in t.labels] == [r["label"] for r in train]
    assert t.list_lines.tolist() == [i + (2 if fmt != "jsonl" else 1) for i in range(len(train))]
    test = read_manifest(tmp_path / fmt, "test")
    assert test.paths == [r["path"] for r in rows if r["split"] == "test"] and test.class_names == t.class_names


def test_manifest_integer_labels_clean_labels_and_class_file(tmp_path):
    rows = [{"path": f"{i}.jpg", "label": str(i % 4), "clean_label": "" if i % 2 else str((i + 1) % 4)}
            for i in range(8)]
    _write(tmp_path, rows, "csv", header=("path", "label", "clean_label"))
    t = read_manifest(tmp_path)
    assert t.class_names == ["0", "1", "2", "3"] and t.labels.tolist() == [i % 4 for i in range(8)]
    assert t.clean_labels.tolist() == [(i + 1) % 4 if i % 2 == 0 else -1 for i in range(8)]
    (tmp_path / "class_names.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    assert read_manifest(tmp_path).class_names == ["a", "b", "c", "d", "e"]  # ids index the class file


def test_manifest_bad_rows_are_errors_naming_file_and_line(tmp_path):
    def fails(rows, match, fmt="csv", header=("path", "label", "split"), names=None):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        _write(d, rows, fmt, header)
        if names is not None:
            (d / "class_names.json").write_text(json.dumps(names))
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            read_manifest(d, "train")

    ok = _manifest_rows(4)
    fails(ok[:2] + [{"path": "x.jpg", "label": "horse"}], r"manifest.csv:4: label 'horse' is not a known class",
          names=["cat", "dog", "cow"])
    fails(ok[:2] + [{"path": "img/0, x.jpg", "label": "dog"}],
          r"manifest.csv:4: path 'img/0, x.jpg' has label 1 here and 0 at line 2")
    fails(ok[:2] + [{"path": "../up.jpg", "label": "cat"}], r"manifest.csv:4: path '../up.jpg' contains '..'")
    fails(ok[:2] + [{"path": "/etc/x.jpg", "label": "cat"}], r"manifest.csv:4: path '/etc/x.jpg' is absolute")
    fails(ok[:2] + [{"path": "x.jpg", "label": "cat", "split": "holdout"}], r"manifest.csv:4: split 'holdout'")
    fails([{"path": "a.jpg", "label": "1"}, {"path": "b.jpg", "label": "cat"}], r"labels mix integers and class names")
    fails(ok[:1] + [{"path": "b.jpg", "label": ""}], r"manifest.csv:3: empty label")
    fails(ok, r"header \['path', 'split'\] has no 'label' column", header=("path", "split"))
    fails([{"path": "a.jpg"}], r"manifest.jsonl:1: expected an object with 'path' and 'label'", fmt="jsonl")
    fails([{"path": "a.jpg", "label": 3, "split": "test"}], r"no rows of split 'train'", fmt="jsonl")
    d = tmp_path / "fields"
    d.mkdir()
    (d / "manifest.csv").write_text("path,label\nphoto, 1.jpg,cat\n")
    with pytest.raises(ValueError, match=r"manifest.csv:2: 3 fields, header has 2 .* quote a path"):
        read_manifest(d)
    (d / "manifest.csv").write_text("path,label\n\"photo, 1.jpg\",cat\n")
    assert read_manifest(d).paths == ["photo, 1.jpg"]
    (d / "manifest.tsv").write_text("path\tlabel\n")
    with pytest.raises(FileNotFoundError, match="expected exactly one of manifest.csv"):
        read_manifest(d)


def test_manifest_duplicate_with_same_label_is_kept_and_counted(tmp_path):
    rows = [{"path": "a.jpg", "label": "cat"}, {"path": "b.jpg", "label": "dog"}, {"path": "a.jpg", "label": "cat"}]
    _write(tmp_path, rows, "csv", header=("path", "label"))
    t = read_manifest(tmp_path)
    assert t.paths == ["a.jpg", "b.jpg", "a.jpg"] and t.extra["duplicate_paths"] == 1


def test_manifest_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "d"
    _img(root / "in.jpg")
    _img(tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    _write(root, [{"path": "in.jpg", "label": "a"}, {"path": "link.jpg", "label": "b"}], "csv", ("path", "label"))
    with pytest.raises(ValueError, match=r"manifest.csv:3: path 'link.jpg' leads outside the dataset root"):
        read_manifest(root)
    summary, _ = check_dataset("manifest", root)
    assert not summary["usable"] and "leads outside the dataset root" in summary["errors"][0]
    os.unlink(root / "link.jpg")
    os.symlink(root / "in.jpg", root / "link.jpg")  # a link inside the root is followed
    t = read_manifest(root)
    assert t.open_path(1) == root / "link.jpg" and t.read_bytes(1) == (root / "in.jpg").read_bytes()


# ------------------------------------------------------------------------------------------ image contents
def _mode_images(folder: Path) -> dict:
    """One file per awkward kind of image; returns {relative path: expected uint8 RGB array (None = decode only)}."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    deep = rng.integers(0, 65536, (10, 12), dtype=np.uint16)
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    out["gray.png"] = np.repeat(gray[..., None], 3, axis=2)
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(folder / "palette.png")
    out["palette.png"] = np.asarray(pal.getpalette(), dtype=np.uint8).reshape(-1, 3)[np.asarray(pal)]
    rgba = np.dstack([rgb, rng.integers(0, 256, (10, 12), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    out["rgba.png"] = rgb  # alpha dropped
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.tif")
    out["cmyk.tif"] = rgb  # PIL's RGB -> CMYK is C = 255 - R ..., K = 0: the round trip is exact
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    out["cmyk.jpg"] = None
    Image.fromarray(deep).save(folder / "deep16.png")
    out["deep16.png"] = np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, axis=2)
    # EXIF orientation 6 (the camera was turned): the stored 12 x 10 image is shown rotated 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "exif6.png", exif=exif)
    out["exif6.png"] = np.rot90(rgb, k=-1)
    return out


def test_rgb_image_handles_every_mode_and_exif(tmp_path):
    for name, expect in _mode_images(tmp_path).items():
        with Image.open(tmp_path / name) as im:
            got = np.asarray(rgb_image(im, exif_transpose=True))
        if expect is None:
            assert got.shape == (10, 12, 3), name
            continue
        np.testing.assert_array_equal(got, expect, err_msg=name)
    with Image.open(tmp_path / "exif6.png") as im:  # without exif_transpose: as stored
        assert np.asarray(rgb_image(im)).shape == (10, 12, 3)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_both_loaders_read_every_mode_upright(tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    images = _mode_images(tmp_path / "cls")
    t = read_imagefolder(tmp_path)
    loader = build_loader(t, train=False, batch_size=len(t), backend=backend, crop=8, resize=8, workers=1)
    x, idx = next(iter(loader.epoch(0)))
    assert idx.tolist() == list(range(len(t))) and x.shape == (len(t), 3, 8, 8)
    assert torch.isfinite(x).all()
    mean = torch.tensor(t.mean).view(3, 1, 1)
    std = torch.tensor(t.std).view(3, 1, 1)
    for i, name in enumerate(t.paths):
        expect = images[name.split("/", 1)[1]]
        if expect is None:
            continue
        # eval transform of the expected picture: resize shorter side to 8 then centre crop 8 (torchvision)
        import torchvision.transforms as T

        ref = T.Compose([T.Resize(8, antialias=True), T.CenterCrop(8), T.ToTensor()])(Image.fromarray(expect))
        got = x[i] * std + mean
        # upright: a rotated picture would differ by far more than resampling does
        assert float((got - ref).abs().mean()) < 0.06, (backend, name)


def test_truncated_and_zero_byte_files_are_reported_and_skipped_with_count(tmp_path):
    root = tmp_path / "d"
    good = _img(root / "train" / "cat" / "ok.jpg", size=(64, 48))
    (root / "train" / "cat" / "zero.jpg").write_bytes(b"")
    (root / "train" / "dog" / "cut.jpg").parent.mkdir(parents=True)
    (root / "train" / "dog" / "cut.jpg").write_bytes(good.read_bytes()[:200])
    _img(root / "test" / "cat" / "t.jpg")
    summary, unreadable = check_dataset("imagefolder", root)
    assert not summary["usable"] and unreadable == {"train": [1, 2]}
    reasons = {Path(u["path"]).name: u["reason"] for u in summary["splits"]["train"]["unreadable_examples"]}
    assert set(reasons) == {"zero.jpg", "cut.jpg"} and all("does not decode" in r for r in reasons.values())
    assert summary["splits"]["train"]["per_class"] == {"cat": 2, "dog": 1}
    t = read_imagefolder(root)
    with pytest.warns(UserWarning, match=r"skipping 2 unreadable image\(s\) of 3"):
        loader = build_loader(t, train=False, batch_size=4, backend="torch", crop=8, resize=8, workers=0,
                              skip_unreadable=True)
    assert [int(i) for _, idx in loader.epoch(0) for i in idx if i >= 0] == [0]


# --------------------------------------------------------------------------------------------- config, CLI
def test_config_refuses_an_unknown_dataset_at_once(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "alr_fast", "config", "--set", "data.dataset=imagefolders"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert "data.dataset: must be one of" in proc.stderr and "'imagefolder'" in proc.stderr
    assert main(["config", "--recipe", "own-data", "--set", "data.dataset=manifest"]) == 0
    capsys.readouterr()
    assert main(["config", "--recipe", "own-data", "--set", "data.manifest=m.csv"]) != 0
    assert "data.manifest: only for data.dataset='manifest'" in capsys.readouterr().err


def test_make_fixture_and_check_each_form(tmp_path, capsys):
    for name, extra in (("imagefolder", []), ("manifest", ["--format", "tsv"])):
        root = tmp_path / name
        assert main(["data", "make-fixture", "--dataset", name, "--out", str(root), "--num-train", "8",
                     "--num-test", "4", "--image-size", "20x16", *extra]) == 0
        capsys.readouterr()
        assert main(["data", "check", "--dataset", name, "--root", str(root)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["usable"] and summary["class_names"] == ["café, crème", "cat", "dog", "guinea pig"]
        assert summary["splits"]["train"]["count"] == 8 and summary["splits"]["train"]["images_checked"] == 8
        assert sum(summary["splits"]["train"]["per_class"].values()) == 8
        assert summary["splits_found"] == (["train", "test"] if name == "imagefolder" else ["train", "val", "test"])
        for s in summary["samples"]:  # the index -> path -> label samples name real files of that class
            assert Path(s["path"]).is_file()
            if name == "imagefolder":
                assert f"/train/{s['class']}/" in s["path"] or f"/test/{s['class']}/" in s["path"]

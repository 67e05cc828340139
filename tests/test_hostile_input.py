"""Every input validated where it enters (issue 22, item 5): config values and files, list files, oversized
images, class names in review sheets. Each case is an error naming the file/line/field, or a documented,
counted skip; fast, no training."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from test_data_fixtures import collect, fresh_copy

from alr_fast import cli
from alr_fast.config import apply_overrides, config_to_dict, load_config_file
from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.imagecheck import MAX_IMAGE_PIXELS, UnreadableImagesWarning, image_problem
from alr_fast.data.readers.clothing1m import read_clothing1m
from alr_fast.data.readers.listfile import MAX_KEY_CHARS, read_key_labels
from alr_fast.data.readers.webvision import read_webvision
from alr_fast.data.tools.check import check_dataset
from alr_fast.recipes import get_recipe


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize("field, value", [
    ("optim.lr", "inf"), ("optim.lr", "nan"), ("optim.weight_decay", "inf"), ("method.lam", "inf"),
    ("method.ramp_epochs", "inf"), ("train.collective_timeout_s", "inf"), ("method.warmup_min_rise", "nan"),
    ("optim.momentum", "nan"), ("data.noise_rate", "nan"), ("method.alpha", "-inf"),
])
def test_non_finite_floats_are_refused_naming_the_field(tmp_path, field, value, capsys):
    from alr_fast.config import config_from_dict

    # The field's own range check when it has one (NaN fails every comparison), else the finiteness check.
    msg = rf"config {re.escape(field)}: must be .*, got {value}"
    assert cli.main(["config", "--set", f"{field}={value}"]) == 2
    assert re.search(msg, capsys.readouterr().err)
    # The same value in a --config file, and straight in the dict a run's config.json holds.
    section, name = field.split(".")
    d = config_to_dict(get_recipe("demo"))
    d[section][name] = float(value)
    with pytest.raises(ValueError, match=msg):
        config_from_dict(d)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(d))  # writes NaN / Infinity, which Python's json reads back
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + msg):
        load_config_file(path)


@pytest.mark.parametrize("field, value, msg", [
    ("method.warmup_min_rise", "-0.1", "must be >= 0"),
    ("train.collective_timeout_s", "1e300", "must be in (0, 604800] seconds"),
])
def test_out_of_range_floats_are_refused(field, value, msg, capsys):
    assert cli.main(["config", "--set", f"{field}={value}"]) == 2
    assert f"config {field}: {msg}" in capsys.readouterr().err


@pytest.mark.parametrize("text, msg", [
    ('{"optim": ' * 3000 + "1" + "}" * 3000, "objects/arrays nested 3000 deep; a config has at most 4"),
    ('{"optim": {"lr": ' + "9" * 5000 + "}}", "config optim.lr: a number with 5000 digits (at most 30)"),
    ('{"train": {"epochs": ' + "9" * 5000 + "}}", "config train.epochs: a number with 5000 digits"),
    ('{"optim": {"lr": 1e999}}', "config optim.lr: must be a finite number, got inf"),
    ('{"optim": {"lr": NaN}}', "config optim.lr: must be > 0, got nan"),
    ('{"optim": {"milestones": [[1]]}}', "config optim.milestones: expected tuple"),
    ('{"model": {"name": "' + "x" * 300 + '", "width": "' + "y" * 10000 + '"}}',
     "config model.width: expected int, got str 'yyyy"),
])
def test_hostile_config_files_name_file_and_field(tmp_path, text, msg, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        load_config_file(path)
    assert str(e.value).startswith(f"{path}") and msg in str(e.value) and len(str(e.value)) < 400
    assert cli.main(["config", "--config", str(path)]) == 2
    assert msg in capsys.readouterr().err


def test_non_utf8_and_oversized_config_files(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"data": {\n "dataset": "caf\xe9"}}')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2: not UTF-8 text (byte 0xe9)")):
        load_config_file(bad)
    big = tmp_path / "big.json"
    big.write_text('{"recipe": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(ValueError, match=re.escape(f"{big}: {big.stat().st_size} bytes, more than a config")):
        load_config_file(big)
    # Brackets inside strings do not count as nesting: a valid file with them still loads.
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"recipe": "[[[[[{{{{{\\\"", "train": {"out": "runs/[[[[[["}}))
    assert load_config_file(ok).train.out == "runs/[[[[[["


# ------------------------------------------------------------------------------------------------ list files
def _kv(tmp_path, text: str):
    path = tmp_path / "list.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("label", ["+3", "\u0663", "\uff15", "1_2", " 3".strip() + "\u00b2", "0x3", "3.0"])
def test_labels_are_ascii_decimal_integers(tmp_path, label):
    path = _kv(tmp_path, f"a.jpg 1\nb.jpg {label}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: label {label!r} is not an integer written with "
                                                   "the digits 0-9")):
        read_key_labels(path, 10)


def test_a_key_listed_twice_is_an_error_whatever_its_labels(tmp_path):
    path = _kv(tmp_path, "a.jpg 1\nb.jpg 2\n\na.jpg 1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: key 'a.jpg' is listed twice (also at line 1)")):
        read_key_labels(path, 10)
    root = fresh_copy("clothing1m", tmp_path)
    lst = root / "clean_val_key_list.txt"
    lines = lst.read_text().split("\n")
    lst.write_text("\n".join([*lines[:3], lines[0], *lines[3:]]))
    with pytest.raises(ValueError, match=re.escape(f"{lst}:4: key {lines[0]!r} is listed twice (also at line 1)")):
        read_clothing1m(root, "val")


@pytest.mark.parametrize("sep", ["\x0c", "\u2028", "\x0b", "\x1c", "\x85"])
def test_line_numbers_count_newlines_only(tmp_path, sep):
    # An editor shows the separator inside line 1 (it is whitespace there); line 3 is the bad one, whatever
    # str.splitlines thinks.
    path = _kv(tmp_path, f"a.jpg 1 {sep}\nb.jpg 2\nc.jpg 99\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: label 99 outside [0, 10)")):
        read_key_labels(path, 10)
    crlf = _kv(tmp_path, "a.jpg 1\r\nb.jpg 2\r\nc.jpg 99\r\n")
    with pytest.raises(ValueError, match=re.escape(f"{crlf}:3: label 99 outside")):
        read_key_labels(crlf, 10)


def test_an_overlong_key_is_a_short_clear_error(tmp_path):
    path = _kv(tmp_path, "a.jpg 1\n" + "k" * 5_000_000 + " 3\n")
    with pytest.raises(ValueError) as e:
        read_key_labels(path, 10)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: key of 5000000 characters (at most {MAX_KEY_CHARS})") and len(msg) < 300
    two_fields = _kv(tmp_path, "a.jpg 1\n" + "k" * 5_000_000 + " 3 4\n")
    with pytest.raises(ValueError) as e:
        read_key_labels(two_fields, 10)
    assert "expected '<key> <label>'" in str(e.value) and len(str(e.value)) < 400


def test_a_symlink_leading_outside_the_root_is_refused(tmp_path):
    root = fresh_copy("webvision", tmp_path)
    table = read_webvision(root, "train", source="google")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(table.path(0).read_bytes())
    victim = table.path(2)
    victim.unlink()
    victim.symlink_to(outside)
    lst = root / "info" / "train_filelist_google.txt"
    with pytest.raises(ValueError, match=re.escape(f"{lst}:3: path {table.paths[2]!r} leads outside the dataset root "
                                                   f"through a symbolic link (to {outside})")):
        read_webvision(root, "train", source="google")
    # A linked folder below the image root pointing out is refused too; a link that stays inside is fine.
    victim.unlink()
    victim.symlink_to(table.path(0))
    assert len(read_webvision(root, "train", source="google")) == len(table)
    folder = table.path(2).parent
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    folder.symlink_to(moved)
    with pytest.raises(ValueError, match="leads outside the dataset root through a symbolic link"):
        read_webvision(root, "train", source="google")


# ----------------------------------------------------------------------------------------------- huge images
def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header says ``width`` x ``height`` (what PIL reads before decoding)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    return bytes(data)


@pytest.mark.parametrize("side", [20000, 10000])  # over 2x PIL's limit (it raises) and between 1x and 2x (it warns)
def test_an_image_over_the_pixel_limit_is_unreadable_named_and_skippable(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    root = fresh_copy("clothing1m", tmp_path)
    t = read_clothing1m(root, "val")
    t.path(4).write_bytes(_png_claiming(side, side))  # a PNG named .jpg, as in the report
    assert image_problem(str(t.path(4))).startswith(f"too large")
    summary, unreadable = check_dataset("clothing1m", root, splits=["val"])
    assert unreadable == {"val": [4]}
    assert summary["splits"]["val"]["unreadable_examples"][0]["path"] == str(t.path(4))
    loader = build_loader(t, train=False, batch_size=4, backend="torch", workers=0)
    with pytest.raises(OSError, match=re.escape(f"{root / 'clean_val_key_list.txt'}:5: image {t.path(4)} (global "
                                                "index 4) is too large")):
        collect(loader)
    with pytest.warns(UnreadableImagesWarning, match=r"skipping 1 unreadable image"):
        skipping = build_loader(t, train=True, batch_size=8, backend="torch", workers=1, skip_unreadable=True)
    assert [u.index for u in skipping.skipped] == [4]
    _, idx, _ = collect(skipping)
    assert 4 not in idx.tolist() and sorted(idx[idx >= 0].tolist()) == sorted(set(range(len(t))) - {4})


# ------------------------------------------------------------------------------------------------ review sheet
def test_review_renders_any_class_name_and_neutralises_formulas(tmp_path):
    from alr_fast.labels.review import review_run
    from test_review import _fake_run

    cfg = apply_overrides(get_recipe("demo"), ["data.dataset=digits"])
    run = tmp_path / "run"
    given, other, score = _fake_run(run, cfg, 1438, 10, oos=False)
    names = ["cls_5_$", "$\\frac{a", "=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "a$b$c", "\tx", "ok", "^_"]
    (run / "class_names.json").write_text(json.dumps(names))
    out = review_run(run, top=30, html=True, quiet=True)
    with open(out["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    safe = {n: ("'" + n if n[0] in "=+-@\t" else n) for n in names}
    assert [r["given_name"] for r in rows] == [safe[names[given[int(r["global_index"])]]] for r in rows]
    assert [r["suggested_name"] for r in rows] == [safe[names[other[int(r["global_index"])]]] for r in rows]
    assert not any(r[c][:1] in "=+-@" for r in rows for c in ("given_name", "suggested_name", "path"))
    with Image.open(out["png"]) as im:
        assert im.size[0] > 600
    assert not [p for p in os.listdir(run) if p.startswith(".")]  # written atomically: no temporary left

"""Bad input: each case fails with an error naming the file (and line), or is skipped and reported on request."""

from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from test_data_fixtures import BACKENDS, collect, fresh_copy, needs_dali

from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.imagecheck import UnreadableImagesWarning, image_problem
from alr_fast.data.readers import DATASET_NAMES, read_split
from alr_fast.data.readers.animal10n import read_animal10n
from alr_fast.data.readers.cifar import read_cifar
from alr_fast.data.readers.clothing1m import read_clothing1m
from alr_fast.data.readers.webvision import read_webvision
from alr_fast.data.tools.check import check_dataset


def _edit_line(path, lineno, new_text):
    lines = path.read_text().split("\n")
    lines[lineno - 1] = new_text
    path.write_text("\n".join(lines))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_missing_root(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_split(name, missing, "train")
    summary, _ = check_dataset(name, missing)
    assert not summary["usable"] and str(missing) in summary["errors"][0]


@pytest.mark.parametrize("layout, rel", [("a", "noisy_label_kv.txt"), ("b", "annotations/noisy_label_kv.txt"),
                                         ("a", "noisy_train_key_list.txt")])
def test_clothing1m_missing_annotation_file(tmp_path, layout, rel):
    root = fresh_copy("clothing1m", tmp_path, layout=layout)
    (root / rel).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / rel))):
        read_clothing1m(root, "train")
    summary, _ = check_dataset("clothing1m", root)
    assert not summary["usable"] and any(str(root / rel) in e for e in summary["errors"])


def test_clothing1m_no_annotations_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Clothing1M annotations found"):
        read_clothing1m(tmp_path / "empty")


def test_webvision_missing_list(tmp_path):
    root = fresh_copy("webvision", tmp_path)
    (root / "info" / "val_filelist.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "info" / "val_filelist.txt"))):
        read_webvision(root, "val")


@pytest.mark.parametrize("text, match", [
    ("images/0/00/123,456.jpg", r"expected '<key> <label>', got 'images/0/00/123,456.jpg'"),
    ("images/0/00/123,456.jpg 3 7", r"expected '<key> <label>'"),
    ("images/0/00/123,456.jpg three", r"label 'three' is not an integer"),
    ("images/0/00/123,456.jpg 14", r"label 14 outside \[0, 14\)"),
    ("images/0/00/123,456.jpg -1", r"label -1 outside \[0, 14\)"),
])
def test_clothing1m_malformed_line_and_label_out_of_range(tmp_path, text, match):
    root = fresh_copy("clothing1m", tmp_path)
    _edit_line(root / "noisy_label_kv.txt", 4, text)
    with pytest.raises(ValueError, match=re.escape(f"{root / 'noisy_label_kv.txt'}:4: ") + match):
        read_clothing1m(root, "train")


def test_clothing1m_key_without_label_and_conflicting_duplicate(tmp_path):
    root = fresh_copy("clothing1m", tmp_path)
    _edit_line(root / "clean_val_key_list.txt", 2, "images/9/99/1,2.jpg")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'clean_val_key_list.txt'}:2: key 'images/9/99/1,2.jpg' "
                                                   f"has no label in {root / 'clean_label_kv.txt'}")):
        read_clothing1m(root, "val")
    kv = root / "noisy_label_kv.txt"
    first_key, first_label = kv.read_text().split("\n")[0].split()
    kv.write_text(kv.read_text() + f"{first_key} {(int(first_label) + 1) % 14}\n")
    with pytest.raises(ValueError, match=re.escape(f"{kv}:76: key {first_key!r} has label")):
        read_clothing1m(root, "train")


def test_webvision_malformed_and_out_of_range(tmp_path):
    root = fresh_copy("webvision", tmp_path)
    lst = root / "info" / "train_filelist_google.txt"
    original = lst.read_text()
    _edit_line(lst, 3, "google/q0001/x.jpg 1000")
    with pytest.raises(ValueError, match=re.escape(f"{lst}:3: label 1000 outside [0, 1000)")):
        read_webvision(root, "train", source="google")
    lst.write_text(original)
    _edit_line(lst, 5, "google/q0001/x.jpg")
    with pytest.raises(ValueError, match=re.escape(f"{lst}:5: expected '<key> <label>'")):
        read_split("mini-webvision", root, "train")


def test_animal10n_bad_file_names(tmp_path):
    root = fresh_copy("animal10n", tmp_path)
    (root / "testing" / "12_00001.jpg").write_bytes(b"")
    bad = root / "testing" / "12_00001.jpg"
    with pytest.raises(ValueError, match=re.escape(f"{bad}: label 12 (file-name prefix)")):
        read_animal10n(root, "test")
    (root / "testing" / "12_00001.jpg").unlink()
    (root / "testing" / "cat.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'testing' / 'cat.jpg'}: expected a file name")):
        read_animal10n(root, "test")


def test_cifar_label_out_of_range(tmp_path):
    root = fresh_copy("cifar10", tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    d = pickle.loads(path.read_bytes(), encoding="latin1")
    d["labels"][7] = 10
    path.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(ValueError, match=r"test: label 10 of image 7 outside \[0, 10\)"):
        read_cifar(root, "cifar10", "test")


@pytest.mark.parametrize("case", ["clothing-list", "animal-folder", "webvision-mini"])
def test_empty_split(tmp_path, case):
    if case == "clothing-list":
        root = fresh_copy("clothing1m", tmp_path)
        (root / "clean_test_key_list.txt").write_text("\n\n")
        with pytest.raises(ValueError, match=re.escape(f"{root / 'clean_test_key_list.txt'}: split 'test' is empty")):
            read_clothing1m(root, "test")
    elif case == "animal-folder":
        root = fresh_copy("animal10n", tmp_path)
        shutil.rmtree(root / "testing")
        (root / "testing").mkdir()
        with pytest.raises(ValueError, match=re.escape(f"{root / 'testing'}: split 'test' is empty")):
            read_animal10n(root, "test")
    else:
        root = fresh_copy("webvision", tmp_path)
        (root / "info" / "val_filelist.txt").write_text("val000001.jpg 700\n")
        with pytest.raises(ValueError, match=r"val_filelist.txt: split 'val' is empty \(no lines with label < 50\)"):
            read_split("mini-webvision", root, "val")


@pytest.fixture
def damaged_clothing(tmp_path):
    """Clothing1M val with image 3 missing, image 5 truncated, image 8 not a JPEG at all."""
    root = fresh_copy("clothing1m", tmp_path)
    t = read_clothing1m(root, "val")
    t.path(3).unlink()
    data = t.path(5).read_bytes()
    t.path(5).write_bytes(data[: len(data) // 2])
    t.path(8).write_bytes(b"this is not an image")
    return root, t


def test_image_problem_reasons(damaged_clothing):
    _, t = damaged_clothing
    assert image_problem(str(t.path(0))) is None
    assert image_problem(str(t.path(3))).startswith("missing")
    assert "truncated" in image_problem(str(t.path(5)))
    assert "cannot identify image file" in image_problem(str(t.path(8)))


def test_check_reports_missing_and_corrupt_images(damaged_clothing):
    root, t = damaged_clothing
    summary, unreadable = check_dataset("clothing1m", root)
    assert not summary["usable"]
    assert unreadable == {"val": [3, 5, 8]}
    examples = summary["splits"]["val"]["unreadable_examples"]
    assert [e["index"] for e in examples] == [3, 5, 8]
    assert examples[0]["where"] == f"{root / 'clean_val_key_list.txt'}:4" and examples[0]["path"] == str(t.path(3))
    assert summary["splits"]["train"]["unreadable"] == 0
    assert any("clothing1m/val: 3 unreadable image(s)" in e for e in summary["errors"])


def test_torch_loader_names_the_missing_and_the_corrupt_file(damaged_clothing):
    root, t = damaged_clothing
    loader = build_loader(t, train=False, batch_size=4, backend="torch", workers=0)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root / 'clean_val_key_list.txt'}:4: listed image "
                                                          f"{t.path(3)} (global index 3) does not exist")):
        collect(loader)
    only_truncated = build_loader(t, train=False, batch_size=4, backend="torch", workers=0, exclude=np.array([3]))
    with pytest.raises(OSError, match=re.escape(f"image {t.path(5)} (global index 5) does not decode")):
        collect(only_truncated)


@needs_dali
def test_dali_loader_names_the_missing_and_the_truncated_file(damaged_clothing):
    root, t = damaged_clothing
    loader = build_loader(t, train=False, batch_size=4, backend="dali", workers=1)
    listed = f"{root / 'clean_val_key_list.txt'}"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{listed}:4: listed image {t.path(3)} (global index 3) "
                                                          "does not exist; run `python -m alr_fast data check`")):
        collect(loader)
    for bad, reason in ((5, "does not decode .*truncated"), (8, "does not decode .*cannot identify")):
        others = np.array([i for i in (3, 5, 8) if i != bad])
        loader = build_loader(t, train=False, batch_size=4, backend="dali", workers=1, exclude=others)
        with pytest.raises(RuntimeError, match=r"clothing1m/val .*DALI could not read epoch 0: " + re.escape(
                f"{listed}:{bad + 1}: image {t.path(bad)} (global index {bad})") + " " + reason
                + r".*data check.*skip_unreadable=True"):
            collect(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_unreadable_is_opt_in_and_reported(damaged_clothing, backend):
    _, t = damaged_clothing
    with pytest.warns(UnreadableImagesWarning, match=r"clothing1m/val: skipping 3 unreadable image\(s\) of 28"):
        loader = build_loader(t, train=True, batch_size=8, backend=backend, workers=1, skip_unreadable=True)
    assert [u.index for u in loader.skipped] == [3, 5, 8]
    assert len(loader) == 4  # 25 readable rows, batches of 8
    x, idx, _ = collect(loader, epoch=1)
    assert sorted(idx[idx >= 0].tolist()) == sorted(set(range(28)) - {3, 5, 8}) and (idx == -1).sum() == 3
    assert torch.isfinite(x).all()


@needs_dali
def test_skip_unreadable_with_a_subset_keeps_epoch_length(damaged_clothing):
    from alr_fast.data.loaders.plan import ClassBalancedSubset

    _, t = damaged_clothing
    sub = ClassBalancedSubset(t.labels, 28, num_classes=14)  # every row, every epoch
    with pytest.warns(UnreadableImagesWarning):
        loader = build_loader(t, train=True, batch_size=8, backend="dali", workers=1, subset=sub,
                              skip_unreadable=True)
    _, idx, sizes = collect(loader)
    assert sum(sizes) == 28 and (idx == -1).sum() == 3 and not np.isin([3, 5, 8], idx.numpy()).any()


# ------------------------------------------------------------------------------- hostile or broken list files
@pytest.mark.parametrize("key, why", [
    ("../../etc/x.jpg", "contains '..'"),
    ("images/0/../../../x.jpg", "contains '..'"),
    ("/etc/x.jpg", "is absolute"),
    ("~/x.jpg", "is absolute"),
])
def test_clothing1m_list_paths_must_stay_under_the_root(tmp_path, key, why):
    root = fresh_copy("clothing1m", tmp_path)
    kv = root / "clean_label_kv.txt"
    kv.write_text(kv.read_text() + f"{key} 3\n")
    _edit_line(root / "clean_test_key_list.txt", 6, key)
    listed = root / "clean_test_key_list.txt"
    with pytest.raises(ValueError, match=re.escape(f"{listed}:6: path ") + ".*" + re.escape(
            f" {why}; listed paths must stay under the dataset root")):
        read_clothing1m(root, "test")
    summary, _ = check_dataset("clothing1m", root, splits=["test"])
    assert not summary["usable"] and f"{listed}:6: path" in summary["errors"][0]


def test_webvision_list_paths_must_stay_under_the_root(tmp_path):
    root = fresh_copy("webvision", tmp_path)
    lst = root / "info" / "train_filelist_google.txt"
    _edit_line(lst, 2, "/etc/passwd 3")
    with pytest.raises(ValueError, match=re.escape(f"{lst}:2: path '/etc/passwd' is absolute")):
        read_webvision(root, "train", source="google")
    _edit_line(lst, 2, "google/../../secret.jpg 3")
    with pytest.raises(ValueError, match=re.escape(f"{lst}:2: path 'google/../../secret.jpg' contains '..'")):
        read_split("mini-webvision", root, "train")


def test_non_utf8_list_file_names_file_and_line(tmp_path):
    root = fresh_copy("clothing1m", tmp_path)
    listed = root / "clean_val_key_list.txt"
    lines = listed.read_bytes().split(b"\n")
    lines[4] = b"images/0/00/caf\xe9.jpg"  # Latin-1, not UTF-8
    listed.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=re.escape(f"{listed}:5: not UTF-8 text (byte 0xe9 at column 16)")):
        read_clothing1m(root, "val")
    noise = tmp_path / "labels.csv"
    noise.write_bytes(b"global_index,label\n0,1\n1,\xff\n")
    with pytest.raises(ValueError, match=re.escape(f"{noise}:3: not UTF-8 text")):
        read_split("animal10n", fresh_copy("animal10n", tmp_path), "train", noise_file=noise)


def test_utf8_bom_is_accepted(tmp_path):
    root = fresh_copy("clothing1m", tmp_path)
    listed = root / "clean_val_key_list.txt"
    expect = read_clothing1m(root, "val")
    listed.write_bytes(b"\xef\xbb\xbf" + listed.read_bytes())  # what Windows editors write
    assert read_clothing1m(root, "val").paths == expect.paths


def test_webvision_duplicate_path_with_conflicting_labels(tmp_path):
    root = fresh_copy("webvision", tmp_path)
    lst = root / "info" / "train_filelist_google.txt"
    first_path, first_label = lst.read_text().split("\n")[0].split()
    _edit_line(lst, 4, f"{first_path} {(int(first_label) + 1) % 50}")
    with pytest.raises(ValueError, match=re.escape(f"{lst}:4: key {first_path!r} has label {(int(first_label) + 1) % 50} "
                                                   f"here and {first_label} at line 1")):
        read_webvision(root, "train", source="google")


@pytest.mark.parametrize("label", [10, -1])
def test_noise_file_label_outside_the_classes(tmp_path, label):
    root = fresh_copy("animal10n", tmp_path)
    n = len(read_animal10n(root, "train"))
    labels = np.zeros(n, dtype=np.int64)
    labels[n - 2] = label
    np.save(tmp_path / "l.npy", labels)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'l.npy'}: label {label} at global index {n - 2} "
                                                   "outside [0, 10)")):
        read_split("animal10n", root, "train", noise_file=tmp_path / "l.npy")
    (tmp_path / "l.txt").write_text("".join(f"{v}\n" for v in labels.tolist()))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'l.txt'}:{n - 1}: label {label} outside [0, 10)")):
        read_split("animal10n", root, "train", noise_file=tmp_path / "l.txt")


def test_cifar_n_file_of_the_wrong_length(tmp_path):
    root = fresh_copy("cifar10", tmp_path)
    human = torch.load(root / "CIFAR-10_human.pt", weights_only=False)
    n = len(human["clean_label"])
    short = {k: v[:-1] if isinstance(v, np.ndarray) else v for k, v in human.items()}
    torch.save(short, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'short.pt'}: {n - 1} labels for {n} cifar10 train "
                                                   "images")):
        read_split("cifar10", root, "train", cifar_n=tmp_path / "short.pt", label_set="aggre")

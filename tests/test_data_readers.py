"""Readers on fixtures in each dataset's real layout: counts, global-index order, labels, subsets, noise files."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from test_data_fixtures import fixture_root

from alr_fast.data.loaders.plan import ClassBalancedSubset, EpochPlan, balanced_quotas, sample_uniforms
from alr_fast.data.readers import read_split
from alr_fast.data.readers.animal10n import ANIMAL10N_CLASSES, read_animal10n
from alr_fast.data.readers.cifar import apply_cifar_n, read_cifar, read_cifar_n
from alr_fast.data.readers.clothing1m import read_clothing1m
from alr_fast.data.readers.noise_files import apply_noise_file, load_noise_file
from alr_fast.data.readers.safe_pickle import UnsafePickleError, safe_load_numpy_pickle
from alr_fast.data.readers.webvision import read_ilsvrc_val, read_mini_webvision, read_webvision
from alr_fast.data.tools.fixtures import CIFAR10_NAMES, ILSVRC_DIR_NAME, ILSVRC_LIST_NAME
from alr_fast.data.noise import make_noisy_labels
from alr_fast.loss.sharding import Sharding


def _key_labels(path):
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, label = line.split()
            out[key] = int(label)
    return out


# ------------------------------------------------------------------------------------------------------ CIFAR
def test_cifar10_train_order_pixels_and_labels():
    root = fixture_root("cifar10")
    t = read_cifar(root, "cifar10", "train")
    folder = root / "cifar-10-batches-py"
    # Independent reference: the batches in order 1..5 (plain pickle is fine for our own fixture).
    raw = [pickle.loads((folder / f"data_batch_{b}").read_bytes(), encoding="latin1") for b in range(1, 6)]
    labels = np.concatenate([r["labels"] for r in raw])
    data = np.concatenate([r["data"] for r in raw])
    assert len(t) == 100 and t.images.shape == (100, 32, 32, 3) and t.images.dtype == np.uint8
    np.testing.assert_array_equal(t.labels, labels)
    np.testing.assert_array_equal(t.clean_labels, labels)
    np.testing.assert_array_equal(t.global_index, np.arange(100))
    i = 37  # row = 1024 R, 1024 G, 1024 B, each plane row-major
    assert t.images[i, 5, 7, 0] == data[i, 5 * 32 + 7]
    assert t.images[i, 5, 7, 1] == data[i, 1024 + 5 * 32 + 7]
    assert t.images[i, 31, 0, 2] == data[i, 2048 + 31 * 32]
    assert t.class_names == CIFAR10_NAMES and t.noise_rate() == 0.0
    assert len(read_cifar(root / "cifar-10-batches-py", "cifar10", "test")) == 40  # root may be the folder


@pytest.mark.parametrize("n", [5, 19, 23])
def test_cifar10_fixture_has_exactly_num_train_samples(n):
    """make-fixture spreads any count over CIFAR-10's 5 batches (first batches one larger): none dropped."""
    t = read_cifar(fixture_root("cifar10", num_train=n), "cifar10", "train")
    assert len(t) == n and t.labels.shape == (n,)


def test_cifar10_fixture_refuses_fewer_than_five(tmp_path):
    from alr_fast.data.tools.fixtures import make_fixture

    with pytest.raises(ValueError, match="--num-train: CIFAR-10 is stored as 5 training batches"):
        make_fixture("cifar10", tmp_path / "c", num_train=4)


def test_cifar_synthetic_noise_matches_alr_fast_noise():
    root = fixture_root("cifar10")
    t = read_cifar(root, "cifar10", "train", noise_kind="sym-excl", noise_rate=0.4, noise_seed=3)
    expected, manifest = make_noisy_labels(t.clean_labels, kind="sym-excl", rate=0.4, num_classes=10, seed=3)
    np.testing.assert_array_equal(t.labels, expected)
    assert t.noise_rate() == pytest.approx(manifest.actual_rate) == pytest.approx(0.4)
    assert t.noise_manifest["noisy_hash"] == manifest.noisy_hash and t.label_source == "synthetic:sym-excl"


def test_cifar100_fine_labels():
    root = fixture_root("cifar100")
    t = read_split("cifar100", root, "train")
    raw = pickle.loads((root / "cifar-100-python" / "train").read_bytes(), encoding="latin1")
    np.testing.assert_array_equal(t.labels, raw["fine_labels"])
    assert len(t) == 200 and t.num_classes == 100 and len(read_split("cifar100", root, "test")) == 40


@pytest.mark.parametrize("short, key", [("aggre", "aggre_label"), ("worst", "worse_label"), ("rand2", "random_label2")])
def test_cifar10n_label_sets(short, key):
    root = fixture_root("cifar10")
    ref = torch.load(root / "CIFAR-10_human.pt", weights_only=False)  # our own fixture file: trusted
    t = apply_cifar_n(read_cifar(root, "cifar10", "train"), root / "CIFAR-10_human.pt", short)
    np.testing.assert_array_equal(t.labels, ref[key])
    np.testing.assert_array_equal(t.clean_labels, ref["clean_label"])
    assert t.noise_rate() == pytest.approx(float((ref[key] != ref["clean_label"]).mean()))
    via_reader = read_split("cifar10", root, "train", cifar_n=root / "CIFAR-10_human.pt", label_set=short)
    np.testing.assert_array_equal(via_reader.labels, t.labels)


def test_cifar100n_and_label_set_names():
    root = fixture_root("cifar100")
    noisy, clean = read_cifar_n(root / "CIFAR-100_human.pt", "noisy100", name="cifar100")
    ref = torch.load(root / "CIFAR-100_human.pt", weights_only=False)
    np.testing.assert_array_equal(noisy, ref["noisy_label"])
    with pytest.raises(ValueError, match="label_set for cifar100 must be one of"):
        read_cifar_n(root / "CIFAR-100_human.pt", "aggre", name="cifar100")


def test_cifar_n_clean_labels_must_match_dataset(tmp_path):
    root = fixture_root("cifar10")
    ref = torch.load(root / "CIFAR-10_human.pt", weights_only=False)
    ref["clean_label"] = np.roll(ref["clean_label"], 1)
    torch.save(ref, tmp_path / "shifted.pt")
    with pytest.raises(ValueError, match="clean_label differs from the dataset's labels at global index"):
        apply_cifar_n(read_cifar(root, "cifar10", "train"), tmp_path / "shifted.pt", "aggre")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_and_tensors(tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"clean_label": _Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load global .*system"):
        safe_load_numpy_pickle(tmp_path / "evil.pt")
    torch.save({"clean_label": torch.arange(3)}, tmp_path / "tensors.pt")
    with pytest.raises(UnsafePickleError, match=r"torch\._utils\._rebuild_tensor_v2.*holds torch tensors"):
        safe_load_numpy_pickle(tmp_path / "tensors.pt")
    # Plain numpy pickles of every protocol load.
    for proto in (2, 4, 5):
        (tmp_path / f"p{proto}.pkl").write_bytes(pickle.dumps({"a": np.arange(4)}, protocol=proto))
        np.testing.assert_array_equal(safe_load_numpy_pickle(tmp_path / f"p{proto}.pkl")["a"], np.arange(4))


# ------------------------------------------------------------------------------------------------- ANIMAL-10N
def test_animal10n_sorted_order_and_prefix_labels():
    root = fixture_root("animal10n")
    t = read_animal10n(root, "train")
    names = sorted(p.name for p in (root / "training").iterdir())
    assert t.paths == names and len(t) == 60
    np.testing.assert_array_equal(t.labels, [int(n.split("_")[0]) for n in names])
    assert t.class_names == ANIMAL10N_CLASSES and t.clean_labels is None and t.noise_rate() is None
    assert t.path(5) == root / "training" / names[5]
    assert len(read_animal10n(root, "test")) == 20


# ------------------------------------------------------------------------------------------------- Clothing1M
@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_clothing1m_train_order_noisy_and_clean_labels(layout):
    root = fixture_root("clothing1m", layout=layout)
    ann = root / "annotations" if layout == "b" else root
    t = read_clothing1m(root, "train")
    keys = [k for k in (ann / "noisy_train_key_list.txt").read_text().split("\n") if k]
    noisy, clean = _key_labels(ann / "noisy_label_kv.txt"), _key_labels(ann / "clean_label_kv.txt")
    assert len(t) == len(keys) == 70 and t.extra["layout"] == layout and t.extra["lines_in_list"] == 70
    assert any("," in k for k in keys)  # keys carry commas; whitespace-only parsing keeps them whole
    np.testing.assert_array_equal(t.labels, [noisy[k] for k in keys])
    np.testing.assert_array_equal(t.clean_labels, [clean.get(k, -1) for k in keys])
    known = t.clean_known()
    assert 0 < known.sum() < len(t)
    assert t.noise_rate() == pytest.approx(float((t.labels[known] != t.clean_labels[known]).mean()))
    for i in (0, 33, 69):
        assert t.path(i).is_file()
        assert keys[i].endswith(t.paths[i]) and keys[i].startswith("images/")
    assert t.where(10) == f"{ann / 'noisy_train_key_list.txt'}:11"


def test_clothing1m_layouts_agree_and_clean_splits():
    roots = {layout: fixture_root("clothing1m", layout=layout) for layout in ("a", "b", "c")}
    for split, n in (("train", 70), ("clean-train", 28), ("val", 28), ("test", 28)):
        tables = {layout: read_clothing1m(root, split) for layout, root in roots.items()}
        ta = tables["a"]
        assert len(ta) == n and ta.extra["image_keys"].startswith("'images/' prefix stripped")
        for layout, t in tables.items():
            assert t.extra["layout"] == layout and len(t) == n
            np.testing.assert_array_equal(t.labels, ta.labels)
            # The same images, found where each layout keeps them.
            assert [str(t.path(i).relative_to(roots[layout])).removeprefix("images/") for i in (0, n - 1)] == [
                str(ta.path(i).relative_to(roots["a"])) for i in (0, n - 1)]
            assert all(t.path(i).is_file() for i in range(n))
        for layout in ("b", "c"):  # keys resolve exactly as written: <root>/images/0/00/x.jpg
            assert tables[layout].extra["image_keys"].startswith("as written")
            assert tables[layout].path(0).relative_to(roots[layout]).parts[0] == "images"
        if split != "train":
            np.testing.assert_array_equal(ta.clean_labels, ta.labels)


def test_clothing1m_stripped_images_beside_an_annotations_folder_and_keys_without_prefix(tmp_path):
    # Two more layouts users have: annotations/ with the image folders 0..9 in the root (prefix stripped), and
    # key lists that were rewritten without the prefix while the images stay under images/.
    root = tmp_path / "c1m"
    shutil.copytree(fixture_root("clothing1m", layout="a"), root)
    (root / "annotations").mkdir()
    for f in root.glob("*.txt"):
        f.rename(root / "annotations" / f.name)
    t = read_clothing1m(root, "val")
    assert t.extra["image_keys"].startswith("'images/' prefix stripped") and all(t.path(i).is_file()
                                                                                 for i in range(len(t)))
    root2 = tmp_path / "c1m-noprefix"
    shutil.copytree(fixture_root("clothing1m", layout="c"), root2)
    for f in root2.glob("*.txt"):
        f.write_text(f.read_text().replace("images/", ""))
    t2 = read_clothing1m(root2, "val")
    assert t2.extra["image_keys"].startswith("under images/") and all(t2.path(i).is_file() for i in range(len(t2)))


def test_webvision_val_images_in_any_folder_users_have(tmp_path):
    root = tmp_path / "wv"
    shutil.copytree(fixture_root("webvision"), root)
    expect = read_webvision(root, "val")
    assert expect.extra["image_paths"] == "under val_images_256/"
    (root / "val_images_256").rename(root / "val_images")  # the full-size release's folder name
    t = read_webvision(root, "val")
    assert t.extra["image_paths"] == "under val_images/" and all(t.path(i).is_file() for i in range(len(t)))
    (root / "val_images").rename(root / "val_images_256")
    lst = root / "info" / "val_filelist.txt"  # a list that names the folder itself
    lst.write_text("".join(f"val_images_256/{line}\n" for line in lst.read_text().splitlines() if line))
    t = read_webvision(root, "val")
    assert t.extra["image_paths"].startswith("relative to the root") and t.paths[0].startswith("val_images_256/")
    assert [t.path(i) for i in range(len(t))] == [expect.path(i) for i in range(len(expect))]


def test_class_balanced_subset_per_epoch():
    t = read_clothing1m(fixture_root("clothing1m"), "train")  # 70 = 5 per class x 14
    sub = ClassBalancedSubset(t.labels, 28, num_classes=14, seed=1)
    e0, e1 = sub(0), sub(1)
    assert e0.size == e1.size == sub.epoch_size == 28
    assert np.array_equal(e0, np.sort(np.unique(e0)))  # sorted, no repeats
    np.testing.assert_array_equal(np.bincount(t.labels[e0], minlength=14), np.full(14, 2))
    assert not np.array_equal(e0, e1) and np.array_equal(e0, sub(0))  # redrawn per epoch, deterministic
    excluded = ClassBalancedSubset(t.labels, 28, num_classes=14, seed=1, exclude=e0[:5])
    assert not np.isin(e0[:5], np.concatenate([excluded(e) for e in range(5)])).any()
    assert ClassBalancedSubset(t.labels, 1000, num_classes=14).epoch_size == 70


def test_balanced_quotas_water_filling():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(balanced_quotas(np.array([1, 10, 10]), 13, rng), [1, 6, 6])
    q = balanced_quotas(np.array([0, 3, 50, 50]), 20, rng)
    assert q.sum() == 20 and q[0] == 0 and q[1] == 3 and abs(int(q[2]) - int(q[3])) <= 1


# -------------------------------------------------------------------------------------------------- WebVision
def test_webvision_lists_order_and_sources():
    root = fixture_root("webvision")
    for source in ("google", "flickr", "all"):
        t = read_webvision(root, "train", source=source)
        lines = (root / "info" / f"train_filelist_{source}.txt").read_text().split("\n")
        pairs = [ln.split() for ln in lines if ln]
        assert t.paths == [p for p, _ in pairs]
        np.testing.assert_array_equal(t.labels, [int(lab) for _, lab in pairs])
        assert t.num_classes == 1000 and t.path(0).is_file()
    all_ = read_webvision(root, "train", source="all")
    parts = [len(read_webvision(root, "train", source=s)) for s in ("google", "flickr")]
    assert len(all_) == sum(parts)
    val = read_webvision(root, "val")
    assert val.image_root == root / "val_images_256" and val.path(0).is_file() and val.noise_rate() == 0.0
    assert val.class_names[3] == "n10000003 fixture class 3"


def test_mini_webvision_keeps_first_50_classes_in_order():
    root = fixture_root("webvision")
    pairs = [ln.split() for ln in (root / "info" / "train_filelist_google.txt").read_text().split("\n") if ln]
    kept = [(p, int(lab)) for p, lab in pairs if int(lab) < 50]
    t = read_mini_webvision(root, "train")
    assert 0 < len(kept) < len(pairs)  # the fixture has labels >= 50 to drop
    assert t.paths == [p for p, _ in kept] and t.num_classes == 50
    np.testing.assert_array_equal(t.labels, [lab for _, lab in kept])
    line_of = {p: n for n, (p, _) in enumerate(pairs, start=1)}
    assert t.where(3) == f"{root / 'info' / 'train_filelist_google.txt'}:{line_of[t.paths[3]]}"
    assert read_mini_webvision(root, "val").labels.max() < 50


def test_ilsvrc_val_from_explicit_list():
    root = fixture_root("webvision")
    pairs = [ln.split() for ln in (root / ILSVRC_LIST_NAME).read_text().split("\n") if ln]
    t = read_ilsvrc_val(root / ILSVRC_LIST_NAME, root / ILSVRC_DIR_NAME, num_classes=50)
    assert t.paths == [p for p, lab in pairs if int(lab) < 50] and t.path(0).is_file()
    np.testing.assert_array_equal(t.clean_labels, t.labels)


# ------------------------------------------------------------------------------------------------ noise files
@pytest.fixture(scope="module")
def animal_train():
    return read_animal10n(fixture_root("animal10n"), "train")


def test_noise_file_formats(tmp_path, animal_train):
    n = len(animal_train)
    labels = np.random.default_rng(0).integers(0, 10, size=n)
    (tmp_path / "l.json").write_text(json.dumps(labels.tolist()))
    (tmp_path / "d.json").write_text(json.dumps({"noisy": labels.tolist(), "other": [0]}))
    np.save(tmp_path / "l.npy", labels)
    np.savez(tmp_path / "one.npz", labels)
    np.savez(tmp_path / "two.npz", noisy=labels, clean=labels)
    order = np.random.default_rng(1).permutation(n)  # rows in any order, by global index
    (tmp_path / "h.csv").write_text("global_index,label\n" + "".join(f"{i},{labels[i]}\n" for i in order))
    (tmp_path / "swapped.csv").write_text("label,global_index\n" + "".join(f"{labels[i]},{i}\n" for i in order))
    (tmp_path / "n2.csv").write_text("".join(f"{i},{labels[i]}\n" for i in order))
    (tmp_path / "n1.csv").write_text("".join(f"{v}\n" for v in labels))
    for name, key in [("l.json", None), ("d.json", "noisy"), ("l.npy", None), ("one.npz", None), ("two.npz", "noisy"),
                      ("h.csv", None), ("swapped.csv", None), ("n2.csv", None), ("n1.csv", None)]:
        got = load_noise_file(tmp_path / name, num_samples=n, num_classes=10, key=key)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, labels, err_msg=name)
    t = apply_noise_file(animal_train, tmp_path / "l.npy")
    np.testing.assert_array_equal(t.labels, labels)
    assert t.label_source == str(tmp_path / "l.npy") and t.paths == animal_train.paths


@pytest.mark.parametrize("name, content, match", [
    ("short.json", "[1, 2, 3]", r"short.json: 3 labels, but the split has 60 samples"),
    ("range.json", json.dumps([0] * 59 + [10]), r"range.json: label 10 at global index 59 outside \[0, 10\)"),
    ("float.json", json.dumps([0.5] * 60), r"float.json: expected a JSON list of integer labels"),
    ("bad.json", "[1, 2", r"bad.json:1: not valid JSON"),
    ("dup.csv", "global_index,label\n0,1\n0,2\n", r"dup.csv:3: global_index 0 listed twice \(first at line 2\)"),
    ("gap.csv", "global_index,label\n" + "".join(f"{i},1\n" for i in range(59)),
     r"gap.csv: 1 of 60 global indices have no row \(first: 59\)"),
    ("word.csv", "global_index,label\n0,cat\n", r"word.csv:2: label 'cat' is not an integer"),
    ("big.csv", "global_index,label\n" + "".join(f"{i},{10 if i == 7 else 1}\n" for i in range(60)),
     r"big.csv:9: label 10 outside \[0, 10\)"),
    ("neg.txt", "".join(f"{-1 if i == 3 else 2}\n" for i in range(60)), r"neg.txt:4: label -1 outside \[0, 10\)"),
    ("neg.json", json.dumps([0] * 5 + [-2] + [0] * 54), r"neg.json: label -2 at global index 5 outside \[0, 10\)"),
    ("oob.csv", "global_index,label\n60,1\n", r"oob.csv:2: global_index 60 outside \[0, 60\)"),
    ("hdr.csv", "idx,lab\n0,1\n", r"hdr.csv:1: header must name 'global_index' and 'label'"),
])
def test_noise_file_errors_name_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_noise_file(tmp_path / name, num_samples=60, num_classes=10)


def test_noise_file_npz_needs_key_and_missing_file(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(60, dtype=np.int64), b=np.zeros(60, dtype=np.int64))
    with pytest.raises(ValueError, match=r"two.npz: holds arrays \['a', 'b'\]; pass key="):
        load_noise_file(tmp_path / "two.npz", num_samples=60, num_classes=10)
    with pytest.raises(FileNotFoundError, match="nope.npy: noise file not found"):
        load_noise_file(tmp_path / "nope.npy", num_samples=60, num_classes=10)


# ------------------------------------------------------------------------------------------ epoch plan / shards
@pytest.mark.parametrize("stick", [True, False])
@pytest.mark.parametrize("n, world", [(70, 1), (70, 3), (10, 4), (5, 8)])
def test_epoch_plan_shards_disjoint_complete_padded_at_end(n, world, stick):
    plans = [EpochPlan(n, shuffle=True, seed=2, sharding=Sharding(r, world), stick_to_shard=stick)
             for r in range(world)]
    for epoch in (0, 1):
        shards = [p.shard(epoch) for p in plans]
        # equal step counts; a shuffled shard holds at least 2 rows (never a training batch of one)
        assert len({s.size for s in shards}) == 1 and shards[0].size == max(2, -(-n // world))
        valid = np.concatenate([s[s >= 0] for s in shards])
        assert np.array_equal(np.sort(valid), np.arange(n))  # disjoint and complete
        for rank, s in enumerate(shards):
            k = int((s >= 0).sum())
            assert (s[:k] >= 0).all() and (s[k:] == -1).all()  # padding only at the end
            if stick:
                assert (s[:k] % world == rank).all()  # the rows this rank's bank shard owns


def test_epoch_plan_owned_rows_fixed_moving_rows_change_and_exclude():
    for rank in range(2):
        p = EpochPlan(50, shuffle=True, seed=0, sharding=Sharding(rank, 2))  # stick_to_shard=True by default
        s0, s3 = p.shard(0), p.shard(3)
        assert sorted(s0.tolist()) == sorted(s3.tolist()) == list(range(rank, 50, 2))
        assert not np.array_equal(s0, s3)  # same rows, new order every epoch
    moving = EpochPlan(50, shuffle=True, seed=0, sharding=Sharding(0, 2), stick_to_shard=False)
    assert set(moving.shard(0).tolist()) != set(moving.shard(3).tolist())
    ex = EpochPlan(50, shuffle=False, sharding=Sharding(1, 2), exclude=np.array([3, 7, 8]))
    assert ex.shard_len == 25 and ex.shard(0).tolist() == [i for i in range(1, 50, 2) if i not in (3, 7)] + [-1, -1]
    moving_ex = EpochPlan(50, shuffle=False, exclude=np.array([3, 7]), stick_to_shard=False)
    assert moving_ex.epoch_size == 48 and not np.isin([3, 7], moving_ex.shard(0)).any()


def test_class_balanced_subset_per_rank_draws_owned_rows():
    t = read_clothing1m(fixture_root("clothing1m"), "train")  # 70 = 5 per class x 14
    sub = ClassBalancedSubset(t.labels, 28, num_classes=14, seed=3)
    plans = [EpochPlan(len(t), shuffle=True, seed=1, sharding=Sharding(r, 2), subset=sub) for r in range(2)]
    assert plans[0].shard_len == plans[1].shard_len == 14
    rows = [p.shard(4) for p in plans]
    for rank, r in enumerate(rows):
        assert (r >= 0).all() and (r % 2 == rank).all()
    both = np.concatenate(rows)
    assert np.unique(both).size == 28 and np.bincount(t.labels[both], minlength=14).max() <= 3
    class NotOwned:
        epoch_size = 8

        def __call__(self, epoch, sharding=Sharding()):
            return np.arange(4)

    bad = EpochPlan(len(t), shuffle=True, sharding=Sharding(1, 2), subset=NotOwned())
    with pytest.raises(ValueError, match=r"gave rank 1 rows it does not own \(i % 2 != 1\)"):
        bad.shard(0)


def test_sample_uniforms_depend_only_on_seed_epoch_index():
    u = sample_uniforms(7, 3, np.arange(10_000), 3)
    assert u.dtype == np.float32 and u.shape == (10_000, 3) and 0.0 <= u.min() and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(np.corrcoef(u[:, 0], u[:, 1])[0, 1])) < 0.05
    np.testing.assert_array_equal(sample_uniforms(7, 3, np.array([9, 4]), 3), u[[9, 4]])  # batch-independent
    assert not np.array_equal(sample_uniforms(7, 4, np.arange(5), 3), u[:5])  # new epoch, new numbers
    assert not np.array_equal(sample_uniforms(8, 3, np.arange(5), 3), u[:5])

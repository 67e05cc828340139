"""WebDataset tar shards: the index against Python's tarfile, the bad shards real exports contain, the
shard-contiguous ownership (each shard on one rank, exact re-sharding to another world size), both loaders,
and (slow) 1, 2 and 3 ranks through launchers/train.py where each rank opens only its own training shards,
checked from a file-open log written by an audit hook (tests/openlog/sitecustomize.py), not from the trainer.
"""

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alr_fast.data.loaders import build_loader
from alr_fast.data.readers import read_split
from alr_fast.data.readers.tarshards import index_webdataset, read_webdataset, scan_tar
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.sharding import Sharding

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(seed: int, size=(20, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _shard(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.GNU_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sample(key: str, label, seed: int):
    return [(f"{key}.jpg", _jpeg(seed)), (f"{key}.cls", str(label).encode())]


# -------------------------------------------------------------------------------------------------- Sharding
@pytest.mark.parametrize("seed", range(6))
def test_shard_contiguous_ownership_keeps_each_shard_on_one_rank(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=int(rng.integers(1, 12)))
    blocks = tuple(np.concatenate([[0], np.cumsum(sizes)]).tolist())
    n = blocks[-1]
    for world in range(1, 6):
        ranks = [Sharding(r, world, blocks) for r in range(world)]
        owned = [s.owned(n) for s in ranks]
        np.testing.assert_array_equal(np.concatenate(owned), np.arange(n))  # a partition, in rank order
        for s, rows in zip(ranks, owned):
            assert (s.owner(rows) == s.rank).all() and (s.owner(torch.as_tensor(rows)) == s.rank).all()
            np.testing.assert_array_equal(s.local(rows), np.arange(rows.size))
            np.testing.assert_array_equal(s.global_index(np.arange(rows.size)), rows)
            assert s.num_owned(n) == rows.size and s.shard_len(n) == max(o.size for o in owned)
        for a, b in zip(blocks[:-1], blocks[1:]):  # each shard's rows on one rank
            assert len({int(Sharding(0, world, blocks).owner(np.int64(i))) for i in range(a, b)}) == 1
        # the cut points are shard boundaries nearest to r * N / W (reference written out here)
        for r in range(1, world):
            best = min(blocks, key=lambda b: (abs(b - r * n / world), b))
            assert ranks[0].rank_starts[r] == max(best, ranks[0].rank_starts[r - 1])
    # the strided rule is unchanged without blocks
    s = Sharding(1, 3)
    np.testing.assert_array_equal(s.owned(10), [1, 4, 7]) and s.local(np.array([7])) == 2


def test_bank_resharded_exactly_across_world_sizes_with_shard_ownership():
    blocks = (0, 4, 5, 11, 12, 19)
    n, k = blocks[-1], 3
    rng = np.random.default_rng(0)
    given = torch.as_tensor(rng.integers(0, k, n))
    full = torch.softmax(torch.as_tensor(rng.normal(size=(n, k)), dtype=torch.float32), 1)
    saved = []
    for r in range(2):
        bank = SoftLabelBank(given, k, sharding=Sharding(r, 2, blocks))
        bank.soft.copy_(full[bank.global_index])
        saved.append({key: v.clone() for key, v in bank.state_dict().items()})
    for world in (1, 3, 4):
        for r in range(world):
            bank = SoftLabelBank(given, k, sharding=Sharding(r, world, blocks))
            bank.load_rows_from(saved)
            torch.testing.assert_close(bank.soft, full[bank.global_index], rtol=0, atol=0)
            assert Sharding(r, world, blocks if world > 1 else None).owned(n).tolist() == bank.global_index.tolist()


# ----------------------------------------------------------------------------------------------------- index
def test_index_matches_tarfile_and_counts_what_it_skips(tmp_path):
    long_key = "deep/" + "x" * 120 + "/k"  # > 100 characters: a GNU long name / pax path
    members = (_sample("a", 2, 0) + [("a.json", b"{}")] + _sample(long_key, 0, 1) + [("b.jpg", _jpeg(2))]
               + [("c.cls", b"1")] + _sample("d", 1, 3) + [("d.png", _jpeg(4))])
    _shard(tmp_path / "000000.tar", members)
    _shard(tmp_path / "000001.tar", _sample("e", 1, 5), fmt=tarfile.PAX_FORMAT)
    summary = index_webdataset(tmp_path)["splits"]["train"]
    assert summary["skipped"] == {"other_member": 1, "no_label": 1, "no_image": 1, "extra_image": 1}
    assert summary["skipped_examples"]["no_label"] == ["000000.tar:b.jpg"]
    t = read_webdataset(tmp_path)
    assert t.paths == ["000000.tar:a.jpg", f"000000.tar:{long_key}.jpg", "000000.tar:d.jpg", "000001.tar:e.jpg"]
    assert t.labels.tolist() == [2, 0, 1, 1] and t.class_names == ["0", "1", "2"]
    assert t.shard_blocks == (0, 3, 4)
    for i, p in enumerate(t.paths):  # the bytes read by offset are tarfile's member bytes
        shard, name = p.split(":", 1)
        with tarfile.open(tmp_path / shard) as tar:
            assert t.read_bytes(i) == tar.extractfile(name).read()
    # the same offsets and sizes as tarfile's own parser, member by member
    with tarfile.open(tmp_path / "000000.tar") as tar:
        ref = [(m.name, m.offset_data, m.size) for m in tar.getmembers()]
    assert [(n, o, s) for n, o, s, _ in scan_tar(tmp_path / "000000.tar")] == ref


def test_bad_shards_are_errors_naming_shard_and_offset(tmp_path):
    good = _shard(tmp_path / "g" / "000000.tar", _sample("a", 0, 0) + _sample("b", 1, 1))
    raw = good.read_bytes()
    cases = {
        "cut in a member": (raw[:700], r"000000.tar: ends early: the member at byte 0 needs \d+ bytes"),
        "cut in a header": (raw[:1536 + 100], r"ends early, inside a tar header at byte"),
        "no end blocks": (raw[: len(raw.rstrip(b"\0")) + (-len(raw.rstrip(b"\0"))) % 512],
                          r"without the end-of-archive blocks"),
        "corrupt header": (raw[:10] + b"\xff" + raw[11:], r"corrupt tar header at byte 0 \(checksum\)"),
    }
    for i, (what, (data, match)) in enumerate(cases.items()):
        d = tmp_path / f"bad{i}"
        d.mkdir()
        (d / "000000.tar").write_bytes(data)
        with pytest.raises(ValueError, match=match):
            index_webdataset(d)
    _shard(tmp_path / "lab" / "000000.tar", [("a.jpg", _jpeg(0)), ("a.cls", b"dog")])
    with pytest.raises(ValueError, match=r"000000.tar: member a.cls: label 'dog' is not an integer"):
        index_webdataset(tmp_path / "lab")
    index_webdataset(tmp_path / "g")
    os.utime(good, ns=(1, 1))
    with pytest.raises(ValueError, match=r"000000.tar: changed \(or gone\) since .* run `python -m alr_fast data index"):
        read_webdataset(tmp_path / "g")
    (tmp_path / "none").mkdir()
    _shard(tmp_path / "none" / "000000.tar", _sample("a", 0, 0))
    with pytest.raises(FileNotFoundError, match="no index for split 'train'; run `python -m alr_fast data index"):
        read_webdataset(tmp_path / "none")


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_both_loaders_read_tar_members(tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    for s in range(3):
        _shard(tmp_path / f"{s:06d}.tar", [m for i in range(s + 1) for m in _sample(f"s{s}i{i}", i % 2, 10 * s + i)])
    index_webdataset(tmp_path)
    t = read_split("webdataset", tmp_path, "train")
    loader = build_loader(t, train=False, batch_size=6, backend=backend, crop=16, resize=16, workers=1)
    x, idx = next(iter(loader.epoch(0)))
    assert idx.tolist() == list(range(6))
    import torchvision.transforms as T

    tf = T.Compose([T.Resize(16, antialias=True), T.CenterCrop(16), T.ToTensor(), T.Normalize(t.mean, t.std)])
    for i, p in enumerate(t.paths):
        shard, name = p.split(":", 1)
        with tarfile.open(tmp_path / shard) as tar:
            ref = tf(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("RGB"))
        assert float((x[i] - ref).abs().mean()) < 0.05, (backend, p)
    # on several ranks a loader takes the Sharding built with the table's shard blocks (the bank's), nothing else
    kw = dict(train=False, batch_size=6, backend=backend, crop=16, resize=16, workers=1)
    assert build_loader(t, sharding=Sharding(1, 2, t.shard_blocks), **kw).shard(0).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="read under whole tar shards per rank but the sharding given has blocks=None"):
        build_loader(t, sharding=Sharding(1, 2), **kw)


# ------------------------------------------------------------------------------ 1, 2, 3 ranks, opened shards
@pytest.mark.slow
def test_each_rank_opens_only_its_training_shards(tmp_path):
    from alr_fast.cli import main
    from conftest import free_port
    from test_distributed import run

    root = tmp_path / "wds"
    assert main(["data", "make-fixture", "--dataset", "webdataset", "--out", str(root), "--num-train", "13",
                 "--num-test", "4", "--image-size", "40x36"]) == 0
    assert main(["data", "index", "--dataset", "webdataset", "--root", str(root)]) == 0
    train = read_webdataset(root, "train")
    shards = [os.path.realpath(root / s) for s in train.tar["shards"]]
    # A small CNN: what is checked is which shards each rank opens (training, evaluation, exports).
    args = ["--recipe", "own-data", "--data-root", str(root), "--set", "data.dataset=webdataset", "--epochs", "2",
            "--batch-size", "4", "--image-size", "32", "--no-progress", "--set", "model.name=small_cnn",
            "--set", "train.threads=1", "--set", "data.workers=1", "--set", "train.tensorboard=false",
            "--set", "data.val_fraction=0"]
    hook = str(ROOT / "tests" / "openlog")
    for world, loader in ((1, "torch"), (2, "dali"), (3, "torch")):
        logs, out = tmp_path / f"log{world}", tmp_path / f"run{world}"
        logs.mkdir()
        env = {"ALR_TEST_OPEN_LOG": str(logs),
               "PYTHONPATH": os.pathsep.join([hook, *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, str(ROOT / "launchers" / "train.py")] if world == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
            str(free_port()), str(ROOT / "launchers" / "train.py")]
        run([*cmd, *args, "--out", str(out), "--set", f"data.loader={loader}"], tmp_path, env_extra=env)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == world
        assert len(np.load(out / "soft_labels.npy")) == 13
        opened: dict[str, set] = {}
        for f in logs.iterdir():
            rank = f.name.split(".")[1]
            opened.setdefault(rank, set()).update(line for line in f.read_text().splitlines() if line in shards)
        for r in range(world):
            s = Sharding(r, world, train.shard_blocks if world > 1 else None)
            rows = s.owned(len(train))
            mine = {shards[i] for i in np.unique(train.tar["shard"][rows])}
            rank = "none" if world == 1 else str(r)
            assert opened.get(rank, set()) == mine, (world, r, sorted(opened.get(rank, set())), sorted(mine))
        if world > 1:  # every training shard opened by exactly one rank
            assert sorted(p for r in opened.values() for p in r) == sorted(set(shards) & set().union(*opened.values()))


def test_review_of_a_tar_shard_run_shows_member_images_and_class_names(tmp_path):
    import csv as csvmod

    from alr_fast.cli import main
    from alr_fast.config import apply_overrides, config_to_dict
    from alr_fast.labels.review import review_run
    from alr_fast.recipes import get_recipe

    root = tmp_path / "wds"
    assert main(["data", "make-fixture", "--dataset", "webdataset", "--out", str(root), "--num-train", "9",
                 "--num-test", "3", "--image-size", "24x20"]) == 0
    index_webdataset(root)
    t = read_webdataset(root)
    cfg = apply_overrides(get_recipe("own-data"), ["data.dataset=webdataset", f"data.data_root={root}"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    with open(run / "refined_labels.csv", "w", newline="") as f:
        w = csvmod.writer(f)
        w.writerow(["global_index", "given_label", "refined_label", "confidence", "suspect_rank"])
        for i in range(9):
            w.writerow([i, int(t.labels[i]), (int(t.labels[i]) + 1) % 4, "0.9", 9 - i])
    review_run(run, top=3, quiet=True)
    rows = list(csvmod.DictReader(open(run / "review.csv", encoding="utf-8")))
    assert [int(r["global_index"]) for r in rows] == [8, 7, 6]
    for r in rows:
        i = int(r["global_index"])
        shard, member = r["path"].rsplit(":", 1)
        assert Path(shard) == root / t.tar["shards"][int(t.tar["shard"][i])] and member == t.paths[i].split(":")[1]
        assert r["given_name"] == t.class_names[int(t.labels[i])]  # the real names from class_names.json
        with tarfile.open(shard) as tar:
            assert t.read_bytes(i) == tar.extractfile(member).read()


def test_data_check_of_tar_shards(tmp_path, capsys):
    from alr_fast.cli import main

    root = tmp_path / "wds"
    assert main(["data", "make-fixture", "--dataset", "webdataset", "--out", str(root), "--num-train", "7",
                 "--num-test", "3", "--image-size", "24x20"]) == 0
    assert main(["data", "check", "--dataset", "webdataset", "--root", str(root)]) == 1  # not indexed yet
    assert "run `python -m alr_fast data index" in capsys.readouterr().err
    assert main(["data", "index", "--dataset", "webdataset", "--root", str(root)]) == 0
    assert "train: 7 samples in" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "webdataset", "--root", str(root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    train = summary["splits"]["train"]
    assert summary["usable"] and train["images_checked"] == 7 and sum(train["per_class"].values()) == 7
    assert summary["layout"]["train"]["skipped"] == {"other_member": 7}  # the KEY.json members, counted
    # a member that does not decode is reported with its shard:member
    t = read_webdataset(root)
    shard = root / t.tar["shards"][0]
    raw = bytearray(shard.read_bytes())
    off = int(t.tar["offset"][0])
    raw[off: off + int(t.tar["size"][0])] = b"\0" * int(t.tar["size"][0])
    shard.write_bytes(bytes(raw))
    index_webdataset(root)
    assert main(["data", "check", "--dataset", "webdataset", "--root", str(root)]) == 1
    bad = json.loads(capsys.readouterr().out)["splits"]["train"]["unreadable_examples"]
    assert [b["index"] for b in bad] == [0] and bad[0]["path"].endswith(f"{t.paths[0]}")

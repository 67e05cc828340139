"""DALI CPU pipelines and the torchvision path: shapes, normalisation, indices, shards, padding, agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_fixtures import BACKENDS, collect, fixture_root, needs_dali, pil_rgb

from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.dali import DaliLoader, dali_placement
from alr_fast.data.loaders.plan import ClassBalancedSubset
from alr_fast.data.loaders.torch_loader import TorchLoader
from alr_fast.data.loaders.transforms import recipe_transform
from alr_fast.data.readers import read_split
from alr_fast.data.readers.cifar import read_cifar
from alr_fast.data.readers.webvision import read_ilsvrc_val
from alr_fast.loss.sharding import Sharding

# Tolerance of DALI vs torchvision on the deterministic eval transform (resize shorter side + centre crop),
# in grey levels of the 0..255 input. Both decode with libjpeg-turbo's default (ISLOW) IDCT - ANIMAL-10N,
# which needs no resize, matches bit for bit - and both use the same geometry (alr_fast.data.loaders.dali computes
# torchvision's output sizes and centre offsets). What remains is the resampler's arithmetic: PIL rounds
# fixed-point filter weights, DALI interpolates in float, so a pixel may land on the neighbouring grey level.
# Measured on the fixtures: max 1 level, mean 0.13-0.16. Allowed: max 2 levels anywhere, mean 0.35.
EVAL_MAX_LEVELS = 2.0
EVAL_MEAN_LEVELS = 0.35

FILE_DATASETS = [("animal10n", "animal10n", "test"), ("clothing1m", "clothing1m", "test"),
                 ("webvision", "webvision", "val"), ("mini-webvision", "webvision", "val")]


def collect_from(loader, epoch: int, start_step: int):
    xs, ids = zip(*loader.epoch(epoch, start_step=start_step))
    return torch.cat(xs), torch.cat(ids), [int(i.shape[0]) for i in ids]


def _table(name, fixture, split):
    return read_split(name, fixture_root(fixture), split)


def _levels(x: torch.Tensor, std) -> torch.Tensor:
    """Normalised values back to 0..255 grey-level units (differences only: the mean cancels)."""
    return x.double() * torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1) * 255.0


def test_dali_placement_is_decided_in_one_place():
    cpu = dali_placement("cpu")
    assert cpu.decoder == "cpu" and cpu.device_id is None and not cpu.gpu
    gpu = dali_placement("cuda:1")
    assert gpu.decoder == "mixed" and gpu.device_id == 1 and gpu.gpu
    with pytest.raises(ValueError, match="DALI outputs go to 'cpu' or 'cuda'"):
        dali_placement("meta")


@needs_dali
@pytest.mark.parametrize("name, fixture, split", FILE_DATASETS)
def test_dali_matches_torchvision_on_eval_transform(name, fixture, split):
    t = _table(name, fixture, split)
    dali = build_loader(t, train=False, batch_size=8, backend="dali", workers=1)
    tv = build_loader(t, train=False, batch_size=8, backend="torch", workers=0)
    xd, id_d, sizes = collect(dali)
    xt, id_t, _ = collect(tv)
    np.testing.assert_array_equal(id_d.numpy(), np.arange(len(t)))  # eval: every row once, in order
    assert torch.equal(id_d, id_t) and xd.dtype == torch.float32 and xd.shape == xt.shape
    assert xd.shape[1:] == (3, 64, 64) if name == "animal10n" else xd.shape[1:] == (3, 224, 224)
    diff = (_levels(xd, t.std) - _levels(xt, t.std)).abs()
    assert diff.max().item() <= EVAL_MAX_LEVELS and diff.mean().item() <= EVAL_MEAN_LEVELS, (
        f"max {diff.max().item():.3f}, mean {diff.mean().item():.4f} grey levels")
    assert sizes == [8] * (len(t) // 8) + ([len(t) % 8] if len(t) % 8 else [])
@needs_dali
def test_dali_normalisation_against_numpy():
    # ANIMAL-10N eval is decode + normalise only (64 x 64 images): check every value against PIL + numpy.
    t = _table("animal10n", "animal10n", "test")
    x, idx, _ = collect(DaliLoader(t, recipe_transform("animal10n", train=False), batch_size=7, shuffle=False,
                                   num_threads=1))
    for row in (0, 6, 19):
        pixels = pil_rgb(t.path(int(idx[row]))).astype(np.float64) / 255.0
        ref = ((pixels - np.array(t.mean)) / np.array(t.std)).transpose(2, 0, 1)
        np.testing.assert_allclose(x[row].double().numpy(), ref, atol=1e-5)
@needs_dali
def test_dali_cifar_eval_is_exact_and_train_is_a_padded_crop():
    t = read_cifar(fixture_root("cifar10"), "cifar10", "train")
    mean = np.array(t.mean).reshape(1, 1, 3) * 255.0
    std = np.array(t.std).reshape(1, 1, 3) * 255.0
    ev = DaliLoader(t, recipe_transform("cifar10", train=False), batch_size=32, shuffle=False, num_threads=1)
    x, idx, sizes = collect(ev)
    assert sizes == [32, 32, 32, 4]
    ref = ((t.images[idx.numpy()] - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.double().numpy(), ref, atol=1e-5)

    tr = DaliLoader(t, recipe_transform("cifar10", train=True), batch_size=32, shuffle=True, seed=5, num_threads=1)
    x, idx, _ = collect(tr, epoch=2)
    assert sorted(idx.tolist()) == list(range(100))
    offsets, flips = set(), 0
    pad_value = (-mean / std).reshape(3, 1, 1)  # zero padding happens before normalisation
    for row in range(x.shape[0]):
        full = np.broadcast_to(pad_value, (3, 40, 40)).copy()
        full[:, 4:36, 4:36] = ((t.images[int(idx[row])] - mean) / std).transpose(2, 0, 1)
        got = x[row].double().numpy()
        match = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                 if np.allclose(got, (full[:, dy:dy + 32, dx:dx + 32][:, :, ::-1] if f
                                      else full[:, dy:dy + 32, dx:dx + 32]), atol=1e-5)]
        assert match, f"row {row}: not a 32 px crop of the 4 px zero-padded image"
        offsets.add(match[0][:2])
        flips += match[0][2]
    assert len(offsets) > 10 and 0 < flips < x.shape[0]  # crops and flips are random


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world, stick", [(1, True), (3, True), (3, False)])
def test_shards_disjoint_complete_and_no_duplicate_reaches_the_loss(backend, world, stick):
    t = _table("clothing1m", "clothing1m", "train")  # 70 rows: 70 / 3 -> shards of 24, padded with -1
    valid_all = []
    for rank in range(world):
        loader = build_loader(t, train=True, batch_size=16, backend=backend, workers=1, sharding=Sharding(rank, world),
                              seed=4, stick_to_shard=stick)
        x, idx, sizes = collect(loader, epoch=1)
        assert len(sizes) == len(loader) == -(-(-(-70 // world)) // 16)  # same step count on every rank
        assert x.shape[1:] == (3, 224, 224) and torch.isfinite(x).all()
        np.testing.assert_array_equal(idx.numpy(), loader.shard(1))  # the plan, in order
        valid = idx[idx >= 0]
        assert valid.unique().numel() == valid.numel()  # no duplicated sample
        assert (x[idx < 0] == 0).all()  # padding rows: zero images, index -1
        if stick:
            assert (valid % world == rank).all()  # only rows this rank's bank shard owns
        valid_all.append(valid)
    assert sorted(torch.cat(valid_all).tolist()) == list(range(70))  # disjoint and complete


@pytest.mark.parametrize("backend", BACKENDS)
def test_resumed_epoch_repeats_the_uninterrupted_one(backend):
    # Clothing1M train: random crop + flip, drawn per (seed, epoch, global index): a resume at step 2 gives
    # exactly the last batches of the full epoch, images included.
    t = _table("clothing1m", "clothing1m", "train")
    loader = build_loader(t, train=True, batch_size=16, backend=backend, workers=1, seed=6, sharding=Sharding(1, 2))
    x_full, i_full, sizes = collect(loader, epoch=3)
    x_tail, i_tail, _ = collect_from(loader, 3, 2)
    assert torch.equal(i_tail, i_full[32:]) and torch.equal(x_tail, x_full[32:])
    other = collect(loader, epoch=4)[0]
    assert not torch.equal(other, x_full)  # a new epoch draws new crops
    with pytest.raises(ValueError, match="start_step 9 outside"):
        next(iter(loader.epoch(0, start_step=9)))
@needs_dali
def test_last_partial_batch_has_no_repeats_dali():
    # 28 rows, batch 12: the reader pads the last batch with repeats; none of them may come out.
    t = _table("clothing1m", "clothing1m", "val")
    x, idx, sizes = collect(build_loader(t, train=True, batch_size=12, backend="dali", workers=1))
    assert sizes == [12, 12, 4] and sorted(idx.tolist()) == list(range(28))
@needs_dali
def test_train_order_is_the_same_for_both_backends_and_epochs_differ():
    t = _table("animal10n", "animal10n", "train")
    kw = dict(train=True, batch_size=16, workers=1, seed=9)
    dali, tv = build_loader(t, backend="dali", **kw), build_loader(t, backend="torch", **kw)
    i0 = collect(dali, 0)[1]
    assert torch.equal(i0, collect(tv, 0)[1])
    assert not torch.equal(i0, collect(dali, 1)[1])
    # ANIMAL-10N train is flip-only: each DALI row equals the torchvision row or its mirror image.
    xd, xt = collect(dali, 0)[0], collect(tv, 0)[0]
    same = (xd - xt).abs().flatten(1).amax(1) < 1e-4
    mirrored = (xd - xt.flip(-1)).abs().flatten(1).amax(1) < 1e-4
    assert (same | mirrored).all()


def test_torch_path_reproducible_across_worker_counts():
    t = _table("webvision", "webvision", "train")
    kw = dict(train=True, batch_size=16, backend="torch", seed=3)
    x0 = collect(build_loader(t, workers=0, **kw), 2)[0]
    x2 = collect(build_loader(t, workers=2, **kw), 2)[0]
    assert torch.equal(x0, x2)
@needs_dali
def test_stick_to_shard_keeps_owned_rows_per_rank():
    t = _table("animal10n", "animal10n", "train")
    loader = build_loader(t, train=True, batch_size=8, backend="dali", workers=1, sharding=Sharding(1, 2))
    e0, e1 = collect(loader, 0)[1], collect(loader, 1)[1]
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(1, 60, 2)) and not torch.equal(e0, e1)
    predict = build_loader(t, train=False, batch_size=8, backend="dali", workers=1, sharding=Sharding(1, 2))
    assert collect(predict, 0)[1].tolist() == list(range(1, 60, 2))  # eval: owned rows in index order
@needs_dali
def test_class_balanced_subset_through_the_loader():
    t = _table("clothing1m", "clothing1m", "train")
    sub = ClassBalancedSubset(t.labels, 28, num_classes=14, seed=0)
    for world in (1, 2):
        for rank in range(world):
            loader = build_loader(t, train=True, batch_size=10, backend="dali", workers=1, subset=sub,
                                  sharding=Sharding(rank, world))
            assert len(loader) == -(-(28 // world) // 10)
            for epoch in (0, 1):
                idx = collect(loader, epoch)[1]
                assert sorted(idx.tolist()) == sub(epoch, Sharding(rank, world)).tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_outputs(dtype, backend):
    t = _table("animal10n", "animal10n", "test")
    x32 = collect(build_loader(t, train=False, batch_size=20, backend=backend, workers=1), 0)[0]
    x16 = collect(build_loader(t, train=False, batch_size=20, backend=backend, workers=1, dtype=dtype), 0)[0]
    assert x16.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2  # half: 11-bit mantissa; bf16: 8-bit, |x| < 3
    torch.testing.assert_close(x16.float(), x32, atol=tol, rtol=0)
@needs_dali
def test_random_resized_crop_and_ilsvrc_table():
    root = fixture_root("webvision")
    t = read_ilsvrc_val(root / "ilsvrc2012_val_list.txt", root / "ilsvrc2012_val")
    x, idx, _ = collect(build_loader(t, train=True, batch_size=8, backend="dali", workers=1))
    assert x.shape[1:] == (3, 224, 224) and sorted(idx.tolist()) == list(range(len(t)))
    x, _, _ = collect(build_loader(t, train=False, batch_size=8, backend="dali", workers=1, crop=299))
    assert x.shape[1:] == (3, 299, 299)


def test_loader_argument_errors():
    t = _table("animal10n", "animal10n", "test")
    spec = recipe_transform("animal10n", train=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        DaliLoader(t, spec, batch_size=4, shuffle=False, dtype="int8")
    with pytest.raises(ValueError, match="pad is for in-memory arrays"):
        TorchLoader(t, recipe_transform("cifar10", train=True), batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_loader(t, train=False, batch_size=4, backend="opencv")
@needs_dali
def test_dali_pipeline_survives_an_unfinished_epoch():
    # The pipeline persists across epochs (reset at each epoch's end); an epoch left early is rebuilt.
    t = _table("animal10n", "animal10n", "train")
    loader = build_loader(t, train=True, batch_size=16, backend="dali", workers=1, seed=1)
    first = next(iter(loader.epoch(0)))
    assert first[1].tolist() == loader.shard(0)[:16].tolist()
    for epoch in (1, 2):
        np.testing.assert_array_equal(collect(loader, epoch)[1].numpy(), loader.shard(epoch))
    pipe = loader._pipe
    np.testing.assert_array_equal(collect(loader, 3)[1].numpy(), loader.shard(3))
    assert loader._pipe is pipe  # finished epochs reuse the pipeline
@needs_dali
def test_exif_orientation_is_ignored_by_both_backends(tmp_path):
    # A photo carrying EXIF orientation 6 ("rotate 90"): PIL/torchvision ignore it, so DALI must too.
    from PIL import Image
    from test_data_fixtures import fresh_copy

    root = fresh_copy("animal10n", tmp_path)
    t = read_split("animal10n", root, "test")
    with Image.open(t.path(2)) as im:
        pixels = im.convert("RGB").copy()
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels.transpose(Image.Transpose.TRANSPOSE).save(t.path(2), quality=95, exif=exif.tobytes())
    xd = collect(build_loader(t, train=False, batch_size=20, backend="dali", workers=1))[0]
    xt = collect(build_loader(t, train=False, batch_size=20, backend="torch", workers=0))[0]
    assert (_levels(xd, t.std) - _levels(xt, t.std)).abs().max().item() < 1e-3


def test_a_process_with_live_loader_workers_exits(tmp_path):
    """Workers ignore SIGTERM (a group signal must not kill them mid-step), so multiprocessing's exit hook, which
    terminates daemonic children with SIGTERM and then joins them, would wait for ever on a loader's persistent
    workers (a finished run hung at exit). The loader stops its own workers first: the process must exit."""
    import subprocess
    import sys
    import textwrap

    from test_data_fixtures import fixture_root as _root

    script = textwrap.dedent(f"""
        from alr_fast.data.loaders.torch_loader import TorchLoader
        from alr_fast.data.loaders.transforms import recipe_transform
        from alr_fast.data.readers import read_split
        t = read_split("cifar10", {str(_root("cifar10"))!r}, "train")
        loader = TorchLoader(t, recipe_transform("cifar10", train=False), batch_size=4, shuffle=False,
                             num_workers=2)
        batches = loader.epoch(0)
        next(batches)          # workers alive, an epoch left unfinished, the iterator still referenced
        print("ok", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_group_signal_while_workers_start_does_not_kill_them(tmp_path, sig):
    """A batch job's stop signal goes to the whole process group. torch's worker loop installs a SIGTERM handler
    that kills the worker for any sender but its parent, before the loader's worker_init_fn makes the worker
    ignore the signal: a signal landing in between killed a worker ('DataLoader worker ... exited unexpectedly',
    seen when a preemption arrived while the end-of-epoch evaluation started its workers). Here every worker
    signals itself right in that window; they must survive, and the parent's signal mask must be as before."""
    import subprocess
    import sys
    import textwrap

    from test_data_fixtures import fixture_root as _root

    script = textwrap.dedent(f"""
        import os, signal
        from torch.utils.data._utils import signal_handling
        from alr_fast.data.loaders.torch_loader import TorchLoader
        from alr_fast.data.loaders.transforms import recipe_transform
        from alr_fast.data.readers import read_split

        torch_handlers = signal_handling._set_worker_signal_handlers
        def handlers_then_signal(*a):       # runs in each worker, before worker_init_fn
            torch_handlers(*a)
            os.kill(os.getpid(), signal.{sig})
        signal_handling._set_worker_signal_handlers = handlers_then_signal
        signal.signal(signal.{sig}, lambda *a: print("parent got a signal", flush=True))
        t = read_split("cifar10", {str(_root("cifar10"))!r}, "train")
        for persistent in (True, False):
            loader = TorchLoader(t, recipe_transform("cifar10", train=False), batch_size=4, shuffle=False,
                                 num_workers=2, persistent_workers=persistent)
            for epoch in (0, 1):
                n = sum(len(idx) for _, idx in loader.epoch(epoch))
                assert n == len(t), (n, len(t))
                assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
            loader.close()
        print("ok", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-500:] + proc.stderr[-2000:]

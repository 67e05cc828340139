"""The production rehearsal on a CPU: every launcher started as users start it (``deepspeed --num_gpus 2`` or
``torchrun``, 2 gloo ranks) with its recipe's real backbone (BatchNorm and all), bf16 and fp32, ZeRO 0/1/2, gradient
accumulation, the DALI and the torchvision loaders, on fixtures with odd sample counts; SIGKILL mid-epoch on
both ranks then ``--resume``. Underneath: buffer synchronisation across ranks, the DeepSpeed precision
config, ZeRO-3 refused up front.

CI budget (about 3 minutes on 2 cores): each launcher run combines options whose failures still point at one
place (a dtype error names bf16, an assertion in ZeRO names the stage), at 32 px, 4 images per rank, 2 epochs.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.recipes import get_recipe
from conftest import free_port
from test_distributed import run

pytestmark = pytest.mark.slow  # end-to-end runs through the launchers: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
# Two epochs (the second refines the bank), 4 images per rank and step, 32 px crops, one thread per rank.
TINY = ["--epochs", "2", "--batch-size", "4", "--image-size", "32", "--no-progress",
        "--set", "method.warmup_epochs=1", "--set", "train.threads=1", "--set", "data.workers=1",
        "--set", "train.tensorboard=false"]
# Odd sample counts everywhere: 2 ranks own unequal shards and some rank's last batch is a single image.
FIXTURES = {
    "cifar10": ["--num-train", "11", "--num-test", "5"],
    "animal10n": ["--num-train", "17", "--num-test", "9", "--image-size", "40x40"],
    "clothing1m": ["--num-train", "37", "--num-test", "9", "--image-size", "40x40"],
    "webvision": ["--num-train", "35", "--num-test", "9", "--image-size", "40x40"],  # Google list; 27 in mini
}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """``fixture_root(dataset)``: a dataset folder made by ``python -m alr_fast data make-fixture`` (in-process,
    once per module)."""
    from alr_fast.cli import main

    base = tmp_path_factory.mktemp("rehearsal_fixtures")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            assert main(["data", "make-fixture", "--dataset", name, "--out", str(base / name), *FIXTURES[name]]) == 0
            made[name] = base / name
        return made[name]

    return get


def launcher(name: str) -> str:
    return str(ROOT / "launchers" / f"{name}.py")


def shm_left(port: int) -> list[str]:
    """DeepSpeed CPU all-reduce workspaces of a run on ``port`` still in /dev/shm (each ~66 MB of RAM)."""
    shm = Path("/dev/shm")
    return sorted(p.name for p in shm.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")) if shm.is_dir() else []


def deepspeed2(script: str, args: list[str], cwd, **kw):
    """A 2-rank run under the deepspeed launcher; afterwards no shared-memory workspace of the run is left behind
    (DeepSpeed never unlinks them; the trainer does once both ranks have mapped them)."""
    port = free_port()
    proc = run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), launcher(script), *args], cwd, **kw)
    assert shm_left(port) == [], f"left in /dev/shm by the run on port {port}: {shm_left(port)}"
    return proc


def torchrun2(script: str, args: list[str], cwd, **kw):
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), launcher(script), *args], cwd, **kw)


def check_run(out: Path, recipe: str, *, precision: str, num_train: int) -> dict:
    """What every rehearsed run must leave behind; returns model.pt's state dict."""
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == get_recipe(recipe).model.name  # the recipe's backbone, not a toy
    assert cfg["train"]["precision"] == precision
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    # The end-of-run digest covers parameters and buffers; the trainer raises if ranks differ.
    assert len(summary["rank_weight_digests"]) == 2 and len(set(summary["rank_weight_digests"])) == 1
    state = torch.load(out / "model.pt", weights_only=True)
    assert any(k.endswith("running_var") for k in state), "the recipe's backbone should have BatchNorm"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {dtype}
    assert all(bool(torch.isfinite(v.float()).all()) for v in state.values())
    # BatchNorm statistics moved away from their initial values (running_var starts at exactly 1).
    assert any(not bool((v == 1).all()) for k, v in state.items() if k.endswith("running_var"))
    # Every sample's bank row was exported: the odd shard and the one-image last batch were not dropped.
    assert len((out / "refined_labels.csv").read_text().splitlines()) - 1 == num_train
    soft = np.load(out / "soft_labels.npy")
    assert soft.shape[0] == num_train and np.allclose(soft.sum(1), 1.0, atol=1e-2)
    return state


# ------------------------------------------------------------------ the launchers


def test_webvision_zero2_accum2_sigkill_then_resume(tmp_path, fixture_root):
    """deepspeed, the full-WebVision recipe (ResNet-50, 1,000 classes, bf16 bank) on the Google list (35
    samples: shards of 18/17), fp32 + ZeRO 2 + grad_accum 2 + the torchvision loader; both ranks SIGKILLed
    mid-epoch 1, then --resume: bitwise the uninterrupted run's weights (buffers included), bank and
    predictions. (DALI's fused random-resized crop draws from the pipeline's own stream and is not replayed
    on a mid-epoch resume, alr_fast/data/loaders/dali.py, so DALI is rehearsed in the other runs.) fp32 because
    bf16 convolutions run 10-15x slower than fp32 on CPUs without AVX-512 BF16 (benchmarks/bench_bf16_cpu.py;
    three bf16 ResNet-50 launches took 3 minutes); bf16 is rehearsed with a real backbone in the cifar and animal10n runs, and a bf16 ZeRO 1/2 resume
    (on another world size too) in tests/test_distributed.py."""
    root = fixture_root("webvision")
    args = ["--recipe", "webvision", "--data-root", str(root), *TINY, "--set", "data.webvision_source=google",
            "--set", "train.precision=fp32", "--set", "train.zero_stage=2", "--set", "train.grad_accum=2",
            "--set", "data.loader=torch", "--save-every", "4"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    deepspeed2("train_webvision", [*args, "--out", str(ref)], tmp_path)
    ref_state = check_run(ref, "webvision", precision="fp32", num_train=35)
    # 5 steps per epoch; checkpoints at global steps 4, 5 (epoch end), 8; killed right after step 9.
    killed = deepspeed2("train_webvision", [*args, "--out", str(cut)], tmp_path,
                        env_extra={"ALR_FAST_FAULT_AT_STEP": "9"}, expect=None)
    assert killed.returncode != 0 and not (cut / "summary.json").exists()
    resumed = deepspeed2("train_webvision", [*args, "--out", str(cut), "--resume"], tmp_path)
    assert "step 3 of the epoch, global step 8, world size 2 -> 2" in resumed.stderr
    cut_state = check_run(cut, "webvision", precision="fp32", num_train=35)
    assert_resumed_matches(ref_state, cut_state, ref, cut)


def assert_resumed_matches(ref_state: dict, cut_state: dict, ref: Path, cut: Path) -> None:
    assert ref_state.keys() == cut_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], cut_state[k]), k
    for name in ("soft_labels.npy", "pred_probs.npy"):
        assert (ref / name).read_bytes() == (cut / name).read_bytes(), name


def test_clothing1m_torchrun_zero1_dali(tmp_path, fixture_root):
    """torchrun, ResNet-50, fp32 + ZeRO 1 + DALI (CPU decoding), an odd class-balanced subset per epoch."""
    root = fixture_root("clothing1m")
    out = tmp_path / "c1m"
    torchrun2("train_clothing1m", ["--data-root", str(root), "--out", str(out), *TINY,
                                   "--set", "train.precision=fp32", "--set", "train.zero_stage=1",
                                   "--set", "data.loader=dali", "--set", "data.subset_size=21"], tmp_path)
    check_run(out, "clothing1m", precision="fp32", num_train=37)


def test_cifar_bf16_zero0_accum2(tmp_path, fixture_root):
    """deepspeed, the recipe's CIFAR ResNet, bf16 without ZeRO (DeepSpeed's own BF16 optimizer) + grad_accum 2,
    DALI (from memory). 16 px crops and 11 samples (shards of 6/5): bf16 convolutions run 10-15x slower than
    fp32 on CPUs without AVX-512 BF16, and this is the rehearsal's bf16 run with a real backbone."""
    root = fixture_root("cifar10")
    out = tmp_path / "c10"
    deepspeed2("train_cifar", ["--data-root", str(root), "--out", str(out), *TINY, "--image-size", "16",
                               "--set", "train.precision=bf16", "--set", "train.zero_stage=0",
                               "--set", "train.grad_accum=2", "--set", "data.loader=dali"], tmp_path)
    check_run(out, "cifar10", precision="bf16", num_train=11)


def test_animal10n_zero2_dali(tmp_path, fixture_root):
    """deepspeed, the recipe's VGG (140M parameters: checkpoints off, CI time), fp32 + ZeRO 2 + DALI (the
    other ZeRO 2 runs use the torchvision loader). fp32: a bf16 forward and backward of 4 images takes 12x
    fp32's on a CPU without AVX-512 BF16 (benchmarks/results/ci/bf16_cpu.json)."""
    root = fixture_root("animal10n")
    out = tmp_path / "a10n"
    deepspeed2("train_animal10n", ["--data-root", str(root), "--out", str(out), *TINY,
                                   "--set", "train.precision=fp32", "--set", "train.zero_stage=2",
                                   "--set", "data.loader=dali", "--set", "train.save_every_epoch=false"], tmp_path)
    check_run(out, "animal10n", precision="fp32", num_train=17)


def test_train_py_mini_webvision_torchrun_zero2_accum2(tmp_path, fixture_root):
    """torchrun, the generic launcher with the mini-WebVision recipe (its backbone needs >= 75 px), fp32 +
    ZeRO 2 + grad_accum 2 + the torchvision DataLoader, 27 samples (shards of 14/13), no checkpoints (CI time)."""
    root = fixture_root("webvision")
    out = tmp_path / "mwv"
    torchrun2("train", ["--recipe", "mini-webvision", "--data-root", str(root), "--out", str(out), *TINY,
                        "--image-size", "75", "--set", "train.precision=fp32", "--set", "train.zero_stage=2",
                        "--set", "train.grad_accum=2", "--set", "data.loader=torch",
                        "--set", "train.save_every_epoch=false"], tmp_path)
    check_run(out, "mini-webvision", precision="fp32", num_train=27)


# ------------------------------------------------------------------ the pieces underneath


@pytest.mark.parametrize("overrides, message", [
    (["train.zero_stage=3"], "train.zero_stage: must be 0, 1 or 2, got 3"),
    # a checkpoint inside an accumulation window would lose the window's partial gradient on resume
    (["train.grad_accum=2", "train.save_every=3"], "train.save_every: must be a multiple of train.grad_accum (2)"),
])
def test_refused_up_front(capsys, overrides, message):
    from alr_fast.cli import main

    assert main(["train", "--recipe", "demo", *(a for o in overrides for a in ("--set", o))]) == 2
    assert message in capsys.readouterr().err


def test_precision_config_and_input_cast():
    from alr_fast.train.precision import ds_precision_config, model_input

    bf16 = ds_precision_config("bf16")
    assert bf16["bf16"]["enabled"] and not bf16["fp16"]["enabled"] and bf16["data_types"]["buffer_dtype"] == "bf16"
    fp16 = ds_precision_config("fp16")
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    fp32 = ds_precision_config("fp32")
    assert not fp32["bf16"]["enabled"] and not fp32["fp16"]["enabled"] and "data_types" not in fp32
    with pytest.raises(ValueError, match="train.precision"):
        ds_precision_config("auto")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8)
    assert model_input(x, model).dtype == torch.bfloat16 and model(model_input(x, model)).dtype == torch.bfloat16
    idx = torch.arange(3)
    assert model_input(idx, model) is idx  # integer tensors pass untouched


def _sync_buffers_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from alr_fast.train.distributed import sync_buffers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Conv2d(5, 7, 1),
                                torch.nn.BatchNorm2d(7))
    model[3].to(torch.bfloat16)  # one bf16 BatchNorm, as under DeepSpeed's bf16 with buffer_dtype=bf16
    gen = torch.Generator().manual_seed(100 + rank)  # different statistics on every rank
    for _ in range(3 + rank):  # and a different number of updates (num_batches_tracked)
        h = model[1](model[0](torch.randn(4 + rank, 3, 9, 9, generator=gen)))
        model[3](model[2](h).to(torch.bfloat16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sync_buffers(model)
    torch.save({"before": before, "after": model.state_dict()}, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_sync_buffers_two_ranks(tmp_path):
    """Float buffers become the mean over ranks (checked against a float64 mean), integer buffers rank 0's,
    parameters are untouched, and both ranks end bitwise identical."""
    world = 2
    torch.multiprocessing.spawn(_sync_buffers_worker, args=(world, free_port(), str(tmp_path)), nprocs=world)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    names = list(res[0]["after"])
    assert any(k.endswith("running_mean") for k in names) and any(k.endswith("num_batches_tracked") for k in names)
    for k in names:
        before = [r["before"][k] for r in res]
        after = [r["after"][k] for r in res]
        assert all(torch.equal(after[0], a) for a in after), k  # identical on every rank
        if k.endswith(("weight", "bias")):
            for b, a in zip(before, after):
                assert torch.equal(a, b), f"{k}: a parameter changed"
        elif k.endswith("num_batches_tracked"):
            assert int(before[0]) != int(before[1]) and torch.equal(after[0], before[0])
        else:
            assert not torch.equal(before[0], before[1]), f"{k}: the ranks should start different"
            mean64 = torch.stack([b.double() for b in before]).mean(0)
            tol = 1e-6 if after[0].dtype == torch.float32 else 2 ** -8  # one rounding to the buffer's dtype
            torch.testing.assert_close(after[0].double(), mean64, rtol=tol, atol=tol)
            assert after[0].dtype == before[0].dtype


def test_sync_buffers_is_a_no_op_on_one_process():
    from alr_fast.train.distributed import sync_buffers

    bn = torch.nn.BatchNorm1d(3)
    bn(torch.randn(5, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    sync_buffers(bn)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())

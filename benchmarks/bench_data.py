"""Benchmark the input pipelines: DALI vs the torchvision DataLoader, images/s on the same fixture and cores.

The data: a Clothing1M-layout fixture of ``--images`` real-photo JPEGs (patches of scikit-learn's two sample
photos, 500 x 375, quality 90), written once under ``--data-dir``. Both loaders run the Clothing1M train
recipe (decode -> resize shorter side 256 -> random crop 224 -> flip -> normalise -> float32 NCHW) through the
project's loaders (:class:`alr_fast.data.loaders.dali.DaliLoader`, :class:`alr_fast.data.loaders.torch_loader.TorchLoader`),
global indices included, with the same CPU budget: DALI ``num_threads = W`` vs ``num_workers = W`` DataLoader
processes with one intra-op thread each (``--workers W``, default 2 = this CI machine's cores).

Per backend: one untimed warm-up epoch (page cache, worker start), then ``--repeats`` timed epochs,
interleaved between backends (A B A B ...) so that a change in the machine's load hits both. Reported:
images/s per epoch (median, min, max), CPU seconds used per image (this process and its DataLoader workers,
from /proc: a figure that load from other users disturbs much less than wall time), and the 1-minute load
average before and after each epoch, because CI machines are shared. With a GPU, DALI's GPU decode
("mixed") is timed too; without one, it is skipped with a message.

Writes ``benchmarks/results/bench_data_<device>.json`` (machine, versions, git sha, command, load averages,
raw timings) and a markdown table generated from it (``.md``).

    python benchmarks/bench_data.py                       # 384 images, 2 workers, 5 repeats
    python benchmarks/bench_data.py --images 256 --repeats 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import REPO, cpu_model, relative, run_metadata  # noqa: E402  (benchmarks/ is on sys.path)
GOAL_RATIO = 1.5
GOAL = f"DALI CPU >= {GOAL_RATIO}x the torchvision DataLoader, same cores"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=384, help="JPEGs in the fixture (one epoch)")
    p.add_argument("--image-size", default="500x375", help="WIDTHxHEIGHT of the fixture's JPEGs")
    p.add_argument("--workers", type=int, default=2, help="DALI num_threads = DataLoader num_workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per backend (median reported)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the fixture is written (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--tag", default=None, help="file name tag (default: cpu, or the GPU's name)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- environment
def environment() -> dict:
    import numpy
    import PIL
    import torchvision

    try:
        import nvidia.dali as dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    return {
        "machine": f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} logical CPUs",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": dali_version,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        **run_metadata(),
    }


# ------------------------------------------------------------------------------------------------ CPU time
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()  # utime + stime


def cpu_seconds_self_and_children() -> float:
    """CPU seconds of this process (all threads: DALI's) plus its live child processes (DataLoader workers)
    plus reaped children."""
    me = os.getpid()
    total = _proc_cpu_seconds(me)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == me:
                total += _proc_cpu_seconds(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------------------------------- timing
def time_epoch(loader, epoch: int) -> dict:
    load_before = os.getloadavg()[0]
    cpu0 = cpu_seconds_self_and_children()
    t0 = time.perf_counter()
    n = 0
    for x, idx in loader.epoch(epoch):
        n += int((idx >= 0).sum())
    if x.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds_self_and_children() - cpu0
    return {"images": n, "seconds": wall, "images_per_s": n / wall, "cpu_seconds_per_image": cpu / n,
            "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0]}


def summarise(rows: list[dict]) -> dict:
    ips = [r["images_per_s"] for r in rows]
    return {"median_images_per_s": statistics.median(ips), "min_images_per_s": min(ips), "max_images_per_s": max(ips),
            "median_cpu_ms_per_image": 1e3 * statistics.median(r["cpu_seconds_per_image"] for r in rows)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.data_dir is not None:
        return run(args, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:  # removed afterwards
        return run(args, Path(tmp))


def run(args: argparse.Namespace, data_dir: Path) -> int:
    from alr_fast.data.readers.clothing1m import read_clothing1m
    from alr_fast.data.loaders.dali import DaliLoader, dali_available
    from alr_fast.data.tools.fixtures import make_fixture
    from alr_fast.data.loaders.torch_loader import TorchLoader
    from alr_fast.data.loaders.transforms import recipe_transform

    torch.set_num_threads(1)  # the main process only receives batches; the workers do the work
    w, h = (int(v) for v in args.image_size.split("x"))
    root = data_dir / f"clothing1m_{args.images}_{w}x{h}"
    if not (root / "noisy_train_key_list.txt").is_file():
        make_fixture("clothing1m", root, num_train=args.images, num_test=14, image_size=(w, h), seed=0)
    table = read_clothing1m(root, "train")
    spec = recipe_transform("clothing1m", train=True)
    mb = sum(table.path(i).stat().st_size for i in range(len(table))) / 2**20
    common = dict(batch_size=args.batch_size, shuffle=True, seed=0)

    backends = {
        "torchvision DataLoader (PIL), cpu": lambda: TorchLoader(table, spec, num_workers=args.workers, **common),
    }
    skipped = {}
    if dali_available():
        backends["DALI, cpu decode"] = lambda: DaliLoader(table, spec, num_threads=args.workers, **common)
        if torch.cuda.is_available():
            backends["DALI, gpu decode (mixed)"] = lambda: DaliLoader(table, spec, num_threads=args.workers,
                                                                      device="cuda", **common)
        else:
            skipped["DALI, gpu decode (mixed)"] = "no CUDA device on this machine: GPU decode not measured"
    else:
        skipped["DALI, cpu decode"] = "nvidia-dali is not installed"
    for name, why in skipped.items():
        print(f"skip {name}: {why}", file=sys.stderr)

    env = environment()
    env["load_avg_at_start"] = list(os.getloadavg())
    loaders = {name: make() for name, make in backends.items()}
    for name, loader in loaders.items():  # warm-up: page cache, worker processes, first pipeline build
        time_epoch(loader, 0)
    raw: dict[str, list[dict]] = {name: [] for name in loaders}
    for rep in range(args.repeats):
        for name, loader in loaders.items():
            row = time_epoch(loader, rep + 1)
            raw[name].append(row)
            print(f"rep {rep} {name:38s} {row['images_per_s']:7.1f} img/s  "
                  f"cpu {1e3 * row['cpu_seconds_per_image']:5.2f} ms/img  "
                  f"load {row['load_avg_1m_before']:.2f}->{row['load_avg_1m_after']:.2f}", file=sys.stderr)
    env["load_avg_at_end"] = list(os.getloadavg())
    results = {name: summarise(rows) for name, rows in raw.items()}
    tv, dali_cpu = results.get("torchvision DataLoader (PIL), cpu"), results.get("DALI, cpu decode")
    ratio = cpu_ratio = None
    if tv and dali_cpu:
        ratio = dali_cpu["median_images_per_s"] / tv["median_images_per_s"]
        cpu_ratio = tv["median_cpu_ms_per_image"] / dali_cpu["median_cpu_ms_per_image"]
    report = {
        "benchmark": "input pipeline images/s: DALI vs torchvision DataLoader",
        "environment": env,
        "config": {"images": len(table), "image_size": [w, h], "fixture_mib": round(mb, 2), "workers": args.workers,
                   "batch_size": args.batch_size, "repeats": args.repeats,
                   "transform": "Clothing1M train: resize shorter 256 -> random crop 224 -> flip -> normalise, "
                                "float32 NCHW + int64 global index",
                   "data": "real photos (scikit-learn sample images) cut into 500x375 JPEG patches, quality 90"},
        "results": results,
        "dali_cpu_over_torchvision": ratio,
        "dali_cpu_over_torchvision_cpu_efficiency": cpu_ratio,
        "goal": GOAL,
        "goal_met": None if ratio is None else ratio >= GOAL_RATIO,
        "skipped": skipped,
        "raw": raw,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("cpu" if not torch.cuda.is_available() else "gpu")
    json_path = args.out / f"bench_data_{tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"bench_data_{tag}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {relative(json_path)} and .md", file=sys.stderr)
    return 0


def markdown(report: dict) -> str:
    env, cfg = report["environment"], report["config"]
    lines = [
        "# Input pipeline: DALI vs torchvision DataLoader",
        "",
        f"Generated from `bench_data_*.json` by `{env['command']}` "
        f"(git {str(env['git_sha'])[:10]}{' + uncommitted changes' if env['git_dirty'] else ''}, {env['time_utc']}).",
        "",
        f"- machine: {env['machine']}; GPU: {env['gpu'] or 'none'}",
        f"- versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"DALI {env['dali']}, Pillow {env['pillow']}",
        f"- data: {cfg['images']} JPEGs {cfg['image_size'][0]}x{cfg['image_size'][1]} ({cfg['fixture_mib']} MiB), "
        f"{cfg['data']}",
        f"- transform: {cfg['transform']}",
        f"- budget: DALI num_threads = DataLoader num_workers = {cfg['workers']} (1 intra-op thread per worker); "
        f"batch {cfg['batch_size']}; median of {cfg['repeats']} epochs after a warm-up epoch, backends interleaved",
        f"- load average (1 min) at start {env['load_avg_at_start'][0]:.2f}, at end {env['load_avg_at_end'][0]:.2f} "
        f"(this machine is shared; the benchmark itself keeps about {cfg['workers']} threads busy, so a load "
        f"near {cfg['workers']} means nothing else ran: see the per-epoch values in the JSON)",
        "",
        "| pipeline | images/s (median) | min | max | CPU ms / image |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['median_images_per_s']:.1f} | {r['min_images_per_s']:.1f} | "
                     f"{r['max_images_per_s']:.1f} | {r['median_cpu_ms_per_image']:.2f} |")
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | |")
    lines.append("")
    if report["dali_cpu_over_torchvision"] is not None:
        lines.append(f"DALI CPU / torchvision: **{report['dali_cpu_over_torchvision']:.2f}x** images/s "
                     f"(goal: {report['goal']}: {'met' if report['goal_met'] else 'NOT met'}); "
                     f"{report['dali_cpu_over_torchvision_cpu_efficiency']:.2f}x fewer CPU seconds per image.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Scale of the user's-own-data readers: building the SampleTable of a 2.4 M-row manifest and of a 1 M-file
ImageFolder tree (empty files: the reader lists, never opens), and indexing 1 M samples in tar shards
(``data index``: 100 shards of 10,000 samples, each an empty ``KEY.jpg`` + ``KEY.cls``; the headers are
what is read). Wall time and peak resident memory of a fresh
process doing only that (``resource.getrusage``'s ``ru_maxrss``, which includes the interpreter, numpy and
the alr_fast imports, torch among them: ``rss_after_import_mb``), and the CPU time of the read (less
sensitive than wall time to other jobs on a shared machine). Goal: <= 60 s and <= 2 GB each.

    python benchmarks/bench_readers.py --out benchmarks/results/bench_readers_cpu.json [--rows 2400000]
        [--files 1000000] [--work /tmp/bench_readers]

The synthetic data is written under --work and deleted afterwards. Not a test: the figures depend on the
machine and its load (recorded in the result).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, run_metadata  # noqa: E402

INDEX_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from alr_fast.data.readers.tarshards import index_webdataset, read_webdataset
t1 = time.perf_counter()
c1 = time.process_time()
summary = index_webdataset(sys.argv[2])
t2 = time.perf_counter()
c2 = time.process_time()
table = read_webdataset(sys.argv[2], "train")
t3 = time.perf_counter()
print(json.dumps({"rows": summary["splits"]["train"]["samples"], "classes": summary["num_classes"],
                  "import_s": t1 - t0, "read_wall_s": t2 - t1, "read_cpu_s": c2 - c1,
                  "table_from_index_wall_s": t3 - t2, "table_rows": len(table),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD = r"""
import json, resource, sys, time
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
t0 = time.perf_counter()
from alr_fast.data.readers import read_split
t1 = time.perf_counter()
c1 = time.process_time()
rss_import = rss_mb()
table = read_split(sys.argv[1], sys.argv[2], "train")
t2 = time.perf_counter()
print(json.dumps({"rows": len(table), "classes": table.num_classes, "import_s": t1 - t0, "read_wall_s": t2 - t1,
                  "read_cpu_s": time.process_time() - c1, "rss_after_import_mb": rss_import,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(dataset: str, root: Path, child: str = CHILD) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child, dataset, str(root)], capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - start
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def write_manifest(root: Path, rows: int, classes: int) -> float:
    t = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i in range(rows):
            c = i % classes
            # WebVision-like paths: google/q0001/000123.jpg, class names as labels
            w.writerow([f"google/q{c + 1:04d}/{i // classes:06d}.jpg", f"class {c:04d}", "train"])
    return time.perf_counter() - t


def write_imagefolder(root: Path, files: int, classes: int) -> float:
    t = time.perf_counter()
    per = files // classes
    for c in range(classes):
        d = root / f"class_{c:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            os.close(os.open(d / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    return time.perf_counter() - t


def _ustar(name: str, size: int) -> bytes:
    """A ustar header (what tarfile writes, built directly: tarfile takes ~15 us per member)."""
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    h[124:136], h[136:148] = b"%011o\0" % size, b"%011o\0" % 0
    h[148:156], h[156:157], h[257:265] = b" " * 8, b"0", b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def write_shards(root: Path, samples: int, shards: int, classes: int) -> float:
    t = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    per = samples // shards
    for s in range(shards):
        parts = []
        for i in range(s * per, (s + 1) * per):
            cls = str(i % classes).encode()
            parts += [_ustar(f"{i:08d}.jpg", 0), _ustar(f"{i:08d}.cls", len(cls)), cls + b"\0" * (512 - len(cls))]
        parts.append(b"\0" * 1024)
        (root / f"{s:06d}.tar").write_bytes(b"".join(parts))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=2_400_000)
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--tar-samples", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_readers"))
    args = p.parse_args()
    results = {"meta": {**run_metadata(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                        "note": "shared machine: other jobs ran at the same time (load average recorded)"},
               "goal": {"wall_s": 60, "peak_rss_mb": 2048}, "cases": []}
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    try:
        made = write_manifest(work / "manifest", args.rows, args.classes)
        r = measure("manifest", work / "manifest")
        results["cases"].append({"case": f"manifest CSV, {args.rows:,} rows, {args.classes} class names",
                                 "write_s": made, **r, "load_avg_1m": os.getloadavg()[0]})
        print(results["cases"][-1], flush=True)
        shutil.rmtree(work / "manifest")
        made = write_imagefolder(work / "imagefolder", args.files, args.classes)
        r = measure("imagefolder", work / "imagefolder")  # the file system's cache is warm after writing
        results["cases"].append({"case": f"imagefolder, {args.files:,} empty files in {args.classes} class folders "
                                         "(directory entries cached)", "write_s": made, **r,
                                 "load_avg_1m": os.getloadavg()[0]})
        print(results["cases"][-1], flush=True)
        shutil.rmtree(work / "imagefolder")
        made = write_shards(work / "shards", args.tar_samples, args.shards, args.classes)
        r = measure("webdataset", work / "shards", INDEX_CHILD)
        results["cases"].append({"case": f"data index, {args.tar_samples:,} samples (empty .jpg + .cls) in "
                                         f"{args.shards} tar shards", "write_s": made, **r,
                                 "load_avg_1m": os.getloadavg()[0]})
        print(results["cases"][-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

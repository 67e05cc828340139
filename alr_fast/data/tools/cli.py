"""``python -m alr_fast data {check, make-fixture}``.

Wire into the main CLI with ``add_data_parser(subparsers)`` and dispatch ``args.command == "data"`` to
``run_data_command(args)`` (its return value is the exit code). Standalone: ``python -m alr_fast.data.tools.cli``.

* ``data check --dataset NAME --root DIR``: prints a JSON summary; exit 0 only if the dataset is usable,
  1 if not (errors listed in the summary), 2 for bad arguments.
* ``data make-fixture --dataset NAME --out DIR``: writes a small dataset in NAME's layout with real JPEGs.
* ``data index --dataset webdataset --root DIR``: indexes tar shards once (alr_fast/data/readers/tarshards.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alr_fast.data.readers import DATASET_NAMES
from alr_fast.data.readers.webvision import WEBVISION_SOURCES
from alr_fast.data.tools.fixtures import CLOTHING1M_LAYOUTS, FIXTURE_DATASETS, MANIFEST_FORMATS, make_fixture

__all__ = ["add_data_parser", "run_data_command", "main"]


def _image_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 500x375), got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"image size must be at least 8x8, got {text!r}")
    return w, h


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``data`` command (with ``check`` and ``make-fixture``) to an argparse sub-parser set."""
    data = subparsers.add_parser("data", help="check a dataset on disk, or write a small fixture dataset")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="validate a dataset's layout and images; print a JSON summary")
    check.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    check.add_argument("--root", required=True, type=Path, help="the dataset's root folder")
    check.add_argument("--split", action="append", dest="splits", default=None,
                       help="check only this split (repeatable); default: every split")
    check.add_argument("--source", choices=WEBVISION_SOURCES, default=None,
                       help="WebVision train list (default: all for webvision; mini-webvision is google)")
    check.add_argument("--ilsvrc-list", type=Path, default=None, help="'<file> <label>' list of ILSVRC-2012 val")
    check.add_argument("--ilsvrc-root", type=Path, default=None, help="folder of the ILSVRC-2012 val images")
    check.add_argument("--cifar-n", type=Path, default=None, help="CIFAR-10N/100N label file (CIFAR-10_human.pt)")
    check.add_argument("--label-set", default=None, help="CIFAR-N label set: aggre, worst, rand1-3, noisy100")
    check.add_argument("--noise-file", type=Path, default=None,
                       help="labels to import for train (.json/.npy/.npz/.csv)")
    check.add_argument("--noise-key", default=None, help="array name inside a .npz / key of a JSON object")
    check.add_argument("--manifest", default=None,
                       help="manifest dataset: the manifest file (default: the one manifest.csv/.tsv/.jsonl in ROOT)")
    check.add_argument("--workers", type=_positive, default=1, help="processes decoding images (default 1)")
    check.add_argument("--max-images", type=_positive, default=None,
                       help="check an evenly spaced sample of at most this many images per split (default: all)")
    check.add_argument("--samples", type=int, default=3, help="index -> path -> label examples per split")
    check.add_argument("--unreadable-out", type=Path, default=None,
                       help="write {split: [global indices]} of unreadable images here (JSON; for exclude=)")

    index = sub.add_parser("index", help="webdataset: index the tar shards once (writes ROOT/wds_index_<split>.npz)")
    index.add_argument("--dataset", required=True, choices=["webdataset"])
    index.add_argument("--root", required=True, type=Path, help="the folder holding the shards (or train/ val/ test/)")

    fixture = sub.add_parser("make-fixture", help="write a small dataset in NAME's exact layout (real JPEGs)")
    fixture.add_argument("--dataset", required=True, choices=FIXTURE_DATASETS)
    fixture.add_argument("--out", required=True, type=Path)
    fixture.add_argument("--layout", choices=CLOTHING1M_LAYOUTS, default="a",
                         help="Clothing1M layout: a = .txt and 0..9/ in the root, b = annotations/ + images/, "
                              "c = .txt and images/ in the root (default a)")
    fixture.add_argument("--format", choices=MANIFEST_FORMATS, default="csv",
                         help="manifest fixture: manifest.csv, .tsv or .jsonl (default csv)")
    fixture.add_argument("--seed", type=int, default=0)
    fixture.add_argument("--num-train", type=_positive, default=None)
    fixture.add_argument("--num-test", type=_positive, default=None)
    fixture.add_argument("--image-size", type=_image_size, default=None, help="WIDTHxHEIGHT of every image")
    return data


def run_data_command(args: argparse.Namespace) -> int:
    """Run ``data check`` / ``data make-fixture``; returns the exit code."""
    if args.data_command == "check":
        from alr_fast.data.tools.check import check_dataset

        summary, unreadable = check_dataset(
            args.dataset, args.root, splits=args.splits, source=args.source, ilsvrc_list=args.ilsvrc_list,
            ilsvrc_root=args.ilsvrc_root, cifar_n=args.cifar_n, label_set=args.label_set,
            noise_file=args.noise_file, noise_key=args.noise_key, workers=args.workers,
            max_images=args.max_images, samples=args.samples, manifest=args.manifest,
        )
        if args.unreadable_out is not None:
            args.unreadable_out.write_text(json.dumps(unreadable) + "\n")
        print(json.dumps(summary, indent=2))
        for error in summary["errors"]:
            print(f"data check: {error}", file=sys.stderr)
        print(f"data check: {args.dataset} at {args.root}: {'usable' if summary['usable'] else 'NOT usable'}",
              file=sys.stderr)
        return 0 if summary["usable"] else 1
    if args.data_command == "index":
        from alr_fast.data.readers.tarshards import index_webdataset

        summary = index_webdataset(args.root)
        print(json.dumps(summary, indent=2))
        for split, info in summary["splits"].items():
            skipped = ", ".join(f"{n} {kind}" for kind, n in info["skipped"].items()) or "nothing"
            print(f"data index: {split}: {info['samples']} samples in {info['shards']} shards; skipped: {skipped}",
                  file=sys.stderr)
        return 0
    if args.data_command == "make-fixture":
        root = make_fixture(args.dataset, args.out, seed=args.seed, layout=args.layout, num_train=args.num_train,
                            num_test=args.num_test, image_size=args.image_size, manifest_format=args.format)
        out = {"dataset": args.dataset, "root": str(root)}
        if args.dataset in ("webvision", "mini-webvision"):
            out["ilsvrc_list"] = str(root / "ilsvrc2012_val_list.txt")
            out["ilsvrc_root"] = str(root / "ilsvrc2012_val")
        if args.dataset in ("cifar10", "cifar100"):
            out["cifar_n"] = str(root / ("CIFAR-10_human.pt" if args.dataset == "cifar10" else "CIFAR-100_human.pt"))
        print(json.dumps(out, indent=2))
        return 0
    raise ValueError(f"unknown data command {args.data_command!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alr_fast.data.tools.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parser(sub)
    args = parser.parse_args(argv)
    return run_data_command(args)


if __name__ == "__main__":
    sys.exit(main())

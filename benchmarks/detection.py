"""Mislabel detection: ALR's bank vs cleanlab on cross-fit (out-of-sample) and in-sample probabilities.

Four detectors on the same noisy labels, scored against the known clean labels:

  (a) ALR bank          flag refined != given; rank by 1 - the bank's soft-label mass on the given label
  (b) cleanlab, ALR xfit   cleanlab.filter.find_label_issues on `crossval --method alr` out-of-sample probs
  (c) cleanlab, CE xfit    the same on `crossval --method ce` probs (the usual cleanlab recipe)
  (d) cleanlab, ALR in-sample  the same on the full ALR run's pred_probs.npy (in-sample: the wrong input)

cleanlab's ranking score is ``cleanlab.rank.get_label_quality_scores`` (self-confidence); AUROC is of
"mislabelled" against 1 - that score. Compute is counted in training sample passes (one forward+backward of one
image). Every run uses the demo recipe unchanged (small CNN, 40 epochs, ALR's published hyper-parameters).

    python benchmarks/detection.py --reduced     # MNIST-5k, sym 40 / 60 %, 1 seed, 5 folds (~15 min, 1 core)

Writes ``<out>/detection.json`` (raw rows) and ``<out>/detection.md`` (the table).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import cpu_model, git  # benchmarks/ is on sys.path when run as a script

from alr_fast.crossval import crossval
from alr_fast.recipes import demo
from alr_fast.runtime import resolve_runtime
from alr_fast.data.train_data import build_train_data
from alr_fast.trainer import train


def scores(truth: np.ndarray, flagged: np.ndarray, suspicion: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": float(roc_auc_score(truth, suspicion)),
            "flagged": int(flagged.sum())}


def cleanlab_detector(labels: np.ndarray, probs: np.ndarray, truth: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flagged = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    return scores(truth, flagged, 1.0 - quality)


def run_setting(dataset: str, rate: float, seed: int, folds: int, out: Path, epochs: int | None) -> list[dict]:
    cfg = demo()
    cfg.recipe = "detection"
    cfg.data.dataset = dataset
    cfg.data.noise_rate = rate
    cfg.data.noise_seed = seed
    cfg.train.seed = seed
    cfg.train.progress = False
    cfg.train.threads = 1
    if epochs:
        cfg.train.epochs = epochs
    rt = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    data = build_train_data(cfg, rt.device)
    labels, truth = data.given_labels, data.given_labels != data.clean_labels
    n = labels.size
    tag = f"{dataset}-sym{int(rate * 100)}-s{seed}"
    rows, t0 = [], time.perf_counter()

    full = copy.deepcopy(cfg)
    full.method.name = "alr"
    full.train.out = str(out / tag / "alr_full")
    summary = train(full, data, runtime=rt)
    soft = np.load(Path(full.train.out) / "soft_labels.npy", mmap_mode="r")
    given_mass = np.asarray(soft[np.arange(n), labels])
    refined = np.asarray(soft).argmax(axis=1)
    full_passes = summary["sample_passes"]
    common = {"dataset": dataset, "noise": cfg.data.noise_kind, "requested_rate": rate,
              "actual_rate": float(truth.mean()), "seed": seed, "num_samples": int(n), "epochs": cfg.train.epochs}
    rows.append({**common, "detector": "(a) ALR bank", "sample_passes": full_passes,
                 **scores(truth, refined != labels, 1.0 - given_mass)})
    in_sample = np.load(Path(full.train.out) / "pred_probs.npy")
    rows.append({**common, "detector": "(d) cleanlab on in-sample ALR probs", "sample_passes": full_passes,
                 **cleanlab_detector(labels, in_sample, truth)})
    for method, name in (("alr", "(b) cleanlab on ALR cross-fit probs"), ("ce", "(c) cleanlab on CE cross-fit probs")):
        xcfg = copy.deepcopy(cfg)
        xcfg.method.name = method
        xcfg.train.out = str(out / tag / f"xfit_{method}")
        info = crossval(xcfg, folds, data=data, runtime=rt)
        probs = np.load(Path(xcfg.train.out) / "oos_pred_probs.npy")
        rows.append({**common, "detector": name, "sample_passes": info["sample_passes_trained"], "folds": folds,
                     **cleanlab_detector(labels, probs, truth)})
    for r in rows:
        print(f"{tag}  {r['detector']:<40} F1 {r['f1']:.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
              f"AUROC {r['auroc']:.4f}  passes {r['sample_passes']}", flush=True)
    print(f"{tag}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| setting | detector | F1 | precision | recall | AUROC | flagged | training sample passes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = f"{r['dataset']} sym {r['requested_rate']:.0%} (actual {r['actual_rate']:.1%}), seed {r['seed']}"
        lines.append(f"| {setting} | {r['detector']} | {100 * r['f1']:.1f} | {100 * r['precision']:.1f} | "
                     f"{100 * r['recall']:.1f} | {r['auroc']:.4f} | {r['flagged']} | {r['sample_passes']:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="MNIST-5k, sym 40/60 %%, 1 seed (the committed run)")
    ap.add_argument("--datasets", default="mnist5k")
    ap.add_argument("--rates", default="0.4,0.6")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke tests)")
    ap.add_argument("--out", default="runs/detection")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.extend(run_setting(dataset, rate, seed, args.folds, out, args.epochs))
    meta = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "git": git("rev-parse", "HEAD"),
            "device": f"CPU ({cpu_model()}), 1 thread", "machine": platform.machine(), "torch": torch.__version__,
            "reduced": bool(args.reduced),
            "note": ("REDUCED study: one seed, MNIST-5k, symmetric 40/60 % only (not digits, 20/80 %, asym, "
                     "3 seeds)") if args.reduced else ""}
    (out / "detection.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "detection.md").write_text(f"{meta['note']}\n\n{table(rows)}\n\n`{meta['command']}`\n")
    print(table(rows))


if __name__ == "__main__":
    main()

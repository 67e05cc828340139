"""Mislabel detection: ALR's bank vs cleanlab on cross-fit (out-of-sample) and in-sample probabilities.

Four detectors on the same noisy labels, scored against the known clean labels:

  (a) ALR bank          flag refined != given; rank by 1 - the bank's soft-label mass on the given label
  (b) cleanlab, ALR xfit   cleanlab.filter.find_label_issues on `crossval --method alr` out-of-sample probs
  (c) cleanlab, CE xfit    the same on `crossval --method ce` probs (the usual cleanlab recipe)
  (d) cleanlab, ALR in-sample  the same on the full ALR run's pred_probs.npy (in-sample: the wrong input)

cleanlab's ranking score is ``cleanlab.rank.get_label_quality_scores`` (self-confidence); AUROC is of
"mislabelled" against 1 - that score. Compute is counted in training sample passes (one forward+backward of one
image). Every run uses the demo recipe unchanged (small CNN, 40 epochs, ALR's published hyper-parameters).

    python benchmarks/detection.py               # full grid: MNIST-5k + digits, sym 20/40/60/80 %, asym 40 %,
                                                 # seeds 0,1,2, 3 folds (~45 min on one core)
    python benchmarks/detection.py --reduced     # MNIST-5k, sym 40 / 60 %, 1 seed
    python benchmarks/quality.py --study detection   # the same, from the quality study's entry point

Each dataset trains its own model, as in the quality study (MNIST-5k: small CNN; digits: MLP). Every finished
setting is appended to ``<out>/detection.rows.jsonl`` and skipped when the study is restarted. Writes
``<out>/detection.json`` (raw rows), ``<out>/detection.md`` (mean ± std over seeds per setting and detector,
the per-seed rows, and the goal checks).
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

from _common import append_jsonl, cpu_model, git, read_jsonl  # benchmarks/ is on sys.path as a script

from alr_fast.labels.crossval import crossval
from alr_fast.recipes import demo
from alr_fast.train.runtime import resolve_runtime
from alr_fast.data.train_data import build_train_data
from alr_fast.train.trainer import train


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


def run_setting(dataset: str, kind: str, rate: float, seed: int, folds: int, out: Path,
                epochs: int | None) -> list[dict]:
    from quality import DATASET_MODEL

    cfg = demo()
    cfg.recipe = "detection"
    cfg.data.dataset = dataset
    cfg.model.name = DATASET_MODEL.get(dataset, cfg.model.name)
    cfg.data.noise_kind = kind
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
    tag = f"{dataset}-{kind}{round(rate * 100)}-s{seed}"
    rows, t0 = [], time.perf_counter()

    full = copy.deepcopy(cfg)
    full.method.name = "alr"
    full.train.out = str(out / tag / "alr_full")
    summary = train(full, data, runtime=rt)
    soft = np.load(Path(full.train.out) / "soft_labels.npy", mmap_mode="r")
    given_mass = np.asarray(soft[np.arange(n), labels])
    refined = np.asarray(soft).argmax(axis=1)
    full_passes = summary["sample_passes"]
    common = {"dataset": dataset, "noise": kind, "requested_rate": rate, "model": cfg.model.name,
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


def _setting(r: dict) -> str:
    return f"{r['dataset']} {r['noise']} {r['requested_rate']:.0%}"


def table(rows: list[dict]) -> str:
    """Per-seed rows."""
    lines = ["| setting | seed | detector | F1 | precision | recall | AUROC | flagged | training sample passes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_setting(r)} (actual {r['actual_rate']:.1%}) | {r['seed']} | {r['detector']} | "
                     f"{100 * r['f1']:.1f} | {100 * r['precision']:.1f} | {100 * r['recall']:.1f} | "
                     f"{r['auroc']:.4f} | {r['flagged']} | {r['sample_passes']:,} |")
    return "\n".join(lines)


def _ms(values, digits: int = 1) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.{digits}f}"


def summary_table(rows: list[dict]) -> str:
    """Mean ± sample std over seeds, per setting and detector."""
    lines = ["| setting | detector | seeds | F1 | precision | recall | AUROC | training sample passes |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((_setting(r), r["detector"]), []).append(r)
    for (setting, det), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"| {setting} | {det} | {len(g)} | {_ms([100 * r['f1'] for r in g])} | "
                     f"{_ms([100 * r['precision'] for r in g])} | {_ms([100 * r['recall'] for r in g])} | "
                     f"{_ms([r['auroc'] for r in g], 4)} | {int(np.mean([r['sample_passes'] for r in g])):,} |")
    return "\n".join(lines)


def compact_table(rows: list[dict]) -> str:
    """One line per setting: F1 of the four detectors and AUROC of (a) and (c), mean ± std over seeds."""
    dets = ("(a)", "(b)", "(c)", "(d)")
    lines = ["| setting (actual noise) | seeds | (a) ALR bank F1 | (b) cleanlab, ALR cross-fit F1 | "
             "(c) cleanlab, CE cross-fit F1 | (d) cleanlab, ALR in-sample F1 | (a) AUROC | (c) AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    settings: dict[str, list[dict]] = {}
    for r in rows:
        settings.setdefault(_setting(r), []).append(r)
    for setting, g in settings.items():
        by = {d: [r for r in g if r["detector"].startswith(d)] for d in dets}
        f1 = [_ms([100 * r["f1"] for r in by[d]]) if by[d] else "-" for d in dets]
        au = [_ms([r["auroc"] for r in by[d]], 4) if by[d] else "-" for d in ("(a)", "(c)")]
        actual = 100 * np.mean([r["actual_rate"] for r in g])
        lines.append(f"| {setting} ({actual:.0f} %) | {len(by['(a)'])} | " + " | ".join(f1 + au) + " |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's goal: the best ALR-based detector beats cleanlab on CE cross-fit probs by >= 10 F1 points at
    40 % and 60 % symmetric noise on MNIST-5k, with AUROC >= 0.98 there."""
    out = []
    for rate in (0.4, 0.6):
        g = [r for r in rows if r["dataset"] == "mnist5k" and r["noise"] == "sym-incl"
             and abs(r["requested_rate"] - rate) < 1e-9]
        if not g:
            continue
        by_det: dict[str, list[dict]] = {}
        for r in g:
            by_det.setdefault(r["detector"], []).append(r)
        mean = {d: (float(np.mean([r["f1"] for r in v])), float(np.mean([r["auroc"] for r in v])))
                for d, v in by_det.items()}
        ce = [d for d in mean if d.startswith("(c)")]
        alr = [d for d in mean if d[:3] in ("(a)", "(b)", "(d)")]
        if not ce or not alr:
            continue
        best = max(alr, key=lambda d: mean[d][0])
        gain = 100 * (mean[best][0] - mean[ce[0]][0])
        seeds = len(by_det[best])
        out.append(f"- MNIST-5k sym {rate:.0%} ({seeds} seeds): best ALR-based detector {best} F1 "
                   f"{100 * mean[best][0]:.1f} vs {ce[0]} {100 * mean[ce[0]][0]:.1f}: +{gain:.1f} points "
                   f"(goal ≥ +10): **{'holds' if gain >= 10 else 'does not hold'}**; its AUROC "
                   f"{mean[best][1]:.4f} (goal ≥ 0.98): **{'holds' if mean[best][1] >= 0.98 else 'does not hold'}**")
    return out


def parse_settings(text: str) -> list[tuple[str, float]]:
    settings = []
    for item in text.split(","):
        try:
            kind, rate = item.split("@")
            settings.append((kind, float(rate)))
        except ValueError:
            raise SystemExit(f"--settings: expected kind@rate (e.g. sym-incl@0.4), got {item!r}")
    return settings


def main(argv=None) -> int:
    from quality import ASYM_RATE, SYM_RATES

    full = ",".join([f"sym-incl@{r:g}" for r in SYM_RATES] + [f"asym-digits@{ASYM_RATE:g}"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="MNIST-5k, sym 40/60 %%, 1 seed")
    ap.add_argument("--datasets", default="mnist5k,digits")
    ap.add_argument("--settings", default=full, help=f"comma-separated noise kind@rate (default {full})")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=3,
                    help="cross-fitting folds (3: each fold model trains on 2/3 of the data, as `crossval`)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke tests)")
    ap.add_argument("--out", default="runs/detection")
    ap.add_argument("--rerender", action="store_true", help="re-write detection.md from detection.json")
    args = ap.parse_args(argv)
    if args.rerender:
        saved = json.loads((Path(args.out) / "detection.json").read_text())
        md = render(saved["meta"], saved["rows"])
        (Path(args.out) / "detection.md").write_text(md)
        print(md)
        return 0
    if args.reduced:
        args.datasets, args.settings, args.seeds = "mnist5k", "sym-incl@0.4,sym-incl@0.6", "0"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    partial = out / "detection.rows.jsonl"
    done: dict[tuple, list[dict]] = {}
    for r in read_jsonl(partial):
        done.setdefault((r["dataset"], r["noise"], r["requested_rate"], r["seed"], r.get("folds_run", 0),
                         r["epochs"]), []).append(r)
    if done:
        print(f"resuming: {sum(map(len, done.values()))} rows read from {partial}", flush=True)
    t0 = time.perf_counter()
    sha = git("rev-parse", "HEAD")  # the checkout the study starts from
    rows = []
    for dataset in args.datasets.split(","):
        for kind, rate in parse_settings(args.settings):
            for seed in (int(s) for s in args.seeds.split(",")):
                key = (dataset, kind, rate, seed, args.folds, args.epochs or demo().train.epochs)
                if key in done:
                    rows.extend(done[key])
                    continue
                new = [dict(r, folds_run=args.folds) for r in
                       run_setting(dataset, kind, rate, seed, args.folds, out, args.epochs)]
                append_jsonl(partial, new)
                rows.extend(new)
    meta = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "git": sha,
            "device": f"CPU ({cpu_model()}), 1 thread", "machine": platform.machine(), "torch": torch.__version__,
            "folds": args.folds, "seeds": args.seeds, "settings": args.settings, "datasets": args.datasets,
            "total_time_s": time.perf_counter() - t0,
            "note": ("REDUCED study: one seed, MNIST-5k, symmetric 40/60 % only" if args.reduced else "")}
    (out / "detection.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = render(meta, rows)
    (out / "detection.md").write_text(md)
    print(md)
    return 0


def render(meta: dict, rows: list[dict]) -> str:
    return "\n".join([
        "# Mislabel detection: ALR's bank vs cleanlab", "",
        f"Command: `{meta['command']}`  ", f"git {str(meta['git'])[:10]}, {meta['device']}, torch {meta['torch']}, "
        f"{meta['folds']} cross-fitting folds, {meta['total_time_s'] / 60:.1f} min this invocation. {meta['note']}",
        "", "## F1 per setting (mean ± std over seeds)", "", compact_table(rows), "",
        "## Goals", "", *goal_lines(rows), "",
        "## Every detector (mean ± std over seeds)", "", summary_table(rows), "",
        "## Every seed", "", table(rows), ""])


if __name__ == "__main__":
    sys.exit(main())

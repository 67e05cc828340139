"""The per-run figure: ``<out>/curves.png`` (test accuracy, and with clean labels the label quality and the
memorisation split per epoch), drawn by rank 0 at the end of a run from the metrics rows."""

from __future__ import annotations

from pathlib import Path

from alr_fast.util.atomic import atomic_path

__all__ = ["plot_curves"]


def plot_curves(rows: list[dict], path: Path, title: str, warmup: int | None) -> None:
    """Draw ``rows`` (one metrics row per epoch) to ``path``; ``warmup``: first refinement epoch (a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(ep, [r["test_acc"] for r in rows], label="test acc")
    if "refined_label_acc" in rows[0]:
        axes[0].plot(ep, [r["refined_label_acc"] for r in rows], label="refined-label acc")
        axes[0].plot(ep, [r["mislabel_f1"] for r in rows], label="mislabel F1")
        for key, lab in (("memo_true", "true"), ("memo_given", "given (memorised)"), ("memo_other", "other")):
            axes[1].plot(ep, [r[key] for r in rows], label=lab)
        axes[1].set_title("predictions on mislabelled samples")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if warmup:
            ax.axvline(warmup - 0.5, color="grey", ls="--", lw=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if "refined_label_acc" not in rows[0]:
        axes[1].set_title("clean labels unknown: no memorisation split")
    axes[0].set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # whole or absent, like every file a run leaves
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

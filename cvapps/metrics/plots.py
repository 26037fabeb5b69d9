"""PNG plots of training curves, confusion matrices and PR curves (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from typing import Any

import numpy as np

from cvapps.checkpoint import atomic_write


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, imported at the first plot: importing it
    costs ~0.6 s, which every command's start-up would otherwise pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axes)`` of a new single-plot figure (``plt.subplots``)."""
    return _pyplot().subplots(figsize=figsize)


def save_figure(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _pyplot().close(fig)


def plot_history(history: list[dict], out_dir: Path) -> None:
    """``loss.png`` (every train/* loss per epoch) and ``metrics.png`` (every scalar val/* metric)."""
    epochs = [row["epoch"] for row in history]
    for prefix, name, title in (("train/", "loss.png", "training losses"), ("val/", "metrics.png", "validation metrics")):
        keys = sorted({k for row in history for k in row if k.startswith(prefix) and "/" not in k[len(prefix):]})
        if not keys:
            continue
        fig, ax = new_figure((6, 4))
        for key in keys:
            pts = [(e, row[key]) for e, row in zip(epochs, history) if isinstance(row.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key[len(prefix):])
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out_dir / name)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Rows: true class, columns: predicted class; cells show counts, colour is the row share."""
    n = len(class_names)
    fig, ax = new_figure((1.2 + 0.6 * n, 1 + 0.6 * n))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    save_figure(fig, path)

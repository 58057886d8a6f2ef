"""Pictures of a classifier: confusion matrix, training curves, misclassified examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io.images import to_rgb
from .figures import PLAIN, plt, save_figure


def plot_confusion(confusion: list[list[int]], labels: list[str], out_png: str | Path) -> Path:
    """Counts and row-normalised (recall per true class) side by side."""
    counts = np.array(confusion)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 2.5 + 0.75 * len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, matrix, title, fmt in ((axes[0], counts, "counts", "{:,.0f}"),
                                   (axes[1], normalised, "normalised by true class", "{:.3f}")):
        shown = np.log1p(matrix) if matrix is counts else matrix
        ax.imshow(shown, cmap="Blues")
        ax.set_title(f"Confusion matrix ({title})")
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8, **PLAIN)
        ax.set_yticks(range(len(labels)), labels, fontsize=8, **PLAIN)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = shown.max() or 1
        for (r, c), value in np.ndenumerate(matrix):
            if counts[r].sum():
                ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if shown[r, c] > 0.6 * top else "black")
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_training_curves(history: dict[str, list[float]], out_png: str | Path) -> Path:
    """Loss and accuracy per epoch, train and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, name in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_misclassified(examples: pd.DataFrame, out_png: str | Path, per_row: int = 8) -> Path:
    """Image grid of misclassified products: id, true -> predicted (probability).
    `examples` has product_id, image, true, predicted, probability."""
    n = max(1, len(examples))
    rows = -(-n // per_row)
    fig, axes = plt.subplots(rows, per_row, squeeze=False, figsize=(1.7 * per_row, 2.3 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, item) in zip(axes.flat, examples.iterrows()):
        ax.imshow(to_rgb(bytes(item["image"])))
        ax.set_title(f"{item['product_id']}\n{item['true']}\n-> {item['predicted']} "
                     f"({item['probability']:.2f})", fontsize=6.5, **PLAIN)
    if examples.empty:
        axes.flat[0].text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    fig.tight_layout()
    return save_figure(fig, out_png)

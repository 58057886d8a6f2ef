"""Classifier metrics and their pictures: pure functions of labels and probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .report import _save, plt
from .images import to_rgb


def classification_metrics(true: list[str], probabilities: np.ndarray, labels: list[str],
                           min_support: int = 20) -> dict:
    """Accuracy, top-2 accuracy, macro and weighted F1, macro F1 over classes with at least
    `min_support` test examples, per-class precision/recall/F1/support (every label, support 0
    included: a class too small to test is listed, not dropped) and the confusion matrix."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[t] for t in true])
    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0)
    present = support > 0
    enough = support >= min_support
    top2 = np.argsort(-probabilities, axis=1, kind="stable")[:, :2]
    per_class = pd.DataFrame({"class": labels, "precision": precision, "recall": recall,
                              "f1": f1, "support": support.astype(int)})
    return {
        "examples": int(len(y)),
        "accuracy": float((predicted == y).mean()),
        "top2_accuracy": float((top2 == y[:, None]).any(axis=1).mean()),
        # Over classes present in the test part (sklearn's "macro" would count absent ones as 0).
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        f"macro_f1_support_ge_{min_support}": float(f1[enough].mean()) if enough.any() else None,
        "classes_below_min_support": [labels[i] for i in classes if not enough[i]],
        "per_class": per_class.to_dict("records"),
        "confusion": confusion_matrix(y, predicted, labels=classes).tolist(),
    }


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
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = shown.max() or 1
        for (r, c), value in np.ndenumerate(matrix):
            if counts[r].sum():
                ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if shown[r, c] > 0.6 * top else "black")
    fig.tight_layout()
    return _save(fig, out_png)


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
    return _save(fig, out_png)


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
                     f"({item['probability']:.2f})", fontsize=6.5)
    if examples.empty:
        axes.flat[0].text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, out_png)


def metrics_table(metrics: dict, min_support: int = 20) -> pd.DataFrame:
    """The headline numbers as a two-column table for consoles and reports."""
    key = f"macro_f1_support_ge_{min_support}"
    rows = [("test examples", f"{metrics['examples']:,}"),
            ("accuracy", f"{metrics['accuracy']:.4f}"),
            ("top-2 accuracy", f"{metrics['top2_accuracy']:.4f}"),
            ("macro F1 (classes in test)", f"{metrics['macro_f1']:.4f}"),
            ("weighted F1", f"{metrics['weighted_f1']:.4f}"),
            (f"macro F1 (classes with >= {min_support} test examples)",
             "n/a" if metrics[key] is None else f"{metrics[key]:.4f}"),
            (f"classes with < {min_support} test examples",
             ", ".join(metrics["classes_below_min_support"]) or "none")]
    return pd.DataFrame(rows, columns=["metric", "value"])

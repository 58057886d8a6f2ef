"""Classifier metrics: pure functions of true labels and predicted probabilities."""
from __future__ import annotations

import numpy as np
import pandas as pd


def classification_metrics(true: list[str], probabilities: np.ndarray, labels: list[str],
                           min_support: int = 20) -> dict:
    """Accuracy, top-2 accuracy, macro and weighted F1, macro F1 over classes with at least
    `min_support` test examples, per-class precision/recall/F1/support (every label, support 0
    included: a class too small to test is listed, not dropped) and the confusion matrix."""
    # Imported here: scikit-learn costs every job's driver a second, and only evaluate needs it.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

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

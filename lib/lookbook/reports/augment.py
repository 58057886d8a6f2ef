"""What augmentation did: counts per class before and after, and parents beside their copies."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ..io.images import to_rgb
from .figures import PLAIN, plt, save_figure


def counts_table(train_counts: dict[str, int], copies: dict[str, int],
                 rates: dict[str, float]) -> pd.DataFrame:
    """One row per class, largest first: train products, copies, the two together, target
    rate and the rate reached."""
    rows = [{"class": name, "train products": n, "copies": copies.get(name, 0),
             "train total": n + copies.get(name, 0), "target rate": round(rates.get(name, 1.0), 3),
             "rate": round((n + copies.get(name, 0)) / n, 3) if n else 1.0}
            for name, n in train_counts.items()]
    return pd.DataFrame(rows).sort_values(["train products", "class"], ascending=[False, True])


def gallery_parents(augmented: DataFrame, label: str, per_class: int) -> list[int]:
    """`per_class` parents of every class with copies, the same ones on every run."""
    order = Window.partitionBy(label).orderBy(F.xxhash64("parent_id"), "parent_id")
    chosen = (augmented.select("parent_id", label).distinct()
              .withColumn("_n", F.row_number().over(order)).where(F.col("_n") <= per_class))
    return sorted(int(r[0]) for r in chosen.select("parent_id").collect())


def copy_caption(row: dict) -> str:
    flip = " flip" if row["flip"] else ""
    return (f"rot {row['rotation']:+.0f}° shear {row['shear']:+.0f}°\n"
            f"shift {row['shift_x']:+.2f},{row['shift_y']:+.2f} zoom {row['zoom']:.2f}\n"
            f"bright {row['brightness']:.2f}{flip}")


def plot_copies(parents: pd.DataFrame, copies: pd.DataFrame, label: str, out_png: str | Path,
                max_copies: int = 6) -> Path:
    """One row per parent: its image, then up to `max_copies` copies with their parameters.
    `parents`: product_id, label, image; `copies`: parent_id, copy_index, image, parameters."""
    parents = parents.sort_values([label, "product_id"])
    fig, axes = plt.subplots(max(1, len(parents)), max_copies + 1, squeeze=False,
                             figsize=(1.6 * (max_copies + 1), 2.3 * max(1, len(parents))))
    for ax in axes.flat:
        ax.axis("off")
    for r, parent in enumerate(parents.to_dict("records")):
        axes[r][0].imshow(to_rgb(parent["image"]))
        axes[r][0].set_title(f"{parent['product_id']}\n{parent[label]} (original)", fontsize=6.5,
                             fontweight="bold", **PLAIN)
        mine = copies[copies["parent_id"] == parent["product_id"]].sort_values("copy_index")
        for c, copy in enumerate(mine.head(max_copies).to_dict("records"), 1):
            axes[r][c].imshow(to_rgb(copy["image"]))
            axes[r][c].set_title(copy_caption(copy), fontsize=5.5, **PLAIN)
    fig.tight_layout()
    return save_figure(fig, out_png)

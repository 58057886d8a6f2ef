"""Matplotlib set up for headless jobs, and saving a figure as PNG."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # jobs run headless
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["PLAIN", "plt", "save_figure"]

# Keyword arguments for every Text made from data (names, classes, labels): shown as written.
# Matplotlib otherwise reads a pair of `$` as mathtext, and a product name like
# "Tee $5_$ off" fails the whole figure.
PLAIN = {"parse_math": False}


def save_figure(fig, out_png: str | Path) -> Path:
    """Render `fig` to `out_png` (folders created) and close it."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out_png.write_bytes(buffer.getvalue())
    return out_png

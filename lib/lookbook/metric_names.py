"""MLflow's rule for metric and param names, shared by what logs a metric and what reads it
back by name (the comparison table). Imports nothing of lookbook."""
from __future__ import annotations

import re

_REFUSED = re.compile(r"[^\w.\- /]")  # characters MLflow refuses in metric and param names


def metric_name(name: str) -> str:
    """`name` with each character MLflow refuses replaced by "_": precision@5 -> precision_5."""
    return _REFUSED.sub("_", name)

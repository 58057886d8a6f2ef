"""The machine a benchmark ran on, printed first by every bench: absolute times only compare
within one run (the CPU kind changes between sessions), so each figure names its CPU."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

# The real catalogue beside the checkout, or where LOOKBOOK_REAL_DATA says (as for the tests).
REAL_DATA = Path(os.environ.get("LOOKBOOK_REAL_DATA",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion"))


def cpu_line() -> str:
    from lookbook.features.precision import cpu_flags, has_native_bf16

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    native_bf16 = has_native_bf16(cpu_flags(info))
    return (f"CPU: {model.group(1) if model else 'unknown'}, {os.cpu_count()} cores, "
            f"native bf16: {'yes' if native_bf16 else 'no'}")


def real_data_args(parser: argparse.ArgumentParser, n: int | None = 2000) -> None:
    """--data-dir (default: REAL_DATA) and, unless n is None, --n (how many of its first
    products)."""
    parser.add_argument("--data-dir", default=str(REAL_DATA))
    if n is not None:
        parser.add_argument("--n", type=int, default=n)


def first_products(data_dir: Path, n: int) -> tuple[str, list[str], list[Path]]:
    """styles.csv's header, its first n rows (file order) and their image files."""
    header, *rows = (data_dir / "styles.csv").read_text().splitlines()
    rows = rows[:n]
    return header, rows, [data_dir / "images" / f"{row.split(',')[0]}.jpg" for row in rows]

"""The machine a benchmark ran on, printed first by every bench: absolute times only compare
within one run (the CPU kind changes between sessions), so each figure names its CPU."""
from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = re.search(r"^flags\s*:(.*)$", info, re.M)
    native_bf16 = bool(flags) and bool({"avx512_bf16", "amx_bf16"} & set(flags.group(1).split()))
    return (f"CPU: {model.group(1) if model else 'unknown'}, {os.cpu_count()} cores, "
            f"native bf16: {'yes' if native_bf16 else 'no'}")

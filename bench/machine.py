"""The machine a benchmark ran on, printed first by every bench: absolute times only compare
within one run (the CPU kind changes between sessions), so each figure names its CPU."""
from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_line() -> str:
    from lookbook.features.precision import cpu_flags, has_native_bf16

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    native_bf16 = has_native_bf16(cpu_flags(info))
    return (f"CPU: {model.group(1) if model else 'unknown'}, {os.cpu_count()} cores, "
            f"native bf16: {'yes' if native_bf16 else 'no'}")

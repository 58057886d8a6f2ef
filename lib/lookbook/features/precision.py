"""Which arithmetic the feature model runs in. "bf16" (Keras mixed_bfloat16) is about 3x
faster than fp32 on CPUs with native bf16 (AVX512_BF16 or AMX) and slower elsewhere, where it
is emulated; "auto" takes bf16 where every executor's CPU has it, fp32 otherwise. Rows record
the precision that made them, never "auto"."""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

PRECISIONS = ("fp32", "bf16")
CHOICES = ("auto", *PRECISIONS)
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """This machine's CPU flags (Linux /proc/cpuinfo; none known elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_native_bf16(flags: set[str]) -> bool:
    return bool(NATIVE_BF16_FLAGS & flags)


def executors_have_native_bf16(spark: SparkSession) -> bool:
    """True when the CPU of every task slot's machine has native bf16 (one tiny task per
    slot; in local mode, the driver's machine)."""
    sc = spark.sparkContext
    slots = sc.defaultParallelism
    found = sc.parallelize(range(slots), slots).map(lambda _: has_native_bf16(cpu_flags()))
    return all(found.collect())


def resolve_precision(spark: SparkSession, precision: str) -> str:
    """The precision to compute in: `precision` itself, or for "auto" what the executors'
    CPUs run fastest."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, not {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if executors_have_native_bf16(spark) else "fp32"

"""Named crash points, to test for real what survives a crash at a precise moment.

`LOOKBOOK_CRASH_AT=<point>[,<point>...]` makes the process kill itself with SIGKILL (exactly
what `kill -9` does: no cleanup, no `finally`) when it reaches one of the points;
`LOOKBOOK_INTERRUPT_AT` raises KeyboardInterrupt there instead (a Ctrl-C), and
`LOOKBOOK_FAIL_AT` an `InjectedFailure` (an ordinary error, as a bug would raise). A point is
a name such as `tables.committed`, optionally qualified by what it is about: a table
(`tables.committed:products`), a combination (`compare.combination:vgg16 160x120 bf16`).
Unset, a crash point costs one environment lookup.
"""
from __future__ import annotations

import os
import signal


class InjectedFailure(RuntimeError):
    """The error LOOKBOOK_FAIL_AT raises."""


def crash_point(point: str, qualifier: str = "") -> None:
    names = {point, f"{point}:{qualifier}"} if qualifier else {point}
    if names & _listed("LOOKBOOK_CRASH_AT"):
        os.kill(os.getpid(), signal.SIGKILL)
    if names & _listed("LOOKBOOK_INTERRUPT_AT"):
        raise KeyboardInterrupt(f"LOOKBOOK_INTERRUPT_AT={point}")
    if names & _listed("LOOKBOOK_FAIL_AT"):
        raise InjectedFailure(f"LOOKBOOK_FAIL_AT={point}")


def _listed(variable: str) -> set[str]:
    return {p.strip() for p in os.environ.get(variable, "").split(",") if p.strip()}

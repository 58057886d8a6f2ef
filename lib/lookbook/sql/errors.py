"""Spark's SQL errors as one line a person can act on: what, and where in the query."""
from __future__ import annotations

import re

_POSITION = re.compile(r"\(line (\d+), pos (\d+)\)|; line (\d+) pos (\d+)")
# Everything after the message: SQLSTATE, position, the plan, the `== SQL ==` block.
_NOISE = re.compile(r"\s*(SQLSTATE: \w+|; line \d+ pos \d+|\(line \d+, pos \d+\)|== SQL ==).*",
                    re.DOTALL)


def error_line(exc: Exception, query: str, views: dict[str, str] | None = None) -> str:
    """`[ERROR_CLASS] message at line L, column C: <that line of the query>`. Spark's
    message loses its plan, its SQLSTATE and its `== SQL ==` block; `views` maps view names
    back to what the query wrote (products_v3 -> products@v3)."""
    message = " ".join(_NOISE.sub("", str(exc).strip()).split())
    for view, written in (views or {}).items():
        message = message.replace(view, written)
    return message + _position(exc, str(exc), query)


def _position(exc: Exception, text: str, query: str) -> str:
    line = column = None
    contexts = exc.getQueryContext() if hasattr(exc, "getQueryContext") else []
    if contexts and contexts[0].startIndex() >= 0:
        start = contexts[0].startIndex()
        line = query.count("\n", 0, start) + 1
        column = start - (query.rfind("\n", 0, start) + 1) + 1
    elif match := _POSITION.search(text):
        numbers = [int(n) for n in match.groups() if n is not None]
        line, column = numbers[0], numbers[1] + 1  # Spark's pos counts from 0
    if line is None:
        return ""
    lines = query.splitlines() or [""]
    source = lines[line - 1].strip() if line <= len(lines) else ""
    return f" (at line {line}, column {column}: {source})"


def quiet_query_error_log() -> None:
    """pyspark logs each failed query with its Java stack trace before raising it; the job
    reports it as one line (`error_line`) instead."""
    from pyspark.logger import PySparkLogger

    PySparkLogger.getLogger("SQLQueryContextLogger").disabled = True

"""A query's result for people: an aligned text table of the first rows, or a whole file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .views import SqlError

MAX_CELL = 60  # characters of a printed cell; a file keeps everything
FORMATS = (".csv", ".parquet")


def cell_text(value) -> str:
    """A cell as printed: binary as its size, long arrays and text cut, NULL spelled out."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return "NULL"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value):,} bytes>"
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        shown = ", ".join(cell_text(v) for v in value[:4])
        return f"[{shown}, ... {len(value)} values]" if len(value) > 4 else f"[{shown}]"
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def aligned_table(frame: pd.DataFrame) -> str:
    """Columns left-aligned, numbers right-aligned, a rule under the header."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    cells = [[cell_text(v) for v in frame[c]] for c in frame.columns]
    widths = [max([len(str(c))] + [len(v) for v in col]) for c, col in zip(frame.columns, cells)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line([str(c) for c in frame.columns]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in zip(*cells)] if len(frame) else []
    return "\n".join(out)


def first_rows(result: DataFrame, limit: int) -> tuple[pd.DataFrame, bool]:
    """The first `limit` rows, and whether there are more."""
    rows = result.limit(limit + 1).toPandas()
    return rows.head(limit), len(rows) > limit


def save_result(result: DataFrame, out: str) -> int:
    """The whole result as one file on the driver (.csv: arrays, maps and structs as JSON,
    binary as base64; .parquet: types as they are). Returns the rows written. Written beside
    and renamed, so a failed query leaves no half file."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise SqlError(f"out={out}: the file must end in {' or '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    csv = path.suffix.lower() == ".csv"
    table = (for_csv(result) if csv else result).toArrow()
    partial = path.with_name(f".{path.name}.partial")
    if csv:
        pacsv.write_csv(table, partial)
    else:
        with pq.ParquetWriter(partial, table.schema) as writer:
            writer.write(table)
    partial.replace(path)
    return table.num_rows


def for_csv(result: DataFrame) -> DataFrame:
    """Columns CSV can hold: nested values as JSON text, binary as base64."""
    def flat(field: T.StructField):
        column = F.col(f"`{field.name}`")
        if isinstance(field.dataType, (T.ArrayType, T.MapType, T.StructType)):
            return F.to_json(column).alias(field.name)
        if isinstance(field.dataType, T.BinaryType):
            return F.base64(column).alias(field.name)
        return column
    return result.select(*[flat(f) for f in result.schema.fields])

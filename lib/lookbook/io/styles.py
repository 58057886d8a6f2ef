"""Parsing `styles.csv` lines, including the original file's malformed rows. Pure helpers."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

# The Kaggle header, in file order, and the products-table column each field becomes.
STYLES_COLUMNS = {
    "id": "product_id",
    "gender": "gender",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "articleType": "article_type",
    "baseColour": "base_colour",
    "season": "season",
    "year": "year",
    "usage": "usage",
    "productDisplayName": "display_name",
}
N_FIELDS = len(STYLES_COLUMNS)
PRODUCT_FIELDS = list(STYLES_COLUMNS.values())


class StylesHeaderError(ValueError):
    pass


def check_header(line: str) -> None:
    fields = [f.strip() for f in next(csv.reader([line]))]
    if fields != list(STYLES_COLUMNS):
        raise StylesHeaderError(
            f"styles.csv header is {fields}; expected the Kaggle layout {list(STYLES_COLUMNS)}")


def is_header(line: str) -> bool:
    return line.startswith("id,")


def parse_styles_line(line: str) -> dict:
    """One data line -> product fields plus `reason` (None when the row is good).

    Product names in the original file contain unquoted commas, which yields more than 10
    fields; the name is then every field from the 10th on, joined by commas. A properly
    quoted name parses as one field. Empty fields become None.
    """
    row = dict.fromkeys(PRODUCT_FIELDS)
    row["reason"] = None
    fields = next(csv.reader([line]), [])
    if len(fields) < N_FIELDS:
        row["reason"] = f"row has {len(fields)} fields, expected {N_FIELDS}"
        row["product_id"] = _to_int(fields[0]) if fields else None
        return row
    fields = fields[:N_FIELDS - 1] + [",".join(fields[N_FIELDS - 1:])]
    for name, value in zip(PRODUCT_FIELDS, fields):
        row[name] = value.strip() or None
    product_id = _to_int(row["product_id"])
    if product_id is None:
        row["reason"] = f"id {row['product_id']!r} is not a number"
    row["product_id"] = product_id
    if row["year"] is not None:
        year = _to_int(row["year"])
        if year is None:
            # Fields shifted by a stray comma before the name show up here first.
            row["reason"] = row["reason"] or f"year {row['year']!r} is not a number (fields shifted?)"
        row["year"] = year
    return row


def _to_int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def first_products_per_article_type(data_dir: str | Path, n_types: int,
                                    per_type: int) -> tuple[list[str], list[int]]:
    """A fixed real slice for probes: the first `per_type` product ids (by id, with an image)
    of each of the `n_types` commonest articleTypes (ties by name), and each one's type index."""
    data_dir = Path(data_dir)
    with open(data_dir / "styles.csv", newline="") as f:
        rows = [row[:9] for row in list(csv.reader(f))[1:]]  # 22 names hold unquoted commas
    rows = [row for row in rows if (data_dir / "images" / f"{row[0]}.jpg").exists()]
    counts = Counter(row[4] for row in rows)
    types = [t for t, _ in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))[:n_types]]
    chosen: dict[str, list[str]] = {t: [] for t in types}
    for row in sorted(rows, key=lambda row: int(row[0])):
        if row[4] in chosen and len(chosen[row[4]]) < per_type:
            chosen[row[4]].append(row[0])
    products = [p for t in types for p in chosen[t]]
    labels = [label for label, t in enumerate(types) for _ in chosen[t]]
    return products, labels

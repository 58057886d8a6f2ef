"""Parsing `styles.csv` lines, including the original file's malformed rows. Pure helpers."""
from __future__ import annotations

import csv
import re
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


BOM = "\ufeff"
# A longer line is rejected rather than parsed: no field of a catalogue row is legitimately
# this long (names are tens of characters), and it is the csv module's own default field
# limit, so no field can ever hit `csv.Error: field larger than field limit`.
MAX_LINE_CHARS = 131_072
MAX_DETAIL_CHARS = 1_000  # of the raw line kept in a reject's `detail`
INT64_MAX, INT32_MIN, INT32_MAX = 2**63 - 1, -(2**31), 2**31 - 1
BLANK_LINE = "blank line"  # not a reject: skipped, and counted in the ingest summary
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SIGNED = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _header_fields(line: str) -> list[str]:
    try:
        return [f.strip() for f in next(csv.reader([line.lstrip(BOM)]), [])]
    except csv.Error:
        return []


def check_header(line: str) -> None:
    fields = _header_fields(line)
    if fields != list(STYLES_COLUMNS):
        raise StylesHeaderError(
            f"styles.csv header is {fields}; expected the Kaggle layout {list(STYLES_COLUMNS)}")


def is_header(line: str) -> bool:
    """The header line exactly (a UTF-8 BOM and spaces around names allowed)."""
    return len(line) < 1_000 and _header_fields(line) == list(STYLES_COLUMNS)


def decode_line(raw: bytes, line_no: int) -> tuple[str, str | None]:
    """A line's bytes -> (text, reason). Invalid UTF-8 is a reason; the text then shows the
    bad bytes as \\xNN escapes. The BOM of the first line is dropped."""
    try:
        text, reason = raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", "backslashreplace")
        reason = f"line is not valid UTF-8 (byte {exc.start + 1} of the line)"
    if line_no == 1:
        text = text.removeprefix(BOM)
    return text, reason


def truncate(line: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return line if len(line) <= limit else line[:limit] + f"... ({len(line):,} characters)"


def parse_product_id(value: str | None) -> int | None:
    """The one rule for a product id, in styles.csv and in image file names: ASCII digits
    only, fitting a signed 64-bit integer. None otherwise."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if number <= INT64_MAX else None


def parse_styles_line(line: str) -> dict:
    """One data line -> product fields plus `reason` (None when the row is good). Never raises.

    Product names in the original file contain unquoted commas, which yields more than 10
    fields; the name is then every field from the 10th on, joined by commas. A properly
    quoted name parses as one field. Empty fields become None. A reason is set for: a line
    that is blank (`BLANK_LINE`), too long, holds a NUL byte, has malformed quoting (a quoted
    field not closed on its line: a line break inside quotes), has too few fields, repeats the
    header, or has an id or year that is not a whole number or does not fit its column
    (id: 64-bit, year: 32-bit). Every value that is returned fits its column type.
    """
    row = dict.fromkeys(PRODUCT_FIELDS)
    row["reason"] = None
    if not line.strip():
        row["reason"] = BLANK_LINE
        return row
    if len(line) > MAX_LINE_CHARS:
        row["reason"] = (f"line is {len(line):,} characters long, over the limit of "
                         f"{MAX_LINE_CHARS:,}")
        row["product_id"] = parse_product_id(line.split(",", 1)[0].strip())
        return row
    if "\x00" in line:
        row["reason"] = "line contains a NUL byte"
        row["product_id"] = parse_product_id(line.split(",", 1)[0].strip())
        return row
    try:
        # strict: a quoted field must close on this line (else the line was split inside
        # quotes) and be followed by a comma.
        fields = next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        unclosed = "unexpected end of data" in str(exc)
        row["reason"] = ("a quoted field is not closed on this line (a line break inside "
                         "quotes?)" if unclosed else f"malformed CSV quoting: {exc}")
        row["product_id"] = parse_product_id(line.split(",", 1)[0].strip())
        return row
    if is_header(line):
        row["reason"] = "repeated header line"
        return row
    if len(fields) < N_FIELDS:
        row["reason"] = f"row has {len(fields)} fields, expected {N_FIELDS}"
        row["product_id"] = parse_product_id(fields[0].strip()) if fields else None
        return row
    fields = fields[:N_FIELDS - 1] + [",".join(fields[N_FIELDS - 1:])]
    for name, value in zip(PRODUCT_FIELDS, fields):
        row[name] = value.strip() or None
    raw_id, raw_year = row["product_id"], row["year"]
    row["product_id"] = parse_product_id(raw_id)
    if raw_id is None:
        row["reason"] = "empty id"
    elif row["product_id"] is None:
        row["reason"] = (f"id {raw_id!r} is out of range (over {INT64_MAX})"
                         if _DIGITS.fullmatch(raw_id) else f"id {raw_id!r} is not a number")
    row["year"] = None
    if raw_year is not None:
        if not _SIGNED.fullmatch(raw_year):
            # Fields shifted by a stray comma before the name show up here first.
            row["reason"] = row["reason"] or f"year {raw_year!r} is not a number (fields shifted?)"
        elif not INT32_MIN <= int(raw_year) <= INT32_MAX:
            row["reason"] = row["reason"] or f"year {raw_year!r} is out of range (32-bit)"
        else:
            row["year"] = int(raw_year)
    return row


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

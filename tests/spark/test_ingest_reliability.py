"""Issue 9, inputs: one bad line or file never fails the batch, and every input ends in exactly
one place. A catalogue holding every kind of bad line and file we could think of, ingested
for real (local Spark, real files, real links and pipes); what each input should become is
worked out here from the bytes and files the fixture wrote, not from the ingest's counters."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lookbook.io.ingest import format_summary, ingest_catalogue, read_styles
from lookbook.io.synthetic import HEADER, jpeg_bytes, make_catalogue

MAX_FILE_BYTES = 1_000_000
IMAGE = jpeg_bytes(Image.new("RGB", (60, 80), (200, 30, 40)))
OTHER_IMAGE = jpeg_bytes(Image.new("RGB", (60, 80), (30, 60, 200)))


def row(pid, name="Hostile Input", year="2012") -> str:
    return f"{pid},Men,Apparel,Topwear,Tshirts,Red,Summer,{year},Casual,{name}"


class Hostile:
    """The catalogue under construction: raw styles lines (bytes, no line ends) with what each
    should become, and every file written under images/ with its expected reason."""

    def __init__(self, root: Path):
        self.root, self.images = root, root / "images"
        made = make_catalogue(root, bad_inputs=True)
        text = (root / "styles.csv").read_text().splitlines()
        self.lines: list[bytes] = [s.encode() for s in text]
        self.products: set[int] = set(made["product_ids"])
        self.line_reason: dict[int, str] = {}  # 1-based line number -> reason fragment
        self.file_reason: dict[str, str] = {}  # images/<relative> -> reason fragment
        self.next_id = 900_000

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def line(self, raw: bytes | str, reason: str | None = None) -> int:
        self.lines.append(raw.encode() if isinstance(raw, str) else raw)
        if reason:
            self.line_reason[len(self.lines)] = reason
        return len(self.lines)

    def file(self, relative: str, data: bytes = IMAGE, reason: str | None = None) -> Path:
        path = self.images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if reason:
            self.file_reason[f"images/{relative}"] = reason
        return path


def build(root: Path) -> Hostile:
    h = Hostile(root)
    good = sorted(h.products)

    # --- styles.csv: lines ---
    pid = h.new_id()  # a valid non-ASCII name, on a CRLF line (the whole file is CRLF)
    h.line(row(pid, "Café Crème Tee"))
    h.file(f"{pid}.jpg")
    h.products.add(pid)
    for raw, reason in [
        (row(h.next_id + 1, "Odd\x00Nul"), "NUL byte"),
        (row(h.next_id + 2).encode() + b" Caf\xe9 Latin-1", "not valid UTF-8"),
        (row(h.next_id + 3, year="99999999999"), "year '99999999999' is out of range"),
        (row(h.next_id + 4, "x" * 200_000), "characters long"),
    ]:
        rejected = h.new_id()
        h.line(raw, reason)
        h.file(f"{rejected}.jpg", reason="its styles.csv row was rejected")
    h.line(row("99999999999999999999"), "is out of range")  # over int64
    h.line(row("-5"), "id '-5' is not a number")
    h.line(row("١٢٣"), "is not a number")  # Arabic-Indic digits: int() would take them
    h.line(row(""), "empty id")
    h.line(",,,,,,,,,", "empty id")
    h.line(row(h.new_id(), '"Quoted" then more'), "malformed CSV quoting")
    split = h.new_id()  # a quoted name with a line break: two lines in the file
    h.line(row(split, '"Two'), "quoted field is not closed")
    h.line('Lines"', "row has 1 fields")
    h.file(f"{split}.jpg", reason="its styles.csv row was rejected")
    h.line(HEADER, "repeated header line")
    h.line("")  # blank lines are skipped and counted, not rejected
    h.line("   ")
    h.line(row(h.new_id()), "no image file for this row")

    # --- images/: files ---
    h.file(f"old/{good[0]}.jpg", OTHER_IMAGE, "in a subfolder")  # must not displace good[0]
    h.file(f"id={good[1]}/{good[1]}.jpg", OTHER_IMAGE, "in a subfolder")  # partition-like
    h.file(f"a/b/{good[2]}.jpg", reason="in a subfolder")
    h.file(".DS_Store", b"\0\0\0\1Bud1", "hidden file")
    h.file(f"._{good[3]}.jpg", b"\0\5\26\7", "hidden file")
    h.file("_tmp.jpg", IMAGE, "hidden file")
    h.file(f".cache/{good[4]}.jpg", IMAGE, "hidden file")
    h.file(f"_staging/{good[5]}.jpg", IMAGE, "hidden file")
    for name in ["a b (1).jpg", "50%.jpg", "%41.jpg", "#1.jpg", "ü.jpg", "plus+1.jpg"]:
        h.file(name, IMAGE, "image file name is not a product id")
    # Hadoop fails to open it: a real read error, even as root (it is not the row's image).
    colon = h.new_id()
    h.line(row(colon), "no image file for this row")
    h.file(f"{colon}:1.jpg", IMAGE, "Hadoop cannot open a file whose name contains ':'")
    with open(os.path.join(os.fsencode(h.images), b"\xff.jpg"), "wb") as f:
        f.write(IMAGE)
    h.file_reason["images/\\xff.jpg"] = "not valid UTF-8"
    broken = h.new_id()  # a row whose image is a broken link
    h.line(row(broken), "its image file was rejected")
    os.symlink(h.images / "no-such-target.jpg", h.images / f"{broken}.jpg")
    h.file_reason[f"images/{broken}.jpg"] = "broken symbolic link"
    os.symlink("loop.jpg", h.images / "loop.jpg")
    h.file_reason["images/loop.jpg"] = "could not be read"
    fifo = h.new_id()  # a named pipe: opening it would block for ever
    h.line(row(fifo), "its image file was rejected")
    os.mkfifo(h.images / f"{fifo}.jpg")
    h.file_reason[f"images/{fifo}.jpg"] = "not a regular file (named pipe)"
    folder = h.new_id()  # a directory named like an image
    h.line(row(folder), "no image file for this row")
    h.file(f"{folder}.jpg/inside.jpg", reason="in a subfolder")
    big = h.new_id()
    h.line(row(big), "its image file was rejected")
    h.file(f"{big}.jpg", b"\xff" * (MAX_FILE_BYTES + 1), "file too large")
    linked = h.new_id()  # a link to a good image is a good image (the real slice uses them)
    h.line(row(linked))
    os.symlink(h.images / f"{good[6]}.jpg", h.images / f"{linked}.jpg")
    h.products.add(linked)
    for kind in ("vanishes", "becomes a directory"):  # changed after the listing
        pid = h.new_id()
        h.line(row(pid, f"Hostile {kind}"), "its image file was rejected")
        h.file(f"{pid}.jpg", reason="file vanished during ingest")
        setattr(h, kind.split()[0], h.images / f"{pid}.jpg")

    h.lines[0] = b"\xef\xbb\xbf" + h.lines[0]  # a UTF-8 BOM before the header
    (root / "styles.csv").write_bytes(b"\r\n".join(h.lines) + b"\r\n")
    return h


def files_on_disk(images: Path) -> set[str]:
    """Every entry under images/ that is not a directory, by a plain recursive scandir that
    follows no links: the inputs as the fixture left them."""
    found = set()
    for entry in os.scandir(os.fsencode(images)):
        if entry.is_dir(follow_symlinks=False):
            found |= {os.fsencode(entry.name).decode("utf-8", "backslashreplace") + "/" + f
                      for f in files_on_disk(Path(os.fsdecode(entry.path)))}
        else:
            found.add(entry.name.decode("utf-8", "backslashreplace"))
    return found


@pytest.fixture(scope="module")
def hostile(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    h = build(root)
    h.inputs = {f"images/{f}" for f in files_on_disk(h.images)}

    def change_files():  # between the listing and the read, as a concurrent job would
        h.vanishes.unlink()
        h.becomes.unlink()
        h.becomes.mkdir()

    result = ingest_catalogue(spark, str(root), 50_000_000, MAX_FILE_BYTES,
                              after_listing=change_files)
    h.result = result
    h.products_rows = [r.asDict() for r in result.products.select(
        "product_id", "image_file", "display_name", "image").collect()]
    h.rejects_rows = [r.asDict() for r in result.rejects.collect()]
    yield h
    result.release()


def styles_line_numbers(h: Hostile) -> tuple[set[int], set[int]]:
    """(every non-blank line after the header, the blank ones), by the fixture's own bytes."""
    lines = (h.root / "styles.csv").read_bytes().split(b"\r\n")[:-1]
    assert len(lines) == len(h.lines)  # the name with a line break was written as two lines
    rows = {n for n, raw in enumerate(lines, 1) if n > 1 and raw.strip()}
    blank = {n for n, raw in enumerate(lines, 1) if n > 1 and not raw.strip()}
    return rows, blank


def test_every_styles_line_is_in_exactly_one_place(hostile):
    rows, blank = styles_line_numbers(hostile)
    line_rejects = [r for r in hostile.rejects_rows if r["source"].startswith("styles.csv")]
    rejected = [int(r["source"].split(":")[1]) for r in line_rejects]
    assert len(rejected) == len(set(rejected)), "a line rejected twice"
    product_ids = [r["product_id"] for r in hostile.products_rows]
    assert len(product_ids) == len(set(product_ids))
    # The line each product came from: the first line that starts with its id.
    first_line = {}
    for n, raw in enumerate(hostile.lines, 1):
        first_line.setdefault(raw.split(b",")[0], n)
    product_lines = {first_line[str(p).encode()] for p in product_ids}
    assert product_lines.isdisjoint(rejected)
    assert product_lines | set(rejected) == rows
    assert not blank & set(rejected)
    assert hostile.result.blank_lines == len(blank) == 2
    assert hostile.result.styles_rows == len(rows)


def test_every_file_under_images_is_in_exactly_one_place(hostile):
    used = [r["image_file"] for r in hostile.products_rows]
    file_rejects = [r["source"] for r in hostile.rejects_rows
                    if not r["source"].startswith("styles.csv")]
    assert len(file_rejects) == len(set(file_rejects)), "a file rejected twice"
    assert set(used).isdisjoint(file_rejects)
    assert sorted(used + file_rejects) == sorted(hostile.inputs)
    assert hostile.result.image_files == len(hostile.inputs)


def test_products_are_the_good_rows_with_their_top_level_images(hostile):
    got = {r["product_id"]: r for r in hostile.products_rows}
    assert set(got) == hostile.products
    good = sorted(hostile.products)
    for pid in good[:3]:  # each has a stale copy in a subfolder, which must not displace it
        assert got[pid]["image_file"] == f"images/{pid}.jpg"
        assert bytes(got[pid]["image"]) == (hostile.images / f"{pid}.jpg").read_bytes()
    assert "Café Crème Tee" in {r["display_name"] for r in hostile.products_rows}


@pytest.mark.parametrize("kind", ["line", "file"])
def test_every_bad_input_has_its_reason(hostile, kind):
    expected = hostile.line_reason if kind == "line" else hostile.file_reason
    by_source = {r["source"]: r for r in hostile.rejects_rows}
    for key, fragment in expected.items():
        source = f"styles.csv:{key}" if kind == "line" else key
        assert source in by_source, f"no reject for {source}"
        assert fragment in by_source[source]["reason"], (source, by_source[source])


def test_names_that_need_url_encoding_get_no_phantom_reject(hostile):
    sources = [r["source"] for r in hostile.rejects_rows]
    for name in ["a b (1).jpg", "50%.jpg", "%41.jpg", "#1.jpg", "ü.jpg", "plus+1.jpg"]:
        assert sources.count(f"images/{name}") == 1
    assert not [s for s in sources if "%20" in s or "%25" in s or "%23" in s]
    empty = [r["source"] for r in hostile.rejects_rows if r["reason"] == "empty file"]
    assert all((hostile.root / s).stat().st_size == 0 for s in empty)


def test_reject_details_name_the_line_and_stay_small(hostile):
    by_source = {r["source"]: r for r in hostile.rejects_rows}
    giant = next(n for n, f in hostile.line_reason.items() if f == "characters long")
    detail = by_source[f"styles.csv:{giant}"]["detail"]
    assert detail.startswith(hostile.lines[giant - 1][:50].decode()) and len(detail) < 1_100
    latin1 = next(n for n, f in hostile.line_reason.items() if f == "not valid UTF-8")
    assert "\\xe9" in by_source[f"styles.csv:{latin1}"]["detail"]


def test_summary_counts_every_kind(hostile):
    result = hostile.result
    text = format_summary(result)
    assert "2 blank lines skipped" in text
    assert "every input accounted for: yes" in text and result.unaccounted == 0
    reasons = result.rejects_by_reason
    assert reasons["hidden file (name starts with '.' or '_'): not read"] == 5
    assert reasons["in a subfolder of images/: only images/<id>.<ext> are catalogue images"] == 4
    assert reasons["file vanished during ingest"] == 1
    assert sum(reasons.values()) == len(hostile.rejects_rows)


# --- styles.csv alone: each bad line kind, one at a time ------------------------------------

@pytest.mark.parametrize("raw, reason", [
    (b"7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Caf\xe9", "not valid UTF-8"),
    (b"99999999999999999999,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X",
     "out of range"),
    (b"7,Men,Apparel,Topwear,Tshirts,Red,Summer,3000000000,Casual,X", "out of range"),
    (b"7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual," + b"y" * 140_000,
     "characters long"),
    (b"7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,\"" + b"y" * 140_000 + b"\"",
     "characters long"),
    (b"7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,A\0B", "NUL byte"),
    (HEADER.encode(), "repeated header line"),
    (b",Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,X", "empty id"),
])
def test_one_bad_line_is_a_reject_and_the_batch_goes_on(spark, tmp_path, raw, reason):
    good = b"8,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Fine"
    path = tmp_path / "styles.csv"
    path.write_bytes(b"\n".join([HEADER.encode(), good, raw, good.replace(b"8,", b"9,", 1)])
                     + b"\n")
    rows = {r["line_no"]: r for r in read_styles(spark, str(path)).collect()}
    assert sorted(rows) == [2, 3, 4]
    assert rows[2]["reason"] is None and rows[4]["reason"] is None
    assert reason in rows[3]["reason"]


def test_bom_crlf_blank_lines_and_a_line_break_in_quotes(spark, tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"\r\n"
                     b"8,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Fine\r\n"
                     b"\r\n"
                     b"9,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,\"Two\r\n"
                     b"Lines\"\r\n"
                     b"10,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Last\r\n")
    rows = {r["line_no"]: r for r in read_styles(spark, str(path)).collect()}
    assert rows[2]["reason"] is None and rows[2]["display_name"] == "Fine"
    assert rows[3]["reason"] == "blank line"
    assert "quoted field is not closed" in rows[4]["reason"] and rows[4]["product_id"] == 9
    assert "row has 1 fields" in rows[5]["reason"]
    assert rows[6]["reason"] is None and rows[6]["display_name"] == "Last"


def test_line_numbers_are_file_lines_across_many_partitions(spark, tmp_path):
    """Several input partitions (a small split size): numbers stay the file's line numbers."""
    path = tmp_path / "styles.csv"
    n = 20_000
    path.write_text(HEADER + "\n" + "".join(
        f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Name {i}\n"
        for i in range(2, n + 2)))
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "65536")
    try:
        styles = read_styles(spark, str(path))
        assert styles.rdd.getNumPartitions() > 4
        pairs = styles.select("product_id", "line_no").collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    assert len(pairs) == n and all(r[0] == r[1] for r in pairs)


def test_a_missing_images_folder_and_an_empty_styles_file_are_clear_errors(spark, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "styles.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        ingest_catalogue(spark, str(tmp_path), 1, 1)

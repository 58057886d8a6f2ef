"""A small synthetic catalogue in the Kaggle layout, for tests, notebooks and `make demo` on a
machine without the real data. Each class draws a different shape, so a classifier and a
neighbour search have something real to find.

    python -m lookbook.synthetic OUT_DIR [--scale 1] [--bad-inputs]
"""
from __future__ import annotations

import argparse
import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

from .styles import STYLES_COLUMNS

HEADER = ",".join(STYLES_COLUMNS)
# Class -> (article types, share of products): imbalanced like the real catalogue.
CLASSES = {
    "Apparel": (["Tshirts", "Shirts", "Jeans"], 24),
    "Accessories": (["Watches", "Bags"], 14),
    "Footwear": (["Casual Shoes", "Sandals"], 10),
    "Personal Care": (["Perfume and Body Mist"], 5),
    "Free Items": (["Free Gifts"], 3),
    "Sporting Goods": (["Footballs"], 2),
    "Home": (["Cushion Covers"], 1),
}
COLOURS = {"Black": (20, 20, 20), "Blue": (30, 60, 200), "Red": (200, 30, 40),
           "White": (235, 235, 235), "Green": (40, 150, 60), "Brown": (120, 70, 30)}
WIDTH, HEIGHT = 60, 80
FIRST_ID = 100_000


def draw_product(master: str, article: str, colour: tuple[int, int, int], rng: random.Random,
                 size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """A product photo on white: the shape says the class, the colour is the base colour."""
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    j = lambda v: v + rng.randint(-3, 3)  # noqa: E731 - jitter so no two images are identical
    if master == "Apparel":
        top = j(10) if article != "Jeans" else j(6)
        d.rectangle([j(12), top, j(w - 12), j(h - 10)], fill=colour)
        if article != "Jeans":
            d.rectangle([j(2), top, j(14), j(40)], fill=colour)
            d.rectangle([j(w - 14), top, j(w - 2), j(40)], fill=colour)
    elif master == "Accessories":
        d.ellipse([j(12), j(22), j(w - 12), j(58)], fill=colour)
        d.rectangle([j(24), j(4), j(36), j(76)], outline=colour, width=3)
    elif master == "Footwear":
        d.polygon([(j(4), j(62)), (j(w - 4), j(62)), (j(w - 4), j(50)), (j(24), j(40)),
                   (j(4), j(44))], fill=colour)
    elif master == "Personal Care":
        d.rectangle([j(22), j(26), j(38), j(74)], fill=colour)
        d.rectangle([j(27), j(14), j(33), j(26)], fill=(90, 90, 90))
    elif master == "Free Items":
        d.rectangle([j(10), j(30), j(50), j(70)], fill=colour)
        d.line([(30, 30), (30, 70)], fill=(250, 210, 0), width=4)
    elif master == "Sporting Goods":
        d.ellipse([j(8), j(18), j(52), j(62)], fill=(250, 250, 250), outline=colour, width=4)
    else:
        d.rectangle([j(6), j(20), j(54), j(60)], fill=colour, outline=(0, 0, 0))
    return img


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, **kwargs)
    return out.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height pixels: what a
    decompression bomb looks like to a reader that trusts headers."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = 8 + 4 + 4  # signature, chunk length, b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def make_catalogue(root: str | Path, scale: int = 1, seed: int = 7,
                   bad_inputs: bool = False) -> dict[str, object]:
    """Write styles.csv and images/ under `root`. Returns what a test needs to check the
    result: the ids expected as products and the expected reject reason per bad input."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines, good_ids = [HEADER], []
    next_id = FIRST_ID
    for master, (articles, share) in CLASSES.items():
        for i in range(share * scale):
            article = articles[i % len(articles)]
            colour_name = rng.choice(sorted(COLOURS))
            gender = rng.choice(["Men", "Women", "Unisex"])
            usage = "Sports" if master == "Sporting Goods" else rng.choice(["Casual", "Formal"])
            name = f"Lookbook {gender} {colour_name} {article}"
            lines.append(f"{next_id},{gender},{master},{master} Sub,{article},{colour_name},"
                         f"Summer,{2011 + i % 8},{usage},{name}")
            img = draw_product(master, article, COLOURS[colour_name], rng)
            (images / f"{next_id}.jpg").write_bytes(jpeg_bytes(img))
            good_ids.append(next_id)
            next_id += 1
    expected_rejects: dict[str, str] = {}
    if bad_inputs:
        next_id = _add_bad_inputs(root, lines, good_ids, expected_rejects, next_id, rng)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return {"product_ids": sorted(good_ids), "rejects": expected_rejects}


def _add_bad_inputs(root: Path, lines: list[str], good_ids: list[int],
                    expected: dict[str, str], next_id: int, rng: random.Random) -> int:
    """Every kind of bad input the ingest must reject, and odd-but-valid images it must keep.
    `expected` maps a reject's source (or 'id:N') to a fragment of its reason."""
    images = root / "images"
    sample = draw_product("Apparel", "Tshirts", COLOURS["Red"], rng)

    def row(pid, name="Odd Input", master="Apparel"):
        return f"{pid},Men,{master},Topwear,Tshirts,Red,Summer,2012,Casual,{name}"

    def add(kind: str, *, data: bytes | None = None, name: str | None = None,
            line: str | None = None, reason: str | None = None, good: bool = False) -> None:
        nonlocal next_id
        pid = next_id
        next_id += 1
        if line != "":
            lines.append(line or row(pid, f"Odd {kind}"))
        if data is not None:
            (images / (name or f"{pid}.jpg")).write_bytes(data)
        if good:
            good_ids.append(pid)
        elif reason:
            expected[f"id:{pid}"] = reason

    # Odd but valid: any image that decodes safely is a product.
    add("png named jpg", data=png_bytes(sample), good=True)
    add("greyscale", data=jpeg_bytes(sample.convert("L")), good=True)
    add("cmyk", data=jpeg_bytes(sample.convert("CMYK")), good=True)
    rgba = sample.convert("RGBA")
    rgba.putalpha(128)
    add("alpha png", data=png_bytes(rgba), name=f"{next_id}.png", good=True)
    add("unquoted commas", line=row(next_id, "Nike Men, Red, Tee"), data=jpeg_bytes(sample),
        good=True)
    add("quoted commas", line=row(next_id, '"Puma, Red Tee"'), data=jpeg_bytes(sample), good=True)
    # Bad image files.
    add("not an image", data=b"this is not an image\n", reason="not an image")
    add("truncated", data=jpeg_bytes(sample)[:300], reason="does not decode")
    add("empty", data=b"", reason="empty file")
    add("bomb", data=png_claiming_size(100_000, 100_000), reason="too large to decode safely")
    # Rows and files that do not match up.
    add("missing image", reason="no image file for this row")
    add("orphan image", line="", data=jpeg_bytes(sample), reason="image has no row")
    pid = next_id
    add("two files", data=jpeg_bytes(sample), reason="more than one image file")
    (images / f"{pid}.png").write_bytes(png_bytes(sample))
    # Bad rows.
    pid = next_id
    add("conflicting duplicate", data=jpeg_bytes(sample), reason="conflicting rows")
    lines.append(row(pid, "Another Name"))
    pid = next_id
    add("identical duplicate", data=jpeg_bytes(sample), good=True)
    lines.append(lines[-1])
    expected[f"id:{pid}"] = "identical copy kept"
    lines.append(row("abc"))
    expected["line:abc"] = "is not a number"
    lines.append(f"{next_id},Men,Apparel")
    expected[f"id:{next_id}"] = "row has 3 fields"
    next_id += 1
    (images / "readme.jpg").write_bytes(jpeg_bytes(sample))
    expected["images/readme.jpg"] = "not a product id"
    return next_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--scale", type=int, default=1, help="products per class share")
    parser.add_argument("--bad-inputs", action="store_true", help="add every kind of bad input")
    args = parser.parse_args(argv)
    made = make_catalogue(args.out_dir, scale=args.scale, bad_inputs=args.bad_inputs)
    print(f"synthetic catalogue: {len(made['product_ids'])} products in {args.out_dir}")


if __name__ == "__main__":
    main()

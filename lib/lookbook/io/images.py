"""Image bytes -> facts, and image bytes -> pixels. Pure helpers, no Spark."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None  # why the bytes are not a usable image; None when they are


def inspect_image(data: bytes | None, max_pixels: int) -> ImageFacts:
    """Check that `data` is an image that decodes completely and safely.

    The header is read first and the pixel count checked before any decoding, so a
    decompression bomb is refused without allocating it. Any format and mode PIL decodes is
    valid (a PNG named .jpg, greyscale, CMYK, alpha); conversion happens where pixels are used.
    """
    data = data or b""
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageFacts(digest, error="empty file")
    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; PIL's warning/error would fire at a different one.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                facts = ImageFacts(digest, img.format, img.mode, width, height)
                if width * height > max_pixels:
                    return _failed(facts, f"image too large to decode safely: {width}x{height} "
                                          f"pixels > limit {max_pixels}")
                img.load()  # full decode: catches truncated and corrupt data
                return facts
    except Image.DecompressionBombError as exc:
        return ImageFacts(digest, error=f"image too large to decode safely: {exc}")
    except Image.UnidentifiedImageError:
        return ImageFacts(digest, error="not an image (unrecognised format)")
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # PIL signals truncated/corrupt data with OSError ("image file is truncated"), and
        # some decoders with ValueError/SyntaxError.
        return ImageFacts(digest, error=f"image does not decode: {exc}")


def _failed(facts: ImageFacts, error: str) -> ImageFacts:
    return ImageFacts(facts.sha256, facts.format, facts.mode, facts.width, facts.height, error)


def to_rgb(data: bytes) -> Image.Image:
    """Decode to 8-bit RGB whatever the source mode: greyscale is replicated, alpha is
    composited on white (catalogue photos sit on white), CMYK is converted."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")



def to_array(data: bytes, height: int, width: int) -> np.ndarray:
    """RGB pixels as uint8 (height, width, 3). A plain bilinear resize to the model's input
    size, no padding: the catalogue's photos are almost all one aspect ratio (60x80), and the
    same rule applies to every image, at training, featurize and query time alike."""
    img = to_rgb(data)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_image_file(path: str | Path, max_pixels: int = 50_000_000) -> bytes:
    """A photo's bytes, or a clear error when it is missing or is not a usable image."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = file.read_bytes()
    facts = inspect_image(data, max_pixels)
    if facts.error:
        raise ValueError(f"{path} is not a usable image: {facts.error}")
    return data

"""One augmented copy of an image: its parameters from (seed, parent id, copy index), and the
transform itself. Pure helpers, no Spark.

The kinds are Keras' `ImageDataGenerator` ones (rotation, width/height shift, shear, zoom,
horizontal flip, brightness), applied with PIL as one affine warp about the image centre.
Parameters come from a hash of (seed, parent id, copy index, parameter name), never from a
random generator's state, so a copy is the same whichever worker, partition or order makes it.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

from PIL import Image, ImageEnhance, ImageOps

from ..io.images import to_rgb
from ..models.split import hash_fraction

WHITE = (255, 255, 255)  # the catalogue's background: what a transform exposes is filled so


@dataclass(frozen=True)
class TransformRanges:
    """Each parameter is drawn uniformly from its range: rotation in +-rotation_degrees,
    shifts in +-fraction of the width/height, shear in +-shear_degrees, zoom in 1 +- zoom (one
    factor for both axes, so proportions stay), brightness in 1 +- brightness; the flip is a
    coin toss when horizontal_flip. The defaults are the config's (`augment.*`)."""
    rotation_degrees: float
    width_shift: float
    height_shift: float
    shear_degrees: float
    zoom: float
    horizontal_flip: bool
    brightness: float

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass(frozen=True)
class CopyParameters:
    rotation: float  # degrees, counter-clockwise
    shift_x: float  # fraction of the width, + = right
    shift_y: float  # fraction of the height, + = down
    shear: float  # degrees
    zoom: float  # > 1 enlarges
    flip: bool
    brightness: float  # factor, 1 = unchanged


def hash_unit(*parts: object) -> float:
    """A number in [0, 1) from the parts alone: `hash_fraction` of "p1:p2:..."."""
    return hash_fraction(":".join(str(p) for p in parts))


def copy_parameters(seed: int, parent_id: int, copy_index: int,
                    ranges: TransformRanges) -> CopyParameters:
    def uniform(name: str, half_width: float) -> float:
        return (2 * hash_unit(seed, parent_id, copy_index, name) - 1) * half_width

    return CopyParameters(
        rotation=uniform("rotation", ranges.rotation_degrees),
        shift_x=uniform("shift_x", ranges.width_shift),
        shift_y=uniform("shift_y", ranges.height_shift),
        shear=uniform("shear", ranges.shear_degrees),
        zoom=1 + uniform("zoom", ranges.zoom),
        flip=ranges.horizontal_flip and hash_unit(seed, parent_id, copy_index, "flip") < 0.5,
        brightness=1 + uniform("brightness", ranges.brightness))


def affine_matrix(p: CopyParameters, width: int, height: int) -> tuple[float, ...]:
    """PIL's AFFINE data for `p`: the map from output pixel to input pixel, i.e. the inverse
    of the forward warp (about the image centre: shear, rotate, zoom, then shift)."""
    cx, cy = width / 2, height / 2
    cos, sin = math.cos(math.radians(p.rotation)), math.sin(math.radians(p.rotation))
    tan = math.tan(math.radians(p.shear))
    # Forward linear part, zoom * rotation @ shear, in image coordinates (y points down, so
    # this rotation turns the picture counter-clockwise on screen).
    a, b = p.zoom * cos, p.zoom * (cos * tan + sin)
    c, d = -p.zoom * sin, p.zoom * (cos - sin * tan)
    tx, ty = cx + p.shift_x * width, cy + p.shift_y * height  # where the centre goes
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    # input = inverse @ (output - (tx, ty)) + centre
    return (ia, ib, cx - ia * tx - ib * ty, ic, id_, cy - ic * tx - id_ * ty)


def augment_image(data: bytes, p: CopyParameters) -> bytes:
    """The copy as PNG bytes (lossless, and the same bytes for the same input): RGB, the
    parent's size, borders the warp exposes filled white."""
    img = to_rgb(data)
    if p.flip:
        img = ImageOps.mirror(img)
    img = img.transform(img.size, Image.Transform.AFFINE, affine_matrix(p, *img.size),
                        resample=Image.Resampling.BILINEAR, fillcolor=WHITE)
    if p.brightness != 1:
        # After the warp, so the fill changes as the photo's own white background does and
        # never shows as a border.
        img = ImageEnhance.Brightness(img).enhance(p.brightness)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()

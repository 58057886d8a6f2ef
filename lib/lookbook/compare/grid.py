"""Which combinations a comparison runs, and the featurize settings of each. Pure helpers."""
from __future__ import annotations

from dataclasses import dataclass

from ..features.backbones import check_input_size

IMAGENET = "imagenet"
RANDOM = "random"


@dataclass(frozen=True)
class Combination:
    backbone: str
    weights: str  # IMAGENET or RANDOM
    height: int
    width: int
    precision: str  # as asked: auto is resolved by featurize

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def label(self) -> str:
        random = " random-init" if self.weights == RANDOM else ""
        return f"{self.backbone}{random} {self.size} {self.precision}"

    def featurize_settings(self, backbone: str, layers: list[str]) -> dict:
        """featurize.* settings of this combination, given the configured backbone and
        layers: chosen layers apply to the backbone they were chosen for; others pool their
        defaults."""
        return {"backbone": self.backbone, "weights": self.weights, "height": self.height,
                "width": self.width, "precision": self.precision,
                "layers": list(layers) if self.backbone == backbone else []}

    def params(self) -> dict[str, str]:
        return {"combo.backbone": self.backbone, "combo.weights": self.weights,
                "combo.size": self.size, "combo.precision": self.precision}


def combinations(backbones: list[str], sizes: list[tuple[int, int]], precisions: list[str],
                 random_init: list[str]) -> list[Combination]:
    """Every backbone x size (height, width) x precision with ImageNet weights, then the same
    for each backbone of `random_init` with random weights; an unknown backbone, or a size
    below a backbone's minimum, is an error up front, before hours of work."""
    for name in [*backbones, *random_init]:
        for height, width in sizes:
            check_input_size(name, height, width)
    grid = [(b, IMAGENET) for b in backbones] + [(b, RANDOM) for b in random_init]
    combos = [Combination(b, w, h, wd, p) for b, w in grid for h, wd in sizes
              for p in precisions]
    if not combos:
        raise ValueError("compare: nothing to compare; give compare.backbones (or "
                         "compare.random_init), compare.sizes and compare.precisions")
    return list(dict.fromkeys(combos))  # a combination asked twice runs once

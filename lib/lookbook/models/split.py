"""Deterministic train / validation / test split by product id.

Each product's part comes from a stable hash of its id alone (sha256 of `salt + id`, first 60
bits as a fraction u in [0, 1)): u < train -> "train", u < train + validation -> "validation",
else "test". So a product is in the same part on every run and every machine, whatever else
the catalogue holds: a nightly refresh that adds products never moves an old one into another
part (which would leak trained-on products into the test set). Because the hash ignores the
label, every class is split train/validation/test in the same proportions in expectation; on
the real catalogue every class with at least 25 members has members in every part (tested).
Augmented copies carry their parent's `product_id` and therefore its part.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the Spark twins import it when called: the config checks fractions
    from pyspark.sql import Column

PARTS = ("train", "validation", "test")
_HEX_DIGITS = 15  # 60 bits: exact in a double and in a Spark long


def check_fractions(train: float, validation: float) -> None:
    if not (0 < train < 1 and 0 <= validation < 1 and train + validation < 1):
        raise ValueError(f"split fractions need 0 < train, 0 <= validation, train + validation "
                         f"< 1 (test gets the rest); got train={train}, validation={validation}")


def hash_fraction(text: str) -> float:
    """A number in [0, 1) from `text` alone: the first 60 bits of its sha256. The
    pure-Python twin of `hash_fraction_column`."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return int(digest[:_HEX_DIGITS], 16) / 16 ** _HEX_DIGITS


def hash_fraction_column(text: Column) -> Column:
    """`hash_fraction` of a string column, as a Spark column."""
    from pyspark.sql import functions as F

    digits = F.substring(F.sha2(text, 256), 1, _HEX_DIGITS)
    return F.conv(digits, 16, 10).cast("double") / float(16 ** _HEX_DIGITS)


def split_fraction(product_id: int, salt: str = "") -> float:
    """u in [0, 1) for one product: the pure-Python twin of `split_column`."""
    return hash_fraction(f"{salt}{product_id}")


def split_of(product_id: int, train: float = 0.8, validation: float = 0.1, salt: str = "") -> str:
    check_fractions(train, validation)
    u = split_fraction(product_id, salt)
    return "train" if u < train else "validation" if u < train + validation else "test"


def split_column(product_id: Column | str, train: float = 0.8, validation: float = 0.1,
                 salt: str = "") -> Column:
    """The part ("train", "validation" or "test") of each row's product id, as a Spark column."""
    from pyspark.sql import functions as F

    check_fractions(train, validation)
    key = F.concat(F.lit(salt), F.col(product_id).cast("string")
                   if isinstance(product_id, str) else product_id.cast("string"))
    u = hash_fraction_column(key)
    return (F.when(u < train, "train")
            .when(u < train + validation, "validation")
            .otherwise("test"))

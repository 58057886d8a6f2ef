"""The train / validation / test split: deterministic by product id, the same in Spark and in
pure Python, in the configured proportions, and every real class of 25+ products in each part."""
import csv
import hashlib
from collections import Counter, defaultdict

import pytest
from pyspark.sql import functions as F

from lookbook.models.split import PARTS, split_column, split_fraction, split_of


def test_a_product_always_lands_in_the_same_part():
    # Pinned values: sha256 is the same on every machine and Python version, so these must
    # never change (if they do, every model's test set silently changes with them).
    ids = [15970, 39386, 59263, 21379, 53759, 1855]
    assert [split_of(i) for i in ids] == ["train", "train", "train", "validation", "test", "train"]
    assert [round(split_fraction(i), 6) for i in ids] == [
        0.471875, 0.034177, 0.255968, 0.834408, 0.976036, 0.232388]
    assert split_fraction(7, salt="x") == int(hashlib.sha256(b"x7").hexdigest()[:15], 16) / 2 ** 60


def test_spark_column_agrees_with_the_pure_function(spark):
    ids = spark.range(1, 3001).withColumnRenamed("id", "product_id")
    rows = ids.select("product_id", split_column("product_id", 0.7, 0.2, "s").alias("p")).collect()
    assert {r["product_id"]: r["p"] for r in rows} == {
        i: split_of(i, 0.7, 0.2, "s") for i in range(1, 3001)}


def test_parts_follow_the_fractions_and_the_salt_reshuffles():
    parts = Counter(split_of(i) for i in range(20000))
    assert parts["train"] / 20000 == pytest.approx(0.8, abs=0.01)
    assert parts["validation"] / 20000 == pytest.approx(0.1, abs=0.01)
    assert parts["test"] / 20000 == pytest.approx(0.1, abs=0.01)
    moved = sum(split_of(i) != split_of(i, salt="other") for i in range(2000))
    assert 400 < moved < 1000  # about 1 - (0.8^2 + 0.1^2 + 0.1^2) = 34 % move


def test_the_part_does_not_depend_on_the_rest_of_the_catalogue(spark):
    small = spark.range(100, 200).withColumnRenamed("id", "product_id")
    large = spark.range(0, 5000).withColumnRenamed("id", "product_id")
    part = split_column("product_id")
    in_small = {r[0]: r[1] for r in small.select("product_id", part).collect()}
    in_large = {r[0]: r[1] for r in large.where(F.col("product_id").between(100, 199))
                .select("product_id", part).collect()}
    assert in_small == in_large


@pytest.mark.parametrize("train, validation", [(0, 0.1), (0.9, 0.1), (1.2, 0), (0.8, -0.1)])
def test_impossible_fractions_are_refused(train, validation):
    with pytest.raises(ValueError, match="test gets the rest"):
        split_of(1, train, validation)


def test_every_real_class_of_25_or_more_is_in_every_part(real_data):
    with open(real_data / "styles.csv", newline="") as f:
        rows = [row[:9] for row in list(csv.reader(f))[1:]]  # 22 names hold unquoted commas
    parts = defaultdict(Counter)
    for row in rows:
        parts[row[2]][split_of(int(row[0]))] += 1
    for cls, counts in parts.items():
        if sum(counts.values()) >= 25:
            assert all(counts[p] > 0 for p in PARTS), (cls, counts)

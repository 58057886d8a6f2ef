"""The table catalogue: every table declared once, and the one way steps read and write them.

A declaration names the table, its key columns and its schema (with a line per column for the
docs/tables.md). `Table` has a member per declaration, also exported as a module-level name
(`PRODUCTS`, `FEATURES`, ...): code names tables by these handles, so that a misspelt table is
an import error, not a failure hours into a run. The step that writes a table declares it
(`pipelines.base.step(writes=...)`) and registers here (`declare_writer`).
`Catalog` resolves handles to Delta tables under the warehouse: a write is checked against the
declaration (same columns and types, keys unique), the SQL views are the declared tables, and
docs/tables.md's table reference is generated from the same declarations
(`python -m lookbook.cli tables-doc`).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from . import tables
from .tables import SchemaMismatch, Written

BATCH = "lookbook.batch"  # commit metadata: the write that committed a pair of tables together


@dataclass(frozen=True)
class Column:
    name: str
    type: T.DataType
    doc: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str
    keys: tuple[str, ...]  # unique per row; () for a log without a natural key
    columns: tuple[Column, ...]
    # The table its step writes together with it (outputs and their rejects): a reader sees
    # the two at versions written by the same run of the step, never one without the other.
    written_with: str | None = None
    # Rows per product: files hold `tables.products_per_file` products' rows, clustered by id.
    rows_per_product: int = 1
    cluster_by: tuple[str, ...] = ("product_id",)  # the column holding the product id

    @property
    def schema(self) -> T.StructType:
        return T.StructType([T.StructField(c.name, c.type) for c in self.columns])

    @property
    def written_by(self) -> str | None:
        """The step that declares it writes the table (None until the steps register)."""
        return _WRITERS.get(self.name)


LONG, INT, FLOAT, BOOL = T.LongType(), T.IntegerType(), T.FloatType(), T.BooleanType()
STRING, BINARY, VECTOR = T.StringType(), T.BinaryType(), T.ArrayType(T.FloatType())


def _rejects(name: str, doc: str, written_with: str) -> TableSpec:
    return TableSpec(name, doc, (), (
            Column("product_id", LONG, "where known"),
            Column("source", STRING, "the input: `styles.csv:<line>`, `images/<path>`, or the step"),
            Column("reason", STRING, "why it was rejected"),
            Column("detail", STRING, "the raw CSV line, the file size, or the settings"),
        ), written_with)


FEATURE_SETTINGS = (
    Column("backbone", STRING, "e.g. vgg16"),
    Column("layers", STRING, "the pooled layers, `+`-joined, then the pooling unless the "
                             "average and the input blur if any: `block4_conv3+block5_conv3 gem blur1`"),
    Column("weights", STRING, "where the weights came from; `random (NOT pretrained)` is labelled"),
)
INPUT_SIZE = (
    Column("height", INT, "model input height"),
    Column("width", INT, "model input width"),
    Column("precision", STRING, "fp32 or bf16"),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (
    TableSpec("products", "One row per catalogue product that has a valid row and image.",
              ("product_id",), (
                  Column("product_id", LONG, "styles.csv `id`"),
                  Column("gender", STRING),
                  Column("master_category", STRING, "the classifier's label"),
                  Column("sub_category", STRING),
                  Column("article_type", STRING),
                  Column("base_colour", STRING),
                  Column("season", STRING),
                  Column("year", INT),
                  Column("usage", STRING),
                  Column("display_name", STRING, "productDisplayName, commas repaired"),
                  Column("image_file", STRING, "`images/<file>`"),
                  Column("image", BINARY, "the original file's bytes"),
                  Column("format", STRING, "as decoded (JPEG, PNG, ...)"),
                  Column("mode", STRING, "RGB, L, CMYK, RGBA, ..."),
                  Column("width", INT),
                  Column("height", INT),
                  Column("sha256", STRING, "of the image bytes"),
              ), "rejects"),
    _rejects("rejects", "Every input that did not become a product, with the reason: each "
                        "input is in exactly one of `products` and `rejects`.", "products"),
    TableSpec("features", "CNN feature vectors, one row per product and feature settings; rows "
                          "of other settings are kept.",
              ("product_id", "backbone", "layers", "weights", "preprocessing", "height",
               "width", "precision"), (
                  Column("product_id", LONG),
                  Column("sha256", STRING, "of the image the vector was computed from"),
                  *FEATURE_SETTINGS,
                  Column("preprocessing", STRING, "input normalisation: torch or keras:<backbone>"),
                  *INPUT_SIZE,
                  Column("embedding", VECTOR, "raw (not normalised) features"),
              ), "feature_rejects"),
    _rejects("feature_rejects",
             "Products whose image could not be featurized, with the reason.", "features"),
    TableSpec("augmented", "Augmented copies of train products of the small classes "
                           "(`augment`): the classifier trains on originals plus these.",
              ("image_key",), (
                  Column("image_key", STRING, "`<parent_id>:aug<copy_index>`"),
                  Column("parent_id", LONG, "the product copied (always in the train part)"),
                  Column("copy_index", INT, "0, 1, ... per parent"),
                  Column("parent_sha256", STRING, "of the parent's image when copied"),
                  Column("gender", STRING, "the parent's"),
                  Column("master_category", STRING, "the parent's"),
                  Column("sub_category", STRING, "the parent's"),
                  Column("article_type", STRING, "the parent's"),
                  Column("image", BINARY, "the copy, PNG, the parent's size"),
                  Column("sha256", STRING, "of the copy's bytes"),
                  Column("rotation", FLOAT, "degrees, counter-clockwise"),
                  Column("shift_x", FLOAT, "fraction of the width, + = right"),
                  Column("shift_y", FLOAT, "fraction of the height, + = down"),
                  Column("shear", FLOAT, "degrees"),
                  Column("zoom", FLOAT, "> 1 enlarges"),
                  Column("flip", BOOL, "mirrored left-right"),
                  Column("brightness", FLOAT, "factor, 1 = unchanged"),
                  Column("settings", STRING, "seed, ranges, target and factor that made it"),
              ), rows_per_product=5, cluster_by=("parent_id",)),
    TableSpec("augmented_features", "CNN feature vectors of the augmented copies, one row per "
                                    "copy and feature settings (as `features`).",
              ("image_key", "backbone", "layers", "weights", "preprocessing", "height",
               "width", "precision"), (
                  Column("image_key", STRING),
                  Column("parent_id", LONG),
                  Column("sha256", STRING, "of the copy the vector was computed from"),
                  *FEATURE_SETTINGS,
                  Column("preprocessing", STRING, "input normalisation: torch or keras:<backbone>"),
                  *INPUT_SIZE,
                  Column("embedding", VECTOR, "raw (not normalised) features"),
              ), rows_per_product=5, cluster_by=("parent_id",)),
    TableSpec("predictions", "The classifier's prediction for every product.",
              ("product_id",), (
                  Column("product_id", LONG),
                  Column("predicted", STRING, "the most probable class"),
                  Column("probability", FLOAT, "of the predicted class"),
                  Column("probabilities", VECTOR, "per class, in the model's label order"),
                  Column("split", STRING, "train, validation or test, as the model was trained"),
                  Column("run_id", STRING, "the model (training run) that predicted"),
              ), "prediction_rejects"),
    _rejects("prediction_rejects",
             "Products the classifier could not read, with the reason.", "predictions"),
    TableSpec("neighbours", "Every product's k most similar other products by cosine "
                            "similarity of their features, exact.",
              ("product_id", "rank"), (
                  Column("product_id", LONG),
                  Column("rank", INT, "1 = most similar"),
                  Column("neighbour_id", LONG),
                  Column("score", FLOAT, "cosine similarity; identical image bytes score 1.0"),
                  *FEATURE_SETTINGS, *INPUT_SIZE,
              ), rows_per_product=5),
    TableSpec("duplicates", "Distinct product pairs at least `neighbours.duplicate_threshold` "
                            "similar, among each product's top k.",
              ("product_id", "other_id"), (
                  Column("product_id", LONG, "the smaller id of the pair"),
                  Column("other_id", LONG),
                  Column("score", FLOAT),
                  Column("identical_bytes", BOOL, "the two images are the same file content"),
              )),
)}


# One member per declared table, `Table.PRODUCTS == "products"`, each also a module-level name:
# `from lookbook.io.catalog import PRODUCTS`. A StrEnum, so a handle is the table's name
# wherever a string is expected (paths, commit metadata, SQL views, f-strings).
Table = StrEnum("Table", [(name.upper(), name) for name in TABLES], module=__name__,
               qualname="Table")
Table.__doc__ = "A declared table (see TABLES)."
globals().update(Table.__members__)

__all__ = ["BATCH", "Catalog", "Column", "TABLES", "Table", "TableSpec", "conform",
           "declare_writer", "reference_markdown", "table_spec", *Table.__members__]

# The step that writes each table, registered by the steps' declarations (io never imports
# them). One step a table: its commits name it (`lookbook.job`), its readers are told to run it.
_WRITERS: dict[str, str] = {}


def declare_writer(step: str, table: Table) -> None:
    """Record that `step` writes `table` (called when a step registers)."""
    name = table_spec(table).name
    if _WRITERS.get(name, step) != step:
        raise ValueError(f"table {name} is declared written by {_WRITERS[name]} and by {step}: "
                         f"one step writes a table")
    _WRITERS[name] = step


def table_spec(name: Table) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalogue; declared: "
                       f"{', '.join(TABLES)}") from None


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """`df` with the declared columns in declared order; a clear error on any difference."""
    declared = {f.name: f.dataType for f in spec.schema.fields}
    actual = {f.name: f.dataType for f in df.schema.fields}
    problems = [f"missing column {n} {t.simpleString()}" for n, t in declared.items()
                if n not in actual]
    problems += [f"undeclared column {n} {t.simpleString()}" for n, t in actual.items()
                 if n not in declared]
    problems += [f"column {n} is {actual[n].simpleString()}, declared {t.simpleString()}"
                 for n, t in declared.items() if n in actual and actual[n] != t]
    if problems:
        raise SchemaMismatch(f"table {spec.name}: {'; '.join(problems)} (see lookbook/io/catalog.py)")
    return df.select(*declared)


class Catalog:
    """The declared tables of one warehouse, as Delta tables under `<warehouse>/<name>`.

    Reads are repeatable: the first read of a table pins the version a later read and the
    write of the same table use, so that a step computes from one snapshot and its commit
    fails (`tables.WriteConflict`) rather than overwrite another job's newer version."""

    def __init__(self, spark: SparkSession, warehouse: str, run_id: str | None = None,
                 products_per_file: int = 1000):
        self.spark = spark
        self.warehouse = warehouse
        self.run_id = run_id  # recorded with every commit, to find the run that wrote it
        self.products_per_file = products_per_file
        self._pinned: dict[str, tuple[int, int]] = {}  # name -> (latest, visible) versions
        self.written: dict[str, Written] = {}  # what this catalogue's writes did, by table

    def path(self, name: Table) -> str:
        return str(Path(self.warehouse) / table_spec(name).name)

    def exists(self, name: Table) -> bool:
        """The table has a complete version to read."""
        return self.on_disk(name) and self._versions(name)[1] >= 0

    def on_disk(self, name: Table) -> bool:
        """A Delta table is at the table's path, complete or not."""
        return tables.table_exists(self.path(name))

    def version(self, name: Table) -> int:
        """The version a read sees (see `_visible_version`)."""
        return self._versions(name)[1]

    def pending(self, name: Table) -> bool:
        """The table has a newer version than readers see: an interrupted batch."""
        latest, visible = self._versions(name)
        return latest != visible

    def readable(self, name: Table, version: int) -> bool:
        """Version `version` of the table can be read: in the log, its files not vacuumed."""
        return tables.version_readable(self.path(name), version)

    def history(self, name: Table) -> list[dict]:
        return tables.table_history(self.path(name))

    def read(self, name: Table, version: int | None = None) -> DataFrame:
        if not self.exists(name):
            raise FileNotFoundError(f"no {name} table in {self.warehouse}: run the "
                                    f"{table_spec(name).written_by or 'writing'} job first")
        return tables.read_table(self.spark, self.path(name),
                                 self.version(name) if version is None else version)

    def read_latest(self, name: Table) -> DataFrame:
        """The newest version, complete or not: what a merge into the table applies to, so a
        step that completes an interrupted batch computes its changes against it."""
        return tables.read_table(self.spark, self.path(name), self._versions(name)[0])

    def write(self, name: Table, df: DataFrame, mode: str = "overwrite",
              metadata: dict[str, str] | None = None) -> int:
        """Write `df` as the table's new content (or extra rows); returns the version."""
        spec = table_spec(name)
        written = tables.write_table(conform(df, spec), self.path(name), mode=mode,
                                     metadata=self._metadata(spec, metadata), keys=spec.keys,
                                     read_version=self._read_version(name),
                                     **self._layout(spec))
        return self._wrote(name, written)

    def merge(self, name: Table, upserts: DataFrame, removed: DataFrame | None = None,
              match_on: tuple[str, ...] | None = None,
              metadata: dict[str, str] | None = None) -> Written:
        """Replace the rows matching `upserts` or `removed` on `match_on` (default: the
        table's keys) by `upserts`, rewriting only the files that hold them. Commits nothing
        when nothing matches and there is nothing to add (`.version` is None)."""
        spec = table_spec(name)
        written = tables.merge_table(conform(upserts, spec), removed, self.path(name),
                                     match_on or spec.keys, self._metadata(spec, metadata),
                                     spec.keys, self._read_version(name), **self._layout(spec))
        if written.version is not None:
            self._wrote(name, written)
        else:
            self.written[name] = written
        return written

    def differences(self, name: Table, desired: DataFrame) -> tuple:
        """(upserts, removed, match_on) for `merge` that make the table hold exactly the rows
        of `desired`: its rows the table lacks, and the table's rows (by key; whole rows for a
        table without keys) it does not hold. Nothing to commit when they are the same."""
        current = self.read_latest(name)
        match_on = table_spec(name).keys or tuple(current.columns)
        desired = desired.select(*current.columns)
        return (desired.exceptAll(current),
                current.select(*match_on).exceptAll(desired.select(*match_on)), match_on)

    def merge_together(self, changes: dict[str, tuple], metadata: dict[str, str] | None = None
                       ) -> dict[str, Written]:
        """`merge` tables declared `written_with` each other as one batch: `changes` maps
        each to (upserts, removed, match_on). When one of them changes, the others commit
        the batch too (with no data change), so readers see both or neither; when none
        changes, nothing is committed."""
        self._check_pairs(changes)
        batch = {BATCH: uuid.uuid4().hex, **(metadata or {})}
        done = {name: self.merge(name, *change, metadata=batch) for name, change in changes.items()}
        # A batch an interrupted run left incomplete is completed even when nothing changed.
        if any(w.version is not None or self.pending(n) for n, w in done.items()):
            for name, written in done.items():
                if written.version is None:
                    meta = self._metadata(table_spec(name), {**batch, "lookbook.no_change": "true"})
                    version = tables.commit_no_change(self.path(name), meta,
                                                      self._read_version(name))
                    done[name] = Written(version, files_kept=written.files_kept)
                    self._wrote(name, done[name])
        return done

    def write_together(self, frames: dict[str, DataFrame],
                       metadata: dict[str, str] | None = None) -> dict[str, int]:
        """Overwrite tables declared `written_with` each other as one batch: until the last
        of them is committed, readers keep seeing the previous batch of every one."""
        self._check_pairs(frames)
        batch = {BATCH: uuid.uuid4().hex, **(metadata or {})}
        return {name: self.write(name, df, metadata=batch) for name, df in frames.items()}

    @staticmethod
    def _check_pairs(names) -> None:
        for name in names:
            partner = table_spec(name).written_with
            if partner not in names:
                raise ValueError(f"{name} is written together with {partner}: pass both")

    def _metadata(self, spec: TableSpec, metadata: dict[str, str] | None) -> dict[str, str]:
        meta = dict(metadata or {})
        if spec.written_by:  # the step whose commits these are (none until the steps register)
            meta = {"lookbook.job": spec.written_by, **meta}
        if self.run_id:
            meta["lookbook.run_id"] = self.run_id
        return meta

    def _layout(self, spec: TableSpec) -> dict:
        return {"cluster_by": spec.cluster_by,
                "rows_per_file": self.products_per_file * spec.rows_per_product}

    def _read_version(self, name: Table) -> int | None:
        return self._pinned[name][0] if name in self._pinned else None

    def _wrote(self, name: Table, written: Written) -> int:
        self.written[name] = written
        self._pinned[name] = (written.version, written.version)
        return written.version

    def _visible_version(self, name: Table, latest: int) -> int:
        """The newest version whose batch is complete: a version committed by
        `write_together` whose partner table never got the same batch (the job died between
        the two commits) is skipped, with everything after it that changed no data.
        -1 when no complete version exists yet."""
        partner = table_spec(name).written_with
        if partner is None:
            return latest
        partner_path = str(Path(self.warehouse) / partner)
        done = ({c[BATCH] for c in tables.table_history(partner_path) if BATCH in c}
                if tables.table_exists(partner_path) else set())
        visible = latest
        for commit in tables.table_history(self.path(name)):  # newest first
            if BATCH in commit and commit[BATCH] not in done:
                visible = commit["version"] - 1
            elif not str(commit.get("operation", "")).startswith("VACUUM"):
                break  # a complete write: what it and older commits hold stands
        return visible

    def _versions(self, name: Table) -> tuple[int, int]:
        if name not in self._pinned:
            latest = tables.table_version(self.path(name))
            self._pinned[name] = (latest, self._visible_version(name, latest))
        return self._pinned[name]

    def vacuum(self, name: Table, retention_hours: int, dry_run: bool) -> tuple[list[str], int]:
        """Files of the table no version of the last `retention_hours` needs (see
        `tables.vacuum_table`), deleted unless `dry_run`: (relative paths, bytes)."""
        return tables.vacuum_table(self.path(name), retention_hours, dry_run)

    def register_views(self) -> list[str]:
        """Every declared table that exists, as a temporary view by its name (current version)."""
        names = [name for name in TABLES if self.exists(name)]
        for name in names:
            self.read(name).createOrReplaceTempView(name)
        return names


def reference_markdown() -> str:
    """The table reference of docs/tables.md, generated from the declarations."""
    out = []
    for spec in TABLES.values():
        keys = ", ".join(f"`{k}`" for k in spec.keys) or "none"
        out += [f"**`{spec.name}`** (written by `{spec.written_by}`; key {keys}): {spec.doc}", "",
                "| column | type | |", "| --- | --- | --- |"]
        out += [f"| `{c.name}` | {c.type.simpleString()} | {c.doc} |" for c in spec.columns]
        out.append("")
    return "\n".join(out).rstrip() + "\n"

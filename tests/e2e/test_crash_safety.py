"""Real jobs, really killed (SIGKILL, like `kill -9`) and really run at once on one warehouse:
the tables read at a complete version after every kill, a rerun completes the work, `vacuum`
removes what the killed runs left, and two concurrent jobs lose nothing."""
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lookbook.config import load_config
from lookbook.io.catalog import Catalog
from lookbook.io.synthetic import make_catalogue
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.pipelines.maintenance_steps import vacuum

from helpers import finish, kill_when, settings_of, start


def ingested(warehouse: Path, spark) -> tuple[list[int], int]:
    tables = Catalog(spark, str(warehouse))
    products = sorted(r[0] for r in tables.read("products").select("product_id").collect())
    return products, tables.read("rejects").count()


def referenced_folders(table: Path) -> set[str]:
    return {Path(f).parent.name for f in DeltaTable(str(table)).file_uris()}


def on_disk_folders(table: Path) -> set[str]:
    return {p.name for p in table.iterdir() if p.name != "_delta_log"}


@pytest.fixture(scope="module")
def small_catalogue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "catalogue"
    make_catalogue(root, bad_inputs=True)
    return root


def add_product(catalogue: Path) -> int:
    """One more product, a copy of the first one's row and image under a new id."""
    lines = (catalogue / "styles.csv").read_text().splitlines()
    first = lines[1].split(",")
    new_id = 990_000 + len(lines)
    (catalogue / "styles.csv").write_text("\n".join(lines + [",".join([str(new_id)] + first[1:])])
                                          + "\n")
    shutil.copy(catalogue / "images" / f"{first[0]}.jpg", catalogue / "images" / f"{new_id}.jpg")
    return new_id


def test_killed_ingests_leave_a_complete_version_and_a_rerun_completes(spark, small_catalogue,
                                                                      tmp_path):
    catalogue, warehouse = tmp_path / "catalogue", tmp_path / "wh"
    shutil.copytree(small_catalogue, catalogue)
    args = [f"data_dir={catalogue}", f"warehouse={warehouse}"]
    cfg = load_config(None, args)
    ingest(spark, cfg)
    before = ingested(warehouse, spark)
    new_id = add_product(catalogue)

    products = warehouse / "products"
    folders = on_disk_folders(products)
    # In the middle of Spark writing the products files.
    job = start("ingest", *args)
    kill_when(job, lambda: any((products / f / "_temporary").exists()
                               for f in on_disk_folders(products) - folders))
    assert ingested(warehouse, spark) == before
    # At named moments of the commit protocol: files staged, nothing committed; products
    # committed, rejects not yet (readers must keep the previous pair).
    for moment in ("tables.staged:products", "tables.committed:products"):
        code, out = finish(start("ingest", *args, env={"LOOKBOOK_CRASH_AT": moment}))
        assert code != 0, out[-2000:]
        assert ingested(warehouse, spark) == before, moment

    code, out = finish(start("ingest", *args))  # the rerun
    assert code == 0, out[-3000:]
    after = ingested(warehouse, spark)
    assert after[0] == sorted(before[0] + [new_id]) and after[1] == before[1]
    assert on_disk_folders(products) - referenced_folders(products)  # killed runs' litter

    dry = vacuum(spark, load_config(None, [*args, "vacuum.dry_run=true",
                                           "vacuum.retention_hours=0"]))
    assert dry.summary.startswith("would delete") and dry.metrics["files.products"] > 0
    assert on_disk_folders(products) - referenced_folders(products)  # a dry run deletes nothing
    code, out = finish(start("vacuum", *args, "retention_hours=0"))
    assert code == 0, out[-3000:]
    for table in ("products", "rejects"):
        assert on_disk_folders(warehouse / table) == referenced_folders(warehouse / table), table
    assert ingested(warehouse, spark) == after


def test_two_featurize_jobs_at_once_lose_nothing(spark, warehouse_copy):
    """Two input sizes featurized at the same time on one warehouse: the job that commits
    second finds the first's commit, runs again on it, and both sizes end up complete."""
    sizes = [(32, 32), (48, 40)]
    args = settings_of(warehouse_copy)
    tables = Catalog(spark, warehouse_copy.warehouse)
    n_products = tables.read("products").count()
    default_rows = tables.read("features").count()
    jobs = [start("featurize", *args, f"featurize.height={h}", f"featurize.width={w}")
            for h, w in sizes]
    results = [finish(job) for job in jobs]
    for code, out in results:
        assert code == 0, out[-3000:]
    assert sum("Running it again" in out for _, out in results) == 1

    features = Catalog(spark, warehouse_copy.warehouse).read("features")
    for h, w in sizes:
        rows = features.where((F.col("height") == h) & (F.col("width") == w))
        assert rows.select("product_id").distinct().count() == rows.count() == n_products
    assert features.count() == default_rows + len(sizes) * n_products

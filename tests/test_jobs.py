"""The real entry point: ./spark-submit.sh JOB, as a user runs it."""
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable

from lookbook.synthetic import make_catalogue

REPO = Path(__file__).resolve().parents[1]
SUBMIT = str(REPO / "spark-submit.sh")
ENV_PYTHON = {"LOOKBOOK_PYTHON": sys.executable}


def submit(*args, timeout=600):
    import os
    return subprocess.run([SUBMIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV_PYTHON}, cwd=REPO)


def test_unknown_job_lists_valid_jobs():
    out = submit("nope")
    assert out.returncode == 2
    assert "unknown job 'nope'" in out.stderr and "ingest" in out.stderr


def test_unknown_key_lists_valid_keys():
    out = submit("ingest", "wherehouse=/tmp/x")
    assert out.returncode != 0
    assert "unknown config key 'wherehouse'" in out.stderr and "warehouse" in out.stderr


def test_pipeline_job_end_to_end(tmp_path):
    data, warehouse = tmp_path / "catalogue", tmp_path / "wh"
    made = make_catalogue(data, bad_inputs=True)
    out = submit("pipeline", f"data_dir={data}", f"warehouse={warehouse}", "spark.master=local[2]",
                 "spark.driver_memory=2g", f"featurize.weights_cache={tmp_path / 'weights'}")
    assert out.returncode == 0, out.stderr[-3000:]
    steps = ("ingest", "featurize", "report", "train", "evaluate", "predict", "neighbours",
             "evaluate_neighbours", "duplicates")
    for i, step in enumerate(steps, 1):
        assert f"[{i}/{len(steps)}] {step} done" in out.stdout
    assert "pipeline summary" in out.stdout
    products = DeltaTable(str(warehouse / "products")).to_pyarrow_table()
    assert sorted(products.column("product_id").to_pylist()) == made["product_ids"]
    rejects = DeltaTable(str(warehouse / "rejects")).to_pyarrow_table()
    assert rejects.num_rows >= len(made["rejects"])
    features = DeltaTable(str(warehouse / "features")).to_pyarrow_table()
    assert sorted(features.column("product_id").to_pylist()) == made["product_ids"]
    reports = warehouse / "reports" / "catalogue"
    for name in ("class_balance.png", "samples.png", "index.html"):
        assert (reports / name).stat().st_size > 0
    assert "Rejected inputs by reason" in (reports / "index.html").read_text()
    predictions = DeltaTable(str(warehouse / "predictions")).to_pyarrow_table()
    assert sorted(predictions.column("product_id").to_pylist()) == made["product_ids"]
    run = (warehouse / "models" / "LATEST").read_text().strip()
    assert (warehouse / "models" / run / "evaluation" / "index.html").stat().st_size > 0
    neighbours = DeltaTable(str(warehouse / "neighbours")).to_pyarrow_table()
    assert neighbours.num_rows == 5 * len(made["product_ids"])
    for report in ("neighbours", "duplicates"):
        assert (warehouse / "reports" / report / "index.html").stat().st_size > 0

"""Notebooks execute top to bottom and show their plots: 01 on its own synthetic catalogue,
as a user first opens it; 02 and 03 on a copy of the shared pipeline run's warehouse through
LOOKBOOK_CONF, as a user points them at a catalogue already ingested and featurized."""
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from helpers import PINNED, REPO, copy_tables

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ON_THEIR_OWN = {"01_explore.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, request, tmp_path, monkeypatch):
    if path.name not in ON_THEIR_OWN:
        run = request.getfixturevalue("pipeline_run")[1]
        monkeypatch.setenv("LOOKBOOK_CONF", str(notebook_config(run, tmp_path)))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook should show its plots"


def notebook_config(run, tmp_path: Path) -> Path:
    """A config file of a copy of the pipeline run's warehouse, its catalogue and weights."""
    warehouse = tmp_path / "warehouse"
    copy_tables(Path(run.warehouse), warehouse)
    settings = {"data_dir": run.data_dir, "warehouse": str(warehouse),
                "spark": {"master": "local[2]", "driver_memory": "2g"},
                "featurize": {"weights_cache": run.featurize.weights_cache},
                "train": {"epochs": 2}}
    for key, value in (item.split("=", 1) for item in PINNED):
        section, name = key.split(".")
        settings[section][name] = value
    path = tmp_path / "notebook.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path

"""Trained models on disk: one complete folder per run, `latest` the newest, never a partial."""
import json

import numpy as np
import pytest

from lookbook.models.store import find_model, load_model, save_classifier, trained_models

from helpers import TINY_INFO as INFO
from helpers import tiny_classifier


def test_saved_model_round_trips_with_its_info(tmp_path):
    model = tiny_classifier()
    folder = save_classifier(model, INFO, str(tmp_path), "run-a")
    found = find_model(str(tmp_path), "run-a")
    assert found.folder == folder and found.labels == ["a", "b", "c"]
    assert found.input_size == (8, 6) and found.info["run_id"] == "run-a"
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 6, 3)).astype("float32")
    np.testing.assert_allclose(load_model(found.model_path).predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-6)


def test_latest_is_the_newest_complete_folder(tmp_path):
    for run in ("zzz-old", "aaa-new"):  # made in this order: names do not decide
        save_classifier(tiny_classifier(), INFO, str(tmp_path), run)
    (tmp_path / ".bbb.partial-123").mkdir()  # a save that died
    (tmp_path / "ccc").mkdir()  # a folder with no model
    assert [m.run_id for m in trained_models(str(tmp_path))] == ["zzz-old", "aaa-new"]
    assert find_model(str(tmp_path)).run_id == "aaa-new"
    with pytest.raises(FileNotFoundError, match="known runs .*zzz-old, aaa-new, or 'latest'"):
        find_model(str(tmp_path), "bbb")


def test_no_model_and_a_taken_id_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train job first"):
        find_model(str(tmp_path))
    save_classifier(tiny_classifier(), INFO, str(tmp_path), "run-a")
    with pytest.raises(FileExistsError, match="run-a"):
        save_classifier(tiny_classifier(), INFO, str(tmp_path), "run-a")
    assert json.loads((tmp_path / "run-a" / "model.json").read_text())["labels"] == ["a", "b", "c"]

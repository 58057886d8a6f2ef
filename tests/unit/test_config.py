import pytest

from lookbook.config import DEFAULT_CONFIG, ConfigError, load_config, parse_size, valid_keys

REPO_CONF = DEFAULT_CONFIG.parent


def test_local_config_loads_with_defaults():
    cfg = load_config()
    assert cfg.spark.master == "local[*]"
    assert cfg.warehouse == "warehouse"
    assert cfg.models_dir == "warehouse/models" and cfg.reports_dir == "warehouse/reports"


def test_cluster_config_leaves_master_to_spark_submit():
    cfg = load_config(REPO_CONF / "cluster.yaml")
    assert cfg.spark.master is None
    assert cfg.spark.conf["spark.executor.memory"] == "8g"


def test_overrides_are_typed_and_dotted():
    cfg = load_config(None, ["warehouse=/tmp/wh", "spark.arrow_batch_rows=64",
                             "ingest.sample_fraction=0.25", "spark.master=local[2]",
                             "spark.conf.spark.executor.memory=2g", "spark.driver_memory=null"])
    assert cfg.warehouse == "/tmp/wh"
    assert cfg.spark.arrow_batch_rows == 64
    assert cfg.ingest.sample_fraction == 0.25
    assert cfg.spark.master == "local[2]"
    assert cfg.spark.conf == {"spark.executor.memory": "2g"}
    assert cfg.spark.driver_memory is None


def test_list_overrides_and_training_sections():
    cfg = load_config(None, ["train.dense_units=[512, 64, 32]", "train.class_weights=balanced",
                             "split.train=0.7", "split.validation=0.15", "model.run_id=abc"])
    assert cfg.train.dense_units == [512, 64, 32]
    assert cfg.train.class_weights == "balanced"
    assert (cfg.split.train, cfg.split.validation) == (0.7, 0.15)
    assert cfg.model.run_id == "abc"
    assert cfg.petastorm_cache_url.startswith("file:///") and cfg.petastorm_cache_url.endswith("/_petastorm")


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown config key 'nope'"),
    ("spark.nope=1", "unknown config key 'spark.nope'"),
    ("spark.arrow_batch_rows=many", "spark.arrow_batch_rows must be int"),
    ("spark.arrow_batch_rows=1.5", "must be int"),
    ("ingest.sample_fraction=0", "sample_fraction"),
    ("table_engine=parquet", "table_engine must be"),
    ("warehouse", "expected key=value"),
    ("warehouse.x=1", "not a section"),
    ("warehouse=null", "must be set"),
    ("train.dense_units=256", "must be a list"),
    ("train.dense_units=[a]", r"train.dense_units\[0\] must be int"),
    ("train.mode=full", "train.mode must be"),
    ("train.class_weights=inverse", "class_weights must be one of"),
    ("split.train=0.95", "test gets the rest"),
    ("compare.sizes=80by60", "a size is HEIGHTxWIDTH"),
    ("compare.sizes=80x0", "a size is HEIGHTxWIDTH"),
    ("compare.precisions=fp16", "compare.precisions must be among"),
    ("featurize.pooling=sum", "featurize.pooling must be one of"),
    ("featurize.blur=-1", r"featurize.blur must be in \[0, 4.0\]"),
    ("featurize.blur=9", "featurize.blur must be in"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_comma_separated_lists_on_the_command_line():
    cfg = load_config(None, ["compare.backbones=vgg16, efficientnetlite0",
                             "compare.sizes=80x60,160x120", "train.dense_units=64,32"])
    assert cfg.compare.backbones == ["vgg16", "efficientnetlite0"]
    assert cfg.compare.sizes == ["80x60", "160x120"]
    assert cfg.train.dense_units == [64, 32]
    assert parse_size("160x120") == (160, 120)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ingest.max_pixels=1"])
    assert "ingest.max_image_pixels" in str(err.value)


def test_unknown_key_in_yaml_file(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("ingest:\n  max_pixels: 3\n")
    with pytest.raises(ConfigError, match="ingest.max_pixels"):
        load_config(conf)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")


def test_a_config_shipped_with_files_is_found_in_the_working_directory(tmp_path, monkeypatch):
    """A driver in cluster deploy mode gets the submitting machine's path, and the file itself
    (spark-submit --files) in its working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("warehouse: /lake/wh\n")
    assert load_config("/on/the/submitting/machine/mine.yaml").warehouse == "/lake/wh"
    with pytest.raises(ConfigError, match="not found: /elsewhere/other.yaml .nor other.yaml"):
        load_config("/elsewhere/other.yaml")


def test_valid_keys_cover_nested_sections():
    keys = valid_keys()
    assert {"warehouse", "spark.master", "spark.conf.<any>", "ingest.sample_fraction"} <= set(keys)


def test_override_into_a_section_the_file_does_not_have(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("warehouse: /tmp/wh\nsplit:\n")  # no tracking section, an empty split one
    cfg = load_config(conf, ["tracking.enabled=false", "split.salt=x", "pipeline.name=full"])
    assert cfg.tracking.enabled is False and cfg.split.salt == "x"

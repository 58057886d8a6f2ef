"""The one typed configuration object: YAML file + `key=value` overrides.

Every job receives a `Config`; library functions take plain arguments picked from it.
Unknown keys are errors that list the valid ones, so a typo never silently does nothing.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models.split import check_fractions

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "conf" / "local.yaml"
CLASS_WEIGHT_MODES = ("none", "balanced", "sqrt")
# Largest allowed augmentation ranges: beyond these a copy stops looking like its product.
AUGMENT_LIMITS = {"rotation_degrees": 45.0, "width_shift": 0.3, "height_shift": 0.3,
                  "shear_degrees": 30.0, "zoom": 0.4, "brightness": 0.5}
YAML_NULLS = ("null", "Null", "NULL", "~")
PRECISIONS = ("auto", "fp32", "bf16")
POOLINGS = ("avg", "max", "gem")
MAX_BLUR = 4.0  # beyond it a 32-pixel-wide input (the smallest) has no detail left
SIZE = re.compile(r"(\d+)x(\d+)")


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says how to fix it."""


@dataclass
class SparkSettings:
    # None leaves the master to spark-submit's --master (cluster use).
    master: str | None = "local[*]"
    app_name: str = "lookbook"
    # Local mode runs the executors inside the driver: the whole real catalogue ran with 6g.
    driver_memory: str | None = "6g"
    # Rows per Arrow batch sent to Python workers: small, because rows carry image bytes.
    arrow_batch_rows: int = 256
    # Target bytes of input per partition when reading many small files.
    partition_bytes: int = 32 * 1024 * 1024
    # What opening one file is worth in bytes when packing files into partitions.
    file_open_cost_bytes: int = 64 * 1024
    # Output Parquet files are sized towards this.
    target_file_bytes: int = 128 * 1024 * 1024
    shuffle_partitions: int = 8
    # Passed verbatim as Spark conf (e.g. spark.executor.memory: 8g).
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class TensorflowSettings:
    # Threads per Spark Python worker: workers x threads should not exceed the cores.
    intra_op_threads: int = 1
    inter_op_threads: int = 1


@dataclass
class IngestSettings:
    # Images are rejected before decoding when either limit is exceeded (decompression bombs,
    # runaway files). The full-size Kaggle variant is 2400x1800, far below these.
    max_image_pixels: int = 50_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    # Deterministic sample of products by id hash, for laptop runs; 1.0 = everything.
    sample_fraction: float = 1.0


@dataclass
class FeaturizeSettings:
    # VGG16: the best test accuracy of those compared (docs/experiments.md#compare-feature-models).
    backbone: str = "vgg16"
    # "imagenet", "random" (NOT pretrained: tests and baselines only) or a weights file path.
    weights: str = "imagenet"
    weights_cache: str = "~/.cache/lookbook/weights"
    # Model input, height x width: the catalogue's images are 80 high, 60 wide.
    # Larger inputs cost far more featurize time for no accuracy (docs/experiments.md#input-size).
    height: int = 80
    width: int = 60
    # Layers whose poolings are concatenated into the features; [] = the backbone's
    # default (VGG: last conv of blocks 4 and 5).
    layers: list[str] = field(default_factory=list)
    # How each layer's map becomes a vector: "gem" (generalised mean, p = 3), "avg" (global
    # average) or "max".
    # GeM: better P@5 and photo rank 1, same speed (docs/experiments.md#pooling-and-input-blur).
    pooling: str = "gem"
    # Gaussian blur of the model input (sigma in input pixels; 0 = none), catalogue and
    # queries alike: it makes a heavily recompressed photo (JPEG blocks) look like its product.
    # 0 by default: blur costs the catalogue's own P@5 (docs/experiments.md#pooling-and-input-blur).
    blur: float = 0.0
    batch_size: int = 64
    # "auto": bf16 (Keras mixed precision) where every executor's CPU has native bf16, fp32
    # elsewhere; or "fp32" / "bf16" outright.
    # bf16: same quality, faster only if native (docs/experiments.md#bf16-on-the-whole-catalogue).
    precision: str = "auto"
    rows_per_partition: int = 2048


@dataclass
class AugmentSettings:
    # `augment` makes copies of the train products of small classes (table `augmented`);
    # featurize and train use them only when this is on.
    # Off: copies did not raise accuracy or macro-F1 (docs/experiments.md#augmentation).
    enabled: bool = False
    # Each class is raised to min(target_per_class, max_factor x its train products).
    target_per_class: int = 2000
    max_factor: float = 5.0
    # A copy's parameters come from (seed, parent id, copy index) alone.
    seed: int = 0
    # Ranges (see lookbook.augment.transforms.TransformRanges), bounded by AUGMENT_LIMITS so
    # that a copy stays recognisably its product.
    rotation_degrees: float = 15.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    shear_degrees: float = 8.0
    zoom: float = 0.1
    horizontal_flip: bool = True
    brightness: float = 0.15


@dataclass
class SplitSettings:
    # Fractions of products by a stable hash of their id; test gets the rest (lookbook.split).
    train: float = 0.8
    validation: float = 0.1
    salt: str = ""


@dataclass
class TrainSettings:
    label: str = "master_category"  # a products table column
    # "head": dense layers on the features table (frozen base); "finetune": also the last VGG
    # block, on images (slow on CPU: meant for a GPU or a cluster, or a slice here).
    mode: str = "head"
    # Petastorm materialises training data here; "" = file://<warehouse>/_petastorm.
    # On a cluster use storage every node sees (hdfs://, s3a://, dbfs:/).
    cache_dir_url: str = ""
    batch_size: int = 256
    epochs: int = 40
    learning_rate: float = 0.0003
    dense_units: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.3
    # none | balanced | sqrt; weights trade accuracy for recall of the small classes.
    # none: the best accuracy on the natural class mix (docs/experiments.md#class-weights).
    class_weights: str = "none"
    # Early stopping: epochs without a better validation loss; the best weights are kept.
    patience: int = 8
    seed: int = 0
    finetune_learning_rate: float = 0.00001
    # Finetune trains this backbone layer and every layer after it (VGG16's last block).
    finetune_from_layer: str = "block5_conv1"
    finetune_epochs: int = 3
    # Products (train + validation) used by finetune; 0 = all.
    finetune_max_products: int = 0


@dataclass
class ModelSettings:
    # Which trained model evaluate / predict use: a training run's id (its folder under
    # <warehouse>/models, and its MLflow run), or "latest" for the last one trained.
    run_id: str = "latest"
    batch_size: int = 64
    # Where trained models are kept; "" = <warehouse>/models (`compare` keeps its own apart).
    dir: str = ""


@dataclass
class NeighboursSettings:
    k: int = 5
    # Vectors per query block, one task a block (16 MiB at 1024 dimensions; FAISS scores them
    # against the candidates in tiles of its own, so no block_rows^2 matrix).
    block_rows: int = 4096
    # Candidates are broadcast in chunks of at most this many bytes, one pass a chunk: a Python
    # worker holds one chunk and one query block, the driver one chunk.
    # The real catalogue is one chunk, broadcast once (docs/design.md#exact-neighbours).
    broadcast_max_bytes: int = 256 * 1024 * 1024
    # Candidates must share these products columns with the query, e.g. [gender]; [] = any.
    same: list[str] = field(default_factory=list)
    # Leave products with identical image bytes out of each other's neighbours.
    exclude_same_image: bool = False
    gallery_per_class: int = 2
    # The duplicates report: distinct products at least this similar.
    duplicate_threshold: float = 0.97


@dataclass
class SimilarSettings:
    # `./spark-submit.sh similar image=photo.jpg` or `product_id=N` (shorthands for these keys).
    image: str = ""
    product_id: int = 0
    k: int = 5


@dataclass
class ReportSettings:
    samples_per_class: int = 6


@dataclass
class PipelineSettings:
    # Which named pipeline the `pipeline` job runs (lookbook.pipelines.PIPELINES).
    name: str = "full"


@dataclass
class TablesSettings:
    # A step whose commit finds that another job committed the same table after the step read
    # it (two jobs on one warehouse) runs again on the new version, this many times.
    conflict_retries: int = 2
    # Files hold the rows of this many consecutive product ids (a neighbours file k times as
    # many rows). A merge rewrites only the files holding a changed product: smaller files,
    # fewer bytes rewritten per change, more files to list and open per read.
    # Smaller files do not pay (docs/performance.md#nightly-refresh-against-the-full-pipeline).
    products_per_file: int = 1000


@dataclass
class RefreshSettings:
    # `./spark-submit.sh refresh` uses the current model for new and changed products;
    # true trains a new one first (and then predicts every product with it).
    retrain: bool = False


@dataclass
class VacuumSettings:
    # `./spark-submit.sh vacuum` deletes files that no table version of the last
    # `retention_hours` needs: overwritten versions' files and files of killed runs. Time
    # travel reaches back as far; a write running longer than this could lose its files.
    retention_hours: int = 168
    # List what would be deleted, delete nothing (`vacuum dry_run=true`).
    dry_run: bool = False


@dataclass
class SqlSettings:
    # `./spark-submit.sh sql "SELECT ..."` (the query) or `sql file=query.sql`; every table is a
    # view by its name, `name@v3` reads version 3.
    query: str = ""
    file: str = ""
    # Values of the query's `:name` parameters, e.g. params.product_id=15970.
    params: dict[str, str] = field(default_factory=dict)
    # Save the whole result: a .csv or .parquet path, written on the driver.
    out: str = ""
    # Rows printed; the rest is counted, and `out` saves them.
    max_rows: int = 50


@dataclass
class SqlServerSettings:
    # The JDBC/ODBC endpoint (`./spark-submit.sh sql_server`): 127.0.0.1 serves this machine
    # only; 0.0.0.0 lets BI tools on other machines connect (no authentication: README.md#sql).
    host: str = "127.0.0.1"
    port: int = 10000
    # How often the views are moved to the tables' newest versions (after a nightly refresh).
    refresh_seconds: int = 60


@dataclass
class CompareSettings:
    # `./spark-submit.sh compare backbones=vgg16,efficientnetlite0 sizes=80x60,160x120
    # precisions=fp32,bf16`: every combination featurized (rows already computed are reused),
    # trained with the same split, head and budget (split.*, train.*), evaluated alike.
    backbones: list[str] = field(default_factory=lambda: ["vgg16", "efficientnetlite0"])
    sizes: list[str] = field(default_factory=lambda: ["80x60"])  # height x width
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    # Backbones also run with random weights (labelled NOT pretrained): what ImageNet is worth.
    # A backbone whose ImageNet weights cannot be had runs random-init only when listed here.
    random_init: list[str] = field(default_factory=list)
    # Catalogue products (a seeded sample) photographed as a shopper would: each altered
    # image is queried against the whole catalogue.
    photo_queries: int = 500
    photo_seed: int = 0


@dataclass
class TrackingSettings:
    # Every job is an MLflow run (pipeline steps are nested runs).
    enabled: bool = True
    # "" = a local store in the warehouse (<warehouse>/mlflow.db, artefacts in
    # <warehouse>/mlartifacts), no server needed; or a shared server, http://host:5000.
    uri: str = ""
    experiment: str = "lookbook"


@dataclass
class Config:
    warehouse: str = "warehouse"
    data_dir: str = "data/fashion"
    # Table storage: "delta-rs" (Spark writes Parquet, delta-rs commits; no jars needed) or
    # "delta-spark" (native format("delta"); needs the delta-spark jars on the classpath).
    table_engine: str = "delta-rs"
    spark: SparkSettings = field(default_factory=SparkSettings)
    tensorflow: TensorflowSettings = field(default_factory=TensorflowSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    featurize: FeaturizeSettings = field(default_factory=FeaturizeSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    neighbours: NeighboursSettings = field(default_factory=NeighboursSettings)
    similar: SimilarSettings = field(default_factory=SimilarSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    tables: TablesSettings = field(default_factory=TablesSettings)
    vacuum: VacuumSettings = field(default_factory=VacuumSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    sql: SqlSettings = field(default_factory=SqlSettings)
    sql_server: SqlServerSettings = field(default_factory=SqlServerSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @property
    def reports_dir(self) -> str:
        return str(Path(self.warehouse) / "reports")

    def validate(self) -> Config:
        if self.table_engine not in ("delta-rs", "delta-spark"):
            raise ConfigError(
                f"table_engine must be 'delta-rs' or 'delta-spark', not {self.table_engine!r}")
        if self.featurize.precision not in PRECISIONS:
            raise ConfigError("featurize.precision must be 'auto', 'fp32' or 'bf16'")
        if self.featurize.pooling not in POOLINGS:
            raise ConfigError(f"featurize.pooling must be one of {POOLINGS}, "
                              f"not {self.featurize.pooling!r}")
        if not 0 <= self.featurize.blur <= MAX_BLUR:
            raise ConfigError(f"featurize.blur must be in [0, {MAX_BLUR}] (sigma in input "
                              f"pixels), not {self.featurize.blur}")
        if not 0.0 < self.ingest.sample_fraction <= 1.0:
            raise ConfigError("ingest.sample_fraction must be in (0, 1]")
        if self.train.mode not in ("head", "finetune"):
            raise ConfigError(f"train.mode must be 'head' or 'finetune', not {self.train.mode!r}")
        if self.train.class_weights not in CLASS_WEIGHT_MODES:
            raise ConfigError(f"train.class_weights must be one of {CLASS_WEIGHT_MODES}, "
                              f"not {self.train.class_weights!r}")
        if self.tables.conflict_retries < 0 or self.vacuum.retention_hours < 0:
            raise ConfigError("tables.conflict_retries and vacuum.retention_hours must be >= 0")
        if not 0 < self.sql_server.port < 65536 or self.sql.max_rows < 0:
            raise ConfigError("sql_server.port must be in 1..65535 and sql.max_rows >= 0")
        for key, limit in AUGMENT_LIMITS.items():
            value = getattr(self.augment, key)
            if not 0 <= value <= limit:
                raise ConfigError(f"augment.{key} must be in [0, {limit}] (a copy must stay "
                                  f"recognisably its product), not {value}")
        if self.augment.max_factor < 1 or self.augment.target_per_class < 0 \
                or self.augment.seed < 0:
            raise ConfigError("augment.max_factor must be >= 1, augment.target_per_class and "
                              "augment.seed >= 0")
        for size in self.compare.sizes:
            parse_size(size)
        if any(p not in PRECISIONS for p in self.compare.precisions):
            raise ConfigError(f"compare.precisions must be among {PRECISIONS}")
        if self.compare.photo_queries < 0:
            raise ConfigError("compare.photo_queries must be >= 0")
        if self.tables.products_per_file < 1:
            raise ConfigError("tables.products_per_file must be >= 1")
        try:
            check_fractions(self.split.train, self.split.validation)
        except ValueError as exc:
            raise ConfigError(f"split: {exc}") from None
        return self

    @property
    def models_dir(self) -> str:
        return self.model.dir or str(Path(self.warehouse) / "models")

    @property
    def petastorm_cache_url(self) -> str:
        return self.train.cache_dir_url or (Path(self.warehouse).resolve() / "_petastorm").as_uri()


def parse_size(text: str) -> tuple[int, int]:
    """"80x60" -> (80, 60): height x width, as featurize.height and featurize.width."""
    match = SIZE.fullmatch(str(text).strip())
    if not match or not all(int(n) for n in match.groups()):
        raise ConfigError(f"a size is HEIGHTxWIDTH in pixels, e.g. 80x60; got {text!r}")
    return int(match[1]), int(match[2])


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every settable dotted key, for error messages and `--help`."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += valid_keys(hint, f"{prefix}{f.name}.")
        elif _origin(hint) is dict:
            keys.append(f"{prefix}{f.name}.<any>")
        else:
            keys.append(prefix + f.name)
    return keys


def config_file(path: str | Path | None) -> Path:
    """The YAML to read: `path`, else the file of that name in the working directory. In
    cluster deploy mode the driver runs elsewhere than spark-submit.sh, and YARN and
    Kubernetes put spark-submit's --files (the config among them) in its working directory."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.exists():
        return path
    if Path(path.name).is_file():
        return Path(path.name)
    raise ConfigError(f"config file not found: {path} (nor {path.name} in the working directory)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (conf/local.yaml unless given) <- `key=value` overrides."""
    path = config_file(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return _build(Config, raw, "").validate()


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"expected key=value, got {item!r}; valid keys: {', '.join(valid_keys())}")
    key, value = item.split("=", 1)
    return key.strip(), value


def _override_value(text: str, hint) -> Any:
    """A string setting takes the text as given (a SQL query or a path may hold `: ` or `#`),
    null aside; any other is a YAML scalar: numbers, booleans, null and [lists] parse as such."""
    if hint is str and text not in YAML_NULLS:
        return text
    return yaml.safe_load(text) if text != "" else ""


def _set_dotted(raw: dict, key: str, text: str) -> None:
    parts = key.split(".")
    node, cls = raw, Config
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        hint = hints[part]
        last = i == len(parts) - 1
        if _origin(hint) is dict and not last:
            # The rest of the key is one free-form entry, e.g. spark.conf.spark.executor.memory
            node.setdefault(part, {})[".".join(parts[i + 1:])] = text
            return
        if last:
            node[part] = _override_value(text, hint)
            return
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a section; cannot set {key!r}")
        if node.get(part) is None:  # absent, or an empty section in the YAML
            node[part] = {}
        node = node[part]
        cls = hint


def _build(cls: type, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(prefix + u for u in unknown)}; "
                          f"valid keys: {', '.join(valid_keys())}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _origin(hint):
    return typing.get_origin(hint) or hint


def _coerce(value: Any, hint, key: str):
    args = typing.get_args(hint)
    if _origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if value is None:
        raise ConfigError(f"{key} must be set (null is not allowed)")
    if _origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if _origin(hint) is list:
        if isinstance(value, str):  # key=a,b on the command line
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, e.g. {key}=[256,128]")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}") from None


def flat_config(cfg: Config) -> dict[str, Any]:
    """Every setting by its dotted key (what an override would set), e.g. for run params."""
    def walk(node: dict, prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            if isinstance(value, dict) and key != "conf":
                out.update(walk(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out
    return walk(dataclasses.asdict(cfg), "")


def config_yaml(cfg: Config) -> str:
    """The effective configuration as YAML: loads back to the same Config."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)

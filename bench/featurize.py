"""Featurize benchmark on N real images, all in one run:

  (a) bare Keras: model.predict in one process over the same decoded images, same backbone,
      batch size and cores (TF threads = cores); (a+) the same loop decoding each batch's
      JPEG bytes first, as the Spark path does;
  (b) the Spark featurize path (local[cores], one TF thread per Python worker), cold (workers
      import TensorFlow and build the model) and warm (workers reused); (a+) and warm (b) are
      each the best of --repeats passes;
  (c) with --bf16: (a) again under Keras mixed_bfloat16, its speed-up and the cosine similarity
      of bf16 to fp32 features;
  (d) start-up included, from launch to exit: `./spark-submit.sh featurize` (fp32) on the same
      images against one plain Python process doing the same work (import TensorFlow, build
      the model, read, decode and embed every image, write a Parquet file).

Prints images/s, the ratios b/a and b/(a+), and achieved GFLOP/s against two ceilings: the
derived fp32 peak (cores x FMA units x lanes x clock, AMD Zen 4 counted at AVX2 width: it runs
a 512-bit FMA as two 256-bit halves) and a measured one, the faster of a 4096^3 fp32 matmul in
TensorFlow and in numpy (OpenBLAS) on the same cores in the same run.

    .venv/bin/python bench/featurize.py --n 2000 [--height 80 --width 60] [--bf16]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from machine import cpu_line, first_products, real_data_args  # noqa: E402  (bench/machine.py)


def real_slice(data_dir: Path, n: int, out: Path) -> Path:
    """The first n rows of styles.csv with their images linked (not copied)."""
    header, rows, images = first_products(data_dir, n)
    (out / "images").mkdir(parents=True)
    (out / "styles.csv").write_text("\n".join([header, *rows]) + "\n")
    for image in images:
        os.symlink(image, out / "images" / image.name)
    return out

def fma_shape(vendor: str, family: int, flags: set[str]) -> tuple[int, int]:
    """(FMA units per core, fp32 lanes per unit) as they run, not as the flags read: Intel
    (Haswell on) and AMD Zen 2 on have two FMA pipes; AVX-512 doubles the lanes on Intel and on
    Zen 5 (family 26), but Zen 4 (family 25) runs a 512-bit FMA as two 256-bit halves, so its
    throughput is that of AVX2. Zen 1 (two 128-bit pipes) is overstated 2x."""
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family < 26):
        return 2, 16
    if "avx2" in flags or vendor == "AuthenticAMD":
        return 2, 8
    return 1, 4


def fp32_peak_gflops() -> tuple[float, str]:
    """cores x FMA units x fp32 lanes x 2 (multiply+add) x clock."""
    cores = os.cpu_count()
    info = Path("/proc/cpuinfo").read_text()
    field = lambda name: re.search(rf"^{name}\s*:\s*(.*)$", info, re.M).group(1)  # noqa: E731
    flags = set(field("flags").split())
    fma_units, lanes = fma_shape(field("vendor_id"), int(field("cpu family")), flags)
    mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M))
    peak = cores * fma_units * lanes * 2 * mhz / 1000
    how = (f"{field('model name')}: {cores} cores x {fma_units} FMA units x {lanes} fp32 lanes "
           f"x 2 flop/FMA x {mhz / 1000:.2f} GHz = {peak:.0f} GFLOP/s")
    return peak, how

def conv_gflop_per_image(model) -> float:
    """Multiply-adds of every convolution, depthwise ones included (x2 flops), from the
    layers' output shapes."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            # An output of a Conv2D sums all its inputs; a depthwise one, one input channel.
            kh, kw, cin, _ = layer.kernel.shape
            _, h, w, cout = layer.output.shape
            inputs_per_output = cin if isinstance(layer, keras.layers.Conv2D) else 1
            total += 2 * h * w * kh * kw * inputs_per_output * cout
    return total / 1e9

def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)

def bare_keras(images: np.ndarray, files: list[Path], args, cache: str, precision: str) -> BareRun:
    """model.predict over all images after a warm-up; the same with decoding (`files`, the
    images' JPEGs, in the same order); a large matmul; in one fresh process."""
    code = f"""
import os, sys, time, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({os.cpu_count()})
import keras
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'lib')!r})
if {precision!r} == "bf16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
from lookbook.features.backbones import resolve_weights
from lookbook.features.feature_model import build_feature_model
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from featurize import conv_gflop_per_image
images = np.load(sys.argv[1])
weights = resolve_weights({args.backbone!r}, "imagenet", {cache!r})
model = build_feature_model({args.backbone!r}, weights, {args.height}, {args.width})
model.predict(images[:{args.batch_size}], batch_size={args.batch_size}, verbose=0)
start = time.perf_counter()
features = model.predict(images, batch_size={args.batch_size}, verbose=0)
seconds = time.perf_counter() - start
from lookbook.io.images import to_array
jpegs = [open(f, "rb").read() for f in open(sys.argv[3]).read().split()]
start = time.perf_counter()
for b in jpegs:
    to_array(b, {args.height}, {args.width})
decode = time.perf_counter() - start
with_decode = float("inf")
for _ in range({args.repeats}):
    start = time.perf_counter()
    for i in range(0, len(jpegs), {args.batch_size}):
        batch = np.stack([to_array(b, {args.height}, {args.width}) for b in jpegs[i:i + {args.batch_size}]])
        model.predict_on_batch(batch.astype("float32"))
    with_decode = min(with_decode, time.perf_counter() - start)
def best_gflops(matmul, a, b):
    matmul(a, b)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * 4096 ** 3 / min(times) / 1e9
a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((4096, 4096), dtype=np.float32)
tf_gflops = best_gflops(lambda x, y: tf.linalg.matmul(x, y).numpy(), tf.constant(a), tf.constant(b))
blas_gflops = best_gflops(np.matmul, a, b)
np.save(sys.argv[2], np.asarray(features, dtype="float32"))
print(seconds, with_decode, decode, tf_gflops, blas_gflops, conv_gflop_per_image(model))
"""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/in.npy", images)
        Path(f"{tmp}/files.txt").write_text("\n".join(str(f) for f in files))
        out = subprocess.run([sys.executable, "-c", code, f"{tmp}/in.npy", f"{tmp}/out.npy",
                              f"{tmp}/files.txt"], check=True, capture_output=True, text=True)
        seconds, with_decode, decode, tf_gflops, blas_gflops, gflop = map(
            float, out.stdout.split()[-6:])
        return BareRun(seconds, with_decode, decode, tf_gflops, blas_gflops, gflop,
                       np.load(f"{tmp}/out.npy"))


PLAIN_PROCESS = """
import os, sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
sys.path.insert(0, {lib!r})
from lookbook.features.backbones import resolve_weights
from lookbook.features.feature_model import build_feature_model
from lookbook.io.images import to_array
model = build_feature_model({backbone!r}, resolve_weights({backbone!r}, "imagenet", {cache!r}),
                            {height}, {width})
files = open(sys.argv[1]).read().split()
vectors = []
for i in range(0, len(files), {batch_size}):
    batch = np.stack([to_array(open(f, "rb").read(), {height}, {width})
                      for f in files[i:i + {batch_size}]])
    vectors.extend(np.asarray(model.predict_on_batch(batch.astype("float32"))))
pq.write_table(pa.table({{"file": files, "embedding": [v.tolist() for v in vectors]}}), sys.argv[2])
"""


def plain_process_seconds(files: list[Path], args, cache: str) -> float:
    """Wall time of one fresh Python process doing the featurize job's work on `files`: import
    TensorFlow, build the model, read, decode and embed every image, write a Parquet file."""
    code = PLAIN_PROCESS.format(lib=str(Path(__file__).resolve().parents[1] / "lib"),
                                backbone=args.backbone, cache=cache, height=args.height,
                                width=args.width, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/files.txt").write_text("\n".join(str(f) for f in files))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, f"{tmp}/files.txt", f"{tmp}/out.parquet"],
                       check=True, capture_output=True)
        return time.perf_counter() - started


def job_seconds(catalogue: Path, warehouse: str) -> float:
    """Wall time of `./spark-submit.sh featurize` from launch to exit (JVM, session, plan,
    workers importing TensorFlow and building the model, the Delta commit, MLflow)."""
    root = Path(__file__).resolve().parents[1]
    started = time.perf_counter()
    subprocess.run([str(root / "spark-submit.sh"), "featurize", f"data_dir={catalogue}",
                    f"warehouse={warehouse}", "featurize.precision=fp32"], check=True,
                   capture_output=True, cwd=root)
    return time.perf_counter() - started


@dataclass
class BareRun:
    seconds: float  # predict over decoded images
    with_decode: float  # the same loop, decoding each batch's JPEG bytes first
    decode: float  # decoding and resizing alone, one thread
    tf_matmul_gflops: float  # 4096^3 fp32 matmul, TensorFlow (oneDNN/Eigen)
    blas_matmul_gflops: float  # the same in numpy (OpenBLAS)
    gflop_per_image: float
    features: np.ndarray

def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)

def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_data_args(parser)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=2,
                        help="passes of (a+) and of warm (b), the best of each counts: this "
                             "VM's speed drifts by 10 percent between minutes")
    args = parser.parse_args()

    from lookbook.config import load_config
    from lookbook.features.featurize import featurize_products, prepare_model
    from lookbook.io.catalog import Catalog
    from lookbook.io.images import to_array
    from lookbook.pipelines.catalogue_steps import ingest
    from lookbook.session import build_spark

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="lookbook-bench-") as tmp:
        catalogue = real_slice(Path(args.data_dir), args.n, Path(tmp) / "catalogue")
        cfg = load_config(None, [f"data_dir={catalogue}", f"warehouse={tmp}/wh",
                                 f"spark.master=local[{cores}]"])
        cache = str(Path(cfg.featurize.weights_cache).expanduser())
        spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
        ingest(spark, cfg)
        products = Catalog(spark, cfg.warehouse).read("products").persist()
        rows = products.select("product_id", "image").orderBy("product_id").collect()
        images = np.stack([to_array(bytes(r["image"]), args.height, args.width)
                           for r in rows]).astype("float32")

        files = [catalogue / "images" / f"{r['product_id']}.jpg" for r in rows]
        bare = bare_keras(images, files, args, cache, "fp32")
        a_s, a_features, gflop = bare.seconds, bare.features, bare.gflop_per_image

        spec = prepare_model(spark, args.backbone, "imagenet", cache, args.height, args.width,
                             batch_size=args.batch_size, threads=1)
        timings = []
        for _ in range(1 + args.repeats):  # cold, then warm (the best of --repeats)
            start = time.perf_counter()
            # Sorted here, not with orderBy: a global sort samples its input with a job of its
            # own, which would run the UDF over every image twice.
            spark_rows = sorted(featurize_products(products, spec, cfg.featurize.rows_per_partition)
                                .select("product_id", "embedding").collect())
            timings.append(time.perf_counter() - start)
        timings = [timings[0], min(timings[1:])]
        b_features = np.array([r["embedding"] for r in spark_rows], dtype="float32")
        spark.stop()
        job = job_seconds(catalogue, f"{tmp}/wh")
        plain = plain_process_seconds(files, args, cache)

    n = len(images)
    peak, how = fp32_peak_gflops()
    print(f"\n{n:,} real images, {args.backbone} {args.height}x{args.width}, batch {args.batch_size}, "
          f"{cores} cores; {gflop:.2f} GFLOP per image (conv layers)")
    print(f"fp32 peak, derived: {how}")
    ceiling = max(bare.tf_matmul_gflops, bare.blas_matmul_gflops)
    print(f"fp32 ceiling, measured: {ceiling:.0f} GFLOP/s, the best 4096^3 matmul of 5 on "
          f"{cores} threads (TensorFlow {bare.tf_matmul_gflops:.0f}, "
          f"numpy/OpenBLAS {bare.blas_matmul_gflops:.0f})")
    print(f"{'method':<44}{'seconds':>9}{'images/s':>10}{'GFLOP/s':>9}{'% derived':>10}"
          f"{'% measured':>11}")
    for name, s in [("(a) bare Keras predict, 1 process", a_s),
                    ("(a+) bare Keras, decoding in the loop", bare.with_decode),
                    ("(b) Spark featurize, cold workers", timings[0]),
                    ("(b) Spark featurize, warm workers", timings[1])]:
        rate = n * gflop / s
        print(f"{name:<44}{s:>9.1f}{n / s:>10.1f}{rate:>9.0f}{100 * rate / peak:>9.0f}%"
              f"{100 * rate / ceiling:>10.0f}%")
    print(f"decoding and resizing alone: {bare.decode:.1f} s, {n / bare.decode:.0f} images/s on one "
          f"core ({100 * bare.decode / bare.with_decode:.0f} % of the (a+) loop's time)")
    print(f"ratio b/a (images/s): cold {a_s / timings[0]:.2f}, warm {a_s / timings[1]:.2f}; "
          f"b/(a+): cold {bare.with_decode / timings[0]:.2f}, warm {bare.with_decode / timings[1]:.2f}")
    print(f"Spark vs bare Keras features: min cosine {cosine(a_features, b_features).min():.6f}")
    print(f"(d) from launch to exit: ./spark-submit.sh featurize {job:.1f} s, one plain Python "
          f"process (import TF, build, read, decode, embed, write Parquet) {plain:.1f} s: "
          f"ratio {job / plain:.2f}; fixed cost of the job over the warm rate "
          f"{job - timings[1]:.1f} s, of the plain process over its loop "
          f"{plain - bare.with_decode:.1f} s")
    if args.bf16:
        bf16 = bare_keras(images, files, args, cache, "bf16")
        c_s, c_features = bf16.seconds, bf16.features
        cos = cosine(a_features, c_features)
        print(f"(c) bare Keras bf16: {c_s:.1f} s, {n / c_s:.1f} images/s, speed-up x{a_s / c_s:.2f}; "
              f"cosine to fp32: mean {cos.mean():.5f}, min {cos.min():.5f}")

if __name__ == "__main__":
    main()

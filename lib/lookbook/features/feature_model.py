"""Feature models in Keras: a backbone of the registry (`backbones`) with its normalisation (and
an optional input blur) as layers, and pooled feature layers. Kept apart from `backbones`
because it imports Keras (TensorFlow: seconds), which a job's driver resolving a backbone and
its weights avoids; importing this module registers its layers for `keras.saving.load_model`."""
from __future__ import annotations

import math

import keras
import numpy as np

from .backbones import (
    KERAS_IMAGENET_SOURCE,
    ResolvedWeights,
    check_input_size,
    feature_layers,
    get_backbone,
    preprocessing_function,
)


@keras.saving.register_keras_serializable(package="lookbook")
class Preprocess(keras.layers.Layer):
    """The backbone's input normalisation as a layer, so feature models take raw 0..255 RGB."""

    def __init__(self, preprocessing: str, **kwargs):
        super().__init__(**kwargs)
        self.preprocessing = preprocessing
        self._normalise = preprocessing_function(preprocessing)

    def call(self, images):
        return self._normalise(images)

    def get_config(self):
        return {**super().get_config(), "preprocessing": self.preprocessing}


GEM_POWER = 3.0  # generalised-mean pooling's p: the usual choice for retrieval (Radenovic et al.)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian over [-ceil(3 sigma), ceil(3 sigma)]."""
    radius = math.ceil(3 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


@keras.saving.register_keras_serializable(package="lookbook")
class GaussianBlur(keras.layers.Layer):
    """A separable Gaussian blur of each channel, edges mirrored (a white background stays
    white); `sigma` in pixels."""

    def __init__(self, sigma: float, **kwargs):
        super().__init__(**kwargs)
        self.sigma = float(sigma)
        kernel = gaussian_kernel(self.sigma)
        self._radius = len(kernel) // 2
        # Depthwise kernels (h, w, channels, 1): one vertical and one horizontal pass.
        self._vertical = np.tile(kernel[:, None, None, None], (1, 1, 3, 1))
        self._horizontal = np.tile(kernel[None, :, None, None], (1, 1, 3, 1))

    def call(self, images):
        r = self._radius
        padded = keras.ops.pad(images, [[0, 0], [r, r], [r, r], [0, 0]], mode="reflect")
        vertical = keras.ops.cast(self._vertical, padded.dtype)
        horizontal = keras.ops.cast(self._horizontal, padded.dtype)
        blurred = keras.ops.depthwise_conv(padded, vertical, padding="valid")
        return keras.ops.depthwise_conv(blurred, horizontal, padding="valid")

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="lookbook")
class GeneralizedMeanPooling2D(keras.layers.Layer):
    """(mean over positions of max(x, 0)^p)^(1/p) per channel: between the global average
    (p = 1) and the global max (p -> inf). Computed in float32 (x^3 of a bf16 map loses
    digits). A channel that is 0 everywhere pools to exactly 0, as the average does (no eps:
    a dead feature map must stay an all-zeros vector, which featurize rejects)."""

    def __init__(self, power: float = GEM_POWER, **kwargs):
        super().__init__(**kwargs)
        self.power = float(power)

    def call(self, maps):
        maps = keras.ops.relu(keras.ops.cast(maps, "float32"))
        mean = keras.ops.mean(keras.ops.power(maps, self.power), axis=(1, 2))
        # The root's gradient is infinite at 0: the root of 1 there, then 0 (finetune's
        # gradients stay finite).
        alive = mean > 0
        root = keras.ops.power(keras.ops.where(alive, mean, 1.0), 1.0 / self.power)
        return keras.ops.where(alive, root, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "power": self.power}


def global_pooling(pooling: str, name: str) -> keras.layers.Layer:
    """The layer that makes one vector of a feature map: "avg", "max" or "gem"."""
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name)
    if pooling == "gem":
        return GeneralizedMeanPooling2D(name=name)
    raise ValueError(f"unknown pooling {pooling!r}; valid: avg, max, gem")


def build_feature_model(backbone: str, resolved: ResolvedWeights, height: int,
                        width: int, layers: list[str] | tuple[str, ...] | None = None,
                        pooling: str = "avg", blur: float = 0.0) -> keras.Model:
    """(N, height, width, 3) float32 RGB in 0..255 -> (N, features) float32 features: the
    `pooling` of each of `layers` (default: the backbone's, see `feature_layers`)
    concatenated, after a Gaussian blur of the input when `blur` (sigma) > 0."""
    spec = get_backbone(backbone)
    check_input_size(backbone, height, width)
    layers = feature_layers(backbone, layers)
    if resolved.path is not None:
        weights = resolved.path
    elif resolved.source == KERAS_IMAGENET_SOURCE:
        weights = "imagenet"
    else:
        weights = None
    base = spec.constructor(include_top=False, weights=weights, input_shape=(height, width, 3))
    names = [layer.name for layer in base.layers]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ValueError(f"{backbone} has no layer(s) {unknown}; its layers: {', '.join(names)}")
    # No layers: the backbone's last feature map, pooled alike (with "avg", what Keras'
    # pooling="avg" computes).
    maps = [base.get_layer(name).output for name in layers] or [base.output]
    pooled = [global_pooling(pooling, f"{name}_{pooling}")(m)
              for name, m in zip(layers or ("output",), maps)]
    outputs = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
    base = keras.Model(base.input, outputs, name=backbone)
    # Features are extracted, not learned: a head trained on top leaves the backbone (and its
    # BatchNorm statistics) alone unless the caller unfreezes it.
    base.trainable = False
    images = keras.Input((height, width, 3), dtype="float32", name="images")
    inputs = GaussianBlur(blur, name="blur")(images) if blur > 0 else images
    features = base(Preprocess(resolved.preprocessing, name="preprocess")(inputs))
    return keras.Model(images, features, name=f"{backbone}_features")

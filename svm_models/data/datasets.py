"""Dataset builders: scikit-learn digits, CIFAR-10/100 (python pickle batches), Mini-ImageNet (JPEG
folders). Nothing is ever downloaded; missing data raise :class:`DataError` naming the layout.

Layout under ``root_path`` (the original project's ``data/`` folder)::

    <root>/cifar-10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100/cifar-100-python/{train, test, meta}
    <root>/Mini-ImageNet-Dataset/{train,val,test}/<class>/*.jpg

Event-camera datasets (``event_digits``, ``dvs128_gesture``, ``cifar10_dvs``, ``nmnist``) give
(T, 2, H, W) frame sequences: see :mod:`svm_models.data.events` for their layouts.

Splits: ``train``, ``val`` and ``test``. Mini-ImageNet has all three folders. digits, CIFAR and the
event datasets have no validation split: ``val`` is their test split, which is what the papers
report (``best.pt`` is then chosen on the test split).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from svm_kernels.utils import is_int

from . import events as E
from . import transforms as T
from .classes import CIFAR10_CLASSES, DIGITS_CLASSES
from .errors import DataError
from .images import ImageFolderSkippingUnreadable

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    default_img_size: int
    layout: str  # the expected files, shown when they are missing
    in_chans: int = 3
    frames: int | None = None  # event data: default number of frames T (None: static images)

    @property
    def is_event(self) -> bool:
        return self.frames is not None


DATASETS = {
    "digits": DatasetInfo("digits", 10, 32, "scikit-learn's bundled digits (no files needed)"),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        32,
        "<root>/cifar-10/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta} "
        "(the python version of CIFAR-10, as unpacked from cifar-10-python.tar.gz)",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        32,
        "<root>/cifar-100/cifar-100-python/{train, test, meta} "
        "(the python version of CIFAR-100, as unpacked from cifar-100-python.tar.gz)",
    ),
    "mini_imagenet": DatasetInfo(
        "mini_imagenet",
        100,
        224,
        "<root>/Mini-ImageNet-Dataset/{train,val,test}/<class folder>/*.jpg "
        "(the same class folders in every split)",
    ),
    # Event-camera data: (T, 2, H, W) frames of ON/OFF event counts (svm_models.data.events).
    "event_digits": DatasetInfo(
        "event_digits",
        10,
        16,
        "scikit-learn's digits through an event-camera simulator (no files needed)",
        2,
        4,
    ),
    "dvs128_gesture": DatasetInfo("dvs128_gesture", 11, 128, E.LAYOUTS["dvs128_gesture"], 2, 16),
    "cifar10_dvs": DatasetInfo("cifar10_dvs", 10, 128, E.LAYOUTS["cifar10_dvs"], 2, 16),
    "nmnist": DatasetInfo("nmnist", 10, 34, E.LAYOUTS["nmnist"], 2, 10),
}

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------
def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits of one split: (N, 8, 8) float images in [0, 1] and (N,) labels.

    A fixed stratified split (20 % test, ``random_state=0``): 1,437 train and 360 test images,
    the same on every machine; ``split`` "train", anything else the test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float() / 16.0  # 0..16 -> 0..1
    labels = torch.from_numpy(digits.target).long()
    idx_train, idx_test = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    idx = torch.tensor(idx_train if split == "train" else idx_test)
    return images[idx], labels[idx]


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 8x8 handwritten digits (:func:`digits_split`), upscaled to
    ``img_size``, 3 channels, precomputed once as normalised float tensors."""

    classes = DIGITS_CLASSES

    def __init__(self, split: str, img_size: int = 32, transform: Callable | None = None):
        images, labels = digits_split(split)
        self.images = T.upscale_digits(images, img_size)
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------
def _without_checksums(cls):
    """torchvision's CIFAR classes check every file's md5; the variants made here only require
    the files to exist (the loading code stays torchvision's), so re-packed or fabricated batches
    in the standard pickle format load too."""
    cls.train_list = [[name, None] for name, _ in cls.train_list]
    cls.test_list = [[name, None] for name, _ in cls.test_list]
    cls.meta = dict(cls.meta, md5=None)
    return cls


@_without_checksums
class CIFAR10Files(tvd.CIFAR10):
    pass


@_without_checksums
class CIFAR100Files(tvd.CIFAR100):
    pass


_CIFAR = {"cifar10": (CIFAR10Files, "cifar-10"), "cifar100": (CIFAR100Files, "cifar-100")}


def _cifar_folder(name: str, root: str) -> tuple[type, str]:
    cls, sub = _CIFAR[name]
    parent = os.path.join(root, sub)
    folder = os.path.join(parent, cls.base_folder)
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if not os.path.isdir(folder):
        raise DataError(
            f"{name} data not found: no folder {folder}; expected layout: {DATASETS[name].layout}"
        )
    if missing:
        raise DataError(
            f"{name} data incomplete: missing {', '.join(missing)} in {folder}; "
            f"expected layout: {DATASETS[name].layout}"
        )
    return cls, parent


def _load_cifar(name: str, root: str, train: bool, transform) -> Dataset:
    cls, parent = _cifar_folder(name, root)
    try:
        ds = cls(parent, train=train, transform=transform, download=False)
    except Exception as e:  # unpickling errors, wrong keys or shapes in a batch
        raise DataError(
            f"{name} files under {os.path.join(parent, cls.base_folder)} could not be read: "
            f"{type(e).__name__}: {e}"
        ) from None
    _check_labels(ds.targets, DATASETS[name].num_classes, f"{name} {'train' if train else 'test'} split")
    return ds


def _check_labels(targets, n_classes: int, what: str) -> None:
    """Labels outside 0..n_classes-1 would crash (or silently mistrain) at the first step."""
    bad = [(i, t) for i, t in enumerate(targets) if not 0 <= int(t) < n_classes]
    if bad:
        i, t = bad[0]
        raise DataError(
            f"{what}: {len(bad)} label(s) outside 0..{n_classes - 1}, the first is {t} at image {i}"
        )


# ----------------------------------------------------------------------------------------------
# Mini-ImageNet
# ----------------------------------------------------------------------------------------------
def _mini_imagenet_split(root: str, split: str) -> str:
    base = os.path.join(root, "Mini-ImageNet-Dataset")
    folder = os.path.join(base, split)
    if not os.path.isdir(folder):
        raise DataError(
            f"mini_imagenet data not found: no folder {folder}; "
            f"expected layout: {DATASETS['mini_imagenet'].layout}"
        )
    return folder


def _class_folders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _load_mini_imagenet(root: str, split: str, transform) -> Dataset:
    folder = _mini_imagenet_split(root, split)
    classes = _class_folders(folder)
    if not classes:
        raise DataError(
            f"mini_imagenet: {folder} holds no class folders; "
            f"expected layout: {DATASETS['mini_imagenet'].layout}"
        )
    if split != "train":
        train_classes = _class_folders(_mini_imagenet_split(root, "train"))
        if classes != train_classes:
            only = sorted(set(classes) ^ set(train_classes))[:5]
            raise DataError(
                f"mini_imagenet: the class folders of {split} differ from those of train "
                f"({len(classes)} vs {len(train_classes)}; e.g. {', '.join(only)}); this loader needs "
                "the same classes in every split (a classification split, not the few-shot one)"
            )
    try:
        return ImageFolderSkippingUnreadable(folder, transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"mini_imagenet: {e}") from None


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def default_transform(name: str, img_size: int, train: bool, augment: bool = True):
    """The transform of a split: the paper's augmentation for training, plain resizing for eval."""
    info = dataset_info(name)
    if info.is_event:
        return _event_augment(name, img_size) if (train and augment) else None
    if name == "digits":
        return T.digits_train_transform() if (train and augment) else None
    if name == "cifar10":
        return T.cifar_transform(img_size, train, T.CIFAR10_MEAN, T.CIFAR10_STD, augment)
    if name == "cifar100":
        return T.cifar_transform(img_size, train, T.CIFAR100_MEAN, T.CIFAR100_STD, augment)
    return T.imagenet_transform(img_size, train, augment)


def _event_augment(name: str, img_size: int) -> E.FrameAugment | None:
    """Frame-sequence augmentation: CIFAR10-DVS gets a random flip and a translation of up to
    1/16 of the frame (8 px at 128), event_digits a 1 px translation (its sensor is 16 px);
    DVS128 Gesture (flips swap the left/right classes) and N-MNIST (saccades already move the
    digit) none."""
    if name == "cifar10_dvs":
        return E.FrameAugment(max_shift=max(1, img_size // 16), flip=True)
    if name == "event_digits":
        return E.FrameAugment(max_shift=1, flip=False)
    return None


def image_transform(name: str, img_size: int):
    """The evaluation transform for one PIL image (what predict.py feeds the model)."""
    if dataset_info(name).is_event:
        raise DataError(
            f"{name} is event-camera data: a model trained on it takes frame sequences, not images"
        )
    if name == "digits":
        return T.DigitsImageTransform(img_size)
    if name in ("cifar10", "cifar100"):  # (the dataset's transform resizes only to another size)
        return T.any_size(default_transform(name, img_size, train=False), img_size)
    return default_transform(name, img_size, train=False)


def build_dataset(
    name: str,
    split: str,
    root: str = "data",
    img_size: int | None = None,
    augment: bool = True,
    transform: Callable | None = None,
    T: int | None = None,
) -> Dataset:
    """One split of a dataset, as a map-style dataset of (image tensor, label).

    ``augment`` applies the training augmentation (only ever to ``split="train"``); ``transform``
    replaces the default transform altogether. The result has ``.classes`` (class names).
    Event datasets give (T, 2, img_size, img_size) frames; ``T`` defaults to the dataset's own.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    img_size = img_size or info.default_img_size
    train = split == "train"
    if transform is None:
        transform = default_transform(name, img_size, train, augment and train)
    if info.is_event:
        frames = info.frames if T is None else T
        if not is_int(frames) or frames < 1:
            raise DataError(f"{name}: the number of frames T must be >= 1, got {frames}")
        if name == "event_digits":
            return E.EventDigits("train" if train else "test", frames, img_size, transform)
        return E.load_recorded(name, root, train, frames, img_size, transform)
    if name == "digits":
        return DigitsDataset("train" if train else "test", img_size, transform)
    if name in _CIFAR:
        return _load_cifar(name, root, train, transform)
    return _load_mini_imagenet(root, split, transform)


def dataset_classes(name: str, root: str = "data") -> list[str]:
    """The class names of a dataset without loading its images (reads only the metadata)."""
    info = dataset_info(name)
    if info.is_event:
        return list(E.CLASSES[name])
    if name == "digits":
        return list(DIGITS_CLASSES)
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    if name == "cifar100":
        import pickle

        cls, parent = _cifar_folder(name, root)
        with open(os.path.join(parent, cls.base_folder, cls.meta["filename"]), "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        return list(meta[cls.meta["key"]])
    return _class_folders(_mini_imagenet_split(root, "train"))


def num_classes(name: str, root: str = "data") -> int:
    """Classes the model must predict: fixed for digits/CIFAR, the folder count for Mini-ImageNet."""
    if name == "mini_imagenet":
        return len(dataset_classes(name, root))
    return dataset_info(name).num_classes

"""Datasets of the project: digits (scikit-learn), CIFAR-10/100, Mini-ImageNet. Never downloads."""

from .datasets import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    DigitsDataset,
    build_dataset,
    dataset_classes,
    dataset_info,
    default_transform,
    image_transform,
    num_classes,
)
from .errors import DataError
from .images import (
    MAX_UNREADABLE_FRACTION,
    check_unreadable_fraction,
    collate_skipping_unreadable,
    describe_error,
    open_rgb,
    unreadable_log,
)

__all__ = [
    "DATASETS",
    "MAX_UNREADABLE_FRACTION",
    "SPLITS",
    "DataError",
    "DatasetInfo",
    "DigitsDataset",
    "build_dataset",
    "check_unreadable_fraction",
    "collate_skipping_unreadable",
    "dataset_classes",
    "dataset_info",
    "default_transform",
    "describe_error",
    "image_transform",
    "num_classes",
    "open_rgb",
    "unreadable_log",
]

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

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataError",
    "DatasetInfo",
    "DigitsDataset",
    "build_dataset",
    "dataset_classes",
    "dataset_info",
    "default_transform",
    "image_transform",
    "num_classes",
]

"""Event-camera datasets as (T, 2, H, W) frame sequences, read from the original downloads.

Layouts under ``root_path`` (the folders as the datasets' authors distribute them; nothing is
downloaded)::

    <root>/DvsGesture/{user01_fluorescent.aedat, user01_fluorescent_labels.csv, ...,
                       trials_to_train.txt, trials_to_test.txt}
    <root>/CIFAR10-DVS/{airplane,automobile,...,truck}/*.aedat
    <root>/NMNIST/{Train,Test}/{0..9}/*.bin

* DVS128 Gesture: 29 subjects x lighting conditions, one AEDAT 3.1 recording each; its
  ``_labels.csv`` (class 1-11, start and end in microseconds) cuts it into gesture samples
  (events with start <= t < end); the trial lists give the official train/test split.
* CIFAR10-DVS has no official split: the usual 9:1 per class, drawn with a fixed seed from the
  sorted file names (``CIFAR10_DVS_SPLIT_SEED``).
* N-MNIST: the Train and Test folders.

A recording that cannot be decoded is reported once per process (``warnings``), counted in
``skipped``, and replaced by the next readable sample, so a long run never stops on one bad file;
more unreadable samples in one process than one or ``MAX_UNREADABLE_FRACTION`` of them (whichever
is larger) is a :class:`DataError` naming the first files. The recordings are also reported to
the dataset's :class:`~svm_models.data.images.UnreadableImages` log, through which the training
loop counts them over all DataLoader workers (and stops past the same fraction), as for images.
"""

from __future__ import annotations

import csv
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..classes import CIFAR10_CLASSES, DIGITS_CLASSES
from ..errors import DataError
from ..images import MAX_UNREADABLE_FRACTION, UnreadableImages, describe_error
from .frames import integrate, resize_frames
from .readers import DVS128_SIZE, NMNIST_SIZE, EventFileError, read_cifar10_dvs, read_dvs_gesture, read_nmnist

GESTURE_CLASSES = [
    "hand clap",
    "right hand wave",
    "left hand wave",
    "right arm clockwise",
    "right arm counter-clockwise",
    "left arm clockwise",
    "left arm counter-clockwise",
    "arm roll",
    "air drums",
    "air guitar",
    "other gestures",
]
CIFAR10_DVS_CLASSES = CIFAR10_CLASSES
NMNIST_CLASSES = DIGITS_CLASSES
CIFAR10_DVS_TEST_FRACTION = 0.1
CIFAR10_DVS_SPLIT_SEED = 0

LAYOUTS = {
    "dvs128_gesture": "<root>/DvsGesture/{userXX_<lighting>.aedat, userXX_<lighting>_labels.csv, "
    "trials_to_train.txt, trials_to_test.txt} (the original DvsGesture folder)",
    "cifar10_dvs": "<root>/CIFAR10-DVS/{airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck}/*.aedat "
    "(the original per-class folders)",
    "nmnist": "<root>/NMNIST/{Train,Test}/{0..9}/*.bin (the original N-MNIST folders)",
}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    window: tuple[int, int] | None = None  # [start, end) in microseconds, for cut recordings


class EventFrames(Dataset):
    """Recordings -> ``(frames (T, 2, size, size) float32 counts, label)``."""

    def __init__(
        self,
        name: str,
        samples: Sequence[Sample],
        read: Callable[[str], np.ndarray],
        sensor_size: int,
        T: int,
        img_size: int,
        classes: Sequence[str],
        transform: Callable | None = None,
    ):
        if not samples:
            raise DataError(f"{name}: no recordings found; expected layout: {LAYOUTS[name]}")
        self.name, self.samples, self.read = name, list(samples), read
        self.sensor_size, self.T, self.img_size = sensor_size, T, img_size
        self.classes, self.transform = list(classes), transform
        self.targets = [s.label for s in self.samples]
        self.unreadable = UnreadableImages()  # what the training loop counts over all workers
        self._bad: dict[int, str] = {}  # this process's unreadable samples: skipped without a read
        # one recording holds several gesture samples: keep the last one read (a plain attribute,
        # so that the dataset pickles for spawned DataLoader workers; dropped when pickled)
        self._last: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last": None}

    @property
    def skipped(self) -> int:
        return len(self._bad)

    def _read(self, path: str) -> np.ndarray:
        if self._last is None or self._last[0] != path:
            self._last = (path, self.read(path))
        return self._last[1]

    def frames(self, i: int) -> torch.Tensor:
        sample = self.samples[i]
        events = self._read(sample.path)
        if sample.window is not None:
            start, end = sample.window
            events = events[(events["t"] >= start) & (events["t"] < end)]
            if len(events) == 0:  # (labels that do not belong to the recording, not a blank sample)
                raise EventFileError(f"no events in the labelled window {start}..{end} us")
        frames = integrate(events, (self.sensor_size, self.sensor_size), self.T)
        return resize_frames(frames, self.img_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        """(frames, label), or None for an unreadable recording, as an image dataset's unreadable
        file: ``collate_skipping_unreadable`` drops it from its batch, so a test split's count
        and accuracy cover the recordings read, none twice."""
        if i in self._bad:
            return None
        try:
            x = self.frames(i)
        except (EventFileError, OSError, ValueError) as e:
            self._report(i, e)
            return None
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i].label

    def _report(self, j: int, error: Exception) -> None:
        path, window = self.samples[j].path, self.samples[j].window
        self._bad[j] = f"{path}: {error}"
        # one report per sample, not per file: a gesture recording holds several, and the count
        # over all workers (by name) is of samples
        name = path if window is None else f"{path} (the sample at {window[0]}..{window[1]} us)"
        self.unreadable.report(name, describe_error(error, path))
        warnings.warn(f"{self.name}: skipping an unreadable recording: {error}", stacklevel=3)
        if len(self._bad) > max(1.0, MAX_UNREADABLE_FRACTION * len(self.samples)):
            first = "; ".join(list(self._bad.values())[:3])
            raise DataError(
                f"{self.name}: {len(self._bad)} of {len(self.samples)} recordings are unreadable "
                f"(more than {MAX_UNREADABLE_FRACTION:.0%}), e.g. {first}"
            )


def _folder(root: str, sub: str, name: str) -> str:
    folder = os.path.join(root, sub)
    if not os.path.isdir(folder):
        raise DataError(f"{name} data not found: no folder {folder}; expected layout: {LAYOUTS[name]}")
    return folder


def _files(folder: str, suffix: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(suffix))


def gesture_samples(root: str, train: bool) -> list[Sample]:
    folder = _folder(root, "DvsGesture", "dvs128_gesture")
    trials = os.path.join(folder, "trials_to_train.txt" if train else "trials_to_test.txt")
    if not os.path.isfile(trials):
        raise DataError(f"dvs128_gesture: missing {trials}; expected layout: {LAYOUTS['dvs128_gesture']}")
    with open(trials) as f:
        recordings = [line.strip() for line in f if line.strip()]
    samples = []
    for rec in recordings:
        path = os.path.join(folder, rec)
        labels = path[: -len(".aedat")] + "_labels.csv"
        if not os.path.isfile(path) or not os.path.isfile(labels):
            raise DataError(
                f"dvs128_gesture: {rec} is listed in {os.path.basename(trials)} but {path} or its labels "
                f"{labels} is missing; expected layout: {LAYOUTS['dvs128_gesture']}"
            )
        samples += _gesture_labels(path, labels)
    return samples


GESTURE_LABEL_COLUMNS = ("class", "startTime_usec", "endTime_usec")


def _gesture_labels(path: str, labels: str) -> list[Sample]:
    """The samples of one recording from its labels CSV: a header naming GESTURE_LABEL_COLUMNS,
    then one gesture a row (class 1..11, start < end in us); anything else is a DataError."""
    with open(labels, newline="") as f:
        rows = csv.DictReader(f)
        if not set(GESTURE_LABEL_COLUMNS) <= set(rows.fieldnames or ()):
            raise DataError(
                f"dvs128_gesture: {labels}: the header must name {','.join(GESTURE_LABEL_COLUMNS)}, "
                f"got {rows.fieldnames}"
            )
        samples = []
        for line, row in enumerate(rows, 2):
            try:
                label, start, end = (int(row[k]) for k in GESTURE_LABEL_COLUMNS)
            except (TypeError, ValueError):  # (a short row gives None)
                raise DataError(
                    f"dvs128_gesture: {labels}: line {line} is not three integers: {row}"
                ) from None
            if not 1 <= label <= len(GESTURE_CLASSES):
                raise DataError(f"dvs128_gesture: {labels}: class {label} outside 1..{len(GESTURE_CLASSES)}")
            if start >= end:
                raise DataError(
                    f"dvs128_gesture: {labels}: line {line}: the window {start}..{end} us is empty"
                )
            samples.append(Sample(path, label - 1, (start, end)))
    return samples


def cifar10_dvs_samples(root: str, train: bool) -> list[Sample]:
    folder = _folder(root, "CIFAR10-DVS", "cifar10_dvs")
    samples = []
    for label, cls in enumerate(CIFAR10_DVS_CLASSES):
        class_dir = os.path.join(folder, cls)
        if not os.path.isdir(class_dir):
            raise DataError(f"cifar10_dvs: no folder {class_dir}; expected layout: {LAYOUTS['cifar10_dvs']}")
        files = _files(class_dir, ".aedat")
        order = np.random.default_rng(CIFAR10_DVS_SPLIT_SEED + label).permutation(len(files))
        # a tenth, and at least one where the class has two (a small copy keeps a test split)
        n_test = max(round(CIFAR10_DVS_TEST_FRACTION * len(files)), int(len(files) >= 2))
        chosen = order[n_test:] if train else order[:n_test]
        samples += [Sample(files[k], label) for k in sorted(chosen)]
    return samples


def nmnist_samples(root: str, train: bool) -> list[Sample]:
    folder = _folder(root, os.path.join("NMNIST", "Train" if train else "Test"), "nmnist")
    samples = []
    for label, digit in enumerate(NMNIST_CLASSES):
        class_dir = os.path.join(folder, digit)
        if not os.path.isdir(class_dir):
            raise DataError(f"nmnist: no folder {class_dir}; expected layout: {LAYOUTS['nmnist']}")
        samples += [Sample(p, label) for p in _files(class_dir, ".bin")]
    return samples


CLASSES = {
    "event_digits": DIGITS_CLASSES,
    "dvs128_gesture": GESTURE_CLASSES,
    "cifar10_dvs": CIFAR10_DVS_CLASSES,
    "nmnist": NMNIST_CLASSES,
}

_RECORDED = {
    # name: (samples, reader, sensor size, classes)
    "dvs128_gesture": (gesture_samples, read_dvs_gesture, DVS128_SIZE, GESTURE_CLASSES),
    "cifar10_dvs": (cifar10_dvs_samples, read_cifar10_dvs, DVS128_SIZE, CIFAR10_DVS_CLASSES),
    "nmnist": (nmnist_samples, read_nmnist, NMNIST_SIZE, NMNIST_CLASSES),
}


def load_recorded(
    name: str, root: str, train: bool, T: int, img_size: int, transform: Callable | None
) -> EventFrames:
    """One split of a recorded event dataset (``dvs128_gesture``, ``cifar10_dvs``, ``nmnist``)."""
    find, read, sensor, classes = _RECORDED[name]
    return EventFrames(name, find(root, train), read, sensor, T, img_size, classes, transform)


# ----------------------------------------------------------------------------------------------
# event_digits: scikit-learn's digits through the event-camera simulator (no files needed)
# ----------------------------------------------------------------------------------------------
EVENT_DIGITS_SENSOR = 16  # 8x8 digits upscaled to 12x12, centred, saccades of 2 px
EVENT_DIGITS_DIGIT_SIZE = 12
EVENT_DIGITS_SEED = 0


@functools.lru_cache(maxsize=2)
def event_digits_events(split: str) -> tuple[list[np.ndarray], list[int]]:
    """The event streams and labels of one digits split (the split of ``digits``), simulated once
    per process with a fixed seed per split."""
    from scipy import ndimage

    from ..datasets import digits_split
    from .simulator import simulate_saccades

    images, labels = digits_split(split)
    scale = EVENT_DIGITS_DIGIT_SIZE / images.shape[-1]
    upscaled = np.clip(ndimage.zoom(images.numpy().astype(np.float64), (1, scale, scale), order=1), 0.0, 1.0)
    rng = np.random.default_rng([EVENT_DIGITS_SEED, split == "train"])
    return simulate_saccades(upscaled, EVENT_DIGITS_SENSOR, rng), labels.tolist()


class EventDigits(Dataset):
    """``event_digits``: (T, 2, img_size, img_size) frames of simulated event streams of
    scikit-learn's digits (see :mod:`svm_models.data.events.simulator`), integrated exactly as the
    recorded datasets are; frames precomputed once."""

    classes = CLASSES["event_digits"]

    def __init__(
        self, split: str, T: int, img_size: int = EVENT_DIGITS_SENSOR, transform: Callable | None = None
    ):
        events, self.targets = event_digits_events("train" if split == "train" else "test")
        sensor = (EVENT_DIGITS_SENSOR, EVENT_DIGITS_SENSOR)
        self.frames = torch.stack([resize_frames(integrate(e, sensor, T), img_size) for e in events])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.frames[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]

"""Reading image files: every pixel format as 8-bit RGB, and unreadable files skipped, not fatal.

PIL's ``convert("RGB")`` clips 16-bit and 32-bit images to 0..255 instead of rescaling them, so a
16-bit PNG turns almost white; :func:`open_rgb` scales them by their bit depth (or, for float
images, by their actual range) first.

A folder dataset (:class:`ImageFolderSkippingUnreadable`) returns ``None`` for a file that cannot
be decoded (a truncated JPEG, a 0-byte file, text named ``.jpg``) and reports it to an
:class:`UnreadableImages` log that the training loop drains: each file is named once in a warning,
every epoch ends with a count, and more than :data:`MAX_UNREADABLE_FRACTION` of a split is an
error. :func:`collate_skipping_unreadable` drops the ``None`` samples from a batch.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info
from torchvision import datasets as tvd

from .errors import DataError

MAX_UNREADABLE_FRACTION = 0.01  # above this share of a split, skipping would hide a broken dataset
SHOWN_FILES = 5  # files named in the error message


def _stored_16bit(im) -> bool:
    """Whether the file holds 16-bit samples (read before ``load()``, which drops the tiles):
    some formats (PGM, older Pillows' PNG) open as mode "I" whatever the depth."""
    for tile in getattr(im, "tile", None) or ():
        args = tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and raw.startswith("I;16"):
            return True
    return False


def _to_8bit(im, stored_16bit: bool = False):
    """A PIL image of 16/32-bit integers or floats as 8-bit gray ("L"); other modes unchanged."""
    from PIL import Image

    if im.mode.startswith("I;16") or (im.mode == "I" and stored_16bit):
        arr, top = np.asarray(im, dtype=np.float64), 65535.0
    elif im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        # 32-bit integers of unknown depth: the smallest of 8 and 16 bits that fits
        top = 255.0 if arr.max(initial=0) <= 255 else 65535.0 if arr.max() <= 65535 else float(arr.max())
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]  # (NaN pixels end black, infinities at the ends)
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:  # the usual [0, 1] convention
            top = 1.0
        else:  # anything else: its own range
            arr, top = arr - lo, max(hi - lo, 1e-12)
    else:
        return im
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), mode="L")


def open_rgb(path: str):
    """The image at ``path`` as an 8-bit RGB PIL image, fully decoded (a truncated file fails here)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        stored_16bit = _stored_16bit(im)
        im.load()
        # upright as a viewer shows it (a phone photo's EXIF orientation), before anything else
        return _to_8bit(ImageOps.exif_transpose(im), stored_16bit).convert("RGB")


def describe_error(e: BaseException, path: str | None = None) -> str:
    """``Type: first line of the message``, without the file name (shown next to it anyway)."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if path:
        first = first.replace(f" {path!r}", "").replace(f" {path}", "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class UnreadableImages:
    """Files a dataset could not decode, collected from DataLoader worker processes too.

    Workers put ``(path, reason)`` on a multiprocessing queue (inherited by the workers with the
    dataset); the main process records directly. The training loop calls :meth:`poll` every
    step, so the pipe never fills up, and :meth:`drain` at the end of the epoch.
    """

    def __init__(self):
        self._queue = multiprocessing.get_context().Queue()
        self._got: list[tuple[str, str]] = []

    def report(self, path: str, reason: str) -> None:
        if get_worker_info() is None:
            self._got.append((path, reason))
        else:
            self._queue.put((path, reason))

    def poll(self) -> None:
        """Move what the workers sent so far out of the pipe (cheap; called every step)."""
        while True:
            try:
                self._got.append(self._queue.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return

    def drain(self) -> list[tuple[str, str]]:
        """Everything reported since the last drain."""
        self.poll()
        got, self._got = self._got, []
        return got


class ImageFolderSkippingUnreadable(tvd.ImageFolder):
    """torchvision's ImageFolder, 8-bit RGB via :func:`open_rgb`, ``None`` for an unreadable file."""

    def __init__(self, root: str, transform: Callable | None = None):
        super().__init__(root, transform=transform, loader=open_rgb)
        self.unreadable = UnreadableImages()

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated, empty), ...
            path = self.samples[index][0]
            self.unreadable.report(path, describe_error(e, path))
            return None


def collate_skipping_unreadable(batch):
    """``default_collate`` without the ``None`` samples; an all-unreadable batch is empty."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(kept)


def unreadable_log(dataset) -> UnreadableImages | None:
    """The :class:`UnreadableImages` of ``dataset`` (also through a ``Subset``), else None."""
    while dataset is not None:
        log = getattr(dataset, "unreadable", None)
        if isinstance(log, UnreadableImages):
            return log
        dataset = getattr(dataset, "dataset", None)
    return None


def check_unreadable_fraction(files: list[str], total: int, split: str, count: int | None = None) -> None:
    """DataError when more than MAX_UNREADABLE_FRACTION of ``total`` images were unreadable;
    ``count`` (default ``len(files)``) may include files other processes found."""
    count = len(files) if count is None else count
    if total and count > MAX_UNREADABLE_FRACTION * total:
        shown = f", e.g. {', '.join(files[:SHOWN_FILES])}" if files else ""
        raise DataError(
            f"{count} of {total} images of the {split} split could not be read "
            f"(more than {MAX_UNREADABLE_FRACTION:.0%}){shown}"
        )

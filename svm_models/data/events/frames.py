"""Events -> a fixed number of frames, the integration the spiking papers use.

``integrate(events, sensor_size, T)`` splits a recording into ``T`` slices of equal event count
and sums each slice per pixel and polarity: tonic's ``ToFrame(n_event_bins=T)``, the convention of
spikingjelly's ``split_by='number'`` (each slice holds ``N // T`` events; tonic drops the last
``N mod T < T`` events where spikingjelly adds them to the last frame). Channel 0 counts OFF
events, channel 1 ON events. The slices are tonic's (``SliceByEventBins``); the counts are summed
here in 64-bit integers, since ``ToFrame`` sums into int16 and a pixel with more than 32,767
events in one slice (a hot pixel, a long recording at small T) would wrap around to negative.
"""

from __future__ import annotations

import numpy as np
import torch


def integrate(events: np.ndarray, sensor_size: tuple[int, int], T: int) -> torch.Tensor:
    """(T, 2, H, W) float32 event counts; ``sensor_size`` is (width, height)."""
    width, height = sensor_size
    inside = (events["x"] >= 0) & (events["x"] < width) & (events["y"] >= 0) & (events["y"] < height)
    events = events[inside]
    frames = np.zeros((T, 2 * height * width), dtype=np.float32)
    if len(events) < T:  # fewer events than frames: tonic would make zero slices of zero events
        return torch.from_numpy(frames).view(T, 2, height, width)
    from tonic.slicers import SliceByEventBins  # on first use, as readers.tonic_io

    for i, (start, end) in enumerate(SliceByEventBins(bin_count=T).get_slice_metadata(events, None)):
        part = events[start:end]
        pixel = (part["p"].astype(np.int64) * height + part["y"]) * width + part["x"]
        frames[i] = np.bincount(pixel, minlength=frames.shape[1])
    return torch.from_numpy(frames).view(T, 2, height, width)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 2, H, W) frames at ``size`` x ``size``. Smaller: every pixel's count goes to the one
    target pixel floor(i size / H) (tonic's ``Downsample`` of the events), weighted by the area
    ratio, so that 128 -> 64 averages 2 x 2 blocks and every event weighs the same whatever the
    ratio (area interpolation's windows overlap where the size does not divide: 34 -> 16 counted
    some events twice). Larger: each target pixel repeats the source pixel it lies in."""
    if frames.shape[-2:] == (size, size):
        return frames
    rows = _assignment(frames.shape[-2], size, frames.dtype)  # (size, H)
    cols = _assignment(frames.shape[-1], size, frames.dtype)  # (size, W)
    return rows @ frames @ cols.T


def _assignment(n: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    """(m, n): source index i -> target floor(i m / n) weighted m / n when shrinking; target j
    <- source floor(j n / m) when growing."""
    if m <= n:
        rows, cols, weight = torch.arange(n) * m // n, torch.arange(n), m / n
    else:
        rows, cols, weight = torch.arange(m), torch.arange(m) * n // m, 1.0
    return torch.zeros(m, n, dtype=dtype).index_put_((rows, cols), torch.tensor(weight, dtype=dtype))


class FrameAugment:
    """Training augmentation of a (T, 2, H, W) sequence, the same for every frame: a random
    translation of up to ``max_shift`` pixels (zeros shifted in) and, if ``flip``, a random
    horizontal flip (not for gestures, where it swaps left and right hand classes)."""

    def __init__(self, max_shift: int, flip: bool, generator: torch.Generator | None = None):
        self.max_shift, self.flip, self.generator = max_shift, flip, generator

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            frames = frames.flip(-1)
        if self.max_shift:
            dy, dx = torch.randint(
                -self.max_shift, self.max_shift + 1, (2,), generator=self.generator
            ).tolist()
            frames = _translate(frames, dy, dx)
        return frames


def _translate(frames: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(frames)
    h, w = frames.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = frames[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out

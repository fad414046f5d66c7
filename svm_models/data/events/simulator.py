"""An event-camera simulator: still images -> event streams, the way N-MNIST was recorded.

N-MNIST (Orchard et al., Front. Neurosci. 2015) was made by moving an ATIS sensor in front of
still MNIST digits along three saccades that trace a triangle. This module does the same in
software with the principle of ESIM (Rebecq et al., CoRL 2018) and v2e (Hu et al., CVPRW 2021):
each pixel remembers the log intensity at its last event and fires one event per crossing of a
contrast threshold ``C`` (ON when brighter, OFF when darker), with timestamps interpolated
linearly within the rendering step where the crossings happen. Per-pixel thresholds vary around
``C`` (sensor mismatch, normal with relative spread ``threshold_spread``), drawn from the seed.

``simulate_saccades`` turns one image into events; :class:`EventDigits` applies it to
scikit-learn's digits with a fixed seed, so the same events come out on every machine.
"""

from __future__ import annotations

import itertools

import numpy as np

from .readers import tonic_io

SACCADE_US = 100_000  # N-MNIST: each saccade takes about 100 ms
LOG_EPS = 0.1  # log(I + eps): dark pixels have a finite log intensity, as a real sensor's floor


def saccade_path(amplitude: float, steps_per_saccade: int) -> np.ndarray:
    """(3 * steps + 1, 2) sub-pixel (dy, dx) offsets along a triangle: down-right, left, up-right."""
    corners = np.array([[0.0, 0.0], [amplitude, amplitude / 2], [0.0, amplitude], [0.0, 0.0]])
    corners[:, 1] -= amplitude / 2  # centred horizontally around the resting position
    legs = [
        a + (b - a) * np.linspace(0, 1, steps_per_saccade, endpoint=False)[:, None]
        for a, b in itertools.pairwise(corners)
    ]
    return np.concatenate([*legs, corners[-1:]])


def _bilinear_shift(scene: np.ndarray, offset) -> np.ndarray:
    """``scene`` (N, H, W) moved by a sub-pixel (dy, dx), bilinear, zero outside."""
    _, height, width = scene.shape
    pad = int(np.ceil(np.abs(offset).max())) + 1
    padded = np.pad(scene, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros_like(scene)
    iy, ix = np.floor(offset).astype(int)
    fy, fx = offset[0] - iy, offset[1] - ix
    for ky, wy in ((iy, 1 - fy), (iy + 1, fy)):
        for kx, wx in ((ix, 1 - fx), (ix + 1, fx)):
            if wy * wx:
                out += wy * wx * padded[:, pad - ky : pad - ky + height, pad - kx : pad - kx + width]
    return out


def simulate_saccades(
    images: np.ndarray,
    canvas: int,
    rng: np.random.Generator,
    threshold: float = 0.2,
    threshold_spread: float = 0.03,
    amplitude: float = 2.0,
    steps_per_saccade: int = 20,
) -> list[np.ndarray]:
    """Events of each (h, w) image in [0, 1] of ``images`` (N, h, w), centred on a ``canvas`` x
    ``canvas`` sensor while the sensor makes three saccades of ``amplitude`` pixels: one tonic
    structured array per image, sorted by t. All images are rendered together (one shift per step)."""
    n, h, w = images.shape
    if h > canvas or w > canvas:
        raise ValueError(f"a {h}x{w} image does not fit a {canvas}x{canvas} sensor")
    events_struct = tonic_io().events_struct
    scene = np.zeros((n, canvas, canvas))
    top, left = (canvas - h) // 2, (canvas - w) // 2
    scene[:, top : top + h, left : left + w] = images
    path = saccade_path(amplitude, steps_per_saccade)
    step_us = 3 * SACCADE_US / (len(path) - 1)
    thresholds = threshold * np.clip(1 + threshold_spread * rng.standard_normal(scene.shape), 0.5, 1.5)

    def log_intensity(offset):
        return np.log(_bilinear_shift(scene, offset) + LOG_EPS)

    reference = log_intensity(path[0])
    previous = reference.copy()
    chunks = []
    for k in range(1, len(path)):
        current = log_intensity(path[k])
        change = current - reference
        # + 1e-9: a return to exactly k thresholds from the reference (a pixel back where it
        # started) must count k crossings, not k - 1 after rounding
        crossings = np.floor(np.abs(change) / thresholds + 1e-9).astype(np.int64)
        where = np.nonzero(crossings)
        if len(where[0]):
            counts = crossings[where]
            up = change[where] > 0
            c = thresholds[where]
            # The i-th crossing of a pixel happens where the linear log-intensity ramp from
            # previous to current reaches reference +- i * C.
            idx = np.repeat(np.arange(len(counts)), counts)
            nth = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            level = (reference[where] - previous[where])[idx] + np.where(up, 1.0, -1.0)[idx] * nth * c[idx]
            ramp = (current[where] - previous[where])[idx]
            frac = np.clip(np.divide(level, ramp, out=np.ones_like(level), where=ramp != 0), 0.0, 1.0)
            chunk = np.empty(len(idx), dtype=[("n", np.int64), *events_struct.descr])
            chunk["n"], chunk["y"], chunk["x"] = where[0][idx], where[1][idx], where[2][idx]
            chunk["t"] = np.round((k - 1 + frac) * step_us).astype(np.int64)
            chunk["p"] = up[idx]
            chunks.append(chunk)
            reference[where] += np.where(up, 1.0, -1.0) * counts * c
        previous = current
    if not chunks:
        return [np.empty(0, dtype=events_struct) for _ in range(n)]
    events = np.concatenate(chunks)
    events = events[np.lexsort((events["t"], events["n"]))]
    bounds = np.searchsorted(events["n"], np.arange(n + 1))
    fields = list(events_struct.names)
    return [
        np.ascontiguousarray(events[fields][a:b]).astype(events_struct) for a, b in itertools.pairwise(bounds)
    ]

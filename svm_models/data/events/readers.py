"""Readers for the original event-camera recordings, returning tonic's event arrays.

Every reader returns a numpy structured array with tonic's fields ``x, y, t, p`` (``t`` in
microseconds, ``p`` 1 for ON / brightness increase, 0 for OFF), sorted as recorded. Where tonic
reads a format correctly its reader is used; where it does not, the reason is given below.

* N-MNIST ``.bin`` (Orchard et al. 2015): 5 bytes per event, ``x`` (8 bits), ``y`` (8 bits), polarity
  (1 bit), timestamp (23 bits); tonic's ``read_mnist_file``.
* CIFAR10-DVS ``.aedat`` (Li et al. 2017): jAER's AEDAT 2.0 from a DVS128, ASCII header lines
  starting with ``#``, then big-endian (address, timestamp) uint32 pairs; tonic's header and
  record readers. The address is decoded here: tonic's ``read_dvs_128`` transposes x and y and
  (1.7.0) unpacks its header reader's three return values into two. The orientation follows
  spikingjelly's loader, which the papers' CIFAR10-DVS numbers were trained with:
  ``x = 127 - y_bits``, ``y = 127 - x_bits``, ``p = 1 - p_bit``.
* DVS128 Gesture ``.aedat`` (Amir et al. 2017): AEDAT 3.1, ASCII header up to ``#!END-HEADER``,
  then packets of a 28-byte header (type, source, size, ts offset, ts overflow, capacity,
  number, valid) and ``capacity`` events of ``size`` bytes. Only polarity packets (type 1,
  8 bytes: address with x in bits 17-31, y in bits 2-16, polarity in bit 1, valid in bit 0; then
  a 32-bit timestamp extended by the packet's overflow count) hold events; tonic's packet
  reader reads every packet as polarity events, so a file with special-event packets would
  yield garbage: read here.
"""

from __future__ import annotations

import os
import struct

import numpy as np


def tonic_io():
    """tonic's readers and its event dtype, imported on first use: importing tonic takes 0.7 s that
    the image datasets' scripts would pay at start-up."""
    import tonic.io

    return tonic.io


DVS128_SIZE = 128
NMNIST_SIZE = 34
_AEDAT3_END_HEADER = b"#!END-HEADER"
_AEDAT3_PACKET_HEADER = struct.Struct("<HHIIIIII")
_POLARITY_EVENT = 1


class EventFileError(Exception):
    """A recording that cannot be decoded (truncated, wrong format, no events)."""


def _structured(x, y, t, p) -> np.ndarray:
    events = np.empty(len(x), dtype=tonic_io().events_struct)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


def _on_sensor(events: np.ndarray, size: int, path: str, fmt: str) -> np.ndarray:
    """``events``, or EventFileError when one lies off the size x size sensor (a valid file has
    none: such a file is another format or damaged, and would give empty frames)."""
    off = (events["x"] >= size) | (events["y"] >= size)
    if off.any():
        i = int(np.argmax(off))
        raise EventFileError(
            f"{path}: event {i} at ({events['x'][i]}, {events['y'][i]}) lies off the {size} x {size} "
            f"sensor: not a valid {fmt} file"
        )
    return events


def read_nmnist(path: str) -> np.ndarray:
    """One N-MNIST recording (34 x 34 sensor)."""
    size = _file_size(path)
    if size == 0 or size % 5:
        raise EventFileError(f"{path}: {size} bytes is not a whole number of 5-byte N-MNIST events")
    return _on_sensor(tonic_io().read_mnist_file(path, dtype=tonic_io().events_struct), 34, path, "N-MNIST")


def read_cifar10_dvs(path: str) -> np.ndarray:
    """One CIFAR10-DVS recording (128 x 128 sensor, AEDAT 2.0)."""
    try:
        version, data_start, _ = tonic_io().read_aedat_header_from_file(path)
    except Exception as e:  # tonic asserts and parses the header text
        raise EventFileError(f"{path}: not an AEDAT file ({type(e).__name__}: {e})") from None
    if not 2 <= version < 3:
        raise EventFileError(f"{path}: AEDAT {version} file, CIFAR10-DVS recordings are AEDAT 2.0")
    if (_file_size(path) - data_start) % 8:
        raise EventFileError(f"{path}: truncated (the event records are not whole 8-byte pairs)")
    raw = tonic_io().get_aer_events_from_file(path, version, data_start)
    address = raw["address"].astype(np.int64)
    x_bits = (address >> 1) & 0x7F
    y_bits = (address >> 8) & 0x7F
    p_bit = address & 1
    return _structured(127 - y_bits, 127 - x_bits, raw["timeStamp"].astype(np.int64), 1 - p_bit)


def read_dvs_gesture(path: str) -> np.ndarray:
    """One DVS128 Gesture recording (128 x 128 sensor, AEDAT 3.1), all its polarity events."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(_AEDAT3_END_HEADER)
    if not data.startswith(b"#!AER-DAT3") or end < 0:
        raise EventFileError(f"{path}: not an AEDAT 3.1 file (no '#!AER-DAT3.1' ... '#!END-HEADER' header)")
    pos = data.index(b"\n", end) + 1
    xs, ys, ts, ps = [], [], [], []
    while pos < len(data):
        if pos + _AEDAT3_PACKET_HEADER.size > len(data):
            raise EventFileError(f"{path}: truncated packet header at byte {pos}")
        etype, _source, esize, _ts_offset, overflow, capacity, _number, _valid = (
            _AEDAT3_PACKET_HEADER.unpack_from(data, pos)
        )
        pos += _AEDAT3_PACKET_HEADER.size
        nbytes = capacity * esize
        if pos + nbytes > len(data):
            raise EventFileError(f"{path}: truncated packet at byte {pos} ({nbytes} bytes announced)")
        if etype == _POLARITY_EVENT:
            if esize != 8:
                raise EventFileError(f"{path}: polarity events of {esize} bytes (AEDAT 3.1 has 8)")
            words = np.frombuffer(data, dtype="<u4", count=2 * capacity, offset=pos).astype(np.int64)
            address, stamp = words[0::2], words[1::2]
            valid = (address & 1) == 1
            xs.append((address[valid] >> 17) & 0x7FFF)
            ys.append((address[valid] >> 2) & 0x7FFF)
            ps.append((address[valid] >> 1) & 1)
            ts.append(stamp[valid] | (overflow << 31))
        pos += nbytes
    if not xs:
        raise EventFileError(f"{path}: no polarity events")
    return _on_sensor(
        _structured(*(np.concatenate(v) for v in (xs, ys, ts, ps))), 128, path, "DVS128 Gesture"
    )


def _file_size(path: str) -> int:
    return os.path.getsize(path)

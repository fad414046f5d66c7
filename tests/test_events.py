"""Event-camera data: readers of the original formats (files written here from each format's
specification, not by tonic), frame integration, the simulator, the datasets and 5-D model input."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import svm_models
from svm_models.data import DataError, build_dataset, collate_skipping_unreadable
from svm_models.data import events as E
from svm_models.training import config as C

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _events(n, size, seed=0, t_max=300_000):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, t_max, n))
    return rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n)


# ----------------------------------------------------------------------------------------------
# writers, from the formats' specifications
# ----------------------------------------------------------------------------------------------
def write_nmnist(path, x, y, t, p):
    """N-MNIST: 40 bits per event: x (8), y (8), polarity (1), timestamp (23), big-endian order."""
    with open(path, "wb") as f:
        for xi, yi, ti, pi in zip(x, y, t, p):
            f.write(
                bytes(
                    [
                        int(xi),
                        int(yi),
                        (int(pi) << 7) | ((int(ti) >> 16) & 0x7F),
                        (int(ti) >> 8) & 0xFF,
                        int(ti) & 0xFF,
                    ]
                )
            )


def write_aedat2_dvs128(path, x, y, t, p):
    """jAER AEDAT 2.0 (DVS128): '#' header lines, then big-endian uint32 (address, timestamp);
    address bit 0 polarity, bits 1-7 x, bits 8-14 y of the sensor. CIFAR10-DVS's orientation:
    the dataset's x is 127 - sensor y, its y is 127 - sensor x, its ON is polarity bit 0."""
    header = (
        b"#!AER-DAT2.0\r\n"
        b"# This is a raw AE data file - do not edit\r\n"
        b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
        b"# Timestamps tick is 1 us\r\n"
    )
    sensor_x, sensor_y, bit = 127 - np.asarray(y), 127 - np.asarray(x), 1 - np.asarray(p)
    address = (sensor_y << 8) | (sensor_x << 1) | bit
    body = np.stack([address, np.asarray(t)], 1).astype(">u4").tobytes()
    with open(path, "wb") as f:
        f.write(header + body)


def _aedat3_packet(etype, events, overflow=0):
    """One AEDAT 3.1 packet: 28-byte header (type, source, size, ts offset, ts overflow,
    capacity, number, valid), then ``capacity`` 8-byte events (uint32 data, int32 timestamp)."""
    body = b"".join(struct.pack("<Ii", d, ts) for d, ts in events)
    return struct.pack("<HHIIIIII", etype, 1, 8, 4, overflow, len(events), len(events), len(events)) + body


def polarity_word(x, y, p, valid=1):
    """AEDAT 3.1 polarity event: x in bits 17-31, y in bits 2-16, polarity bit 1, valid bit 0."""
    return (int(x) << 17) | (int(y) << 2) | (int(p) << 1) | valid


def write_aedat31(path, packets):
    header = (
        b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2016-01-01\r\n#!END-HEADER\r\n"
    )
    with open(path, "wb") as f:
        f.write(header + b"".join(packets))


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------
def test_nmnist_reader_decodes_every_field(tmp_path):
    x, y, t, p = _events(500, 34, t_max=2**23 - 1)
    write_nmnist(tmp_path / "00001.bin", x, y, t, p)
    ev = E.read_nmnist(str(tmp_path / "00001.bin"))
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["t"], t)
    np.testing.assert_array_equal(ev["p"], p.astype(bool))


def test_nmnist_reader_rejects_a_truncated_file(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(E.EventFileError, match="5-byte"):
        E.read_nmnist(str(tmp_path / "bad.bin"))


def test_cifar10_dvs_reader_decodes_address_orientation_and_polarity(tmp_path):
    x, y, t, p = _events(400, 128)
    write_aedat2_dvs128(tmp_path / "cifar10_cat_0.aedat", x, y, t, p)
    ev = E.read_cifar10_dvs(str(tmp_path / "cifar10_cat_0.aedat"))
    for field, want in zip("xytp", (x, y, t, p)):
        np.testing.assert_array_equal(ev[field].astype(np.int64), want)


def test_cifar10_dvs_reader_rejects_garbage_and_truncation(tmp_path):
    (tmp_path / "text.aedat").write_text("hello\n")
    with pytest.raises(E.EventFileError):
        E.read_cifar10_dvs(str(tmp_path / "text.aedat"))
    x, y, t, p = _events(10, 128)
    write_aedat2_dvs128(tmp_path / "cut.aedat", x, y, t, p)
    data = (tmp_path / "cut.aedat").read_bytes()
    (tmp_path / "cut.aedat").write_bytes(data[:-3])
    with pytest.raises(E.EventFileError, match="truncated"):
        E.read_cifar10_dvs(str(tmp_path / "cut.aedat"))


def test_gesture_reader_keeps_valid_polarity_events_only_and_extends_timestamps(tmp_path):
    packets = [
        _aedat3_packet(0, [(0x12345678, 5), (0x1, 6)]),  # special events: not polarity, skipped
        _aedat3_packet(1, [(polarity_word(3, 4, 1), 10), (polarity_word(5, 6, 0, valid=0), 11)]),
        _aedat3_packet(1, [(polarity_word(127, 0, 0), 7)], overflow=1),  # t = 7 + 2^31
    ]
    write_aedat31(tmp_path / "user01_led.aedat", packets)
    ev = E.read_dvs_gesture(str(tmp_path / "user01_led.aedat"))
    assert ev["x"].tolist() == [3, 127]
    assert ev["y"].tolist() == [4, 0]
    assert ev["p"].tolist() == [True, False]
    assert ev["t"].tolist() == [10, 7 + 2**31]


def test_gesture_reader_rejects_a_truncated_packet(tmp_path):
    write_aedat31(tmp_path / "a.aedat", [_aedat3_packet(1, [(polarity_word(1, 1, 1), 1)] * 4)[:-5]])
    with pytest.raises(E.EventFileError, match="truncated"):
        E.read_dvs_gesture(str(tmp_path / "a.aedat"))


def test_gesture_reader_polarity_is_bit_1_alone(tmp_path):
    # a polarity read with y's lowest bit (bit 2) turned OFF events at odd rows into ON
    write_aedat31(
        tmp_path / "odd.aedat",
        [_aedat3_packet(1, [(polarity_word(3, 5, 0), 1), (polarity_word(3, 7, 1), 2)])],
    )
    ev = E.read_dvs_gesture(str(tmp_path / "odd.aedat"))
    assert ev["y"].tolist() == [5, 7] and ev["p"].tolist() == [False, True]


def test_gesture_reader_refuses_polarity_events_of_another_size(tmp_path):
    # 16-byte polarity events were read as 8-byte pairs (garbage) instead of refused
    header = struct.pack("<HHIIIIII", 1, 1, 16, 4, 0, 2, 2, 2)
    body = b"".join(struct.pack("<IiQ", polarity_word(1, 1, 1), 5, 0) for _ in range(2))
    write_aedat31(tmp_path / "wide.aedat", [header + body])
    with pytest.raises(E.EventFileError, match="polarity events of 16 bytes"):
        E.read_dvs_gesture(str(tmp_path / "wide.aedat"))


def test_cifar10_dvs_reader_refuses_an_aedat3_file(tmp_path):
    # an AEDAT 3.0 file (version 3 exactly) passed the version check and was decoded as 2.0
    (tmp_path / "v3.aedat").write_bytes(b"#!AER-DAT3.0\r\n#!END-HEADER\r\n" + bytes(16))
    with pytest.raises(E.EventFileError, match="AEDAT 3.0 file"):
        E.read_cifar10_dvs(str(tmp_path / "v3.aedat"))


def test_nmnist_reader_rejects_an_empty_file(tmp_path):
    # a 0-byte recording (an interrupted download) was read as no events, an empty sample
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(E.EventFileError, match="0 bytes"):
        E.read_nmnist(str(tmp_path / "empty.bin"))


def test_readers_refuse_an_event_just_past_the_sensor_edge(tmp_path):
    # x == 34 on the 34 x 34 sensor is off it (a > check let the first column past the edge in)
    write_nmnist(tmp_path / "edge.bin", [33, 34], [0, 0], [1, 2], [1, 0])
    with pytest.raises(E.EventFileError, match=r"event 1 at \(34, 0\) lies off the 34 x 34 sensor"):
        E.read_nmnist(str(tmp_path / "edge.bin"))


# ----------------------------------------------------------------------------------------------
# integration and simulator
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, T", [(100, 4), (103, 4), (16, 16), (3, 4)])
def test_integrate_splits_by_event_count(n, T):
    x, y, t, p = _events(n, 8, seed=n)
    ev = np.empty(n, dtype=E.readers.tonic_io().events_struct)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    frames = E.integrate(ev, (8, 8), T)
    assert frames.shape == (T, 2, 8, 8) and frames.dtype == torch.float32
    want = torch.zeros(T, 2, 8, 8)
    per = n // T
    for i in range(T if n >= T else 0):
        for k in range(i * per, (i + 1) * per):  # N // T events per frame, remainder dropped
            want[i, int(p[k]), int(y[k]), int(x[k])] += 1
    torch.testing.assert_close(frames, want, rtol=0, atol=0)


def test_integrate_equals_tonic_to_frame_on_a_non_square_sensor():
    from tonic.transforms import ToFrame

    rng = np.random.default_rng(3)
    n, width, height, T = 1001, 11, 7, 5
    ev = np.empty(n, dtype=E.readers.tonic_io().events_struct)
    ev["x"], ev["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
    ev["t"], ev["p"] = np.sort(rng.integers(0, 10**6, n)), rng.integers(0, 2, n)
    want = ToFrame(sensor_size=(width, height, 2), n_event_bins=T)(ev.copy())
    frames = E.integrate(ev, (width, height), T)
    assert frames.shape == (T, 2, height, width)
    np.testing.assert_array_equal(frames.numpy(), want.astype(np.float32))


def test_integrate_counts_a_hot_pixel_past_int16():
    # tonic's ToFrame sums into int16: 40,000 events at one pixel came out as -25,536
    n = 40_000
    ev = np.zeros(n, dtype=E.readers.tonic_io().events_struct)
    ev["x"], ev["y"], ev["t"], ev["p"] = 3, 2, np.arange(n), 1
    frames = E.integrate(ev, (8, 8), 1)
    assert frames[0, 1, 2, 3] == n and frames.sum() == n
    assert (E.integrate(ev, (8, 8), 2)[:, 1, 2, 3] == n // 2).all()


def test_integrate_drops_events_past_the_sensor_edge():
    # Guards the x < width bound: an event at x == width wrapped onto the next row's pixel 0
    ev = np.zeros(2, dtype=E.readers.tonic_io().events_struct)
    ev["x"], ev["y"], ev["t"], ev["p"] = [8, 3], [0, 5], [0, 1], 1
    frames = E.integrate(ev, (8, 8), 1)
    assert frames.sum() == 1 and frames[0, 1, 5, 3] == 1 and frames[0, 1, 1, 0] == 0


def test_simulator_static_scene_gives_no_events_and_motion_gives_both_polarities():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 4, 4))
    image[0, 1:3, 1:3] = 1.0
    assert len(E.simulate_saccades(image, 8, rng, amplitude=0.0)[0]) == 0
    ev = E.simulate_saccades(image, 8, np.random.default_rng(0))[0]
    assert len(ev) > 0 and ev["p"].any() and (~ev["p"]).any()
    assert (np.diff(ev["t"]) >= 0).all() and ev["t"].min() >= 0 and ev["t"].max() <= 300_000
    again = E.simulate_saccades(image, 8, np.random.default_rng(0))[0]
    np.testing.assert_array_equal(ev, again)


def test_simulator_events_track_the_log_intensity_exactly():
    """Each pixel's reference level moves by C per event and stays within C of its log intensity;
    the saccades end where they start, so every pixel fires as many ON as OFF events."""
    rng = np.random.default_rng(3)
    images = rng.random((3, 5, 5))
    ev = E.simulate_saccades(images, 9, np.random.default_rng(0), threshold=0.3, threshold_spread=0.0)
    for e in ev:
        assert len(e) > 0
        on = np.zeros((9, 9), int)
        off = np.zeros((9, 9), int)
        np.add.at(on, (e["y"][e["p"]], e["x"][e["p"]]), 1)
        np.add.at(off, (e["y"][~e["p"]], e["x"][~e["p"]]), 1)
        np.testing.assert_array_equal(on, off)


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------
def test_readers_refuse_events_off_the_sensor(tmp_path):
    # a damaged file (here text) decodes to coordinates past the sensor: it was integrated into
    # empty frames and trained with its label, without a word
    (tmp_path / "00002.bin").write_bytes(b"<html><body>503</body>\n\n\n")
    with pytest.raises(E.EventFileError, match=r"off the 34 x 34 sensor"):
        E.read_nmnist(str(tmp_path / "00002.bin"))
    write_aedat31(tmp_path / "g.aedat", [_aedat3_packet(1, [(polarity_word(5, 200, 1), 10)])])
    with pytest.raises(E.EventFileError, match=r"\(5, 200\) lies off the 128 x 128 sensor"):
        E.read_dvs_gesture(str(tmp_path / "g.aedat"))


@pytest.mark.parametrize("src,dst", [(34, 16), (34, 32), (128, 96), (128, 64), (16, 32)])
def test_resized_frames_weigh_every_event_alike(src, dst):
    # area interpolation's windows overlap where the size does not divide: some events counted
    # twice. Shrinking now bins each pixel into one target pixel (tonic's Downsample), weighted
    # by the area ratio; where the size divides that is the area resize itself.
    x, y, t, p = _events(3000, src)
    events = np.zeros(len(x), dtype=E.readers.tonic_io().events_struct)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    got = E.resize_frames(E.integrate(events, (src, src), 2), dst)
    if dst < src:
        scaled = events.copy()
        scaled["x"], scaled["y"] = x * dst // src, y * dst // src
        want = E.integrate(scaled, (dst, dst), 2) * (dst / src) ** 2
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if dst % src == 0 or src % dst == 0:
        frames = E.integrate(events, (src, src), 2)
        torch.testing.assert_close(got, torch.nn.functional.interpolate(frames, size=(dst, dst), mode="area"))
    assert got.sum().item() == pytest.approx(len(x) // 2 * 2 * (dst / src) ** 2, rel=1e-6)


def _gesture_folder(root):
    folder = root / "DvsGesture"
    folder.mkdir()
    for name, split in (("user01_fluorescent", "train"), ("user24_led", "test")):
        x, y, t, p = _events(600, 128, seed=len(name))
        words = [(polarity_word(a, b, c), int(d)) for a, b, c, d in zip(x, y, p, t)]
        write_aedat31(
            folder / f"{name}.aedat", [_aedat3_packet(1, words[:300]), _aedat3_packet(1, words[300:])]
        )
        (folder / f"{name}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n1,0,100000\n11,100000,250000\n"
        )
        with open(folder / f"trials_to_{split}.txt", "a") as f:
            f.write(f"{name}.aedat\n")
    return folder


def test_an_unreadable_gesture_recording_counts_each_of_its_samples(tmp_path, monkeypatch):
    # the count over all workers merges reports by name: one name per recording counted its
    # samples as one (2 of 4 unreadable came out as 1)
    monkeypatch.setattr(E.datasets, "MAX_UNREADABLE_FRACTION", 1.0)
    folder = _gesture_folder(tmp_path)
    (folder / "user02_led.aedat").write_bytes((folder / "user01_fluorescent.aedat").read_bytes()[:200])
    (folder / "user02_led_labels.csv").write_text((folder / "user01_fluorescent_labels.csv").read_text())
    with open(folder / "trials_to_train.txt", "a") as f:
        f.write("user02_led.aedat\n")
    train = build_dataset("dvs128_gesture", "train", root=str(tmp_path), T=2)
    bad = [i for i, s in enumerate(train.samples) if "user02" in s.path]
    assert len(train) == 4 and len(bad) == 2
    with pytest.warns(UserWarning, match="unreadable"):
        assert train[bad[0]] is None and train[bad[1]] is None
    names = [name for name, _ in train.unreadable.drain()]
    assert len(names) == len(set(names)) == 2 and all("user02_led.aedat" in n for n in names)


@pytest.mark.parametrize(
    "csv_text,message",
    [
        ("class,start,end\n1,0,100000\n", "the header must name class,startTime_usec,endTime_usec"),
        ("1,0,100000\n2,100000,200000\n", "the header must name"),  # no header: its first row taken for one
        ("class,startTime_usec,endTime_usec\none,0,100000\n", "line 2 is not three integers"),
        ("class,startTime_usec,endTime_usec\n1,0,100000\n2,5\n", "line 3 is not three integers"),
        ("class,startTime_usec,endTime_usec\n12,0,100000\n", "class 12 outside 1..11"),
        (
            "class,startTime_usec,endTime_usec\n1,200000,100000\n",
            "line 2: the window 200000..100000 us is empty",
        ),
    ],
)
def test_a_malformed_gesture_labels_file_is_one_data_error(tmp_path, csv_text, message):
    # (a KeyError, ValueError or TypeError traceback from train.py before)
    folder = _gesture_folder(tmp_path)
    (folder / "user01_fluorescent_labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        build_dataset("dvs128_gesture", "train", root=str(tmp_path), T=2)


def test_a_gesture_window_without_events_is_skipped_as_unreadable(tmp_path):
    # A window past the recording's end (labels of another recording) became an all-zero sample
    # with a real label, trained on and scored; it is reported and dropped like a bad file
    folder = _gesture_folder(tmp_path)
    (folder / "user01_fluorescent_labels.csv").write_text(
        "class,startTime_usec,endTime_usec\n1,0,100000\n4,900000,950000\n"
    )
    train = build_dataset("dvs128_gesture", "train", root=str(tmp_path), T=2)
    assert len(train) == 2 and train[0] is not None
    with pytest.warns(UserWarning, match="no events in the labelled window 900000..950000 us"):
        assert train[1] is None
    assert train.skipped == 1


def test_zero_frames_are_refused_not_replaced_by_the_default():
    with pytest.raises(DataError, match="T must be >= 1, got 0"):
        build_dataset("event_digits", "test", T=0)


def test_gesture_dataset_cuts_recordings_by_the_label_csv(tmp_path):
    _gesture_folder(tmp_path)
    train = build_dataset("dvs128_gesture", "train", root=str(tmp_path), T=4, img_size=64)
    test = build_dataset("dvs128_gesture", "test", root=str(tmp_path), T=4)
    assert len(train) == 2 and len(test) == 2 and train.targets == [0, 10]
    frames, label = train[1]
    assert frames.shape == (4, 2, 64, 64) and label == 10
    ev = E.read_dvs_gesture(str(tmp_path / "DvsGesture" / "user01_fluorescent.aedat"))
    n = int(((ev["t"] >= 100000) & (ev["t"] < 250000)).sum())
    full = test.frames(1)  # 128 px: counts preserved exactly
    assert full.shape == (4, 2, 128, 128)
    assert frames.sum().item() == pytest.approx((n // 4) * 4 / 4)  # area resize to 64 averages 2x2


def test_a_gesture_sample_ends_before_its_end_time(tmp_path):
    # Guards the window [start, end): events at t == end belong to the next gesture only
    folder = tmp_path / "DvsGesture"
    folder.mkdir()
    stamps = [0, 50_000, 100_000, 100_000, 200_000, 249_999, 250_000]
    write_aedat31(
        folder / "user01_led.aedat", [_aedat3_packet(1, [(polarity_word(1, 2, 1), t) for t in stamps])]
    )
    (folder / "user01_led_labels.csv").write_text(
        "class,startTime_usec,endTime_usec\n1,0,100000\n2,100000,250000\n"
    )
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\n")
    train = build_dataset("dvs128_gesture", "train", root=str(tmp_path), T=1, img_size=128)
    assert [train.frames(i).sum().item() for i in range(len(train))] == [2.0, 4.0]


def _cifar10_dvs_folder(root, per_class: int, events: int) -> None:
    for cls in E.datasets.CIFAR10_DVS_CLASSES:
        (root / "CIFAR10-DVS" / cls).mkdir(parents=True)
        for i in range(per_class):
            write_aedat2_dvs128(
                root / "CIFAR10-DVS" / cls / f"cifar10_{cls}_{i}.aedat", *_events(events, 128, seed=i)
            )


def test_cifar10_dvs_split_is_nine_to_one_per_class_and_disjoint(tmp_path):
    _cifar10_dvs_folder(tmp_path, 10, 40)
    train = build_dataset("cifar10_dvs", "train", root=str(tmp_path), T=4)
    test = build_dataset("cifar10_dvs", "test", root=str(tmp_path), T=4)
    assert len(train) == 90 and len(test) == 10
    assert sorted(test.targets) == list(range(10))
    assert not {s.path for s in train.samples} & {s.path for s in test.samples}
    again = build_dataset("cifar10_dvs", "test", root=str(tmp_path), T=4)
    assert [s.path for s in again.samples] == [s.path for s in test.samples]  # seeded
    frames, _ = train[0]
    assert frames.shape == (4, 2, 128, 128)


def test_cifar10_dvs_small_copy_keeps_one_test_recording_per_class(tmp_path):
    # 3 recordings a class: a tenth rounds to none, which left the test split empty (reported as
    # "no recordings found" although the train split loaded)
    _cifar10_dvs_folder(tmp_path, 3, 10)
    train = build_dataset("cifar10_dvs", "train", root=str(tmp_path), T=2)
    test = build_dataset("cifar10_dvs", "test", root=str(tmp_path), T=2)
    assert len(train) == 20 and len(test) == 10 and sorted(test.targets) == list(range(10))


def _nmnist_folder(root, per_class=1, bad=()):
    for split in ("Train", "Test"):
        for d in range(10):
            folder = root / "NMNIST" / split / str(d)
            folder.mkdir(parents=True)
            for i in range(per_class):
                write_nmnist(folder / f"{i:05d}.bin", *_events(40, 34, seed=d * 100 + i))
    for path in bad:
        (root / "NMNIST" / path).write_bytes(b"\x00\x01")


def test_nmnist_dataset_and_a_corrupt_recording_is_skipped_and_reported(tmp_path):
    _nmnist_folder(tmp_path, per_class=11, bad=["Train/3/99999.bin"])
    ds = build_dataset("nmnist", "train", root=str(tmp_path), T=4)
    assert len(ds) == 111
    bad = next(i for i, s in enumerate(ds.samples) if s.path.endswith("99999.bin"))
    with pytest.warns(UserWarning, match="99999.bin"):
        assert ds[bad] is None  # (it was replaced by its neighbour, which a test split counted twice)
    assert ds.skipped == 1 and ds[bad] is None  # reported once, not read again
    frames, _ = ds[(bad + 1) % len(ds)]
    assert frames.shape == (4, 2, 34, 34)
    loader = torch.utils.data.DataLoader(ds, batch_size=37, collate_fn=collate_skipping_unreadable)
    assert sum(len(y) for _, y in loader) == 110  # a whole epoch runs, without the unreadable one


def test_too_many_corrupt_recordings_is_an_error(tmp_path):
    _nmnist_folder(tmp_path, per_class=1, bad=["Train/3/99998.bin", "Train/4/99999.bin"])
    ds = build_dataset("nmnist", "train", root=str(tmp_path), T=4)
    with pytest.raises(DataError, match="unreadable"), pytest.warns(UserWarning):
        for i in range(len(ds)):
            ds[i]


SPAWNED_EPOCH = """
import multiprocessing, sys, torch
from svm_models.data import build_dataset
if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    ds = build_dataset("nmnist", "train", root=sys.argv[1], T=2)
    ds[0]  # a recording in the dataset's cache
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    print(sum(len(y) for _, y in loader))
"""


def test_recorded_datasets_run_in_spawned_workers(tmp_path):
    # the start method of macOS and Windows (forkserver, Python 3.14's Linux default, pickles
    # alike): the dataset is pickled into each worker, which a functools.lru_cache of the
    # reader could not be
    import subprocess
    import sys

    _nmnist_folder(tmp_path, per_class=1)
    script = tmp_path / "epoch.py"
    script.write_text(SPAWNED_EPOCH)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["10"]


@pytest.mark.filterwarnings("ignore:.*unreadable recording")
@pytest.mark.parametrize("workers", [0, 2])
def test_training_counts_unreadable_recordings_over_all_workers(tmp_path, monkeypatch, workers):
    from fabricate import tiny_cfg

    from svm_models.training import engine

    torch.set_num_threads(1)
    _nmnist_folder(tmp_path, per_class=2, bad=["Train/3/99998.bin", "Train/4/99999.bin"])
    # no process stops on its own count: the training loop's count over all of them must
    monkeypatch.setattr(E.datasets, "MAX_UNREADABLE_FRACTION", 0.5)
    cfg = tiny_cfg(
        tmp_path,
        model="svmamba_cifar",
        model_args=dict(dims=[8, 16], depths=[1, 1], backend="torch"),
        dataset="nmnist",
        root_path=str(tmp_path),
        T=2,
        img_size=16,
        batch_size=8,
        epochs=1,
        workers=workers,
    )
    with pytest.raises(DataError, match="2 of 22 images of the train split could not be read"):
        engine.fit(C.validate(cfg, "test"), progress=False)


@pytest.mark.parametrize("name", ["dvs128_gesture", "cifar10_dvs", "nmnist"])
def test_missing_data_names_the_expected_layout(tmp_path, name):
    with pytest.raises(DataError, match="expected layout"):
        build_dataset(name, "train", root=str(tmp_path), T=4)


def test_event_digits_frames_are_deterministic_and_split_like_digits():
    train = build_dataset("event_digits", "train", T=4, augment=False)
    test = build_dataset("event_digits", "test", T=4)
    assert (len(train), len(test)) == (1437, 360)
    x, y = test[0]
    assert x.shape == (4, 2, 16, 16) and x.sum() > 0 and 0 <= y < 10
    events, labels = E.datasets.event_digits_events("test")
    torch.testing.assert_close(x, E.integrate(events[0], (16, 16), 4))
    assert labels[0] == y


# ----------------------------------------------------------------------------------------------
# models take (B, T, C, H, W) frames; configs
# ----------------------------------------------------------------------------------------------
TINY = {
    "svmamba_cifar": dict(dims=[16, 32], depths=[1, 1]),
    "qkformer_cifar": dict(embed_dim=32, depths=[1, 1, 1], num_heads=2),
}


@pytest.mark.parametrize("name", list(TINY))
def test_spiking_models_take_frame_sequences(name):
    # training mode: batch statistics in BN make the untrained network fire
    model = svm_models.create_model(name, num_classes=10, img_size=16, in_chans=2, T=3, **TINY[name]).train()
    image = 4 * torch.rand(2, 2, 16, 16)
    same_frames = image.unsqueeze(1).expand(2, 3, 2, 16, 16)
    torch.testing.assert_close(model(same_frames), model(image), rtol=0, atol=0)
    frames = 4 * torch.rand(2, 3, 2, 16, 16)
    out = model(frames)
    assert out.abs().sum() > 0
    assert not torch.equal(out, model(frames[:, :1].expand_as(frames)))  # each step sees its own frame
    with pytest.raises(ValueError, match="T = 3 frames"):
        model(torch.rand(2, 4, 2, 16, 16))


def test_vmamba_takes_the_mean_frame():
    model = svm_models.create_model(
        "vmamba_cifar", num_classes=10, img_size=16, in_chans=2, dims=[16, 32], depths=[1, 1]
    ).eval()
    frames = torch.rand(2, 4, 2, 16, 16)
    torch.testing.assert_close(model(frames), model(frames.mean(1)))


def test_event_config_needs_T_and_the_event_configs_validate():
    with pytest.raises(C.ConfigError, match="set the top-level 'T'"):
        C.validate({"task_name": "x", "model": "svmamba_cifar", "dataset": "nmnist"})
    for name in ("dvs128_gesture", "cifar10_dvs", "nmnist", "event_digits"):
        for model in ("svmamba", "qkformer"):
            cfg = C.load_config(str(CONFIGS / f"{name}_{model}.yaml"))
            assert cfg["dataset"] == name and cfg["T"] >= 1

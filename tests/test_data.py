"""Dataset builders on scikit-learn's digits and on small fabricated datasets in the real formats."""

import collections
import os

import numpy as np
import pytest
import torch
from fabricate import make_cifar10, make_cifar100, make_mini_imagenet, save_digit_png

from svm_models import data as D
from svm_models.data import transforms as T


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    tr = D.build_dataset("digits", "train", img_size=16, augment=False)
    te = D.build_dataset("digits", "test", img_size=16)
    assert (len(tr), len(te)) == (1437, 360)
    assert tr.classes == [str(i) for i in range(10)]
    counts = collections.Counter(te.targets)
    assert set(counts) == set(range(10)) and min(counts.values()) >= 35 and max(counts.values()) <= 37
    # the same split every time, and no test image appears in train
    again = D.build_dataset("digits", "test", img_size=16)
    assert torch.equal(again.images, te.images) and again.targets == te.targets
    flat_tr = {tuple(x[0].flatten().tolist()) for x in tr.images}
    overlap = sum(tuple(x[0].flatten().tolist()) in flat_tr for x in te.images)
    # a handful of digits are exact duplicates in the dataset itself; the split is by index
    assert overlap <= 3
    x, y = te[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # gray in 3 channels
    # normalised with the dataset's statistics (measured at the native 8x8)
    native = D.build_dataset("digits", "train", img_size=8, augment=False).images
    assert abs(native.mean().item()) < 0.05 and abs(native.std().item() - 1.0) < 0.05
    assert len(load_digits().target) == len(tr) + len(te)


def test_digits_upscaling_keeps_the_8x8_content():
    te = D.build_dataset("digits", "test", img_size=8)
    te32 = D.build_dataset("digits", "test", img_size=32)
    down = torch.nn.functional.avg_pool2d(te32.images, 4).flatten()  # back to 8x8 by area
    corr = torch.corrcoef(torch.stack([down, te.images.flatten()]))[0, 1]
    assert corr > 0.95  # the bilinear x4 upscaling only smooths
    assert te32.images.shape == (360, 3, 32, 32)


def test_digits_train_augmentation_is_random_but_shape_preserving():
    tr = D.build_dataset("digits", "train", img_size=16, augment=True)
    torch.manual_seed(0)
    a = tr[3][0]
    torch.manual_seed(1)
    b = tr[3][0]
    assert a.shape == b.shape == (3, 16, 16) and not torch.equal(a, b)
    plain = D.build_dataset("digits", "train", img_size=16, augment=False)
    assert torch.equal(plain[3][0], plain[3][0])


def test_digit_image_transform_matches_the_dataset(tmp_path):
    """A digit saved as an image and read back (predict.py's path) equals the training tensor."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    te = D.build_dataset("digits", "test", img_size=16)
    # find test sample 0 among the raw digits (same pixels)
    raw = torch.from_numpy(d.images).float() / 16.0
    target = T.upscale_digits(raw, 16)
    idx = int(((target - te.images[0]) ** 2).flatten(1).sum(1).argmin())
    path = tmp_path / "digit.png"
    save_digit_png(path, d.images[idx])
    x = D.image_transform("digits", 16)(Image.open(path))
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, te.images[0], atol=0.02)  # 8-bit quantisation only


def test_digit_image_levels_map_exactly_and_upscaling_is_bilinear():
    # Guards the image -> tensor scale (a white pixel is gray level 1.0: /255, not /256) and the
    # bilinear upscaling (a step between two 8x8 pixels gets intermediate levels at 16 px, not
    # nearest-neighbour blocks), which the dataset and predict.py share
    from PIL import Image

    mean, std = T.DIGITS_MEAN[0], T.DIGITS_STD[0]
    to_tensor = T.DigitsImageTransform(8)
    for level in (0, 255):
        x = to_tensor(Image.new("L", (32, 32), level))
        assert torch.allclose(x, torch.full((3, 8, 8), (level / 255 - mean) / std), atol=1e-6)
    step = torch.zeros(1, 8, 8)
    step[..., 4:] = 1.0
    row = T.upscale_digits(step, 16)[0, 0, 0] * std + mean
    assert torch.allclose(row[6:10], torch.tensor([0.0, 0.25, 0.75, 1.0]), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------
def test_cifar10_loads_the_pickle_batches(tmp_path):
    written = make_cifar10(tmp_path)
    tr = D.build_dataset("cifar10", "train", root=str(tmp_path), augment=False)
    te = D.build_dataset("cifar10", "test", root=str(tmp_path))
    assert (len(tr), len(te)) == (30, 5)
    assert tr.classes[0] == "airplane" and len(tr.classes) == 10
    # the first train image is data_batch_1's first row, CHW planes -> HWC
    expect = written["data_batch_1"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(tr.data[0], expect)
    x, y = te[2]
    assert x.shape == (3, 32, 32) and y == 2
    mean = torch.tensor(T.CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(T.CIFAR10_STD)[:, None, None]
    raw = torch.from_numpy(written["test_batch"][2].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)
    assert D.dataset_classes("cifar10", str(tmp_path)) == tr.classes


def test_cifar_train_transform_applies_the_paper_augmentation(tmp_path):
    make_cifar10(tmp_path)
    aug = D.build_dataset("cifar10", "train", root=str(tmp_path), augment=True)
    plain = D.build_dataset("cifar10", "train", root=str(tmp_path), augment=False)
    names = [type(t).__name__ for t in aug.transform.transforms]
    assert {"RandomHorizontalFlip", "RandAugment", "RandomErasing", "Normalize"} <= set(names)
    torch.manual_seed(0)
    differs = sum(not torch.equal(aug[i][0], plain[i][0]) for i in range(10))
    assert differs >= 5
    up = D.build_dataset("cifar10", "test", root=str(tmp_path), img_size=48)
    assert up[0][0].shape == (3, 48, 48)


def test_augmentations_follow_the_papers_recipes():
    # Guards the module docstring's recipes, parameter by parameter (a stronger or weaker
    # augmentation trains without error, only to another accuracy): CIFAR one RandAugment op at
    # magnitude 9, RandomErasing p=0.25 with zero fill; ImageNet two ops, random fill, flip;
    # digits a small affine jitter and no flip
    def ops(transform):
        return {type(t).__name__: t for t in transform.transforms}

    cifar = ops(T.cifar_transform(32, True, T.CIFAR10_MEAN, T.CIFAR10_STD))
    assert list(cifar) == [
        "RandomHorizontalFlip",
        "RandAugment",
        "ToImage",
        "ToDtype",
        "Normalize",
        "RandomErasing",
    ]
    assert (cifar["RandAugment"].num_ops, cifar["RandAugment"].magnitude) == (1, 9)
    assert cifar["RandomErasing"].p == 0.25 and cifar["RandomErasing"].value == [0.0]
    net = ops(T.imagenet_transform(32, True))
    assert "RandomHorizontalFlip" in net and net["RandomResizedCrop"].size == (32, 32)
    assert (net["RandAugment"].num_ops, net["RandAugment"].magnitude) == (2, 9)
    assert net["RandomErasing"].p == 0.25 and net["RandomErasing"].value is None  # "random"
    for plain in (
        T.cifar_transform(32, False, T.CIFAR10_MEAN, T.CIFAR10_STD),
        T.cifar_transform(32, True, T.CIFAR10_MEAN, T.CIFAR10_STD, augment=False),
        T.imagenet_transform(32, False),
    ):
        assert not {"RandomHorizontalFlip", "RandAugment", "RandomErasing"} & set(ops(plain))
    jitter = T.digits_train_transform()
    assert jitter.degrees == [-10.0, 10.0] and jitter.translate == (0.1, 0.1) and jitter.scale == (0.9, 1.1)


def test_image_statistics_are_the_datasets_published_ones():
    # Guards the normalisation constants (the tests elsewhere compare a transform with them, so a
    # wrong constant passed): e.g. CIFAR-10's widely copied std (0.2023, 0.1994, 0.2010) is the
    # std of per-image means, not of the pixels
    assert T.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and T.CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert T.CIFAR100_MEAN == (0.5071, 0.4865, 0.4409) and T.CIFAR100_STD == (0.2673, 0.2564, 0.2762)
    assert T.IMAGENET_MEAN == (0.485, 0.456, 0.406) and T.IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_at_a_smaller_img_size_is_resized_down(tmp_path, name):
    # Guards the resize rule (any img_size but 32, smaller ones too)
    (make_cifar10 if name == "cifar10" else make_cifar100)(tmp_path)
    for train in (False, True):
        ds = D.build_dataset(name, "train" if train else "test", root=str(tmp_path), img_size=16)
        assert ds[0][0].shape == (3, 16, 16)


def test_cifar100_fine_labels_and_meta(tmp_path):
    written = make_cifar100(tmp_path)
    tr = D.build_dataset("cifar100", "train", root=str(tmp_path))
    te = D.build_dataset("cifar100", "test", root=str(tmp_path))
    assert (len(tr), len(te)) == (8, 4)
    assert tr.targets == [(7 * i + 1) % 100 for i in range(8)]
    assert tr.classes[5] == "fine_05" and len(tr.classes) == 100
    assert np.array_equal(te.data[1], written["test"][1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert D.dataset_classes("cifar100", str(tmp_path))[99] == "fine_99"
    # "val" is the test split for datasets without a validation split
    assert len(D.build_dataset("cifar100", "val", root=str(tmp_path))) == 4


def test_cifar_missing_folder_or_file_names_the_layout(tmp_path):
    with pytest.raises(
        D.DataError, match=r"cifar-10-batches-py.*expected layout: <root>/cifar-10/cifar-10-batches-py"
    ):
        D.build_dataset("cifar10", "train", root=str(tmp_path))
    make_cifar100(tmp_path)
    os.remove(tmp_path / "cifar-100" / "cifar-100-python" / "meta")
    with pytest.raises(D.DataError, match=r"missing meta .*cifar-100-python"):
        D.build_dataset("cifar100", "test", root=str(tmp_path))


def test_cifar_corrupt_batch_is_a_data_error(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(D.DataError, match="could not be read"):
        D.build_dataset("cifar10", "train", root=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Mini-ImageNet
# ----------------------------------------------------------------------------------------------
def test_mini_imagenet_jpeg_folders(tmp_path):
    make_mini_imagenet(tmp_path)
    tr = D.build_dataset("mini_imagenet", "train", root=str(tmp_path), img_size=32)
    va = D.build_dataset("mini_imagenet", "val", root=str(tmp_path), img_size=32)
    te = D.build_dataset("mini_imagenet", "test", root=str(tmp_path), img_size=32)
    assert len(tr) == len(va) == len(te) == 6
    assert tr.classes == ["n01532829", "n01558993", "n01704323"]
    torch.manual_seed(0)
    x, y = tr[5]
    assert x.shape == (3, 32, 32) and y == 2
    # eval: resize to 32/0.875 then center-crop 32, deterministic
    assert torch.equal(te[0][0], te[0][0]) and te[0][0].shape == (3, 32, 32)
    assert D.num_classes("mini_imagenet", str(tmp_path)) == 3
    assert D.dataset_classes("mini_imagenet", str(tmp_path)) == tr.classes


def test_mini_imagenet_missing_or_mismatched_splits(tmp_path):
    with pytest.raises(D.DataError, match=r"Mini-ImageNet-Dataset/train.*expected layout"):
        D.build_dataset("mini_imagenet", "train", root=str(tmp_path))
    make_mini_imagenet(tmp_path, splits=("train", "test"))
    with pytest.raises(D.DataError, match=r"no folder .*Mini-ImageNet-Dataset/val"):
        D.build_dataset("mini_imagenet", "val", root=str(tmp_path))
    make_mini_imagenet(tmp_path, classes=("n09999999",), splits=("val",))
    with pytest.raises(D.DataError, match="differ from those of train"):
        D.build_dataset("mini_imagenet", "val", root=str(tmp_path))


def test_unknown_dataset_and_split():
    with pytest.raises(D.DataError, match="unknown dataset 'imagenet'"):
        D.build_dataset("imagenet", "train")
    with pytest.raises(D.DataError, match="unknown split 'dev'"):
        D.build_dataset("digits", "dev")


# ----------------------------------------------------------------------------------------------
# bad labels and unreadable images: found at load time or skipped, never a crash mid-epoch
# ----------------------------------------------------------------------------------------------
def test_cifar_label_out_of_range_is_a_data_error_at_load_time(tmp_path):
    import pickle

    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10" / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][4] = 12
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        D.DataError, match=r"cifar10 train split: 1 label\(s\) outside 0..9, the first is 12 at image 10"
    ):
        D.build_dataset("cifar10", "train", root=str(tmp_path))
    D.build_dataset("cifar10", "test", root=str(tmp_path))  # the test split is fine


def test_labels_must_lie_in_0_to_n_classes_minus_1():
    # Guards the upper bound of the label check: label n_classes is out of range (off by one).
    from svm_models.data.datasets import _check_labels

    _check_labels([0, 3, 9], 10, "x")  # the first and last class are accepted
    with pytest.raises(D.DataError, match=r"x: 1 label\(s\) outside 0..9, the first is 10 at image 1"):
        _check_labels([9, 10], 10, "x")
    with pytest.raises(D.DataError, match=r"the first is -1 at image 0"):
        _check_labels([-1, 0], 10, "x")


def _spoil(folder):
    """Three unreadable .jpg files: 0 bytes, text, a truncated real JPEG."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])  # header intact
    return sorted(str(folder / n) for n in ("empty.jpg", "text.jpg", "truncated.jpg"))


def test_unreadable_folder_images_become_none_and_are_reported(tmp_path):
    base = make_mini_imagenet(tmp_path, per_class=2, size=(8, 8))
    bad = _spoil(tmp_path / "Mini-ImageNet-Dataset" / "train" / "n01532829")
    ds = D.build_dataset("mini_imagenet", "train", root=str(tmp_path), img_size=8, augment=False)
    items = [ds[i] for i in range(len(ds))]
    assert sum(x is None for x in items) == 3 and len(ds) == 9
    log = D.unreadable_log(torch.utils.data.Subset(ds, range(3)))
    got = dict(log.drain())
    assert sorted(got) == bad and log.drain() == []
    assert "UnidentifiedImageError" in got[bad[1]] and got[bad[2]].startswith(
        "OSError: image file is truncated"
    )
    images, targets = D.collate_skipping_unreadable(items[:4])
    assert images.shape[0] == targets.shape[0] == sum(x is not None for x in items[:4])
    images, targets = D.collate_skipping_unreadable([None, None])
    assert images.numel() == 0 and targets.numel() == 0
    with pytest.raises(D.DataError, match=r"3 of 9 images of the train split could not be read .*empty.jpg"):
        D.check_unreadable_fraction(sorted(got), len(ds), "train")
    D.check_unreadable_fraction(bad[:1], 101, "train")  # under 1 %: fine
    assert base


@pytest.mark.parametrize("workers", [0, 2])
def test_training_skips_unreadable_images_and_counts_them(tmp_path, monkeypatch, capsys, workers):
    from fabricate import register_tiny, tiny_cfg

    from svm_models.training import config as C
    from svm_models.training import engine

    register_tiny(monkeypatch)
    torch.set_num_threads(1)
    make_mini_imagenet(tmp_path, per_class=2, size=(8, 8))
    bad = _spoil(tmp_path / "Mini-ImageNet-Dataset" / "train" / "n01532829")
    monkeypatch.setattr("svm_models.data.images.MAX_UNREADABLE_FRACTION", 0.5)  # 3 of 9 is fine here
    cfg = C.validate(
        tiny_cfg(
            tmp_path,
            dataset="mini_imagenet",
            root_path=str(tmp_path),
            batch_size=3,
            workers=workers,
            epochs=2,
        ),
        "test",
    )
    res = engine.fit(cfg, progress=False)
    out = capsys.readouterr().out
    assert res["history"][-1]["epoch"] == 2
    for path in bad:  # each file named once, not every epoch
        assert out.count(f"warning: skipped unreadable image {path}") == 1, out
    assert "epoch 1: 3 unreadable image(s) skipped" in out and "epoch 2: 3 unreadable image(s) skipped" in out
    monkeypatch.setattr("svm_models.data.images.MAX_UNREADABLE_FRACTION", 0.01)
    with pytest.raises(
        D.DataError, match=r"3 of 9 images of the train split could not be read \(more than 1%\)"
    ):
        engine.fit(dict(cfg, epochs=3), resume=True, progress=False)


# ----------------------------------------------------------------------------------------------
# one image, as predict.py reads it
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_image_transform_takes_a_photo_of_any_size(name):
    # the CIFAR pipeline resized only to another img_size: at 32 a 640 x 480 photo stayed so
    from PIL import Image

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert D.image_transform(name, 32)(photo).shape == (3, 32, 32)
    assert D.image_transform(name, 48)(photo).shape == (3, 48, 48)


@pytest.mark.parametrize(
    "name,mean,std",
    [
        ("cifar10", T.CIFAR10_MEAN, T.CIFAR10_STD),
        ("cifar100", T.CIFAR100_MEAN, T.CIFAR100_STD),
        ("mini_imagenet", T.IMAGENET_MEAN, T.IMAGENET_STD),
    ],
)
def test_each_image_dataset_is_normalised_with_its_own_statistics(name, mean, std):
    # Guards a dataset normalised with another's mean / std (e.g. CIFAR-100 with CIFAR-10's).
    for train in (False, True):
        ops = D.default_transform(name, 32, train=train).transforms
        norms = [t for t in ops if type(t).__name__ == "Normalize"]
        assert len(norms) == 1, ops
        assert tuple(norms[0].mean) == mean and tuple(norms[0].std) == std


def test_imagenet_eval_resizes_to_img_size_over_0875_then_crops_the_centre():
    # Guards the evaluation resize (img_size / 0.875, then a centre crop of img_size): resizing to
    # img_size itself would keep the border that the crop is meant to cut off.
    from PIL import Image

    ops = D.default_transform("mini_imagenet", 28, train=False).transforms
    resize = next(t for t in ops if type(t).__name__ == "Resize")
    assert list(resize.size) == [32]  # int(28 / 0.875)
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 255, 255, 255, 255  # a 2 px white frame
    x = D.default_transform("mini_imagenet", 28, train=False)(Image.fromarray(pixels))
    assert x.shape == (3, 28, 28)
    black = (0 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD)
    assert torch.allclose(x, black[:, None, None].expand(3, 28, 28), atol=1e-5)  # the frame is cut off


def test_open_rgb_turns_a_photo_upright_by_its_exif_orientation(tmp_path):
    from PIL import Image

    upright = np.zeros((120, 80, 3), dtype=np.uint8)
    upright[:20] = 255  # a white band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored turned the other way
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "phone.jpg", exif=exif, quality=95
    )
    im = D.open_rgb(str(tmp_path / "phone.jpg"))
    assert im.size == (80, 120)
    assert np.abs(np.asarray(im, dtype=np.float64) - upright).max() < 30  # JPEG noise only


def test_open_rgb_reads_16bit_files_at_their_depth_whatever_their_values(tmp_path):
    # a dark 16-bit PGM opens as mode "I" with values <= 255: it was taken for 8-bit
    values = (np.arange(12).reshape(3, 4) * 23).astype(np.uint16)  # at most 253 of 65535
    (tmp_path / "dark.pgm").write_bytes(b"P5\n4 3\n65535\n" + values.astype(">u2").tobytes())
    from PIL import Image

    Image.fromarray(values).save(tmp_path / "dark.png")
    for name in ("dark.pgm", "dark.png"):
        got = np.asarray(D.open_rgb(str(tmp_path / name)))[..., 0]
        np.testing.assert_array_equal(got, np.round(values / 65535 * 255), err_msg=name)  # (not 253)


def test_open_rgb_reads_32bit_integers_up_to_255_as_8bit(tmp_path):
    # a 32-bit integer TIFF whose values reach 255 exactly is 8-bit data: it was scaled by 65535 (black)
    from PIL import Image

    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(values, mode="I").save(tmp_path / "i32.tiff")
    got = np.asarray(D.open_rgb(str(tmp_path / "i32.tiff")))[..., 0]
    np.testing.assert_array_equal(got, values)


def test_open_rgb_keeps_a_float_image_reaching_1_on_the_0_1_scale(tmp_path):
    # [0.25, 1.0] is the usual [0, 1] convention (max exactly 1): it was stretched to its own range
    from PIL import Image

    arr = np.linspace(0.25, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    got = np.asarray(D.open_rgb(str(tmp_path / "f.tiff")))[..., 0].astype(np.float64)
    assert np.abs(got - np.round(arr.astype(np.float64) * 255.0)).max() <= 1.0 and got.min() >= 63


def test_unreadable_fraction_of_exactly_one_percent_is_allowed(tmp_path):
    # the limit is "more than 1 %": 1 bad image of 100 must pass (a >= check refused it)
    D.check_unreadable_fraction(["a.jpg"], 100, "train")
    with pytest.raises(D.DataError, match="2 of 100 images"):
        D.check_unreadable_fraction(["a.jpg", "b.jpg"], 100, "train")


@pytest.mark.parametrize("offset,scale", [(1000.0, 4.0), (-1000.0, -4.0), (-100.0, 4.0), (0.25, 0.5 / 255)])
def test_open_rgb_scales_float_images_by_their_own_range(tmp_path, offset, scale):
    # all positive, all negative, straddling 0, and inside [0, 1] but not from 0: each its own
    # min..max (or [0, 1] for the last), as the 8-bit image it was made from
    from PIL import Image

    arr8 = np.arange(256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(arr8 * scale + offset, mode="F").save(tmp_path / "f.tiff")
    got = np.asarray(D.open_rgb(str(tmp_path / "f.tiff")))[..., 0].astype(np.float64)
    if offset >= 0.0 and offset + 255 * scale <= 1.0:
        expected = np.round((arr8 * scale + offset) * 255.0)
    else:
        expected = arr8 if scale > 0 else 255.0 - arr8
    assert np.abs(got - expected).max() <= 1.0


def test_digit_jitter_fills_what_it_uncovers_with_the_background():
    # RandomAffine's default fill 0 is, after the normalisation, the dataset's mean gray: every
    # rotation or shift framed the digit in gray that no clean image holds
    torch.manual_seed(0)
    ds = D.build_dataset("digits", "train", img_size=16, augment=True)
    background = (0.0 - T.DIGITS_MEAN[0]) / T.DIGITS_STD[0]
    for i in range(8):
        x = ds[i][0]
        assert x.min().item() == pytest.approx(background, abs=1e-6)
        assert not (x == 0).any(), "a border filled with the normalised mean gray"

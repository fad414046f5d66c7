"""Per-dataset image transforms (torchvision.transforms.v2), following the papers' recipes.

* CIFAR-10/100 (QKFormer's CIFAR recipe): horizontal flip, RandAugment with one op at magnitude 9,
  normalisation, RandomErasing p=0.25 with a constant (zero) fill. Mixup is a batch-level step
  and lives in the training engine (config key ``mixup``).
* Mini-ImageNet (the ImageNet recipes of VMamba/QKFormer): RandomResizedCrop (bicubic),
  horizontal flip, RandAugment with two ops at magnitude 9, normalisation, RandomErasing p=0.25
  with random fill; evaluation resizes to img_size/0.875 and center-crops.
* digits: small random affine jitter (rotation, shift, scale) on the upscaled tensors; no flip
  (a mirrored 2 is not a 2).

torchvision's RandAugment has no magnitude noise (timm's ``mstd``); that is the one difference.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Pixel statistics of scikit-learn's digits after scaling 0..16 to 0..1 (all 1,797 images).
DIGITS_MEAN, DIGITS_STD = (0.3053,) * 3, (0.3760,) * 3

_BICUBIC = InterpolationMode.BICUBIC


def _to_float(mean, std):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def cifar_transform(img_size: int, train: bool, mean, std, augment: bool = True):
    ops = []
    if img_size != 32:
        ops.append(v2.Resize((img_size, img_size), interpolation=_BICUBIC, antialias=True))
    if train and augment:
        ops += [v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=1, magnitude=9)]
    ops += _to_float(mean, std)
    if train and augment:
        ops.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(ops)


def any_size(transform, img_size: int):
    """``transform`` (of a dataset whose images all have its size) preceded by a resize to
    ``img_size`` x ``img_size``, for an image of any size (predict.py's photos)."""
    return v2.Compose([v2.Resize((img_size, img_size), interpolation=_BICUBIC, antialias=True), transform])


def imagenet_transform(img_size: int, train: bool, augment: bool = True):
    if train and augment:
        ops = [
            v2.RandomResizedCrop(img_size, interpolation=_BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(num_ops=2, magnitude=9),
            *_to_float(IMAGENET_MEAN, IMAGENET_STD),
            v2.RandomErasing(p=0.25, value="random"),
        ]
    else:
        ops = [
            v2.Resize(int(img_size / 0.875), interpolation=_BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            *_to_float(IMAGENET_MEAN, IMAGENET_STD),
        ]
    return v2.Compose(ops)


def digits_train_transform():
    """Jitter for the (already upscaled, normalised) digit tensors. What the affine map uncovers
    is filled with the background (gray level 0, normalised), not with 0, which after the
    normalisation is the dataset's mean gray."""
    background = -DIGITS_MEAN[0] / DIGITS_STD[0]
    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=background)


def upscale_digits(x: torch.Tensor, img_size: int) -> torch.Tensor:
    """(N, 8, 8) gray levels in [0, 1] -> (N, 3, img_size, img_size), normalised."""
    x = x.float().unsqueeze(1)
    if img_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(
            x, size=(img_size, img_size), mode="bilinear", align_corners=False
        )
    mean, std = DIGITS_MEAN[0], DIGITS_STD[0]
    return ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()


class DigitsImageTransform:
    """A PIL image of a digit -> the tensor the digits models were trained on.

    The image is reduced to 8x8 gray levels by box (area) averaging, as scikit-learn's digits
    were made from 32x32 bitmaps counted in 4x4 blocks, then upscaled and normalised exactly like
    the training set. Like the dataset, strokes are bright on a dark background.
    """

    def __init__(self, img_size: int):
        self.img_size = img_size

    def __call__(self, img):
        from PIL import Image

        small = img.convert("L").resize((8, 8), Image.Resampling.BOX)
        x = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(1, 8, 8).float() / 255.0
        return upscale_digits(x, self.img_size)[0]

"""The protocol every model of the package follows (timm's ``forward_features`` / ``forward_head``).

:class:`VisionModel` is what the accounting, the training engine and the scripts rely on:

* ``spiking`` (class attribute) and ``T`` (time steps; 1 for an ANN);
* ``num_classes``, ``img_size`` (the native input size) and ``model_name`` (the registered name,
  set by :func:`svm_models.create_model`; None for a model built from its class);
* ``first_conv``: the layer that sees the real-valued image (the papers' first-layer convention);
* ``get_classifier()``: the final linear layer (the papers' head convention; ``nn.Identity``
  with ``num_classes=0``), ``reset_classifier(num_classes)`` and ``num_features`` (its input width);
* ``forward_features(images)`` -> the last stage's feature map, ``forward_head(features)`` ->
  logits (``pre_logits=True``: the pooled features the classifier takes), and
  ``forward = forward_head(forward_features(images))``.

As in timm, ``num_classes=0`` builds the model without a classifier: ``forward`` then returns the
pooled (B, num_features) features.

The argument checks the three constructors share live here too, so that each model raises the
same error for the same mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from svm_kernels.utils import is_int, is_real

from .layers import check_depths, init_linears_trunc_normal, stage_dims

# The smallest input side the scripts and CLIs take: a few pixels per side are left after the
# models' downsampling (4x to 32x), and below 8 px nothing is worth measuring.
MIN_IMG_SIZE = 8


def make_classifier(num_features: int, num_classes: int) -> nn.Module:
    """The linear classifier of every model (the constructors initialise it with their other
    linears), or ``nn.Identity`` for ``num_classes=0`` (no classifier: the model returns its pooled
    features)."""
    if not is_int(num_classes) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    return nn.Linear(num_features, num_classes) if num_classes else nn.Identity()


class VisionModel(nn.Module):
    """Base class of SVMamba, VMamba and QKFormer: the attributes and methods listed above.

    A subclass builds its classifier with :func:`make_classifier`, names it in
    ``classifier_name`` (a submodule path) and defines ``pool(features)``, the pooled
    (B, num_features) features its classifier takes.
    """

    spiking: bool = False
    T: int = 1
    num_classes: int
    num_features: int
    img_size: int | None = None
    model_name: str | None = None
    classifier_name: str = "head"

    @property
    def first_conv(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not name its first conv")

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` classes (0: none), freshly initialised, on the
        device and in the dtype of the model's parameters."""
        head = make_classifier(self.num_features, num_classes)
        init_linears_trunc_normal(head)  # as the constructors initialise theirs
        like = next(self.parameters(), None)
        if like is not None:
            head = head.to(device=like.device, dtype=like.dtype)
        parent, _, name = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent), name, head)
        self.num_classes = num_classes

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The last stage's features -> the (B, num_features) vector the classifier takes."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(features)
        return pooled if pre_logits else self.get_classifier()(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # ---- argument checks shared by the constructors

    @staticmethod
    def check_time_steps(T) -> int:
        """``T`` must be a positive int (not a bool: True would pass as 1 and fail in forward)."""
        if not is_int(T) or T < 1:
            raise ValueError(f"T must be a positive int, got {T!r}")
        return T

    @staticmethod
    def check_sizes(in_chans, **ratios) -> None:
        """``in_chans`` a positive int, each width ratio (mlp_ratio, ssm_ratio) a positive number:
        0 built layers that failed only in the first forward."""
        if not is_int(in_chans) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        for name, ratio in ratios.items():
            if not is_real(ratio) or not ratio > 0:
                raise ValueError(f"{name} must be a positive number, got {ratio!r}")

    @staticmethod
    def check_stages(
        depths: Sequence[int], dims: int | Sequence[int] | None = None, num_stages: int | None = None
    ) -> tuple[list, list | None]:
        """Validated ``depths`` (one entry per stage) and, when given, one width per stage."""
        depths = check_depths(depths, num_stages)
        return depths, (None if dims is None else stage_dims(dims, len(depths)))


def module_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Every module's own train/eval flag (``model.train(flag)`` would set them all alike)."""
    return {m: m.training for m in model.modules()}


def restore_modes(modes: dict[nn.Module, bool]) -> None:
    """Put back the flags :func:`module_modes` took."""
    for m, training in modes.items():
        m.training = training

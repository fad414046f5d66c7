"""The protocol every model of the package follows (timm's ``forward_features`` / ``forward_head``).

:class:`VisionModel` is what the accounting, the training engine and the scripts rely on:

* ``spiking`` (class attribute) and ``T`` (time steps; 1 for an ANN);
* ``num_classes``, ``img_size`` (the native input size) and ``model_name`` (the registered name,
  set by :func:`svm_models.create_model`; None for a model built from its class);
* ``first_conv``: the layer that sees the real-valued image (the papers' first-layer convention);
* ``get_classifier()``: the final linear layer (the papers' head convention);
* ``forward_features(images)`` -> the last stage's feature map, ``forward_head(features)`` ->
  logits, and ``forward = forward_head(forward_features(images))``.

The argument checks the three constructors share live here too, so that each model raises the
same error for the same mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import check_depths, stage_dims


class VisionModel(nn.Module):
    """Base class of SVMamba, VMamba and QKFormer: the attributes and methods listed above."""

    spiking: bool = False
    T: int = 1
    num_classes: int
    img_size: int | None = None
    model_name: str | None = None

    @property
    def first_conv(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not name its first conv")

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not name its classifier")

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # ---- argument checks shared by the constructors

    @staticmethod
    def check_time_steps(T) -> int:
        """``T`` must be a positive int (not a bool: True would pass as 1 and fail in forward)."""
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise ValueError(f"T must be a positive int, got {T!r}")
        return T

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

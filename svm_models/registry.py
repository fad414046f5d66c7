"""A timm-style model registry: ``create_model(name, num_classes=..., img_size=..., **overrides)``.

A registered factory is a function ``name(num_classes, img_size, **overrides) -> nn.Module``,
usually a one-liner around :func:`build`, which merges the factory's defaults with the
overrides (taken from YAML configs) and rejects names the model does not take.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str, pretrained: bool = False, num_classes: int = 1000, img_size: int | None = None, **overrides
) -> nn.Module:
    """Build the registered model ``name``, freshly initialised.

    ``pretrained`` is timm's argument: the package ships no weights and downloads nothing, so only
    False is accepted (load a checkpoint of your own with ``model.load_state_dict``, or through
    test.py / predict.py). ``num_classes=0`` builds the model without a classifier (it returns
    pooled features). ``img_size=None`` keeps the model's own default (224 for the ImageNet
    models, 32 for the CIFAR ones). ``overrides`` replace any other constructor argument (dims,
    depths, T, d_state, backend, ...). Unknown names raise ValueError; unknown overrides raise
    TypeError.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if pretrained:
        raise ValueError(
            f"no pretrained weights for {name!r}: the package ships none and downloads nothing; "
            "create it with pretrained=False and load weights of your own (model.load_state_dict, or "
            "the scripts' `pretrained: <path>` config key)"
        )
    if img_size is not None:
        overrides["img_size"] = img_size
    model = _MODELS[name](num_classes=num_classes, **overrides)
    model.model_name = name  # reports and checkpoints name the registered model, not the class
    return model


def build(cls: type, defaults: dict, overrides: dict, name: str = "") -> nn.Module:
    """``cls(**{**defaults, **overrides})``, with a clear error for an argument ``cls`` lacks."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(k for k in overrides if k not in accepted)
    if unknown:
        raise TypeError(
            f"{name or cls.__name__} got unknown override(s) {unknown}; it accepts {', '.join(accepted)}"
        )
    return cls(**{**defaults, **overrides})

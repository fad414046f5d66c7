"""The ``compile`` config key: ``torch.compile`` of the model for training and evaluation.

Every op of the package is a ``torch.library`` custom op, so a model compiles as one graph
(``fullgraph=True``: a graph break is an error, not a silent slowdown). Under DDP, Dynamo splits
the graph at the gradient buckets itself, so there fullgraph is off. Compilation happens on the
first call (and again for the first evaluation, whose BatchNorm behaves differently): the
engine logs how long that first training step took.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def maybe_compile(module: nn.Module, cfg: dict[str, Any]) -> nn.Module:
    """``torch.compile(module)`` when the config says ``compile: true``, else ``module``."""
    if not cfg.get("compile", False):
        return module
    distributed = isinstance(module, nn.parallel.DistributedDataParallel)
    return torch.compile(module, fullgraph=not distributed)

"""BatchNorm calibration for accounting an untrained spiking model on random input."""

from __future__ import annotations

import torch
from torch import nn

from ..base import module_modes, restore_modes


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, example: torch.Tensor, batches: int, seed: int = 1) -> int:
    """Set every BatchNorm's running statistics from ``batches`` random N(0, 1) batches.

    The batches have ``example``'s shape, dtype and device. Only the BatchNorm layers run in
    training mode (cumulative averages: momentum None); no weight changes. A freshly built
    network then sees normalised pre-activations, as a trained one does, so that its LIF layers
    fire at all. Returns the number of BatchNorm layers calibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return 0
    modes = module_modes(model)
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        for _ in range(batches):
            model(torch.randn(example.shape, generator=gen).to(example.device, example.dtype))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        restore_modes(modes)
    return len(norms)

"""Plain PyTorch multi-step LIF neuron: the reference the fused kernels are tested against.

It follows spikingjelly's multi-step ``LIFNode`` step by step, in float32 (float64 for
float64 input), and lets autograd derive the backward through the surrogate spike function.
"""

from __future__ import annotations

import math

import torch

from .common import LIFParams


def surrogate_grad(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """d spike / d x of the surrogate, at x = h - v_threshold."""
    if surrogate == "sigmoid":
        sg = torch.sigmoid(alpha * x)
        return alpha * sg * (1.0 - sg)
    return alpha / (2.0 * (1.0 + (math.pi / 2.0 * alpha * x) ** 2))


def surrogate_primitive(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """A smooth step whose true derivative is ``surrogate_grad``; used to gradcheck the chain."""
    if surrogate == "sigmoid":
        return torch.sigmoid(alpha * x)
    return torch.atan(math.pi / 2.0 * alpha * x) / math.pi + 0.5


class _HeavisideSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate, alpha):
        ctx.save_for_backward(x)
        ctx.surrogate, ctx.alpha = surrogate, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.surrogate, ctx.alpha), None, None


def lif_charge(v: torch.Tensor, x: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """Membrane potential after integrating x, before firing (with soft reset, rest is 0)."""
    if p.decay_input:
        return v + (x - (v - p.v_rest)) / p.tau
    return v - (v - p.v_rest) / p.tau + x


def lif_step(v: torch.Tensor, x: torch.Tensor, p: LIFParams, smooth: bool = False):
    """One time step: returns (spike, new membrane potential)."""
    h = lif_charge(v, x, p)
    if smooth:
        s = surrogate_primitive(h - p.v_threshold, p.surrogate, p.alpha)
    elif torch.is_grad_enabled():
        s = _HeavisideSurrogate.apply(h - p.v_threshold, p.surrogate, p.alpha)
    else:  # no backward to shape: a plain comparison (and one traced op fewer)
        s = (h >= p.v_threshold).to(h.dtype)
    s_reset = s.detach() if p.detach_reset else s
    if p.v_reset is None:
        v = h - p.v_threshold * s_reset
    else:
        v = h * (1.0 - s_reset) + p.v_reset * s_reset
    return s, v


def multistep_lif_naive(
    x: torch.Tensor,
    p: LIFParams,
    v_init: torch.Tensor | None = None,
    smooth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference LIF over x of shape (T, *). Returns (spikes in x's dtype, final v in fp32).

    ``smooth=True`` replaces the Heaviside by the surrogate's primitive, so that
    ``torch.autograd.gradcheck`` can check the whole backward chain in float64.
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute_dtype)
    v = torch.full_like(xc[0], p.v_rest) if v_init is None else v_init.to(compute_dtype)
    spikes = []
    for t in range(x.shape[0]):
        s, v = lif_step(v, xc[t], p, smooth)
        spikes.append(s)
    return torch.stack(spikes).to(x.dtype), v

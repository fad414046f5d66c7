"""Multi-step LIF in plain PyTorch, vectorised over neurons: the path for CPU tensors.

One pass over time with whole-tensor ops per step (no autograd inside: the custom op in
``fused.py`` makes it one autograd node). The forward keeps nothing but x; the backward runs
the same forward again to rebuild h[0..T-1] (transient, freed on return), evaluates the
surrogate and the reset's derivative for all steps at once, and walks back through time with
one fused multiply-add per step.

Every rounding matches spikingjelly's: ``(x - (v - v_reset)) / tau`` is a correctly rounded
division (never a multiplication by 1/tau), so h lands on v_threshold exactly where theirs does
and the spikes are bit-identical. Arithmetic is fp32 (fp64 for fp64 x) whatever the storage.
"""

from __future__ import annotations

import torch

from .common import LIFParams, as_time_major, empty_grads, empty_outputs, state_like
from .naive import surrogate_grad


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _charge_sequence(x: torch.Tensor, v_init: torch.Tensor | None, p: LIFParams, h_out: torch.Tensor):
    """Fills ``h_out[t]`` with the charged potential of step t; returns the final v."""
    v_rest = 0.0 if p.v_reset is None else p.v_reset
    v = torch.zeros_like(h_out[0]) if v_init is None else v_init.to(h_out.dtype)
    delta = torch.empty_like(v)
    for t in range(x.shape[0]):
        h = h_out[t]
        # spikingjelly's order of operations: v + (x - (v - v_rest)) / tau, or v - (v - v_rest) / tau + x.
        if p.decay_input:
            torch.sub(x[t], torch.sub(v, v_rest, out=delta) if v_rest else v, out=delta)
            torch.add(v, delta.div_(p.tau), out=h)
        else:
            torch.sub(v, v_rest, out=delta) if v_rest else delta.copy_(v)
            torch.sub(v, delta.div_(p.tau), out=h).add_(x[t])
        fired = h >= p.v_threshold
        if p.v_reset is None:
            v = torch.where(fired, h - p.v_threshold, h)
        else:
            v = torch.where(fired, p.v_reset, h)
    return v


def lif_forward(x: torch.Tensor, v_init: torch.Tensor | None, p: LIFParams, return_v: bool):
    """(spikes in x's dtype and layout, final v in fp32 or an empty tensor)."""
    x = as_time_major(x)
    spikes, v_out = empty_outputs(x, return_v)
    h = torch.empty_like(x, dtype=compute_dtype(x))
    v = _charge_sequence(x, state_like(x, v_init), p, h)
    torch.ge(h, p.v_threshold, out=spikes)
    if return_v:
        v_out.copy_(v)
    return spikes, v_out


def lif_backward(
    grad_s: torch.Tensor,
    grad_v: torch.Tensor | None,
    x: torch.Tensor,
    v_init: torch.Tensor | None,
    p: LIFParams,
    need_grad_v_init: bool,
):
    """(grad_x in x's dtype and layout, grad_v_init in v_init's dtype or an empty tensor)."""
    x = as_time_major(x)
    grad_x, grad_v_init = empty_grads(x, v_init, need_grad_v_init)
    h = torch.empty_like(x, dtype=compute_dtype(x))
    _charge_sequence(x, state_like(x, v_init), p, h)
    z = h - p.v_threshold
    sg = surrogate_grad(z, p.surrogate, p.alpha)
    # d v[t] / d h[t]: the reset's Jacobian (the spike's part dropped by detach_reset).
    if p.v_reset is None:
        dv_dh = None if p.detach_reset else 1.0 - p.v_threshold * sg
    else:
        dv_dh = (z < 0).to(h.dtype)
        if not p.detach_reset:
            dv_dh.addcmul_(p.v_reset - h, sg)
    # grad_h[t] = grad_s[t] * sg[t] + grad_v[t] * dv_dh[t], with grad_v[t] = grad_h[t+1] * decay.
    grad_h = sg.mul_(grad_s)
    decay = 1.0 - 1.0 / p.tau
    carry = None if grad_v is None else grad_v.to(h.dtype)
    for t in range(x.shape[0] - 1, -1, -1):
        if carry is not None:
            grad_h[t].addcmul_(carry, dv_dh[t]) if dv_dh is not None else grad_h[t].add_(carry)
        carry = grad_h[t] * decay
    torch.div(grad_h, p.tau, out=grad_x) if p.decay_input else grad_x.copy_(grad_h)
    if need_grad_v_init and v_init is not None:
        grad_v_init.copy_(carry)
    return grad_x, grad_v_init

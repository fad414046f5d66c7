"""Public four-direction selective scan ops: argument checks and backend dispatch."""

from __future__ import annotations

import torch

from ..utils import check_flag, check_floating, check_same_device, resolve_backend
from .common import MAX_D_STATE, check_scan_inputs, default_out_dtype
from .vectorised import ss2d_torch


def _pick_backend(backend: str, u: torch.Tensor, N: int, *tensors) -> str:
    use = resolve_backend(backend, u, *tensors)
    if use == "triton":
        from .fused import triton_supports  # imported lazily: the reference needs no triton

        reason = triton_supports(u, N)
        if reason is not None:
            if backend == "triton":
                raise ValueError(f"backend='triton' cannot run this scan: {reason}")
            use = "torch"
    return use


def cross_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """VMamba's SS2D scan: cross-scan, selective scan in four directions, cross-merge, fused.

    Direction k visits the H x W positions row-major (k=0), column-major (k=1), or the reversal
    of those (k=2, 3). Per direction, channel d and state n, along that order:
    ``dt = softplus(delta + delta_bias)``, ``x[p] = exp(dt * A) * x[p-1] + dt * B[p] * u[p]``,
    ``y[p] = sum_n C[p] * x[p] + D * u[p]``; the four y are summed back at their positions.

    Args:
        u: (B, D, H, W) input, any strides (channels_last included).
        delta: (B, 4, D, H, W) time steps before softplus, in spatial order.
        A: (4, D, N) state matrix (negative reals), N <= 16 on the Triton backend. There the
            gradients of A and of the time steps (delta, dt_low, dt_weight, bias) lose precision
            as the decay over one position, dt |A|, grows: fp32's ~1e-6 at VMamba's
            initialisation (dt <= 0.1, |A| <= 16), ~2e-4 relative error at dt |A| ~ 16, and A's
            gradient meaningless past dt |A| ~ 15 (where it is itself below ~1e-6 of the
            others'). The PyTorch backend keeps fp32's precision.
        B, C: (B, 4, N, H, W) input-dependent projections, in spatial order.
        D: optional (4, D) skip; delta_bias: optional (4, D) bias added before softplus.
        delta_softplus: apply softplus (values above 20 pass through unchanged, as mamba).
        out_dtype: output dtype; default fp32 for half inputs, else u's dtype.
        backend: "auto" (Triton on CUDA, PyTorch otherwise), "triton" or "torch" (the vectorised
            PyTorch scan of ``vectorised.py``, any device and dtype).

    Returns:
        (B, D, H, W) tensor in ``out_dtype``. Gradients flow to every tensor argument. Its strides
        depend on the backend (Triton: contiguous; the PyTorch scan: channels-last, its working
        layout): flatten it with ``reshape``, not ``view``.
    """
    batch, d_inner, H, W, N = check_scan_inputs(u, A, B, C, D, delta_bias, "delta_bias", delta=delta)
    check_flag("delta_softplus", delta_softplus)
    if delta.shape != (batch, 4, d_inner, H, W):
        raise ValueError(f"delta must have shape {(batch, 4, d_inner, H, W)}, got {tuple(delta.shape)}")
    dtype = default_out_dtype(u, out_dtype)
    use = _pick_backend(backend, u, N, delta, A, B, C, D, delta_bias)
    if batch == 0:
        return _empty_batch(u, dtype, delta, A, B, C, D, delta_bias)
    if use == "torch":
        return ss2d_torch(u, delta, None, None, A, B, C, D, delta_bias, delta_softplus, dtype)
    from .fused import ss2d_triton

    return ss2d_triton(u, delta, None, None, A, B, C, D, delta_bias, delta_softplus, dtype)


def _empty_batch(u: torch.Tensor, dtype: torch.dtype, *inputs: torch.Tensor | None) -> torch.Tensor:
    """B = 0: nothing to compute. The (empty) output is built from every input that needs a
    gradient, so that it stays in autograd's graph (their gradients are zeros)."""
    out = u.to(dtype) * 0
    for t in inputs:
        if t is not None and t.requires_grad:
            out = out + (t.sum() * 0).to(dtype)
    return out


def cross_selective_scan_lowrank(
    u: torch.Tensor,
    dt_low: torch.Tensor,
    dt_weight: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`cross_selective_scan` with ``delta[:, k] = dt_weight[k] @ dt_low[:, k]`` done in-kernel.

    The (B, 4, D, H, W) delta tensor never exists in memory, forward or backward: the kernels
    rebuild dt from the rank-R projection (R = dt_rank, a handful) where they need it.

    Args:
        dt_low: (B, 4, R, H, W) low-rank time-step features, in spatial order.
        dt_weight: (4, D, R) per-direction up-projection.
        dt_bias: optional (4, D) bias added before softplus.
        Other arguments as :func:`cross_selective_scan`.
    """
    batch, d_inner, H, W, N = check_scan_inputs(u, A, B, C, D, dt_bias, "dt_bias", dt_low=dt_low)
    check_flag("delta_softplus", delta_softplus)
    if dt_low.dim() != 5 or dt_low.shape[:2] != (batch, 4) or dt_low.shape[3:] != (H, W):
        raise ValueError(f"dt_low must have shape (B={batch}, 4, R, H={H}, W={W}), got {tuple(dt_low.shape)}")
    R = dt_low.shape[2]
    if R == 0:
        raise ValueError("dt_low has rank R = 0")
    check_floating("dt_weight", dt_weight)
    if dt_weight.shape != (4, d_inner, R):
        raise ValueError(f"dt_weight must have shape (4, D={d_inner}, R={R}), got {tuple(dt_weight.shape)}")
    check_same_device("u", u, dt_weight=dt_weight)
    dtype = default_out_dtype(u, out_dtype)
    use = _pick_backend(backend, u, N, dt_low, dt_weight, A, B, C, D, dt_bias)
    if batch == 0:
        return _empty_batch(u, dtype, dt_low, dt_weight, A, B, C, D, dt_bias)
    if use == "torch":
        return ss2d_torch(u, None, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus, dtype)
    from .fused import ss2d_triton

    return ss2d_triton(u, None, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus, dtype)


__all__ = ["MAX_D_STATE", "cross_selective_scan", "cross_selective_scan_lowrank"]

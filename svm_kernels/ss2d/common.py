"""Input checks shared by the SS2D reference and the fused kernels."""

from __future__ import annotations

import torch

from ..utils import check_floating, check_same_device, check_shape

# The fused kernels keep the per-direction state for every n in registers.
MAX_D_STATE = 16


def check_scan_inputs(
    u: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    bias_name: str,
    **per_direction: torch.Tensor,
):
    """Checks every argument of the two public ops; returns (batch, d_inner, H, W, N).

    ``per_direction`` holds the delta tensor(s) (full: ``delta``; low rank: ``dt_low``), whose
    shapes are checked by the caller; here they are checked for dtype and device.
    """
    tensors = dict(u=u, A=A, B=B, C=C, **per_direction)
    for name, t in tensors.items():
        check_floating(name, t)
    for name, t in (("D", D), (bias_name, bias)):
        if t is not None:
            check_floating(name, t)
    if u.dim() != 4:
        raise ValueError(f"u must have shape (B, D, H, W), got {tuple(u.shape)}")
    batch, d_inner, H, W = u.shape
    if d_inner == 0:
        raise ValueError("u has D = 0 channels")
    if H == 0 or W == 0:
        raise ValueError(f"u has an empty spatial size {H}x{W}")
    if A.dim() != 3 or A.shape[0] != 4 or A.shape[1] != d_inner:
        raise ValueError(f"A must have shape (4, D={d_inner}, N), got {tuple(A.shape)}")
    N = A.shape[2]
    if N == 0:
        raise ValueError("A has N = 0 states")
    if B.dim() == C.dim() == 5 and B.shape[2] == C.shape[2] != N:  # B and C agree: A is the odd one
        raise ValueError(f"A has N={N} states but B and C have N={B.shape[2]}: A must have shape (4, D, N)")
    check_shape("B", B, (batch, 4, N, H, W))
    check_shape("C", C, (batch, 4, N, H, W))
    if D is not None:
        check_shape("D", D, (4, d_inner))
    if bias is not None:
        check_shape(bias_name, bias, (4, d_inner))
    check_same_device("u", u, A=A, B=B, C=C, D=D, **{bias_name: bias}, **per_direction)
    for name in ("B", "C", *per_direction):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"{name} has dtype {tensors[name].dtype} but u has {u.dtype}; they must match")
    return batch, d_inner, H, W, N


def default_out_dtype(u: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    """fp32 for half inputs (VMamba's "oflex"), else u's dtype, unless asked otherwise."""
    if out_dtype is not None:
        if not out_dtype.is_floating_point:
            raise TypeError(f"out_dtype must be a floating dtype, got {out_dtype}")
        return out_dtype
    return torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype

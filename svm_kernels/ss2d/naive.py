"""Plain PyTorch four-direction selective scan (VMamba's SS2D): the reference for the kernels.

Direction k visits the H x W positions in this order (p = 0..L-1, s = h * W + w):
k=0 row-major, k=1 column-major (position (h, w) at p = w * H + h), k=2 and k=3 the reversals of
k=0 and k=1. ``cross_scan`` makes the four ordered copies, a per-direction sequential scan runs
over each, and ``cross_merge`` sums the four results back at their spatial positions.
"""

from __future__ import annotations

import torch

K_DIRECTIONS = 4


def direction_order(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., H, W) -> (..., L): the values in the order direction k visits them."""
    if k % 2 == 1:
        x = x.transpose(-1, -2)
    x = x.flatten(-2)
    return x.flip(-1) if k >= 2 else x


def direction_unorder(y: torch.Tensor, k: int, H: int, W: int) -> torch.Tensor:
    """(..., L) in direction k's order -> (..., H, W) in spatial order (inverse of direction_order)."""
    if k >= 2:
        y = y.flip(-1)
    if k % 2 == 1:
        return y.unflatten(-1, (W, H)).transpose(-1, -2)
    return y.unflatten(-1, (H, W))


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, L): the four directions' copies of x, each in its visiting order."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, D, H, W), got shape {tuple(x.shape)}")
    return torch.stack([direction_order(x, k) for k in range(K_DIRECTIONS)], dim=1)


def cross_merge(ys: torch.Tensor, H: int | None = None, W: int | None = None) -> torch.Tensor:
    """(B, 4, D, H, W) or (B, 4, D, L) with H and W given -> (B, D, H, W).

    ``ys[:, k]`` holds direction k's sequence (flattened, in visiting order); each value is added
    back at the position direction k visited. ``cross_merge`` is the adjoint of ``cross_scan``, so
    ``cross_merge(cross_scan(x)) == 4 * x``.
    """
    if ys.dim() == 5:
        H, W = ys.shape[-2:]
        ys = ys.flatten(-2)
    if ys.dim() != 4 or ys.shape[1] != K_DIRECTIONS or H is None or W is None or ys.shape[-1] != H * W:
        raise ValueError(
            f"cross_merge expects (B, 4, D, H, W), or (B, 4, D, L) with H * W = L; got {tuple(ys.shape)}, H={H}, W={W}"
        )
    return sum(direction_unorder(ys[:, k], k, H, W) for k in range(K_DIRECTIONS))


def softplus_thresholded(x: torch.Tensor) -> torch.Tensor:
    """softplus, passing values above 20 through unchanged (as mamba does).

    Written as max(x, 0) + log1p(exp(-|x|)), which never overflows and vectorises on CPUs where
    ``F.softplus`` runs a scalar log1p per element (about 2x slower there, same accuracy).
    """
    return torch.where(x > 20.0, x, x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs())))


def selective_scan_naive(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Sequential selective scan, batched over directions.

    u, delta: (B, K, D, L); A: (K, D, N); B, C: (B, K, N, L); D, delta_bias: (K, D).
    Returns y (B, K, D, L) in the compute dtype (fp32, or fp64 for fp64 inputs).
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[None, :, :, None]
    dt = softplus_thresholded(delta) if delta_softplus else delta
    dA = torch.exp(dt.unsqueeze(-1) * A[None, :, :, None, :])  # (B, K, D, L, N)
    dBu = (dt * u).unsqueeze(-1) * B.transpose(-1, -2).unsqueeze(2)  # (B, K, D, L, N)
    Ct = C.transpose(-1, -2).unsqueeze(2)  # (B, K, 1, L, N)
    state = torch.zeros_like(dBu[:, :, :, 0])
    ys = []
    # unbind once: indexing position p inside the loop would make every step's backward
    # allocate and fill a whole (B, K, D, L, N) gradient, quadratic in L.
    for dA_p, dBu_p, C_p in zip(dA.unbind(3), dBu.unbind(3), Ct.unbind(3)):
        state = dA_p * state + dBu_p
        ys.append((state * C_p).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[None, :, :, None] * u
    return y


def order_by_direction(t: torch.Tensor) -> torch.Tensor:
    """(B, 4, X, H, W) in spatial order -> (B, 4, X, L), each direction in its own visiting order."""
    return torch.stack([direction_order(t[:, k], k) for k in range(K_DIRECTIONS)], dim=1)


def cross_selective_scan_naive(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Reference SS2D: u (B, D, H, W), delta (B, 4, D, H, W), B/C (B, 4, N, H, W) -> (B, D, H, W)."""
    H, W = u.shape[-2:]
    y = selective_scan_naive(
        cross_scan(u),
        order_by_direction(delta),
        A,
        order_by_direction(B),
        order_by_direction(C),
        D,
        delta_bias,
        delta_softplus,
    )
    return cross_merge(y, H, W)


def lowrank_delta(dt_low: torch.Tensor, dt_weight: torch.Tensor) -> torch.Tensor:
    """delta[b, k] = dt_weight[k] @ dt_low[b, k]: (B, 4, R, H, W), (4, D, R) -> (B, 4, D, H, W)."""
    return torch.einsum("kdr,bkrhw->bkdhw", dt_weight, dt_low)

"""SS2D as a user without our fused kernel would build it fast, at d_state N = 1 (the speed peer).

Everything is laid out (batch, direction, position, channel) so that each step is one large
PyTorch op and the recurrence gets the (batch, time, hidden) layout that linear-attention
kernels take:

1. cross_scan copies of u and the direction-ordered dt_low, B, C (four copies each);
2. dt = softplus(dt_weight @ dt_low + bias) in PyTorch, materialised as (B, 4, L, D);
3. the diagonal recurrence h[p] = exp(dt A) h[p-1] + dt B u by flash-linear-attention's
   chunked HGRN kernel (``fla.ops.hgrn.chunk_hgrn``: x -> h with h_t = exp(g_t) h_{t-1} + x_t),
   directions folded into the batch, on segments of at most one fla chunk whose exit states are
   chained in PyTorch (:func:`segmented_recurrence`; why: :func:`fla_recurrence_direct`);
4. y = C h + D u, then cross_merge back to (B, D, H, W).

``recurrence`` can be swapped for :func:`sequential_recurrence`, the plain loop, which makes the
same pipeline a float64-capable oracle and lets the CPU smoke run check the pipeline's algebra.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _order(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W, *) -> (B, L, *): the positions in direction k's visiting order (k = 0 row-major,
    1 column-major, 2 and 3 their reversals)."""
    b, h, w = x.shape[:3]
    seq = (x.transpose(1, 2) if k % 2 else x).reshape(b, h * w, *x.shape[3:])
    return seq.flip(1) if k >= 2 else seq


def _per_direction(t: torch.Tensor) -> torch.Tensor:
    """(B, 4, *, H, W) in spatial order -> (B, 4, L, *): direction k's slice in k's order."""
    return torch.stack([_order(t[:, k].movedim((-2, -1), (1, 2)), k) for k in range(4)], dim=1)


def _merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, L, D) -> (B, D, H, W): every direction's value added back at its position."""
    b, d = y.shape[0], y.shape[-1]
    rows = y[:, 0] + y[:, 2].flip(1)
    cols = y[:, 1] + y[:, 3].flip(1)
    out = rows.view(b, h, w, d) + cols.view(b, w, h, d).transpose(1, 2)
    return out.permute(0, 3, 1, 2)


def sequential_recurrence(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """h_t = exp(g_t) h_{t-1} + x_t over (batch, time, hidden): the plain loop (oracle)."""
    h = torch.zeros_like(x[:, 0])
    out = []
    for x_t, g_t in zip(x.unbind(1), g.unbind(1)):
        h = g_t.exp() * h + x_t
        out.append(h)
    return torch.stack(out, dim=1)


# fla-core 0.6's chunk_hgrn walks chunks of 128 positions; a call on at most 64 stays within one
# chunk (also if a release halves its chunk), so its racy carry between chunks never runs.
FLA_SEGMENT = 64


def segmented_recurrence(x: torch.Tensor, g: torch.Tensor, scan, segment: int = FLA_SEGMENT) -> torch.Tensor:
    """h_t = exp(g_t) h_{t-1} + x_t over (batch, time, hidden) at any length, from ``scan`` calls
    on sequences of at most ``segment`` positions.

    Each segment is scanned from a zero state (segments folded into the batch); the segments' exit
    states are chained by the same recurrence one level up (recursively, so any length works);
    each position then adds the state entering its segment, decayed by exp(cumsum g) from the
    segment's start. The carry runs in float32 at least, whatever the storage dtype.
    """
    if segment < 2:
        raise ValueError(f"segments of at least 2 positions shorten the sequence, got {segment}")
    batch, length, D = x.shape
    if length <= segment:
        return scan(x, g)
    n = -(-length // segment)
    pad = (0, 0, 0, n * segment - length)  # zeros after the end; those positions are sliced off
    xs = F.pad(x, pad).view(batch * n, segment, D)
    gs = F.pad(g, pad).view(batch * n, segment, D)
    acc = torch.promote_types(x.dtype, torch.float32)
    local = scan(xs, gs).view(batch, n, segment, D).to(acc)
    decay = gs.view(batch, n, segment, D).to(acc).cumsum(2)  # log decay from the segment's start
    exits = segmented_recurrence(local[:, :, -1], decay[:, :, -1], scan, segment)
    entering = F.pad(exits[:, :-1], (0, 0, 1, 0))  # a zero state enters the first segment
    h = local + decay.exp() * entering[:, :, None]
    return h.view(batch, n * segment, D)[:, :length].to(x.dtype)


def _fla_chunk_hgrn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    from fla.ops.hgrn import chunk_hgrn  # optional peer: imported only when used

    return chunk_hgrn(x, g)[0]


def fla_recurrence(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """fla's chunk_hgrn on segments of at most one of its chunks, chained in PyTorch."""
    return segmented_recurrence(x, g, _fla_chunk_hgrn)


def fla_recurrence_direct(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """fla's chunk_hgrn on the whole sequence, as the first GPU run called it: measured wrong on an
    H200 at L = 3136 (relative error 0.11-0.12 at stage 1). The cause, read from fla's source and
    its sm_90 PTX: the carry pass (``chunk_hgrn_fwd_kernel_o``; ``chunk_hgrn_bwd_kernel_o`` for
    the gradients) walks the 128-position chunks in a loop in one program, and each trip reads a
    row that one warp stored on the trip before, with no barrier between them, so the other warps
    can take the previous chunk's uncarried state. fla's own tests cannot see it: their gates,
    logsigmoid of N(0, 1), forget a chunk within a few steps, while SS2D's (~ -0.02 a step) carry
    across chunks. Kept so that the gate records it on a GPU (``probe_direct``)."""
    return _fla_chunk_hgrn(x, g)


def ss2d_unfused(u, dt_low, dt_weight, A, B, C, D, dt_bias, recurrence=fla_recurrence):
    """cross_selective_scan_lowrank at N = 1 (delta_softplus=True), unfused; same arguments."""
    if A.shape[-1] != 1:
        raise ValueError(
            f"the HGRN recurrence is diagonal per channel: d_state N = 1 only, got {A.shape[-1]}"
        )
    batch, d_inner, H, W = u.shape
    L = H * W
    u_hw = u.permute(0, 2, 3, 1)  # (B, H, W, D)
    us = torch.stack([_order(u_hw, k) for k in range(4)], dim=1)  # cross_scan copies: (B, 4, L, D)
    lows = _per_direction(dt_low)  # (B, 4, L, R)
    Bs, Cs = _per_direction(B[:, :, 0]), _per_direction(C[:, :, 0])  # (B, 4, L)
    delta = (
        torch.einsum("bklr,kdr->bkld", lows, dt_weight.to(lows.dtype)) + dt_bias.to(lows.dtype)[None, :, None]
    )
    dt = F.softplus(delta)  # torch's softplus passes values above 20 through, as mamba's does
    x = (dt * us * Bs[..., None]).reshape(batch * 4, L, d_inner)
    g = (dt * A[None, :, None, :, 0].to(dt.dtype)).reshape(batch * 4, L, d_inner)
    h = recurrence(x, g).view(batch, 4, L, d_inner)
    y = h * Cs[..., None] + D.to(us.dtype)[None, :, None] * us
    return _merge(y, H, W)

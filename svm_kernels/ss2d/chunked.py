"""Vectorised PyTorch SS2D scan: the ``backend="torch"`` path, a ``torch.library`` custom op.

Same maths as ``naive.py`` (the per-position reference), organised for a CPU, where the cost of
the reference is the dispatcher overhead of a few small ops per position, not arithmetic:

* Both directions of an orientation share one layout. Directions 0 and 2 walk the positions
  row-major, 1 and 3 column-major; 2 and 3 walk them backwards. Here the four directions are a
  (2, 2) = (reverse, orientation) grid: u is laid out once per orientation (no flipped copies)
  and the reversed directions run the recurrence anti-causally in the same layout, so all four
  directions go through one pass of the same ops.
* The recurrence ``x[p] = a[p] x[p-1] + b[p]`` (``a = exp(dt * A)``) is solved in chunks of
  ``CHUNK`` positions: inside a chunk as one masked (c x c) decay-matrix product, across chunks
  as one (nc x nc) product carrying the chunk-exit states. Every decay is the exp of a
  difference of cumulative sums of ``dt * A <= 0`` taken over the positions it spans, so it is
  <= 1 and nothing overflows.
* The backward is analytic: the adjoint of a causal linear recurrence is the anti-causal one
  with the decays shifted by one position (and the other way round), so it is the same scan
  with the directions' roles swapped, plus elementwise products and sums.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .naive import softplus_thresholded

# Positions per chunk: the intra-chunk decay matrices hold CHUNK times the state's elements.
CHUNK = 16


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _masks(chunk: int, n_chunks: int, device: torch.device):
    """Where each direction's decay matrices are non-zero, shaped for the (B, R, O, D, N, ...) grid.

    Causal directions (r = 0) reach back (q <= p), anti-causal ones (r = 1) reach forward; across
    chunks strictly so. Also the +1 / -1 sign of each direction's log-decay differences.
    """
    p = torch.arange(chunk, device=device)
    i = torch.arange(n_chunks, device=device)
    intra = torch.stack([p[None, :] <= p[:, None], p[None, :] >= p[:, None]])  # (2, c, c)
    inter = torch.stack([i[None, :] < i[:, None], i[None, :] > i[:, None]])  # (2, nc, nc)
    rev = torch.tensor([0.0, 1.0], device=device)
    return (
        intra.view(2, 1, 1, 1, 1, chunk, chunk),
        inter.view(2, 1, 1, 1, n_chunks, n_chunks),
        rev.view(2, 1, 1, 1, 1),
    )


def chunked_scan(a_log: torch.Tensor, b: torch.Tensor, reverse_first: bool = False) -> torch.Tensor:
    """Solve ``x[p] = exp(a_log[p]) * x[p -/+ 1] + b[p]`` for the (B, 2, O, D, N, L) direction grid.

    Along R (dim 1), index 0 is causal (x[-1] = 0) and index 1 anti-causal (x[L] = 0); with
    ``reverse_first`` the roles swap (the adjoint scan of the backward). ``a_log <= 0``.
    """
    L = a_log.shape[-1]
    chunk = min(CHUNK, L)
    n_chunks = math.ceil(L / chunk)
    pad = n_chunks * chunk - L
    if pad:  # zero input and no decay after the end: nothing flows into the real positions
        a_log, b = F.pad(a_log, (0, pad)), F.pad(b, (0, pad))
    intra, inter, rev = _masks(chunk, n_chunks, a_log.device)
    if reverse_first:
        intra, inter, rev = intra.flip(0), inter.flip(0), 1.0 - rev
    sign = 1.0 - 2.0 * rev
    a_log = a_log.unflatten(-1, (n_chunks, chunk))
    b = b.unflatten(-1, (n_chunks, chunk))

    # Inside a chunk. S: inclusive cumulative log-decay; X is S for causal directions and the
    # exclusive sum for anti-causal ones, so that the decay from q to p is exp(sign * (X[p] - X[q])).
    S = a_log.cumsum(-1)
    X = S - rev.unsqueeze(-1) * a_log
    diff = sign.unsqueeze(-1).unsqueeze(-1) * (X.unsqueeze(-1) - X.unsqueeze(-2))
    decay = torch.where(intra, diff, -math.inf).exp()
    x_in = (decay @ b.unsqueeze(-1)).squeeze(-1)  # each chunk on its own, from a zero state

    # Across chunks: what each chunk hands on at its exit (last position, or first when
    # anti-causal), decayed through the chunks in between, is the state entering chunk i.
    total = S[..., -1]  # (B, 2, O, D, N, nc): log-decay through a whole chunk
    ends = total.cumsum(-1)
    leave = ends - (1.0 - rev) * total  # chunk i's side: its start (causal) or its end
    reach = ends - rev * total  # chunk j's side: its end (causal) or its start
    enter = sign.unsqueeze(-1) * (leave.unsqueeze(-1) - reach.unsqueeze(-2))
    exits = torch.where(rev.bool(), x_in[..., 0], x_in[..., -1])
    carried = torch.where(inter, enter, -math.inf).exp() @ exits.unsqueeze(-1)  # (..., nc, 1)
    # The entering state decays to position p: through S[p] (causal) or total - X[p] (anti-causal).
    to_p = rev.unsqueeze(-1) * total.unsqueeze(-1) + sign.unsqueeze(-1) * X
    x = x_in + to_p.exp() * carried
    x = x.flatten(-2)
    return x[..., :L] if pad else x


# ---- layouts: the (reverse, orientation) grid


def to_orientations(t: torch.Tensor) -> torch.Tensor:
    """(..., 2, X, H, W) spatial -> (..., 2, X, L): index 0 flattened row-major, 1 column-major."""
    return torch.stack((t[..., 0, :, :, :].flatten(-2), t[..., 1, :, :, :].mT.flatten(-2)), dim=-3)


def from_orientations(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`to_orientations`: (..., 2, X, L) -> (..., 2, X, H, W) spatial."""
    row, col = t[..., 0, :, :], t[..., 1, :, :]
    return torch.stack((row.unflatten(-1, (H, W)), col.unflatten(-1, (W, H)).mT), dim=-4)


def _grid(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 4, X, H, W) per direction, spatial -> (B, 2, 2, X, L) on the (reverse, orientation) grid."""
    return to_orientations(t.to(dtype).unflatten(1, (2, 2)))


def _ungrid(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`_grid` (in t's dtype): (B, 2, 2, X, L) -> (B, 4, X, H, W)."""
    return from_orientations(t, H, W).flatten(1, 2)


class _Scan:
    """The forward quantities on the grid, shared by the forward and the backward."""

    def __init__(self, u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus):
        dtype = _compute_dtype(u)
        _, d_inner, self.H, self.W = u.shape
        N = A.shape[-1]
        self.u = to_orientations(u.to(dtype).unsqueeze(1).expand(-1, 2, -1, -1, -1))  # (B, O, D, L)
        if dt_low is not None:
            self.dt_low = _grid(dt_low, dtype)  # (B, 2, 2, R, L)
            self.dt_weight = dt_weight.to(dtype).view(2, 2, d_inner, -1)
            z = self.dt_weight @ self.dt_low
        else:
            z = _grid(delta, dtype)
        if bias is not None:
            z = z + bias.to(dtype).view(2, 2, d_inner, 1)
        self.z = z
        self.dt = softplus_thresholded(z) if softplus else z  # (B, 2, 2, D, L)
        self.A = A.to(dtype).view(2, 2, d_inner, N, 1)
        self.B, self.C = _grid(B, dtype), _grid(C, dtype)  # (B, 2, 2, N, L)
        self.D = None if D is None else D.to(dtype).view(2, 2, d_inner, 1)
        self.a_log = self.dt.unsqueeze(-2) * self.A  # (B, 2, 2, D, N, L)
        self.dtu = self.dt * self.u.unsqueeze(1)
        self.b = self.dtu.unsqueeze(-2) * self.B.unsqueeze(3)
        self.x = chunked_scan(self.a_log, self.b)

    def output(self) -> torch.Tensor:
        y = (self.x * self.C.unsqueeze(3)).sum(-2).sum(1)  # (B, O, D, L): both directions summed
        if self.D is not None:
            y = y + self.D.sum(0) * self.u
        return from_orientations(y, self.H, self.W).sum(1)

    def grads(self, grad_out: torch.Tensor, softplus: bool):
        """Gradients on the grid: u (B, D, H, W) and (B, 4, ...) / (4, ...) for the rest."""
        H, W = self.H, self.W
        g = to_orientations(grad_out.to(self.x.dtype).unsqueeze(1).expand(-1, 2, -1, -1, -1))  # (B, O, D, L)
        g = g.unsqueeze(1)  # every direction's y[p] receives the spatial gradient at its position
        dC = (g.unsqueeze(-2) * self.x).sum(3)
        # Adjoint recurrence: the gradient of x[p] flows to x[p -/+ 1] through the decay of that
        # step, i.e. the reversed scan with a_log shifted by one position.
        a_next = torch.stack(
            (F.pad(self.a_log[:, 0, ..., 1:], (0, 1)), F.pad(self.a_log[:, 1, ..., :-1], (1, 0))), 1
        )
        gx = chunked_scan(a_next, g.unsqueeze(-2) * self.C.unsqueeze(3), reverse_first=True)
        g_alog = gx * (self.x - self.b)  # d x[p] / d a_log[p] = a[p] x[p -/+ 1] = x[p] - b[p]
        gx_B = (gx * self.B.unsqueeze(3)).sum(-2)  # (B, 2, 2, D, L)
        dA = (g_alog * self.dt.unsqueeze(-2)).sum((0, -1))
        dB = (gx * self.dtu.unsqueeze(-2)).sum(3)
        g_dt = (g_alog * self.A).sum(-2) + gx_B * self.u.unsqueeze(1)
        du = (gx_B * self.dt).sum(1)
        dD = None
        if self.D is not None:
            du = du + self.D.sum(0) * g[:, 0]
            dD = (g[:, 0] * self.u).sum((0, -1)).expand(2, -1, -1)
        gz = g_dt * torch.sigmoid(self.z) if softplus else g_dt
        dbias = gz.sum((0, -1))
        grads = dict(
            u=from_orientations(du, H, W).sum(1),
            A=dA.flatten(0, 1),
            B=_ungrid(dB, H, W),
            C=_ungrid(dC, H, W),
            D=None if dD is None else dD.flatten(0, 1),
            bias=dbias.flatten(0, 1),
        )
        if hasattr(self, "dt_low"):
            grads["dt_low"] = _ungrid(self.dt_weight.mT @ gz, H, W)
            grads["dt_weight"] = (gz @ self.dt_low.mT).sum(0).flatten(0, 1)
        else:
            grads["delta"] = _ungrid(gz, H, W)
        return grads


# ---- torch.library ops: one node per scan for torch.compile (no graph break, dynamic shapes
# included) and for the FLOP counters; the backward is a custom op too.

_EMPTY = (0,)
_GRAD_NAMES = ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "bias")


def _or_none(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.dim() == 1 and t.numel() == 0 else t


def _new_like(t: torch.Tensor) -> torch.Tensor:
    # contiguous, as the eager results below: a fake must promise the strides the real op returns
    return t.new_empty(t.shape)


@torch.library.custom_op("svmamba::ss2d_torch_fwd", mutates_args=())
def _ss2d_torch_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    y = _Scan(u, delta, None, None, A, B, C, D, delta_bias, delta_softplus).output()
    return y.to(out_dtype).contiguous()


@torch.library.custom_op("svmamba::ss2d_torch_lowrank_fwd", mutates_args=())
def _ss2d_torch_lowrank_fwd_op(
    u: torch.Tensor,
    dt_low: torch.Tensor,
    dt_weight: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    delta_softplus: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    y = _Scan(u, None, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus).output()
    return y.to(out_dtype).contiguous()


@_ss2d_torch_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype):
    return u.new_empty(u.shape, dtype=out_dtype)


@_ss2d_torch_lowrank_fwd_op.register_fake
def _(u, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus, out_dtype):
    return u.new_empty(u.shape, dtype=out_dtype)


@torch.library.custom_op("svmamba::ss2d_torch_bwd", mutates_args=())
def _ss2d_torch_bwd_op(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor | None,
    dt_low: torch.Tensor | None,
    dt_weight: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    bias: torch.Tensor | None,
    delta_softplus: bool,
) -> list[torch.Tensor]:
    inputs = dict(u=u, delta=delta, dt_low=dt_low, dt_weight=dt_weight, A=A, B=B, C=C, D=D, bias=bias)
    # The forward's intermediates are recomputed (one scan) rather than saved: the saved
    # tensors stay the inputs, as for the Triton op.
    grads = _Scan(u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus).grads(
        grad_out, delta_softplus
    )
    return [
        u.new_empty(_EMPTY) if inputs[k] is None else grads[k].to(inputs[k].dtype).contiguous()
        for k in _GRAD_NAMES
    ]


@_ss2d_torch_bwd_op.register_fake
def _(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus):
    like = (u, delta, dt_low, dt_weight, A, B, C, D, bias)
    return [u.new_empty(_EMPTY) if t is None else _new_like(t) for t in like]


def _setup_full(ctx, inputs, output):
    u, delta, A, B, C, D, bias, softplus, _ = inputs
    ctx.delta_softplus = softplus
    ctx.save_for_backward(u, delta, None, None, A, B, C, D, bias)


def _setup_lowrank(ctx, inputs, output):
    u, dt_low, dt_weight, A, B, C, D, bias, softplus, _ = inputs
    ctx.delta_softplus = softplus
    ctx.save_for_backward(u, None, dt_low, dt_weight, A, B, C, D, bias)


def _backward(ctx, grad_out):
    grads = _ss2d_torch_bwd_op(grad_out, *ctx.saved_tensors, ctx.delta_softplus)
    return dict(zip(_GRAD_NAMES, (_or_none(g) for g in grads)))


def _backward_full(ctx, grad_out):
    g = _backward(ctx, grad_out)
    return g["u"], g["delta"], g["A"], g["B"], g["C"], g["D"], g["bias"], None, None


def _backward_lowrank(ctx, grad_out):
    g = _backward(ctx, grad_out)
    return g["u"], g["dt_low"], g["dt_weight"], g["A"], g["B"], g["C"], g["D"], g["bias"], None, None


_ss2d_torch_fwd_op.register_autograd(_backward_full, setup_context=_setup_full)
_ss2d_torch_lowrank_fwd_op.register_autograd(_backward_lowrank, setup_context=_setup_lowrank)


def ss2d_torch(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    """Dispatch to the full-delta or low-rank vectorised op (both differentiable)."""
    if dt_low is None:
        return _ss2d_torch_fwd_op(u, delta, A, B, C, D, bias, softplus, out_dtype)
    return _ss2d_torch_lowrank_fwd_op(u, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype)

"""Vectorised PyTorch SS2D scan: the ``backend="torch"`` path, as ``torch.library`` custom ops.

Same maths as ``naive.py`` (the per-position reference), organised for a CPU, where the
reference's cost is the dispatcher and autograd overhead of a few small ops per position:

* All four directions go through every step together, in one tensor per quantity. Each
  direction's sequence of L = H W positions is cut into H chunks of W positions and stored
  position-major, as (W, H, B, 4, X): position p = i W + j of a sequence is element
  [j, i, b, k, x] (:func:`to_sequences`). Step j of every chunk is then one contiguous slice,
  which a CPU processes with vector instructions (a strided slice runs a scalar loop), and the
  channels stay innermost, so broadcasting a per-position B or C over them keeps long inner
  loops. On a square map the layout is a permuted copy of the spatial one; other maps go
  through a gather. Elementwise work and sums over positions do not care about the order;
  permuted adds put the outputs back.
* The recurrence ``x[p] = a[p] x[p-1] + b[p]`` is solved in chunks (:func:`linear_scan`):
  about W + H small ops without autograd instead of L steps of several ops each recorded
  by autograd. It multiplies decays ``a = exp(dt * A) <= 1`` directly, so nothing can
  overflow.
* The backward is analytic: the adjoint of the causal recurrence is the anti-causal one with
  the decays shifted by one position, so it is the same scan run backwards, plus elementwise
  products and sums. The forward op also returns its states, decays and time steps, which
  autograd saves for the backward op (no recomputation).
"""

from __future__ import annotations

import functools
import itertools

import torch

from .common import SCAN_ARGS, SCAN_ARGS_SCHEMA, define_forward_ops, define_inference_ops, scan_output
from .naive import softplus_thresholded


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, reverse: bool = False, reuse_a: bool = False, reuse_b: bool = False
) -> torch.Tensor:
    """x[p] = a[p] * x[p - 1] + b[p] from x[-1] = 0 (x[p + 1], x[L] = 0 if reverse), for sequences
    stored position-major: a and b are (c, n, ...), position p = i c + j at [j, i, ...].

    Step j of a first loop advances every chunk at once from a zero state, also accumulating
    each chunk's decay product P (inclusive, from the chunk's entry to j); a second loop carries
    the state from chunk to chunk; then ``x += P * state entering the chunk``. That is
    2 c + n small ops on contiguous slices instead of L steps, and only products of decays
    ``0 <= a <= 1``, so nothing can overflow. a and b are left as they are, unless ``reuse_a`` /
    ``reuse_b`` say that the caller's temporary may be overwritten (one copy fewer each).
    """
    c, n = b.shape[0], b.shape[1]
    # x is built in b (or a copy), the decay products P in a (or a copy); a[j] is read for x[j]
    # before P[j] overwrites it
    x = b if reuse_b and b.is_contiguous() else b.clone(memory_format=torch.contiguous_format)
    P = a if reuse_a and a.is_contiguous() else a.clone(memory_format=torch.contiguous_format)
    steps = list(range(c))
    if reverse:
        steps.reverse()
    for prev, j in itertools.pairwise(steps):
        x[j].addcmul_(P[j], x[prev])
        P[j].mul_(P[prev])
    exit_x, exit_P = x[steps[-1]], P[steps[-1]]  # (n, ...): each chunk's exit
    enter = torch.zeros_like(exit_x)
    chunks = list(range(n))
    if reverse:
        chunks.reverse()
    for prev, i in itertools.pairwise(chunks):
        torch.addcmul(exit_x[prev], exit_P[prev], enter[prev], out=enter[i])
    return x.addcmul_(P, enter)


def shifted(t: torch.Tensor, step: int) -> torch.Tensor:
    """t at each sequence's next position (``step=1``; 0 after the last) or previous position
    (``step=-1``; 0 before the first), in :func:`linear_scan`'s layout."""
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    if step == 1:
        out[:-1] = t[1:]  # the next position in the same chunk
        out[-1, :-1] = t[0, 1:]  # a chunk's last position: the next chunk's first
        out[-1, -1] = 0.0
    else:
        out[1:] = t[:-1]  # the previous position in the same chunk
        out[0, 1:] = t[-1, :-1]  # a chunk's first position: the previous chunk's last
        out[0, 0] = 0.0
    return out


# ---- layouts: each direction's sequence, position-major (W, H, B, 4, X)


@functools.lru_cache(maxsize=64)
def direction_index(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse), both (4, L): direction k visits spatial position order[k, p] at step p
    (``naive.direction_order``), and the spatial position s is step inverse[k, s] of direction k."""
    s = torch.arange(H * W, device=device).view(H, W)
    row, col = s.flatten(), s.t().flatten()
    order = torch.stack((row, col, row.flip(0), col.flip(0)))
    return order, order.argsort(dim=-1)


@functools.lru_cache(maxsize=64)
def storage_index(H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_to_space, space_to_slot), both (4, L): slot q = j H + i of direction k's (W, H)
    positions (its position p = i W + j) holds spatial position slot_to_space[k, q]."""
    order = direction_index(H, W, device)[0]
    q = torch.arange(H * W, device=device)
    slot_to_space = order[:, (q % H) * W + q // H]
    return slot_to_space, slot_to_space.argsort(dim=-1)


def to_sequences(t: torch.Tensor) -> torch.Tensor:
    """(B, 4 or 1, X, H, W) spatial -> (W, H, B, 4, X): each direction's sequence, stored
    position-major (see the module docstring), a fresh contiguous tensor."""
    batch, _, X, H, W = t.shape
    t = t.expand(batch, 4, X, H, W)
    out = t.new_empty((W, H, batch, 4, X))
    if H == W:
        out[:, :, :, 0::2] = t[:, 0::2].permute(4, 3, 0, 1, 2)  # rows: chunk i = row h, j = w
        out[:, :, :, 1::2] = t[:, 1::2].permute(3, 4, 0, 1, 2)  # columns: chunk i = column w, j = h
        out[:, :, :, 2:] = out[:, :, :, 2:].flip(0, 1)  # reversed: both indices (flip copies first)
    else:
        slots = storage_index(H, W, t.device)[0][None, :, None, :].expand(batch, 4, X, -1)
        out.copy_(torch.gather(t.flatten(-2), -1, slots).unflatten(-1, (W, H)).permute(3, 4, 0, 1, 2))
    return out


def _in_space(t: torch.Tensor, k: int) -> torch.Tensor:
    """Direction k (0 or 1: rows or columns) of a square map's (W, H, B, 4, X) sequences as a
    (B, X, H, W) view in spatial order."""
    return t[:, :, :, k].permute(2, 3, 1, 0) if k == 0 else t[:, :, :, k].permute(2, 3, 0, 1)


def from_sequences(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_sequences`: (W, H, B, 4, X) -> (B, 4, X, H, W) spatial."""
    W, H, batch, _, X = t.shape
    if H == W:
        out = t.new_empty((batch, 4, X, H, W))
        back = t[:, :, :, 2:].flip(0, 1)  # directions 2 and 3 in the order of 0 and 1
        for k in range(2):
            out[:, k] = _in_space(t, k)
            out[:, k + 2] = _in_space(back, k)
        return out
    slots = storage_index(H, W, t.device)[1][None, :, None, :].expand(batch, 4, X, -1)
    return torch.gather(t.permute(2, 3, 4, 0, 1).reshape(batch, 4, X, W * H), -1, slots).unflatten(-1, (H, W))


def channels_last_empty(like: torch.Tensor, shape: tuple[int, int, int, int], dtype: torch.dtype):
    """An empty (B, X, H, W) tensor laid out channels_last, (B, H, W, X) in memory: the layout of
    the scan's output and of u's gradient. The sequences keep the channels innermost, so adds
    from them into this layout run along contiguous channels (into a contiguous (B, X, H, W)
    they would be transposing copies), and the gradient that comes back is channels_last too."""
    batch, X, H, W = shape
    return like.new_empty((batch, H, W, X), dtype=dtype).permute(0, 3, 1, 2)


def sum_sequences(t: torch.Tensor) -> torch.Tensor:
    """``from_sequences(t).sum(1)``, (W, H, B, 4, X) -> (B, X, H, W) channels_last; on a square
    map without the intermediate: permuted adds in the same order as the sum (directions 0 to 3)."""
    W, H, batch, _, X = t.shape
    out = channels_last_empty(t, (batch, X, H, W), t.dtype)
    if H != W:
        return out.copy_(from_sequences(t).sum(1))
    back = t[:, :, :, 2:].flip(0, 1)  # directions 2 and 3 in the order of 0 and 1
    out = torch.add(_in_space(t, 0), _in_space(t, 1), out=out)
    out += _in_space(back, 0)
    out += _in_space(back, 1)
    return out


def _sum_states(t: torch.Tensor) -> torch.Tensor:
    """Sum over the state dim N (dim -1); with N = 1 (the spiking models) a view, not a copy."""
    return t.squeeze(-1) if t.shape[-1] == 1 else t.sum(-1)


# Dims of a (W, H, B, 4, ...) sequence tensor that a sum over images and positions runs over.
_IMAGES_AND_POSITIONS = (0, 1, 2)


class _Inputs:
    """The scan's inputs in the compute dtype, each direction's sequence stored position-major,
    (W, H, B, 4, X) (:func:`to_sequences`)."""

    def __init__(self, u, delta, dt_low, dt_weight, A, B, C, D, bias):
        self.dtype = _compute_dtype(u)
        self.u = self.to_sequences(u.unsqueeze(1))  # (W, H, B, 4, D)
        self.dt_low = None if dt_low is None else self.to_sequences(dt_low)  # (W, H, B, 4, R)
        self.dt_weight = None if dt_weight is None else dt_weight.to(self.dtype)  # (4, D, R)
        self.delta = delta
        self.A = A.to(self.dtype)  # (4, D, N)
        self.B, self.C = self.to_sequences(B), self.to_sequences(C)  # (W, H, B, 4, N)
        # Every direction's skip term D_k u acts on the same u at the same spatial position, so
        # the four add up to (sum_k D_k) u, applied once to the spatial tensors (a quarter of
        # the elements of the sequences).
        self.D_sum = None if D is None else D.to(self.dtype).sum(0).view(-1, 1, 1)  # (D, 1, 1)
        self.u_space = u.to(self.dtype)
        self.bias = None if bias is None else bias.to(self.dtype)  # (4, D)

    def to_sequences(self, t: torch.Tensor) -> torch.Tensor:
        return to_sequences(t.to(self.dtype))

    def dt(self, softplus: bool, slope: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, H, B, 4, D) time steps dt = softplus(z), z = delta + bias (delta = dt_weight @ dt_low
        if low rank), and d dt / d z = sigmoid(z) = exp(z - dt) (None without softplus or
        ``slope``): one vectorised exp, where sigmoid and expm1 are scalar loops on some CPUs."""
        if self.dt_low is not None:
            z = torch.einsum("whbkr,kdr->whbkd", self.dt_low, self.dt_weight)
        else:
            z = self.to_sequences(self.delta)
        if self.bias is not None:
            z = z.add_(self.bias)  # z is a fresh tensor (einsum or copy)
        if not softplus:
            return z, None
        dt = _softplus(z)
        if not slope:
            return dt, None
        return dt, torch.sub(z, dt, out=z).exp_()  # z is not needed any more


def _softplus(z: torch.Tensor) -> torch.Tensor:
    """``naive.softplus_thresholded`` in fewer passes. In fp32 the threshold changes nothing:
    above 20, log1p(exp(-z)) < 2.1e-9 is below half an ulp of z, so max(z, 0) + log1p(exp(-|z|))
    rounds to z exactly; in fp64 it does not, and the reference's threshold is applied."""
    if z.dtype == torch.float64:
        return softplus_thresholded(z)
    return torch.abs(z).neg_().exp_().log1p_().add_(z.clamp_min(0.0))


def _times_states(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """t (..., D) times s (..., N) -> (..., D, N); written into t (a temporary of the caller)
    when N = 1."""
    t, s = t.unsqueeze(-1), _per_state(s)
    return t.mul_(s) if s.shape[-1] == 1 else t * s


def _per_state(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (..., 1, N): broadcast over the channels of a (..., D, N) tensor."""
    return t.unsqueeze(-2)


def _sum_over_positions_of_outer(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum over images and positions of t[..., k, d] s[..., k, r] -> (4, D, R): one batched
    matmul over k on strided views of both, no copy (einsum copies t first: ~15x slower)."""
    K, D, R = t.shape[-2], t.shape[-1], s.shape[-1]
    return torch.bmm(t.reshape(-1, K, D).permute(1, 2, 0), s.reshape(-1, K, R).transpose(0, 1))


def scan_forward(inputs: _Inputs, softplus: bool, for_backward: bool = True):
    """Returns y (B, D, H, W) and what the backward reuses: states x and decays a
    (W, H, B, 4, D, N), dt and d dt / d z (W, H, B, 4, D; None without softplus). Without
    ``for_backward``: y and x, a undefined (the scan's temporary), dt, dt_dz None."""
    dt, dt_dz = inputs.dt(softplus, slope=for_backward)
    a = torch.mul(dt.unsqueeze(-1), inputs.A).exp_()
    # a is kept for the backward, else the scan takes it for its decay products
    x = linear_scan(a, _times_states(dt * inputs.u, inputs.B), reuse_a=not for_backward, reuse_b=True)
    y = sum_sequences(_sum_states(x * _per_state(inputs.C)))  # (B, D, H, W)
    if inputs.D_sum is not None:
        y = y.addcmul_(inputs.D_sum, inputs.u_space)
    return y, x, a, dt, dt_dz


def scan_backward(inputs: _Inputs, grad_out, x, a, dt, dt_dz) -> dict[str, torch.Tensor | None]:
    """Gradients of every input (None for absent ones), in the compute dtype."""
    # every direction's y[p] receives the spatial gradient at the position it visits at step p
    g = inputs.to_sequences(grad_out.unsqueeze(1))  # (W, H, B, 4, D)
    # Adjoint recurrence: the gradient of x[p] reaches x[p - 1] through a[p], i.e. the reversed
    # scan with the decays shifted by one position.
    b_adj = g.unsqueeze(-1) * _per_state(inputs.C)
    gx = linear_scan(shifted(a, 1), b_adj, reverse=True, reuse_a=True, reuse_b=True)
    dtu = dt * inputs.u
    # d x[p] / d log a[p] = a[p] x[p - 1], formed as that product: x[p] - b[p], its value too,
    # cancels to rounding noise where the decay a[p] is tiny (large dt |A|)
    g_alog = shifted(x, -1).mul_(a).mul_(gx)
    gx_B = _sum_states(gx * _per_state(inputs.B))  # (W, H, B, 4, D), a fresh tensor
    g_dt = _sum_states(g_alog * inputs.A).addcmul_(gx_B, inputs.u)
    du = sum_sequences(gx_B.mul_(dt))  # (B, D, H, W)
    dD = None
    if inputs.D_sum is not None:  # the skip term (sum_k D_k) u, on the spatial tensors
        grad_space = grad_out.to(inputs.dtype)
        du = du.addcmul_(inputs.D_sum, grad_space)
        dD = (grad_space * inputs.u_space).sum((0, 2, 3)).expand(4, -1)  # the same for each k
    gz = g_dt if dt_dz is None else g_dt.mul_(dt_dz)
    grads = dict(
        u=du,
        A=g_alog.mul_(dt.unsqueeze(-1)).sum(_IMAGES_AND_POSITIONS),
        B=from_sequences(gx.mul_(dtu.unsqueeze(-1)).sum(-2)),
        C=from_sequences((g.unsqueeze(-1) * x).sum(-2)),
        D=dD,
        bias=None if inputs.bias is None else gz.sum(_IMAGES_AND_POSITIONS),
        delta=None,
        dt_low=None,
        dt_weight=None,
    )
    if inputs.dt_low is not None:
        grads["dt_low"] = from_sequences(torch.einsum("whbkd,kdr->whbkr", gz, inputs.dt_weight))
        grads["dt_weight"] = _sum_over_positions_of_outer(gz, inputs.dt_low)
    else:
        grads["delta"] = from_sequences(gz)
    return grads


# ---- torch.library ops: one node per scan for torch.compile (no graph break, dynamic shapes
# included) and for the FLOP counters; the backward is a custom op too.

_EMPTY = (0,)
_Saved = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _or_none(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.dim() == 1 and t.numel() == 0 else t


def _fake_forward(u: torch.Tensor, A: torch.Tensor, dt_low, softplus: bool, out_dtype: torch.dtype) -> _Saved:
    """Outputs of the forward ops: y, the states x, decays a (W, H, B, 4, D, N), dt and d dt / d z
    (W, H, B, 4, D; empty without softplus), laid out as ``scan_forward`` makes them."""
    batch, d_inner, H, W = u.shape
    dtype = _compute_dtype(u)
    states = u.new_empty((W, H, batch, 4, d_inner, A.shape[-1]), dtype=dtype)
    steps = u.new_empty((W, H, batch, 4, d_inner), dtype=dtype)
    return (
        channels_last_empty(u, tuple(u.shape), out_dtype),
        states,
        torch.empty_like(states),
        steps,
        torch.empty_like(steps) if softplus else u.new_empty(_EMPTY, dtype=dtype),
    )


def _forward_op_body(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype) -> _Saved:
    y, x, a, dt, dt_dz = scan_forward(_Inputs(u, delta, dt_low, dt_weight, A, B, C, D, bias), softplus)
    dt_dz = x.new_empty(_EMPTY) if dt_dz is None else dt_dz.contiguous()
    # y is channels_last (``sum_sequences``), as the fake promises
    return y.to(out_dtype), x.contiguous(), a.contiguous(), dt.contiguous(), dt_dz


@torch.library.custom_op(
    "svmamba::ss2d_torch_bwd",
    mutates_args=(),
    schema=f"(Tensor grad_out, {SCAN_ARGS_SCHEMA}, Tensor x, Tensor a, Tensor dt, Tensor dt_dz) -> Tensor[]",
)
def _ss2d_torch_bwd_op(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, x, a, dt, dt_dz):
    inputs = _Inputs(u, delta, dt_low, dt_weight, A, B, C, D, bias)
    grads = scan_backward(inputs, grad_out, x, a, dt, _or_none(dt_dz))
    like = dict(u=u, delta=delta, dt_low=dt_low, dt_weight=dt_weight, A=A, B=B, C=C, D=D, bias=bias)
    return [
        u.new_empty(_EMPTY) if like[k] is None else _as_promised(grads[k].to(like[k].dtype), k)
        for k in SCAN_ARGS
    ]


def _as_promised(grad: torch.Tensor, name: str) -> torch.Tensor:
    # u's gradient channels_last (``sum_sequences``), the others contiguous, as the fake says
    return grad if name == "u" else grad.contiguous()


@_ss2d_torch_bwd_op.register_fake
def _(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, x, a, dt, dt_dz):
    # the real op's strides (``_as_promised``): u's gradient channels_last, the others contiguous
    like = (u, delta, dt_low, dt_weight, A, B, C, D, bias)
    grads = [u.new_empty(_EMPTY) if t is None else t.new_empty(t.shape) for t in like]
    grads[0] = channels_last_empty(u, tuple(u.shape), u.dtype)
    return grads


def _inference_body(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype) -> torch.Tensor:
    inputs = _Inputs(u, delta, dt_low, dt_weight, A, B, C, D, bias)
    return scan_forward(inputs, softplus, for_backward=False)[0].to(out_dtype)  # channels_last


def _fake_inference(u: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return channels_last_empty(u, tuple(u.shape), out_dtype)


def _save(ctx, scan_args, softplus, output):
    ctx.save_for_backward(*scan_args, *output[1:])


def _backward(ctx, grad_out):
    return tuple(_or_none(g) for g in _ss2d_torch_bwd_op(grad_out, *ctx.saved_tensors))


_FORWARD_OPS = define_forward_ops(
    "ss2d_torch",
    returns="(Tensor, Tensor, Tensor, Tensor, Tensor)",  # y, then what the backward op reads
    forward=_forward_op_body,
    fake=_fake_forward,
    save=_save,
    backward=_backward,
)
_ss2d_torch_fwd_op, _ss2d_torch_lowrank_fwd_op = _FORWARD_OPS
_INFERENCE_OPS = define_inference_ops("ss2d_torch", forward=_inference_body, fake=_fake_inference)
_ss2d_torch_infer_op, _ss2d_torch_lowrank_infer_op = _INFERENCE_OPS


def ss2d_torch(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype) -> torch.Tensor:
    """y through the full-delta or low-rank vectorised op: the differentiable one where a
    gradient may be asked for, else the inference one."""
    args = (u, delta, dt_low, dt_weight, A, B, C, D, bias)
    return scan_output(_FORWARD_OPS, _INFERENCE_OPS, *args, softplus, out_dtype)

"""Multi-step LIF in plain PyTorch, vectorised over neurons: the path for CPU tensors.

Whole-tensor ops per time step, no autograd inside (the custom op in ``fused.py`` makes the
neuron one autograd node that saves only x). The backward runs the forward again to rebuild
h[0..T-1], evaluates the surrogate and the reset's derivative for all steps at once, and walks
back through time with one multiply-add per step.

Neurons are processed in blocks of ``BLOCK`` (all T steps of a block before the next): the
block's temporaries stay in the CPU cache and are reused, instead of every op streaming
T x N-element tensors through memory (and page-faulting fresh allocations).

Every rounding that decides a spike matches spikingjelly's: ``(x - (v - v_reset)) / tau`` is a
correctly rounded division (never a multiplication by 1/tau), so h lands on v_threshold exactly
where theirs does and the spikes are bit-identical. Arithmetic is fp32 (fp64 for fp64 x).
"""

from __future__ import annotations

import math

import torch

from .common import LIFParams, as_time_major, empty_grads, empty_outputs, layout_like, state_like

# Neurons per block: T x BLOCK fp32 temporaries (h, surrogate, ...) fit a 2 MiB L2 at T <= 16.
BLOCK = 1 << 15


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A dense, time-major (T, *) tensor as a (T, neurons) view of the same memory."""
    n = t[0].numel()
    return t.as_strided((t.shape[0], n), (n, 1))


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """A dense per-neuron tensor as a 1-d view of the same memory (None stays None)."""
    return None if t is None else t.as_strided((t.numel(),), (1,))


def _charge_block(
    x: torch.Tensor,
    v: torch.Tensor | None,
    p: LIFParams,
    h: torch.Tensor,
    spikes: torch.Tensor | None = None,
    final_v: bool = True,
) -> torch.Tensor | None:
    """Fills ``h[t]`` (T, block) with the charged potential of each step (and ``spikes[t]`` when
    given); returns the final v (None unless ``final_v``: the last reset is then skipped)."""
    T = x.shape[0]
    # Without v, the neuron starts at rest (v = v_reset, or 0 with soft reset), where the leak is
    # 0: step 0's charge is v_rest + x / tau (v_rest + x without decay_input), what the general
    # formula gives bit for bit, in fewer ops.
    from_rest = v is None
    v = torch.empty_like(h[0]) if from_rest else v.to(h.dtype, copy=True)
    leak = torch.empty_like(v)
    fired = torch.empty_like(v)
    for t in range(T):
        if t == 0 and from_rest:
            _charge_from_rest(x[0], p, out=h[0])
        else:
            # spikingjelly's order of operations: v + (x - (v - v_rest)) / tau, or v - (v - v_rest) / tau + x.
            if p.v_reset:
                torch.sub(v, p.v_reset, out=leak)
            if p.decay_input:
                torch.sub(x[t], leak if p.v_reset else v, out=leak)
                torch.add(v, leak.div_(p.tau), out=h[t])
            else:
                torch.div(leak if p.v_reset else v, p.tau, out=leak)
                torch.sub(v, leak, out=h[t]).add_(x[t])
        reset = t < T - 1 or final_v
        if spikes is None and not reset:
            break
        s = spikes[t] if spikes is not None and spikes.dtype == h.dtype else fired
        torch.ge(h[t], p.v_threshold, out=s)
        if spikes is not None and s is fired:
            spikes[t].copy_(fired)
        if not reset:
            break
        # spikingjelly's h - s * v_threshold, or s * v_reset + (1 - s) * h: exact for s in {0, 1}.
        if p.v_reset is None:
            torch.add(h[t], s, alpha=-p.v_threshold, out=v)
        else:
            torch.addcmul(h[t], h[t], s, value=-1.0, out=v)
            if p.v_reset:
                v.add_(s, alpha=p.v_reset)
    return v if final_v else None


def _charge_from_rest(x: torch.Tensor, p: LIFParams, out: torch.Tensor) -> None:
    """The first charge from rest (v = v_rest): v_rest + x / tau (decay_input) or v_rest + x; with
    v_rest = 0, x / tau or x. The division runs in ``out``'s dtype (x is widened first), as in
    the general formula."""
    if not p.decay_input:
        out.copy_(x)
    elif x.dtype == out.dtype:
        torch.div(x, p.tau, out=out)
    else:
        out.copy_(x).div_(p.tau)
    if p.v_reset:
        out.add_(p.v_reset)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def lif_forward(x: torch.Tensor, v_init: torch.Tensor | None, p: LIFParams, return_v: bool):
    """(spikes in x's dtype and layout, final v in fp32 or an empty tensor)."""
    x = as_time_major(x)
    spikes, v_out = empty_outputs(x, return_v)
    x2, s2 = _rows(x), _rows(spikes)
    v0, v_flat = _flat(state_like(x, v_init)), _flat(v_out) if return_v else None
    h = torch.empty((x.shape[0], min(BLOCK, x2.shape[1])), dtype=_compute_dtype(x), device=x.device)
    for i in range(0, x2.shape[1], BLOCK):
        j = min(i + BLOCK, x2.shape[1])
        v = _charge_block(
            x2[:, i:j], None if v0 is None else v0[i:j], p, h[:, : j - i], s2[:, i:j], final_v=return_v
        )
        if return_v:
            v_flat[i:j].copy_(v)
    return spikes, v_out


def _surrogate_grad_(h: torch.Tensor, p: LIFParams, out: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``naive.surrogate_grad`` at h - v_threshold times ``scale``, written into ``out`` (no
    temporaries; the scale rides on the last multiply)."""
    torch.sub(h, p.v_threshold, out=out)
    if p.surrogate == "sigmoid":  # alpha sig (1 - sig) = alpha (sig - sig^2)
        torch.sigmoid(out.mul_(p.alpha), out=out)
        return out.addcmul_(out, out, value=-1.0).mul_(p.alpha * scale)
    # atan: alpha / (2 (1 + (pi/2 alpha z)^2))
    out.mul_(math.pi / 2.0 * p.alpha)
    return out.mul_(out).add_(1.0).reciprocal_().mul_(p.alpha / 2.0 * scale)


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
    x2, gx2 = _rows(x), _rows(grad_x)
    gs2 = _rows(layout_like(x, grad_s))
    v0, gv, gvi = _flat(state_like(x, v_init)), _flat(state_like(x, grad_v)), _flat(grad_v_init)
    # Work buffers reused by every block: h, the surrogate (then grad_h), the reset's derivative.
    compute_dtype = _compute_dtype(x)
    h, sg, dv_dh = (
        torch.empty((x.shape[0], min(BLOCK, x2.shape[1])), dtype=compute_dtype, device=x.device)
        for _ in range(3)
    )
    carry = torch.empty_like(h[0])
    decay = 1.0 - 1.0 / p.tau
    # Gradients travel scaled by dh/dx (1/tau with decay_input, else 1), the unit of grad_x:
    # scale * grad_h[t] = grad_s[t] * (scale sg[t]) + scale * grad_v[t] * dv_dh[t], and
    # scale * grad_v[t] = scale * grad_h[t+1] * decay. So the surrogate takes the scale and the
    # walk writes grad_x itself (no pass of its own to scale it).
    scale = 1.0 / p.tau if p.decay_input else 1.0
    for i in range(0, x2.shape[1], BLOCK):
        j = min(i + BLOCK, x2.shape[1])
        hb, sgb, dvb, cb = h[:, : j - i], sg[:, : j - i], dv_dh[:, : j - i], carry[: j - i]
        _charge_block(x2[:, i:j], None if v0 is None else v0[i:j], p, hb, final_v=False)
        _surrogate_grad_(hb, p, out=sgb, scale=scale)  # scale * sg
        # d v[t] / d h[t]: the reset's Jacobian (the spike's part is dropped by detach_reset).
        if p.v_reset is None:  # 1 - v_threshold sg
            dvb = None if p.detach_reset else torch.mul(sgb, -p.v_threshold / scale, out=dvb).add_(1.0)
        else:  # (h < v_threshold) + (v_reset - h) sg
            torch.lt(hb, p.v_threshold, out=dvb)
            if not p.detach_reset:
                dvb.addcmul_(hb.neg_().add_(p.v_reset), sgb, value=1.0 / scale)
        direct = gx2.dtype == compute_dtype  # walk in grad_x itself, else in a work buffer
        grad_h = gx2[:, i:j] if direct else sgb
        torch.mul(sgb, gs2[:, i:j], out=grad_h)
        has_carry = gv is not None
        if has_carry:
            torch.mul(gv[i:j], scale, out=cb)
        for t in range(x.shape[0] - 1, -1, -1):
            if has_carry:
                grad_h[t].add_(cb) if dvb is None else grad_h[t].addcmul_(cb, dvb[t])
            if t or gvi.numel():  # the carry out of step 0 is v_init's gradient
                torch.mul(grad_h[t], decay, out=cb)
            has_carry = True
        if not direct:
            gx2[:, i:j].copy_(grad_h)
        if gvi.numel():
            gvi[i:j].copy_(cb.div_(scale) if scale != 1.0 else cb)
    return grad_x, grad_v_init

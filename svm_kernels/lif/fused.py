"""Fused multi-step LIF neuron: one Triton launch for the forward over all T steps, one for the backward.

Layout: x (T, *) is walked as T consecutive rows of N = numel / T elements. Any dense layout with time
outermost in memory (contiguous, channels_last, transposed inner dims) is read in place; the
outputs take x's strides, so the same flat offset addresses the same neuron everywhere.

Memory: the forward saves only x for backward (one tensor of x's dtype per element-step).
The backward recomputes the membrane potential h[t] from x and v_init instead of reading a
saved fp32 h/v sequence: walking t = T-1..0 it replays steps 0..t-1 (O(T^2) arithmetic, but
the replayed rows of x were just read by the same program and come from cache, so the DRAM
traffic stays one read of x and grad_s and one write of grad_x per element-step).
"""

from __future__ import annotations

import torch

from ..utils import (
    HAS_TRITON,
    TRITON_DTYPES,
    OpaqueTorchOp,
    autotune_configs,
    new_output,
    resolve_backend,
    same_layout,
    time_major_dense,
)
from .common import LIFParams, check_inputs, make_params
from .naive import multistep_lif_naive

if HAS_TRITON:
    import triton
    import triton.language as tl

    _CONFIGS = autotune_configs(
        [
            triton.Config({"BLOCK_N": 1024}, num_warps=4),
            triton.Config({"BLOCK_N": 2048}, num_warps=4),
            triton.Config({"BLOCK_N": 2048}, num_warps=8),
            triton.Config({"BLOCK_N": 4096}, num_warps=8),
        ],
        triton.Config({"BLOCK_N": 256}, num_warps=4),
    )

    @triton.jit
    def _lif_charge(v, x, tau, v_reset, DECAY_INPUT: tl.constexpr, HARD_RESET: tl.constexpr):
        # spikingjelly's charge; with soft reset the resting potential is 0.
        if HARD_RESET:
            if DECAY_INPUT:
                h = v + (x - (v - v_reset)) / tau
            else:
                h = v - (v - v_reset) / tau + x
        else:
            if DECAY_INPUT:
                h = v + (x - v) / tau
            else:
                h = v - v / tau + x
        return h

    @triton.jit
    def _lif_reset(h, s, v_threshold, v_reset, HARD_RESET: tl.constexpr):
        if HARD_RESET:
            v = h * (1.0 - s) + v_reset * s
        else:
            v = h - v_threshold * s
        return v

    @triton.autotune(configs=_CONFIGS, key=["N"])
    @triton.jit
    def fused_lif_fwd_kernel(
        x_ptr,
        v_init_ptr,
        s_ptr,
        v_out_ptr,
        T,
        N,
        tau,
        v_threshold,
        v_reset,
        USE_INITIAL_STATE: tl.constexpr,
        STORE_FINAL_STATE: tl.constexpr,
        HARD_RESET: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # 64-bit offsets: tensors of more than 2^31 elements are addressed correctly.
        offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = offs < N
        if USE_INITIAL_STATE:
            v = tl.load(v_init_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            v = tl.zeros([BLOCK_N], dtype=tl.float32)
        x_ptrs = x_ptr + offs
        s_ptrs = s_ptr + offs
        for _ in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
            h = _lif_charge(v, x, tau, v_reset, DECAY_INPUT, HARD_RESET)
            s = (h >= v_threshold).to(tl.float32)
            v = _lif_reset(h, s, v_threshold, v_reset, HARD_RESET)
            tl.store(s_ptrs, s.to(s_ptr.dtype.element_ty), mask=mask)
            x_ptrs += N
            s_ptrs += N
        if STORE_FINAL_STATE:
            tl.store(v_out_ptr + offs, v, mask=mask)

    @triton.autotune(configs=_CONFIGS, key=["N"])
    @triton.jit
    def fused_lif_bwd_kernel(
        x_ptr,
        v_init_ptr,
        grad_s_ptr,
        grad_v_ptr,
        grad_x_ptr,
        grad_v_init_ptr,
        T,
        N,
        tau,
        v_threshold,
        v_reset,
        alpha,
        USE_INITIAL_STATE: tl.constexpr,
        HAS_GRAD_FINAL_STATE: tl.constexpr,
        STORE_GRAD_INITIAL_STATE: tl.constexpr,
        HARD_RESET: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        DETACH_RESET: tl.constexpr,
        SURROGATE_ATAN: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = offs < N
        if USE_INITIAL_STATE:
            v0 = tl.load(v_init_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            v0 = tl.zeros([BLOCK_N], dtype=tl.float32)
        # dL/dv[t] flowing back from later steps; at t = T-1 it is the final state's gradient.
        if HAS_GRAD_FINAL_STATE:
            grad_v = tl.load(grad_v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            grad_v = tl.zeros([BLOCK_N], dtype=tl.float32)
        decay = 1.0 - 1.0 / tau
        for i in range(T):
            t = T - 1 - i
            # Replay steps 0..t-1 to get v[t-1] (see the module docstring for why).
            v = v0
            x_ptrs = x_ptr + offs
            for _ in range(t):
                xj = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
                hj = _lif_charge(v, xj, tau, v_reset, DECAY_INPUT, HARD_RESET)
                v = _lif_reset(hj, (hj >= v_threshold).to(tl.float32), v_threshold, v_reset, HARD_RESET)
                x_ptrs += N
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
            h = _lif_charge(v, x, tau, v_reset, DECAY_INPUT, HARD_RESET)
            s = (h >= v_threshold).to(tl.float32)
            z = h - v_threshold
            if SURROGATE_ATAN:
                q = 1.5707963267948966 * alpha * z
                sg = alpha / (2.0 * (1.0 + q * q))
            else:
                sig = tl.sigmoid(alpha * z)
                sg = alpha * sig * (1.0 - sig)
            # dv[t]/dh[t]; with detach_reset the spike in the reset term carries no gradient.
            if HARD_RESET:
                dv_dh = 1.0 - s
                if not DETACH_RESET:
                    dv_dh += (v_reset - h) * sg
            else:
                dv_dh = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
                if not DETACH_RESET:
                    dv_dh -= v_threshold * sg
            t_off = t.to(tl.int64) * N
            gs = tl.load(grad_s_ptr + t_off + offs, mask=mask, other=0.0).to(tl.float32)
            grad_h = gs * sg + grad_v * dv_dh
            if DECAY_INPUT:
                grad_x = grad_h / tau
            else:
                grad_x = grad_h
            tl.store(grad_x_ptr + t_off + offs, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
            grad_v = grad_h * decay
        if STORE_GRAD_INITIAL_STATE:
            tl.store(grad_v_init_ptr + offs, grad_v.to(grad_v_init_ptr.dtype.element_ty), mask=mask)


def _as_time_major(x: torch.Tensor) -> torch.Tensor:
    """x itself when the kernel can walk it in place, else a contiguous copy."""
    return x if time_major_dense(x) else x.contiguous()


def _state_like(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
    """A per-neuron tensor laid out like one step of x (so flat offsets match), or None."""
    if t is None or same_layout(t, x[0]):
        return t
    return torch.empty_like(x[0], dtype=t.dtype).copy_(t)


def _launch_grid(meta, n):
    return (triton.cdiv(n, meta["BLOCK_N"]),)


def lif_fwd(x, v_init, p: LIFParams, return_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: spikes (x's dtype, x's layout) and final v (fp32; empty unless return_v)."""
    x = _as_time_major(x)
    T, n = x.shape[0], x[0].numel()
    spikes = new_output(x)
    v_out = new_output(x[0], dtype=torch.float32) if return_v else x.new_empty(0, dtype=torch.float32)
    v_init = _state_like(x, v_init)
    fused_lif_fwd_kernel[lambda meta: _launch_grid(meta, n)](
        x,
        v_init if v_init is not None else x,
        spikes,
        v_out if return_v else x,
        T,
        n,
        p.tau,
        p.v_threshold,
        0.0 if p.v_reset is None else p.v_reset,
        USE_INITIAL_STATE=v_init is not None,
        STORE_FINAL_STATE=return_v,
        HARD_RESET=p.v_reset is not None,
        DECAY_INPUT=p.decay_input,
    )
    return spikes, v_out


def lif_bwd(grad_s, grad_v, x, v_init, p: LIFParams, need_grad_v_init: bool):
    """Launcher: (grad_x in x's dtype and layout, grad_v_init in v_init's dtype or empty)."""
    x = _as_time_major(x)
    T, n = x.shape[0], x[0].numel()
    if not same_layout(grad_s, x):
        grad_s = torch.empty_like(x).copy_(grad_s)
    grad_v = _state_like(x, grad_v)
    v_init = _state_like(x, v_init)
    grad_x = new_output(x)
    store_gvi = need_grad_v_init and v_init is not None
    grad_v_init = new_output(x[0], dtype=v_init.dtype) if store_gvi else x.new_empty(0)
    fused_lif_bwd_kernel[lambda meta: _launch_grid(meta, n)](
        x,
        v_init if v_init is not None else x,
        grad_s,
        grad_v if grad_v is not None else x,
        grad_x,
        grad_v_init if store_gvi else x,
        T,
        n,
        p.tau,
        p.v_threshold,
        0.0 if p.v_reset is None else p.v_reset,
        p.alpha,
        USE_INITIAL_STATE=v_init is not None,
        HAS_GRAD_FINAL_STATE=grad_v is not None,
        STORE_GRAD_INITIAL_STATE=store_gvi,
        HARD_RESET=p.v_reset is not None,
        DECAY_INPUT=p.decay_input,
        DETACH_RESET=p.detach_reset,
        SURROGATE_ATAN=p.surrogate == "atan",
    )
    return grad_x, grad_v_init


# ---- torch.library registration: torch.compile traces through these ops without graph breaks.


def _params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha) -> LIFParams:
    return LIFParams(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)


def _out_like(x: torch.Tensor) -> torch.Tensor:
    return (
        torch.empty_like(x) if time_major_dense(x) else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    )


@torch.library.custom_op("svmamba::lif_fwd", mutates_args=())
def _lif_fwd_op(
    x: torch.Tensor,
    v_init: torch.Tensor | None,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate: str,
    alpha: float,
    return_v: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    p = _params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    return lif_fwd(x, v_init, p, return_v)


@_lif_fwd_op.register_fake
def _(x, v_init, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_v):
    v_shape = x.shape[1:] if return_v else (0,)
    return _out_like(x), x.new_empty(v_shape, dtype=torch.float32)


@torch.library.custom_op("svmamba::lif_bwd", mutates_args=())
def _lif_bwd_op(
    grad_s: torch.Tensor,
    grad_v: torch.Tensor | None,
    x: torch.Tensor,
    v_init: torch.Tensor | None,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    detach_reset: bool,
    surrogate: str,
    alpha: float,
    need_grad_v_init: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    p = _params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    return lif_bwd(grad_s, grad_v, x, v_init, p, need_grad_v_init)


@_lif_bwd_op.register_fake
def _(
    grad_s,
    grad_v,
    x,
    v_init,
    tau,
    v_threshold,
    v_reset,
    decay_input,
    detach_reset,
    surrogate,
    alpha,
    need_grad_v_init,
):
    gvi = (
        x.new_empty(x.shape[1:], dtype=v_init.dtype)
        if (need_grad_v_init and v_init is not None)
        else x.new_empty(0)
    )
    return _out_like(x), gvi


def _setup_context(ctx, inputs, output):
    x, v_init, *params, return_v = inputs
    ctx.params = params
    ctx.return_v = return_v
    ctx.save_for_backward(x, v_init)


def _backward(ctx, grad_s, grad_v):
    x, v_init = ctx.saved_tensors
    need_gvi = v_init is not None and ctx.needs_input_grad[1]
    grad_x, grad_v_init = _lif_bwd_op(
        grad_s, grad_v if ctx.return_v else None, x, v_init, *ctx.params, need_gvi
    )
    return (grad_x, grad_v_init if need_gvi else None) + (None,) * 8


_lif_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class MultiStepLIFTorch(OpaqueTorchOp):
    """The reference LIF as one traced node (``prim::PythonOp.MultiStepLIFTorch``)."""


def multistep_lif(
    x: torch.Tensor,
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    v_init: torch.Tensor | None = None,
    return_v: bool = False,
    backend: str = "auto",
):
    """Multi-step leaky integrate-and-fire neuron with a surrogate gradient.

    Semantics are spikingjelly's multi-step ``LIFNode``: for t = 0..T-1,
    ``h = v + (x[t] - (v - v_reset)) / tau`` (``decay_input=True``; otherwise
    ``h = v - (v - v_reset) / tau + x[t]``), ``s[t] = (h >= v_threshold)``, then a hard reset
    ``v = h * (1 - s) + v_reset * s`` or, with ``v_reset=None``, a soft reset
    ``v = h - v_threshold * s``. The backward replaces the Heaviside by the surrogate's derivative
    at ``h - v_threshold`` ("sigmoid", alpha 4 by default, or "atan", alpha 2);
    ``detach_reset`` stops the gradient through the spike in the reset term.

    Args:
        x: (T, *) input currents, time first; fp16, bf16, fp32 (fp64 on the torch backend).
        v_init: optional initial membrane potential of shape ``x.shape[1:]`` (default 0).
        return_v: also return the final membrane potential (fp32).
        backend: "auto" (Triton on CUDA, PyTorch otherwise), "triton" or "torch".

    Returns:
        Spikes of x's shape and dtype (exact 0/1), or ``(spikes, v_final)`` when ``return_v``.
        Arithmetic is fp32 whatever the storage dtype.
    """
    p = make_params(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
    check_inputs(x, v_init)
    use = resolve_backend(backend, x, v_init)
    if use == "triton" and x.dtype not in TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(f"backend='triton' supports fp16, bf16 and fp32 x, got {x.dtype}")
        use = "torch"
    if x.numel() == 0:
        empty_v = x.new_zeros(x.shape[1:], dtype=torch.float32)
        return (torch.empty_like(x), empty_v) if return_v else torch.empty_like(x)
    if use == "torch":
        spikes, v = MultiStepLIFTorch.apply(lambda x, v0: multistep_lif_naive(x, p, v0), x, v_init)
    else:
        spikes, v = _lif_fwd_op(
            x,
            v_init,
            p.tau,
            p.v_threshold,
            p.v_reset,
            p.decay_input,
            p.detach_reset,
            p.surrogate,
            p.alpha,
            return_v,
        )
    return (spikes, v) if return_v else spikes

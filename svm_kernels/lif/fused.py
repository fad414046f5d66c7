"""Fused multi-step LIF neuron (Triton): one launch for the forward over all T steps, one for the backward.

Layout: x (T, *) is walked as T consecutive rows of N = numel / T neurons; any dense layout with
time outermost in memory is read in place and the outputs take its strides (``common.py``).

The time loop is specialised at compile time in cdiv(T, 16) segments of balanced lengths (one
of T steps when T <= 16): a segment is fully unrolled, so its values live in registers.

* Forward: walk the segments; each segment's rows of x are loaded before any is used (one wait
  for memory per segment), one write of the spikes per element-step.
* Backward (only x is saved): per segment, ``_lif_bwd_segment`` loads the segment's rows of x (and
  of grad_s), recomputes h of its steps into registers (never memory) and walks them back
  applying the chain rule: h[0..T-1] is recomputed once and the time walk is O(T). With several
  segments a first pass stores v at each segment start but the last (fp32 rows of a scratch
  buffer freed after the launch); then the segments run from last to first, the full ones
  through one specialisation, the shorter last one through its own. Gradients travel scaled by
  dh/dx, so that dL/dx needs no multiply of its own.

Arithmetic is fp32 whatever the storage dtype. The charge divides by tau with a correctly
rounded division (``tl.div_rn``), in spikingjelly's order of operations, so h lands exactly on
v_threshold where spikingjelly's does and the spikes are bit-identical. When tau is a power of
two it multiplies by 1 / tau instead (the same exact value), with a multiply the compiler may
not fuse into the following add (which would skip the rounding of a subnormal quotient).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import torch

from ..utils import HAS_TRITON, TRITON_INTERPRET, cdiv
from . import vectorized
from .common import LIFParams, as_time_major, empty_grads, empty_outputs, layout_like, state_like

# Longest stretch of time steps unrolled (and held in registers by the backward): T = 16 keeps
# 16 fp32 h values x 8 neurons per thread under the 255-register cap at sm_90 (no spills).
MAX_SEGMENT = 16

if HAS_TRITON:
    import triton
    import triton.language as tl

    # The interpreter runs no inline PTX, and no fused multiply-adds: a plain multiply there.
    _INTERPRETED = tl.constexpr(TRITON_INTERPRET)

    @triton.jit
    def _div_tau(a, tau, inv_tau, TAU_POW2: tl.constexpr):
        # a / tau correctly rounded. With tau a power of two, a * (1 / tau) is the same exact value,
        # so the same rounding, without the division's slow-path branch (tau = 2, the default).
        if TAU_POW2:
            # mul.rn.f32: never contracted with the add after it into one rounding, and no ftz
            # (libdevice's mul_rn flushes subnormals)
            if _INTERPRETED:
                return a * inv_tau
            else:
                return tl.inline_asm_elementwise(
                    "mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, inv_tau], dtype=tl.float32, is_pure=True, pack=1
                )
        else:
            return tl.div_rn(a, tau)

    @triton.jit
    def _lif_charge(
        b_v,
        b_x,
        tau,
        inv_tau,
        v_reset,
        DECAY_INPUT: tl.constexpr,
        HARD_RESET: tl.constexpr,
        TAU_POW2: tl.constexpr,
    ):
        # spikingjelly's charge, its order of operations and a correctly rounded division:
        # h = v + (x - (v - v_reset)) / tau, or v - (v - v_reset) / tau + x (rest 0 with soft reset).
        if HARD_RESET:
            b_leak = b_v - v_reset
        else:
            b_leak = b_v
        if DECAY_INPUT:
            b_h = b_v + _div_tau(b_x - b_leak, tau, inv_tau, TAU_POW2)
        else:
            b_h = b_v - _div_tau(b_leak, tau, inv_tau, TAU_POW2) + b_x
        return b_h

    @triton.jit
    def _lif_reset(b_h, b_s, v_threshold, v_reset, HARD_RESET: tl.constexpr):
        # Equal to spikingjelly's s * v_reset + (1 - s) * h and h - s * v_threshold for s in {0, 1}.
        if HARD_RESET:
            b_v = tl.where(b_s, v_reset, b_h)
        else:
            b_v = tl.where(b_s, b_h - v_threshold, b_h)
        return b_v

    @triton.jit
    def _load_rows(p, m_n, N, STEPS: tl.constexpr):
        """STEPS consecutive rows from p (a tuple, in storage dtype), every load issued before any
        value is used. A correctly rounded division compiles to a branch around its slow path,
        and ptxas does not move a load above a branch: loaded one step at a time, each step would
        wait for memory on its own."""
        b_rows = ()
        for _ in tl.static_range(STEPS):
            b_rows = b_rows + (tl.load(p, mask=m_n, other=0.0),)  # noqa: RUF005 (Triton: no starred tuples)
            p += N
        return b_rows, p

    @triton.jit
    def _lif_fwd_steps(
        p_x,
        p_s,
        m_n,
        b_v,
        N,
        tau,
        inv_tau,
        v_threshold,
        v_reset,
        STEPS: tl.constexpr,
        STORE_SPIKES: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        HARD_RESET: tl.constexpr,
        TAU_POW2: tl.constexpr,
    ):
        """STEPS forward steps from v; returns v and the pointers advanced by STEPS rows."""
        b_xs, p_x = _load_rows(p_x, m_n, N, STEPS)
        for k in tl.static_range(STEPS):
            b_h = _lif_charge(
                b_v, b_xs[k].to(tl.float32), tau, inv_tau, v_reset, DECAY_INPUT, HARD_RESET, TAU_POW2
            )
            b_s = b_h >= v_threshold
            b_v = _lif_reset(b_h, b_s, v_threshold, v_reset, HARD_RESET)
            if STORE_SPIKES:
                # (through fp32: the interpreter cannot convert a boolean to bf16 directly)
                tl.store(p_s, tl.where(b_s, 1.0, 0.0).to(p_s.dtype.element_ty), mask=m_n)
                p_s += N
        return b_v, p_x, p_s

    @triton.jit
    def _surrogate_grad(b_h, v_threshold, alpha, scale, SURROGATE_ATAN: tl.constexpr):
        """scale * d spike / d h at h: the surrogate's derivative at h - v_threshold, scaled."""
        if SURROGATE_ATAN:
            # alpha / (2 (1 + (pi/2 alpha z)^2))
            b_q = b_h * (1.5707963267948966 * alpha) - v_threshold * (1.5707963267948966 * alpha)
            b_sg = (0.5 * alpha * scale) / (1.0 + b_q * b_q)
        else:
            # alpha sig (1 - sig), sig = 1 / (1 + 2^(-alpha z log2(e))): one exp2, one reciprocal.
            # The exponent is one multiply-add of h with per-launch scalars, not (h - theta) * k,
            # and sig (a - a sig) one more with the scalar a = alpha scale.
            b_k = -1.4426950408889634 * alpha
            b_sig = 1.0 / (1.0 + tl.exp2(b_h * b_k - v_threshold * b_k))
            b_a = alpha * scale
            b_sg = b_sig * (b_a + b_sig * -b_a)
        return b_sg

    @triton.jit
    def _lif_bwd_segment(
        p_x,
        p_gs,
        p_gx,
        m_n,
        b_v,
        b_g,
        N,
        tau,
        inv_tau,
        v_threshold,
        v_reset,
        alpha,
        STEPS: tl.constexpr,
        GS_AHEAD: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        HARD_RESET: tl.constexpr,
        TAU_POW2: tl.constexpr,
        DETACH_RESET: tl.constexpr,
        SURROGATE_ATAN: tl.constexpr,
    ):
        """Gradients of one segment of STEPS steps; p_x, p_gs, p_gx point at its first row.

        Its rows of x are loaded first, all at once, and with GS_AHEAD its rows of grad_s too
        (else after the recompute, when x is dead: fewer registers, a second wait for memory);
        then h[0..STEPS-1] is recomputed from v (v before the segment) into registers, and the
        steps are walked backwards.
        Gradients travel scaled by ``scale`` = dh/dx (1/tau with decay_input, else 1), so that
        scale * dL/dh is dL/dx itself: b_g is scale * dL/dv after the segment's last step, and
        the return value is scale * dL/dv before its first.
        """
        if DECAY_INPUT:
            scale = 1.0 / tau
            inv_scale = tau
        else:
            scale = 1.0
            inv_scale = 1.0
        b_xs, _ = _load_rows(p_x, m_n, N, STEPS)
        if GS_AHEAD:
            b_gss, _ = _load_rows(p_gs, m_n, N, STEPS)
        # Keeping the steps' spike predicates live through the walk back spills them into general
        # registers past 8 steps (and those to memory at bf16): beyond, 1 - s is compared afresh.
        KEEP_SPIKES: tl.constexpr = STEPS <= 8
        b_hs = ()
        b_ss = ()
        for k in tl.static_range(STEPS):
            b_h = _lif_charge(
                b_v, b_xs[k].to(tl.float32), tau, inv_tau, v_reset, DECAY_INPUT, HARD_RESET, TAU_POW2
            )
            b_s = b_h >= v_threshold
            b_v = _lif_reset(b_h, b_s, v_threshold, v_reset, HARD_RESET)
            b_hs = b_hs + (b_h,)  # noqa: RUF005
            if KEEP_SPIKES:
                b_ss = b_ss + (b_s,)  # noqa: RUF005
            if k > 0:  # to the last row (64-bit pointer steps: (STEPS - 1) N may pass 2^31)
                p_gx += N
        if not GS_AHEAD:
            b_gss, _ = _load_rows(p_gs, m_n, N, STEPS)
        for i in tl.static_range(STEPS):
            b_h = b_hs[STEPS - 1 - i]
            b_sg = _surrogate_grad(b_h, v_threshold, alpha, scale, SURROGATE_ATAN)
            b_gs = b_gss[STEPS - 1 - i].to(tl.float32)
            # dL/dx = scale (grad_s sg + dL/dv dv/dh), dv/dh the reset's derivative (its spike term
            # dropped by detach_reset); b_g is scale * dL/dv. Grouped to the fewest multiply-adds:
            if HARD_RESET:  # dv/dh = (1 - s) + (v_reset - h) sg
                if KEEP_SPIKES:
                    b_below = b_ss[STEPS - 1 - i] == 0
                else:
                    b_below = b_h < v_threshold
                b_gx = tl.where(b_below, b_g, 0.0)
                if DETACH_RESET:
                    b_gx += b_gs * b_sg
                else:
                    # (v_reset - h) unscaled, as the reference: v_reset * tau overflows for a
                    # v_reset near float32's limit, and -inf * a zero gradient is NaN
                    b_gx += (b_gs + (b_g * inv_scale) * (v_reset - b_h)) * b_sg
            else:  # dv/dh = 1 - v_threshold sg
                if DETACH_RESET:
                    b_gx = b_gs * b_sg + b_g
                else:
                    b_gx = (b_gs + b_g * (-v_threshold * inv_scale)) * b_sg + b_g
            tl.store(p_gx, b_gx.to(p_gx.dtype.element_ty), mask=m_n)
            p_gx -= N
            # scale * dL/dv before this step = scale * dL/dh * dh/dv = dL/dx * (1 - 1/tau)
            b_g = b_gx * (1.0 - 1.0 / tau)
        return b_g

    @triton.jit
    def _lif_block(
        v_init_ptr,
        N,
        v_reset,
        USE_INITIAL_STATE: tl.constexpr,
        REST_AT_ZERO: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # The program's neurons, their mask and their membrane potential before the first step:
        # v_init, or rest (v_reset; 0 with soft reset). A rest of 0 is a constant: adding a zero
        # v_reset, which the compiler may not fold, cost ptxas registers.
        # 64-bit offsets: tensors of more than 2^31 elements are addressed correctly.
        offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = offs < N
        if USE_INITIAL_STATE:
            b_v = tl.load(v_init_ptr + offs, mask=m_n, other=0.0).to(tl.float32)
        elif REST_AT_ZERO:
            b_v = tl.zeros([BLOCK_N], dtype=tl.float32)
        else:
            b_v = tl.zeros([BLOCK_N], dtype=tl.float32) + v_reset
        return offs, m_n, b_v

    @triton.jit
    def fused_lif_fwd_kernel(
        x_ptr,
        v_init_ptr,
        s_ptr,
        v_out_ptr,
        N,
        tau,
        inv_tau,
        v_threshold,
        v_reset,
        T: tl.constexpr,
        HARD_RESET: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        TAU_POW2: tl.constexpr,
        REST_AT_ZERO: tl.constexpr,
        SEG: tl.constexpr,
        NUM_SEG: tl.constexpr,
        LAST_SEG: tl.constexpr,
        USE_INITIAL_STATE: tl.constexpr,
        STORE_FINAL_STATE: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        offs, m_n, b_v = _lif_block(v_init_ptr, N, v_reset, USE_INITIAL_STATE, REST_AT_ZERO, BLOCK_N)
        p_x = x_ptr + offs
        p_s = s_ptr + offs
        # the full segments (SEG steps) in a loop, then the last one (LAST_SEG): two specialisations
        for kind in tl.static_range(2):
            for _ in range(NUM_SEG - 1 if kind == 0 else 1):
                b_v, p_x, p_s = _lif_fwd_steps(
                    p_x,
                    p_s,
                    m_n,
                    b_v,
                    N,
                    tau,
                    inv_tau,
                    v_threshold,
                    v_reset,
                    SEG if kind == 0 else LAST_SEG,
                    True,
                    DECAY_INPUT,
                    HARD_RESET,
                    TAU_POW2,
                )
        if STORE_FINAL_STATE:
            tl.store(v_out_ptr + offs, b_v, mask=m_n)

    @triton.jit
    def fused_lif_bwd_kernel(
        x_ptr,
        v_init_ptr,
        grad_s_ptr,
        grad_v_ptr,
        grad_x_ptr,
        grad_v_init_ptr,
        v_start_ptr,
        N,
        tau,
        inv_tau,
        v_threshold,
        v_reset,
        alpha,
        T: tl.constexpr,
        HARD_RESET: tl.constexpr,
        DECAY_INPUT: tl.constexpr,
        TAU_POW2: tl.constexpr,
        REST_AT_ZERO: tl.constexpr,
        DETACH_RESET: tl.constexpr,
        SURROGATE_ATAN: tl.constexpr,
        SEG: tl.constexpr,
        NUM_SEG: tl.constexpr,
        LAST_SEG: tl.constexpr,
        GS_AHEAD: tl.constexpr,
        USE_INITIAL_STATE: tl.constexpr,
        HAS_GRAD_FINAL_STATE: tl.constexpr,
        STORE_GRAD_INITIAL_STATE: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        offs, m_n, b_v = _lif_block(v_init_ptr, N, v_reset, USE_INITIAL_STATE, REST_AT_ZERO, BLOCK_N)
        # dL/dv after the last step (the final state's gradient), scaled as in _lif_bwd_steps.
        if HAS_GRAD_FINAL_STATE:
            b_g = tl.load(grad_v_ptr + offs, mask=m_n, other=0.0).to(tl.float32)
            if DECAY_INPUT:
                b_g = b_g / tau
        else:
            b_g = tl.zeros([BLOCK_N], dtype=tl.float32)
        # First pass (several segments only): v at the start of each segment but the last (which
        # stays in registers), rows 0..NUM_SEG-2.
        if NUM_SEG > 1:
            p_x = x_ptr + offs
            p_v = v_start_ptr + offs
            for _ in range(NUM_SEG - 1):
                tl.store(p_v, b_v, mask=m_n)
                b_v, p_x, p_v = _lif_fwd_steps(
                    p_x,
                    p_v,
                    m_n,
                    b_v,
                    N,
                    tau,
                    inv_tau,
                    v_threshold,
                    v_reset,
                    SEG,
                    False,
                    DECAY_INPUT,
                    HARD_RESET,
                    TAU_POW2,
                )
                p_v += N
        # The segments from last to first: the last one (LAST_SEG steps) from v, which is its
        # start; then the full ones (SEG steps), from their starts in v_start, in a loop: two
        # specialisations of the segment whatever T (compile time stays bounded).
        for kind in tl.static_range(2):
            if kind == 0 or NUM_SEG > 1:  # (one segment: no scratch, and no loop compiled)
                for j in range(1 if kind == 0 else NUM_SEG - 1):
                    if kind == 0:
                        i_seg = j + (NUM_SEG - 1)
                    else:
                        i_seg = NUM_SEG - 2 - j
                        b_v = tl.load(v_start_ptr + i_seg.to(tl.int64) * N + offs, mask=m_n, other=0.0)
                    row = (i_seg * SEG).to(tl.int64) * N + offs
                    b_g = _lif_bwd_segment(
                        x_ptr + row,
                        grad_s_ptr + row,
                        grad_x_ptr + row,
                        m_n,
                        b_v,
                        b_g,
                        N,
                        tau,
                        inv_tau,
                        v_threshold,
                        v_reset,
                        alpha,
                        LAST_SEG if kind == 0 else SEG,
                        GS_AHEAD,
                        DECAY_INPUT,
                        HARD_RESET,
                        TAU_POW2,
                        DETACH_RESET,
                        SURROGATE_ATAN,
                    )
        if STORE_GRAD_INITIAL_STATE:
            if DECAY_INPUT:
                b_g = b_g * tau
            tl.store(grad_v_init_ptr + offs, b_g.to(grad_v_init_ptr.dtype.element_ty), mask=m_n)


_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object for every call


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton launches on the current one); a context only when they differ:
    entering ``torch.cuda.device`` costs the host more than comparing the indices."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return _NO_CONTEXT


@functools.cache
def segments(T: int, max_segment: int = MAX_SEGMENT) -> tuple[int, int, int]:
    """(SEG, NUM_SEG, LAST_SEG): as few segments as max_segment allows, of balanced lengths
    (T = 17: 9 + 8, not 16 + 1), since the backward holds a segment's h in registers and its
    longest segment sets their number. The last one is the same length or shorter."""
    num_seg = -(-T // max_segment)
    seg = -(-T // num_seg)
    return seg, num_seg, T - (num_seg - 1) * seg


def bwd_neurons_per_thread(dtype: torch.dtype) -> int:
    """Neurons per thread of the compiled backward: 16 bytes of x, one 128-bit access per row."""
    return 16 // dtype.itemsize


@functools.cache
def launch_config(dtype: torch.dtype, backward: bool) -> tuple[int, int]:
    """(BLOCK_N, num_warps). A fixed choice, no autotuner: choosing per call cost the host more
    than the forward kernel's launch. The forward streams 8 neurons per thread (128-bit accesses
    at 16-bit storage); the backward 16 bytes of x per thread, one 128-bit access per row, and no
    more neurons, since each holds a segment of h in registers."""
    num_warps = 4
    if TRITON_INTERPRET:  # the interpreter runs the programs one after another: small ones
        return 256, num_warps
    per_thread = bwd_neurons_per_thread(dtype) if backward else 8
    return per_thread * 32 * num_warps, num_warps


def exact_reciprocal(tau: float) -> float | None:
    """1 / tau when tau is a power of two whose reciprocal is a normal fp32 number (then x / tau
    and x * (1 / tau) are the same exact value, rounded alike), else None."""
    mantissa, exponent = math.frexp(tau)
    return 2.0 ** (1 - exponent) if mantissa == 0.5 and -125 <= 1 - exponent <= 127 else None


@functools.cache
def _charge_args(p: LIFParams) -> dict:
    """The arguments of the charge and the reset, which both kernels take alike (once per
    parameter set: the launchers run on every call)."""
    inv_tau = exact_reciprocal(p.tau)
    return dict(
        tau=p.tau,
        inv_tau=inv_tau or 0.0,
        v_threshold=p.v_threshold,
        v_reset=p.v_rest,  # 0 with soft reset: where a neuron without v_init starts
        HARD_RESET=p.v_reset is not None,
        DECAY_INPUT=p.decay_input,
        TAU_POW2=inv_tau is not None,
        REST_AT_ZERO=not p.v_reset,  # soft reset, or a hard reset to 0
    )


# Values of one row a backward thread may hold per step of a segment before grad_s waits for the
# recompute: 16 steps x 4 fp32 neurons fit beside their h (158 registers at sm_90), 16 x 8 at
# bf16 do not (56 bytes spilled).
GS_AHEAD_VALUES = 64


@functools.cache
def grad_s_ahead(seg: int, dtype: torch.dtype, per_thread: int | None = None) -> bool:
    """Whether the backward loads a segment's grad_s rows with its x rows, before the recompute;
    ``per_thread``: neurons per thread, if not ``bwd_neurons_per_thread``'s."""
    return seg * (per_thread or bwd_neurons_per_thread(dtype)) <= GS_AHEAD_VALUES


@functools.cache
def _time_args(T: int) -> dict:
    """The time-step arguments both kernels take: T and its segments."""
    seg, num_seg, last_seg = segments(T)
    return dict(T=T, SEG=seg, NUM_SEG=num_seg, LAST_SEG=last_seg)


def _launch(kernel, x, v_init, p: LIFParams, backward: bool, **args) -> None:
    """Launch ``kernel`` over x's neurons (x time-major) with the arguments both kernels take
    alike, and ``args``, its own."""
    T = x.shape[0]
    n = x.numel() // T
    block_n, num_warps = launch_config(x.dtype, backward)
    with _on_device(x):
        kernel[(cdiv(n, block_n),)](
            x_ptr=x,
            v_init_ptr=state_like(x, v_init),
            N=n,
            **_charge_args(p),
            **_time_args(T),
            USE_INITIAL_STATE=v_init is not None,
            BLOCK_N=block_n,
            num_warps=num_warps,
            **args,
        )


def lif_fwd(x, v_init, p: LIFParams, return_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: spikes (x's dtype, x's layout) and final v (fp32; empty unless return_v)."""
    x = as_time_major(x)
    spikes, v_out = empty_outputs(x, return_v)
    _launch(
        fused_lif_fwd_kernel,
        x,
        v_init,
        p,
        False,
        s_ptr=spikes,
        v_out_ptr=v_out if return_v else None,
        STORE_FINAL_STATE=return_v,
    )
    return spikes, v_out


def lif_bwd(grad_s, grad_v, x, v_init, p: LIFParams, need_grad_v_init: bool):
    """Launcher: (grad_x in x's dtype and layout, grad_v_init in v_init's dtype or empty)."""
    x = as_time_major(x)
    grad_s = layout_like(x, grad_s)
    grad_x, grad_v_init = empty_grads(x, v_init, need_grad_v_init)
    seg, num_seg, _ = segments(x.shape[0])
    # Scratch for the membrane potential at each segment start but the last's (several segments only).
    n = x.numel() // x.shape[0]
    v_start = torch.empty((num_seg - 1, n), dtype=torch.float32, device=x.device) if num_seg > 1 else None
    store_grad_v_init = need_grad_v_init and v_init is not None
    _launch(
        fused_lif_bwd_kernel,
        x,
        v_init,
        p,
        True,
        grad_s_ptr=grad_s,
        grad_v_ptr=state_like(x, grad_v),
        grad_x_ptr=grad_x,
        grad_v_init_ptr=grad_v_init if store_grad_v_init else None,
        v_start_ptr=v_start,
        alpha=p.alpha,
        DETACH_RESET=p.detach_reset,
        SURROGATE_ATAN=p.surrogate == "atan",
        GS_AHEAD=grad_s_ahead(seg, x.dtype),
        HAS_GRAD_FINAL_STATE=grad_v is not None,
        STORE_GRAD_INITIAL_STATE=store_grad_v_init,
    )
    return grad_x, grad_v_init


# ---- torch.library custom ops: one autograd node whatever the implementation, so torch.compile
# traces through with no graph break and the backward recomputes from x (the only saved tensor).


# LIFParams' fields as custom-op arguments, one by one (a schema has no records), in field order
_PARAMS_SCHEMA = "float tau, float v_threshold, float? v_reset, bool decay_input, bool detach_reset, str surrogate, float alpha"
_N_PARAMS = len(dataclasses.fields(LIFParams))


def _param_values(p: LIFParams) -> tuple:
    return p.tau, p.v_threshold, p.v_reset, p.decay_input, p.detach_reset, p.surrogate, p.alpha


def _run_forward(x, v_init, p: LIFParams, return_v: bool, use_triton: bool):
    """The forward of both autograd nodes: the Triton launcher or the vectorised PyTorch path."""
    return (lif_fwd if use_triton else vectorized.lif_forward)(x, v_init, p, return_v)


def _run_backward(grad_s, grad_v, x, v_init, p: LIFParams, need_grad_v_init: bool, use_triton: bool):
    """The backward of both autograd nodes, the same choice of implementation."""
    return (lif_bwd if use_triton else vectorized.lif_backward)(
        grad_s, grad_v, x, v_init, p, need_grad_v_init
    )


def _backward_inputs(ctx, grad_v):
    """What both nodes' backwards start from: the saved x and v_init, whether v_init's gradient
    is wanted (it exists and needs one), and the final v's gradient only when v was returned."""
    x, v_init = ctx.saved_tensors
    need_gvi = v_init is not None and ctx.needs_input_grad[1]
    return x, v_init, need_gvi, grad_v if ctx.return_v else None


@torch.library.custom_op(
    "svmamba::lif_fwd",
    mutates_args=(),
    schema=f"(Tensor x, Tensor? v_init, {_PARAMS_SCHEMA}, bool return_v, bool use_triton) -> (Tensor, Tensor)",
)
def _lif_fwd_op(x, v_init, *params_and_flags):
    *params, return_v, use_triton = params_and_flags
    return _run_forward(x, v_init, LIFParams(*params), return_v, use_triton)


@_lif_fwd_op.register_fake
def _(x, v_init, *params_and_flags):
    *_, return_v, _ = params_and_flags
    return empty_outputs(as_time_major(x), return_v)


@torch.library.custom_op(
    "svmamba::lif_bwd",
    mutates_args=(),
    schema=(
        f"(Tensor grad_s, Tensor? grad_v, Tensor x, Tensor? v_init, {_PARAMS_SCHEMA}, bool need_grad_v_init, "
        "bool use_triton) -> (Tensor, Tensor)"
    ),
)
def _lif_bwd_op(grad_s, grad_v, x, v_init, *params_and_flags):
    *params, need_grad_v_init, use_triton = params_and_flags
    return _run_backward(grad_s, grad_v, x, v_init, LIFParams(*params), need_grad_v_init, use_triton)


@_lif_bwd_op.register_fake
def _(grad_s, grad_v, x, v_init, *params_and_flags):
    *_, need_grad_v_init, _ = params_and_flags
    return empty_grads(as_time_major(x), v_init, need_grad_v_init)


def _setup_context(ctx, inputs, output):
    x, v_init, *params, return_v, use_triton = inputs
    ctx.params, ctx.return_v, ctx.use_triton = params, return_v, use_triton
    ctx.save_for_backward(x, v_init)


def _backward(ctx, grad_s, grad_v):
    x, v_init, need_gvi, grad_v = _backward_inputs(ctx, grad_v)
    grad_x, grad_v_init = _lif_bwd_op(grad_s, grad_v, x, v_init, *ctx.params, need_gvi, ctx.use_triton)
    return (grad_x, grad_v_init if need_gvi else None) + (None,) * (_N_PARAMS + 2)


_lif_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLIF(torch.autograd.Function):
    """The custom op's forward and backward without the custom op: what eager calls run.

    A ``torch.library`` custom op costs the host tens of microseconds per call on top of the
    autograd node (schema handling and Python redispatch, once for the forward op and once for
    the backward op), more than a launch; GPU steps of a few hundred microseconds become
    host-bound. The same functions, the same single saved tensor (x) and the same node.
    """

    @staticmethod
    def forward(ctx, x, v_init, p: LIFParams, return_v: bool, use_triton: bool):
        spikes, v = _run_forward(x, v_init, p, return_v, use_triton)
        ctx.p, ctx.return_v, ctx.use_triton = p, return_v, use_triton
        # unused outputs' gradients stay None: no zero-filled gradient of the empty v
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, v_init)
        return spikes, v

    @staticmethod
    def backward(ctx, grad_s, grad_v):
        x, v_init, need_gvi, grad_v = _backward_inputs(ctx, grad_v)
        if grad_s is None:  # only the final v reaches the loss
            grad_s = torch.zeros_like(x)
        with torch.no_grad():
            grad_x, grad_v_init = _run_backward(grad_s, grad_v, x, v_init, ctx.p, need_gvi, ctx.use_triton)
        grad_v_init = grad_v_init if need_gvi else None
        if torch.is_grad_enabled():  # create_graph=True: a second backward must fail, not see zeros
            grad_x, grad_v_init = _NoDoubleBackward.apply(x, v_init, grad_x, grad_v_init)
        return grad_x, grad_v_init, None, None, None


class _NoDoubleBackward(torch.autograd.Function):
    """The eager node's gradients, unchanged, tied to x and v_init by a node whose backward raises:
    differentiating them (create_graph=True, then a second backward) fails as the custom op's path
    does. (``once_differentiable`` ties them only when the incoming gradients require grad: with
    a constant one, as ``s.sum()``'s, the gradients came back as constants, and a gradient penalty
    built on them lost its second-order terms without a word.)"""

    @staticmethod
    def forward(ctx, x, v_init, grad_x, grad_v_init):
        return grad_x.view_as(grad_x), None if grad_v_init is None else grad_v_init.view_as(grad_v_init)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "multistep_lif's backward is not differentiable: no double backward (create_graph=True, "
            "then a gradient of the gradient)"
        )


def _eager(x: torch.Tensor, v_init: torch.Tensor | None) -> bool:
    """Plain tensors, no tracer, no dispatch mode: the custom op is what torch.compile, torch.jit
    tracing (fvcore's counters), fake tensors and dispatch modes must see."""
    return (
        type(x) is torch.Tensor
        and (v_init is None or type(v_init) is torch.Tensor)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch._C._len_torch_dispatch_stack()
    )


def lif_op(x, v_init, p: LIFParams, return_v: bool, use_triton: bool):
    """(spikes, final v) through one autograd node: the Triton kernels or the vectorised PyTorch
    path, called directly in eager mode and through the custom op otherwise."""
    if _eager(x, v_init):
        return _EagerLIF.apply(x, v_init, p, return_v, use_triton)
    return _lif_fwd_op(x, v_init, *_param_values(p), return_v, use_triton)

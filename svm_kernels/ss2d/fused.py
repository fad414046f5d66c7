"""Fused four-direction selective scan (SS2D): Triton kernels, launchers, autograd, torch.library ops.

Directions come in two *orientations*: row-major (k=0 forward, k=2 its reversal) and
column-major (k=1, k=3). Kernels read every direction's sequence straight from the spatial
tensors (sequence index p -> (h, w)), so the four ordered copies of ``cross_scan`` are never made.

Forward at N <= 4 (``ss2d_fwd_scan_kernel``): one pass per orientation. A program walks one
image's sequence for a block of channels in tiles of SUB x NSUB positions, carrying the state
from tile to tile; within a tile each lane scans its SUB consecutive positions in a thread, a
scan over the lanes gives each lane its entering state, and y = C (x_local + decay product x
entering state). The reversal walks the tiles backwards and stores, the sequence order adds.
With the low-rank variant, a tile's dt is one ``tl.dot`` of its dt_low rows with dt_weight (on
the tensor cores; half dt_low meets dt_weight split into two half parts, fp32 dt_low tf32x3).

Forward at N > 4 (``ss2d_fwd_chunk_kernel``, ``ss2d_fwd_chain_kernel``): each orientation's
sequence is cut into chunks; a program holds a block of channels x a block of chunks across its lanes and
walks its chunks one position per step (no associative scan, no tile over L, so any H x W).
A state pass stores each chunk's exit state from a zero entry and its summed dt; a chain pass
per direction turns them into entering states; the output pass walks the chunks again from
those, the row-major orientation storing ``out`` and the column-major one adding to it. With
the low-rank variant, dt = dt_weight[k] @ dt_low[k] is rebuilt per position from R rows shared
by the program's channels. Both forwards are software-pipelined: each tile (position) issues the
next one's loads before its own math, where the carried values fit the registers.

Both forwards also save, when asked (the differentiable ops always ask), the state entering
each chunk of the backward, (B, 4, D, n_chunks, NP) fp32: the tile scan picks it per lane (at a
fixed place in every lane where the chunk divides the lanes), the chunk walk per step.

Backward (``ss2d_bwd_chunk_kernel``, ``ss2d_bwd_dt_kernel``, the forward's chain kernel): the
same chunks and lanes, one direction at a time. The gradient terms that pair the prefix state x
with the suffix adjoint lam are those through the decays; with the cumulative dt S, they become
sums of C g x and of dt u B lam terms alone (see ``chunked_ref.py``), so a state walk and an
adjoint walk never need each other's values per position. Low rank: ``ss2d_bwd_dt_kernel``
first forms dt and its softplus slope per position with one product per tile (as the forward's)
into a scratch both walks read. The state walk starts each chunk from the state the forward
saved and writes its half of the gradients and each chunk's values for the adjoint (G, the
adjoint's exit from a zero entry, by duality; K, the state's exit from a zero entry; the q
total; the summed dt); the chain kernel turns G into entering adjoints (in the opposite chunk
order); a few torch ops on chunk-sized tensors give each chunk's carry and dA's part at the
chunks' entries; the adjoint walk then writes the other half (low rank: the whole d dt, from
which ``ss2d_bwd_low_rank_kernel`` forms d dt_low / d dt_weight / d bias, linear in it, with
tl.dot). No position is walked from a zero state, and no chain is run for the state.
Channel sums (dB, dC, d dt_low) go to one partial per program, which walks n_group channel
blocks in turn (together at most a quarter of one (B, 4, D, L) tensor); parameter sums to one partial per chunk block and image; the
launcher adds the partials in a fixed order. No float atomics: the backward is deterministic.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from ..utils import HAS_TRITON, TRITON_DTYPES, TRITON_INTERPRET, cdiv, is_dense, new_buffer, new_output
from .common import (
    MAX_D_STATE,
    SCAN_ARGS,
    SCAN_ARGS_SCHEMA,
    define_forward_ops,
    define_inference_ops,
    scan_output,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Fast special-function ops on the GPU; the interpreter runs no inline assembly.
    _GPU_MATH: tl.constexpr = tl.constexpr(not TRITON_INTERPRET)

    @triton.jit
    def _log2(x):
        # one lg2.approx: tl.log / tl.log2 compile to a ~35-instruction libdevice polynomial
        if _GPU_MATH:
            return tl.inline_asm_elementwise(
                "lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            return tl.log2(x)

    @triton.jit
    def _softplus(x):
        # mamba's softplus: values above 20 pass through unchanged (the select drops e, which may
        # be inf there; no clamp of x, whose min.f32 would also turn a NaN into 20). log1p(e) is
        # e (1 - e / 2) where 1 + e would lose e's digits (relative error < e^2 / 3), so no
        # division is needed.
        e = tl.exp(x)
        log1p_e = tl.where(e < 1e-3, e * (1.0 - 0.5 * e), _log2(1.0 + e) * 0.6931471805599453)
        return tl.where(x > 20.0, x, log1p_e)

    @triton.jit
    def _softplus_grad(x):
        return tl.where(x > 20.0, 1.0, tl.sigmoid(x))

    @triton.jit
    def _softplus_and_slope(x):
        # softplus and its slope sigmoid(x) = e / (1 + e) from the softplus's own exponential
        # (tl.sigmoid would take a second one); both pass through above 20 as mamba's softplus
        # (and as ``_softplus``, x is not clamped: inf / inf there is dropped by the select).
        e = tl.exp(x)
        log1p_e = tl.where(e < 1e-3, e * (1.0 - 0.5 * e), _log2(1.0 + e) * 0.6931471805599453)
        big = x > 20.0
        return tl.where(big, x, log1p_e), tl.where(big, 1.0, e / (1.0 + e))

    @triton.jit
    def _store_partial(ptr, value, mask, blk):
        # Channel-block partial sums: the program's first block writes, later ones add (same
        # program, fixed order: deterministic).
        prev = tl.load(ptr, mask=mask & (blk > 0), other=0.0)
        tl.store(ptr, prev + value, mask=mask)

    @triton.jit
    def _low_rank_dt(
        low_ptr,
        s_lr,
        offs_low,
        w_ptr,
        offs_d,
        m_d,
        m_p,
        R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # dt = dt_weight @ dt_low at one position per lane, [channels, lanes], before bias and
        # softplus: R rows shared by the channels. offs_low: the lanes' positions in dt_low.
        b_dt = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
        for r in tl.static_range(R):
            b_w = tl.load(w_ptr + offs_d * R + r, mask=m_d, other=0.0)
            b_low = tl.load(low_ptr + r * s_lr + offs_low, mask=m_p, other=0.0).to(tl.float32)
            b_dt += b_w[:, None] * b_low[None, :]
        return b_dt

    @triton.jit
    def _walk_inputs(
        planes,
        strides,
        offs_d,
        m_d,
        offs_n,
        m_n,
        p,
        i,
        j,
        m_c,
        L,
        LOWRANK: tl.constexpr,
        OUTPUT: tl.constexpr,
    ):
        # The global loads of one walk step (a position per lane) in their stored types: u and
        # (full delta) delta [channels, lanes], B and (output pass) C [lanes, NP]. None of them is
        # used here, so a prefetch of the next step does not wait for them. Low rank: dt_low's
        # rows are read where dt is built (R loads per step, carried they would be R tensors).
        # planes: the walk's u, delta, B and C pointers; strides: their (channel or state, i, j)
        # strides, in that order.
        u_ptr, delta_ptr, B_ptr, C_ptr = planes
        s_ud, s_ui, s_uj, s_dd, s_di, s_dj, s_Bn, s_Bi, s_Bj, s_Cn, s_Ci, s_Cj = strides
        m_p = m_c & (p < L) & (p >= 0)
        m = m_d[:, None] & m_p[None, :]
        b_u = tl.load(u_ptr + offs_d[:, None] * s_ud + (i * s_ui + j * s_uj)[None, :], mask=m, other=0.0)
        if LOWRANK:
            b_delta = 0.0
        else:
            p_delta = delta_ptr + offs_d[:, None] * s_dd + (i * s_di + j * s_dj)[None, :]
            b_delta = tl.load(p_delta, mask=m, other=0.0)
        m_pn = m_p[:, None] & m_n[None, :]
        b_B = tl.load(B_ptr + offs_n[None, :] * s_Bn + (i * s_Bi + j * s_Bj)[:, None], mask=m_pn, other=0.0)
        if OUTPUT:
            p_C = C_ptr + offs_n[None, :] * s_Cn + (i * s_Ci + j * s_Cj)[:, None]
            b_C = tl.load(p_C, mask=m_pn, other=0.0)
        else:
            b_C = 0.0
        return b_u, b_delta, b_B, b_C

    @triton.jit
    def _fwd_walk(
        b_x,
        planes,
        strides,
        low_ptr,
        s_lr,
        s_li,
        s_lj,
        w_ptr,
        b_bias,
        b_a,
        out_ptr,
        s_od,
        s_oi,
        s_oj,
        b_skip,
        offs_d,
        m_d,
        offs_n,
        m_n,
        first,
        m_c,
        L,
        M,
        chunk,
        st_ptr,
        st_row,
        state_chunk,
        n_slots,
        R: tl.constexpr,
        LOWRANK: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        OUTPUT: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        HAS_D: tl.constexpr,
        REVERSE: tl.constexpr,
        PREFETCH: tl.constexpr,
        SAVE: tl.constexpr,
        NP: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # One direction over each lane's chunk, one position per step, channels and chunks across
        # the lanes: x = exp(dt A) x + dt B u from the chunk's entering state b_x. The position's
        # (major, minor) index (i, j) is stepped, not divided out, at every step. PREFETCH: the
        # next step's loads are issued before this step's math (the walk is a dependent chain;
        # the last step loads one position past its chunk, masked outside the map).
        # State pass (OUTPUT=False): returns the chunk's exit state and its summed dt (the chunk's
        # decay is exp(A * sum dt)). Output pass: writes (or adds) y = C.x (+ D u) to out.
        # planes and strides: u, delta, B and C as _walk_inputs reads them.
        if REVERSE:
            p = first + chunk - 1
        else:
            p = first
        i = p // M
        j = p % M
        b_dtsum = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
        if SAVE:
            # the first position at or past p (in the walk's order) that ends one of the
            # backward's chunks, and the chunk it enters (none past the last: not stored)
            if REVERSE:
                b_end = (p // state_chunk) * state_chunk
                b_slot = b_end // state_chunk - 1
            else:
                b_end = (p // state_chunk + 1) * state_chunk - 1
                b_slot = (b_end + 1) // state_chunk
        if PREFETCH:
            b_u_next, b_delta_next, b_B_next, b_C_next = _walk_inputs(
                planes, strides, offs_d, m_d, offs_n, m_n, p, i, j, m_c, L, LOWRANK, OUTPUT
            )
        for _ in range(chunk):
            m_p = m_c & (p < L)
            m = m_d[:, None] & m_p[None, :]
            p_next, i_next, j_next = _step(p, i, j, M, DESCENDING=REVERSE)
            if PREFETCH:
                b_u, b_delta, b_B, b_C = b_u_next, b_delta_next, b_B_next, b_C_next
                p_load, i_load, j_load = p_next, i_next, j_next
            else:
                p_load, i_load, j_load = p, i, j
            b_u_load, b_delta_load, b_B_load, b_C_load = _walk_inputs(
                planes, strides, offs_d, m_d, offs_n, m_n, p_load, i_load, j_load, m_c, L, LOWRANK, OUTPUT
            )
            if PREFETCH:
                b_u_next, b_delta_next, b_B_next, b_C_next = b_u_load, b_delta_load, b_B_load, b_C_load
            else:
                b_u, b_delta, b_B, b_C = b_u_load, b_delta_load, b_B_load, b_C_load
            b_u = b_u.to(tl.float32)
            if LOWRANK:
                b_dt = _low_rank_dt(
                    low_ptr, s_lr, i * s_li + j * s_lj, w_ptr, offs_d, m_d, m_p, R, BLOCK_D, BLOCK_C
                )
            else:
                b_dt = b_delta.to(tl.float32)
            b_dt += b_bias[:, None]
            if DELTA_SOFTPLUS:
                b_dt = _softplus(b_dt)
            b_B = b_B.to(tl.float32)
            b_decay = tl.exp(b_dt[:, :, None] * b_a[:, None, :])
            b_x = b_decay * b_x + (b_dt * b_u)[:, :, None] * b_B[None, :, :]
            if OUTPUT:
                b_y = tl.sum(b_x * b_C.to(tl.float32)[None, :, :], axis=2)
                if HAS_D:
                    b_y += b_skip[:, None] * b_u
                p_out = out_ptr + offs_d[:, None] * s_od + (i * s_oi + j * s_oj)[None, :]
                if ACCUMULATE:
                    b_y += tl.load(p_out, mask=m, other=0.0).to(tl.float32)
                tl.store(p_out, b_y.to(p_out.dtype.element_ty), mask=m)
                if SAVE:
                    # the next end of a backward chunk is tracked, not divided out per step
                    at_end = p == b_end
                    _save_states(st_ptr, st_row, offs_d, offs_n, b_x, b_slot, m_p & at_end, m_d, n_slots, NP)
                    if REVERSE:
                        b_end = tl.where(at_end, b_end - state_chunk, b_end)
                        b_slot = tl.where(at_end, b_slot - 1, b_slot)
                    else:
                        b_end = tl.where(at_end, b_end + state_chunk, b_end)
                        b_slot = tl.where(at_end, b_slot + 1, b_slot)
            else:
                b_dtsum += tl.where(m, b_dt, 0.0)
            p, i, j = p_next, i_next, j_next
        return b_x, b_dtsum

    # The flags of the optional inputs the SS2D kernels take (an absent pointer is None).
    _OPTIONAL_INPUTS = {
        "LOWRANK": lambda args: args["low_ptr"] is not None,
        "HAS_D": lambda args: args["Ds_ptr"] is not None,
        "HAS_BIAS": lambda args: args["bias_ptr"] is not None,
    }

    @triton.heuristics(
        {
            **_OPTIONAL_INPUTS,
            "OUTPUT": lambda args: args["out_ptr"] is not None,
            "HAS_STATE": lambda args: args["state_ptr"] is not None,
            "SAVE": lambda args: args["st_ptr"] is not None,
        }
    )
    @triton.jit
    def ss2d_fwd_chunk_kernel(
        u_ptr,
        delta_ptr,
        low_ptr,
        w_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        Ds_ptr,
        bias_ptr,
        state_ptr,
        dtsum_ptr,
        out_ptr,
        st_ptr,
        s_ub,
        s_ud,
        s_ui,
        s_uj,
        s_db,
        s_dk,
        s_dd,
        s_di,
        s_dj,
        s_lb,
        s_lk,
        s_lr,
        s_li,
        s_lj,
        s_Bb,
        s_Bk,
        s_Bn,
        s_Bi,
        s_Bj,
        s_Cb,
        s_Ck,
        s_Cn,
        s_Ci,
        s_Cj,
        s_ob,
        s_od,
        s_oi,
        s_oj,
        D,
        L,
        M,
        chunk,
        n_chunks,
        state_chunk,
        n_slots,
        k_f,
        N: tl.constexpr,
        R: tl.constexpr,
        NP: tl.constexpr,
        LOWRANK: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        OUTPUT: tl.constexpr,
        HAS_STATE: tl.constexpr,
        SAVE: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        PREFETCH: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # One orientation: direction k_f (sequence order) and k_f + 2 (its reversal) over the
        # same chunks of positions. The launcher passes the strides of the orientation's major
        # (i) and minor (j) spatial axes, so the kernel never tells rows from columns.
        pid_c = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_b = tl.program_id(2).to(tl.int64)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = offs_d < D
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        m_c = offs_c < n_chunks
        offs_n = tl.arange(0, NP)
        m_n = offs_n < N
        m_dn = m_d[:, None] & m_n[None, :]
        first = offs_c * chunk
        # chunk states: (B, 4, D, n_chunks, NP) and summed dt (B, 4, D, n_chunks)
        offs_state = (offs_d[:, None, None] * n_chunks + offs_c[None, :, None]) * NP + offs_n[None, None, :]
        m_state = m_d[:, None, None] & m_c[None, :, None] & m_n[None, None, :]
        b_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
        if OUTPUT and HAS_D:
            b_skip = tl.load(Ds_ptr + k_f * D + offs_d, mask=m_d, other=0.0)
            b_skip += tl.load(Ds_ptr + (k_f + 2) * D + offs_d, mask=m_d, other=0.0)
        # the reversal first: in the output pass the sequence-order walk then adds to what it wrote
        for rev in tl.static_range(2):
            k = k_f + 2 * (1 - rev)
            if HAS_BIAS:
                b_bias = tl.load(bias_ptr + k * D + offs_d, mask=m_d, other=0.0)
            else:
                b_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
            b_a = tl.load(A_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
            # absent tensors are None: offset only the pointers that exist
            if HAS_STATE:
                p_state = state_ptr + (pid_b * 4 + k) * D * n_chunks * NP + offs_state
            if OUTPUT and HAS_STATE:
                b_x = tl.load(p_state, mask=m_state, other=0.0)
            else:
                b_x = tl.zeros([BLOCK_D, BLOCK_C, NP], dtype=tl.float32)
            if LOWRANK:
                dt_src = low_ptr + pid_b * s_lb + k * s_lk
                w_k = w_ptr + k * D * R
            else:
                dt_src = delta_ptr + pid_b * s_db + k * s_dk
                w_k = w_ptr
            if OUTPUT:
                out_b = out_ptr + pid_b * s_ob
            else:
                out_b = out_ptr
            B_k = B_ptr + pid_b * s_Bb + k * s_Bk
            C_k = C_ptr + pid_b * s_Cb + k * s_Ck
            b_x, b_dtsum = _fwd_walk(
                b_x,
                (u_ptr + pid_b * s_ub, dt_src, B_k, C_k),
                (s_ud, s_ui, s_uj, s_dd, s_di, s_dj, s_Bn, s_Bi, s_Bj, s_Cn, s_Ci, s_Cj),
                dt_src,
                s_lr,
                s_li,
                s_lj,
                w_k,
                b_bias,
                b_a,
                out_b,
                s_od,
                s_oi,
                s_oj,
                b_skip,
                offs_d,
                m_d,
                offs_n,
                m_n,
                first,
                m_c,
                L,
                M,
                chunk,
                st_ptr,
                (pid_b * 4 + k) * D,
                state_chunk,
                n_slots,
                R=R,
                LOWRANK=LOWRANK,
                DELTA_SOFTPLUS=DELTA_SOFTPLUS,
                OUTPUT=OUTPUT,
                ACCUMULATE=ACCUMULATE or rev == 1,
                HAS_D=HAS_D and rev == 0,
                REVERSE=rev == 0,
                PREFETCH=PREFETCH,
                SAVE=SAVE and OUTPUT,
                NP=NP,
                BLOCK_D=BLOCK_D,
                BLOCK_C=BLOCK_C,
            )
            if OUTPUT:
                # the second walk reads back what the first one stored
                tl.debug_barrier()
            else:
                tl.store(p_state, b_x, mask=m_state)
                p_dtsum = (
                    dtsum_ptr + (pid_b * 4 + k) * D * n_chunks + offs_d[:, None] * n_chunks + offs_c[None, :]
                )
                tl.store(p_dtsum, b_dtsum, mask=m_d[:, None] & m_c[None, :])

    @triton.jit
    def ss2d_fwd_chain_kernel(
        state_ptr,
        dtsum_ptr,
        A_ptr,
        D,
        n_chunks,
        k0,
        N: tl.constexpr,
        NP: tl.constexpr,
        N_K: tl.constexpr,
        ADJOINT: tl.constexpr,
        BLOCK_D: tl.constexpr,
        CHAIN_STEP: tl.constexpr,
    ):
        # Chunk exit states (computed from a zero entry) -> true entering states, in place: a
        # sequential pass over the chunks of one direction, in that direction's order (the
        # opposite order for the backward's adjoint, which decays by the same summed dt).
        # Directions k0 .. k0 + N_K - 1 of every image (grid: channel blocks, images x N_K).
        pid_d = tl.program_id(0)
        k = k0 + tl.program_id(1) % N_K
        pid_bk = (tl.program_id(1) // N_K).to(tl.int64) * 4 + k
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = offs_d < D
        offs_n = tl.arange(0, NP)
        m_dn = m_d[:, None] & (offs_n[None, :] < N)
        b_a = tl.load(A_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
        p_state = state_ptr + (pid_bk * D + offs_d[:, None]) * n_chunks * NP + offs_n[None, :]
        p_dtsum = dtsum_ptr + (pid_bk * D + offs_d) * n_chunks
        b_x = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        in_order = (k < 2) != ADJOINT
        # CHAIN_STEP chunks at a time: their loads first (a tuple), then the carry through them,
        # so the program waits for memory once per CHAIN_STEP chunks, not once per chunk. Chunks
        # past the end load zeros (dt 0: the carry passes unchanged) and store nothing.
        for t0 in range(0, n_chunks, CHAIN_STEP):
            b_exits = ()
            b_decays = ()
            for i in tl.static_range(CHAIN_STEP):
                t = t0 + i
                c = tl.where(in_order, t, n_chunks - 1 - t)
                b_exits = b_exits + (tl.load(p_state + c * NP, mask=m_dn & (t < n_chunks), other=0.0),)  # noqa: RUF005
                b_dtsum = tl.load(p_dtsum + c, mask=m_d & (t < n_chunks), other=0.0)
                b_decays = b_decays + (tl.exp(b_dtsum[:, None] * b_a),)  # noqa: RUF005
            for i in tl.static_range(CHAIN_STEP):
                t = t0 + i
                c = tl.where(in_order, t, n_chunks - 1 - t)
                tl.store(p_state + c * NP, b_x, mask=m_dn & (t < n_chunks))
                b_x = b_decays[i] * b_x + b_exits[i]

    @triton.jit
    def _state_slot(p, L, chunk, REVERSE: tl.constexpr):
        # The chunk of the backward whose entering state is the state after position p in a
        # walk's order, or -1: in sequence order p + 1 starts a chunk, in reverse p does (the
        # reversal enters chunk p / chunk - 1 from above); the first chunk a walk takes enters
        # with zero, which the launcher's buffer holds.
        if REVERSE:
            return tl.where((p % chunk == 0) & (p > 0), p // chunk - 1, -1)
        else:
            return tl.where(((p + 1) % chunk == 0) & (p + 1 < L), (p + 1) // chunk, -1)

    @triton.jit
    def _save_states(st_ptr, row, offs_d, offs_n, b_x, b_slot, m_save, m_d, n_slots, NP: tl.constexpr):
        # The chunk walk's states b_x [BLOCK_D, lanes, NP] where a lane's position ends one of the
        # backward's chunks (m_save; b_slot [lanes]: the chunk it enters), as that chunk's
        # entering state, so the backward starts each chunk's walk from its true state (no walk
        # from zero, no chain for the state). The states are (B, 4, D, n_slots, NP); row =
        # (image * 4 + k) * D.
        p_st = st_ptr + ((row + offs_d[:, None, None]) * n_slots + b_slot[None, :, None]) * NP
        m_st = m_d[:, None, None] & (m_save & (b_slot >= 0) & (b_slot < n_slots))[None, :, None]
        tl.store(p_st + offs_n[None, None, :], b_x, mask=m_st)

    @triton.jit
    def _entry_combine(a1, x1, e1, f1, a2, x2, e2, f2):
        # Affine maps x -> a x + b in walk order, as (a segment's whole map, its map without the
        # last element): the inclusive scan of these gives each lane the map of all lanes before
        # it, so no shift between lanes is needed. Single elements enter as (a, x, 1, 0).
        return a1 * a2, a2 * x1 + x2, a1 * e2, e2 * x1 + f2

    @triton.jit
    def _at_index(x, offs, index, axis: tl.constexpr):
        # x at `index` along `axis` (reduced away). -0.0 elsewhere: along an axis held within a
        # thread the selects and the adds (x + -0.0 == x exactly) fold to a register pick.
        return tl.sum(tl.where(offs == index, x, -0.0), axis=axis)

    @triton.jit
    def _lane_scan(b_a, b_b, i4, i_pick, SUB: tl.constexpr, REVERSE: tl.constexpr):
        # x_i = a_i x_(i-1) + b_i along axis 0, which lies within a thread, from a zero state;
        # sequential (tl.associative_scan would shuffle across lanes). Returns the states and
        # decay products at every i, the lane's exit state and product, and its state and
        # product at i_pick ([lanes]; None: not picked).
        if REVERSE:
            first = SUB - 1
        else:
            first = 0
        b_p = _at_index(b_a, i4, first, 0)
        b_x = _at_index(b_b, i4, first, 0)
        b_ps = b_a
        b_xs = b_b
        b_x_pick = b_x
        b_p_pick = b_p
        for step in tl.static_range(1, SUB):
            if REVERSE:
                i = SUB - 1 - step
            else:
                i = step
            b_ai = _at_index(b_a, i4, i, 0)
            b_x = b_ai * b_x + _at_index(b_b, i4, i, 0)
            b_p = b_p * b_ai
            b_xs = tl.where(i4 == i, b_x[None, :, :, :], b_xs)
            b_ps = tl.where(i4 == i, b_p[None, :, :, :], b_ps)
            if i_pick is not None:
                b_x_pick = tl.where(i_pick == i, b_x, b_x_pick)
                b_p_pick = tl.where(i_pick == i, b_p, b_p_pick)
        return b_ps, b_xs, b_p, b_x, b_x_pick, b_p_pick

    @triton.jit
    def _dt_weight_operand(
        w_ptr,
        k,
        D,
        offs_d,
        s_lr,
        low_dtype: tl.constexpr,
        R: tl.constexpr,
        RP: tl.constexpr,
        BY_POSITION: tl.constexpr,
    ):
        # The right operand of dt = dt_low^T W^T for direction k, [RP, BLOCK_D], and the row offsets
        # of the left one (dt_low's rows along the RP products): [1, RP] for a dt_low tile loaded
        # [positions, RP] (BY_POSITION), else [RP, 1] for one loaded [RP, positions]. fp32
        # dt_low: W as is (tf32x3 products). Half dt_low (exact in the products' input type): W as the sum of two parts
        # in that type, W1 = half(W) and W2 = half(W - W1), so one half-precision product of
        # dt_low, its rows twice along RP, with [W1; W2] gives each term to ~2^-18 (bf16) or
        # ~2^-22 (fp16) relative (the products are exact, the sums fp32; W1 alone: ~2^-9). Rows
        # past the parts are zero and meet dt_low's clamped last row: no tile load is masked.
        offs_q = tl.arange(0, RP)
        if low_dtype == tl.float32:
            n_parts: tl.constexpr = 1
        else:
            n_parts: tl.constexpr = 2
        r = offs_q % R
        q = offs_q // R
        p_w = w_ptr + (k * D + tl.minimum(offs_d, D - 1)[None, :]) * R + r[:, None]
        b_w = tl.load(p_w, mask=(q < n_parts)[:, None], other=0.0)
        if n_parts == 1:
            b_wt = b_w
        else:
            b_w1 = b_w.to(low_dtype)
            b_w2 = (b_w - b_w1.to(tl.float32)).to(low_dtype)
            b_wt = tl.where((q == 0)[:, None], b_w1, b_w2)
        r_q = tl.where(q < n_parts, r, R - 1) * s_lr
        if BY_POSITION:
            r_low = r_q[None, :]
        else:
            r_low = r_q[:, None]
        return b_wt, r_low

    @triton.jit
    def _dt_product(b_low, b_wt):
        # dt_low's tile [positions, RP] times ``_dt_weight_operand``'s [RP, channels], fp32 sums:
        # fp32 dt_low in tf32x3 (fp32 accuracy from three tf32 products), half dt_low as it is
        if b_low.dtype == tl.float32:
            return tl.dot(b_low, b_wt, input_precision="tf32x3")
        elif _GPU_MATH:
            return tl.dot(b_low, b_wt)
        else:  # the interpreter multiplies no halves; fp32 holds them exactly
            return tl.dot(b_low.to(tl.float32), b_wt.to(tl.float32))

    @triton.jit
    def _spatial(base, i0, j0, rel, M, inv_M, s_i, s_j, FLAT: tl.constexpr):
        # Memory offsets of the positions rel after base = (i0, j0) in the orientation's major (i)
        # and minor (j) axes. FLAT: the plane is contiguous in walk order (s_i = M s_j).
        if FLAT:
            return (base + rel) * s_j
        else:
            # wraps = (j0 + rel) // M from a float product: exact while j0 + rel < 2^20, as
            # (j + 1/2) / M lies at least 1 / (2M) from the next integer
            j = j0 + rel
            wraps = ((j.to(tl.float32) + 0.5) * inv_M).to(tl.int32)
            return (i0 + wraps) * s_i + (j - wraps * M) * s_j

    @triton.jit
    def _tile_offsets(
        base,
        i0,
        j0,
        M,
        inv_M,
        s_i,
        s_j,
        FLAT: tl.constexpr,
        ONE_WRAP: tl.constexpr,
        SUB: tl.constexpr,
        NSUB: tl.constexpr,
    ):
        # _spatial of the tile's [SUB, NSUB] positions s SUB + i. ONE_WRAP (M >= SUB): a lane's SUB
        # positions cross at most one end of the minor axis, so the division is done per lane
        # and each element only checks that one wrap.
        i = tl.arange(0, SUB)[:, None]
        lane = tl.arange(0, NSUB)[None, :] * SUB
        if FLAT or not ONE_WRAP:
            return _spatial(base, i0, j0, i + lane, M, inv_M, s_i, s_j, FLAT)
        else:
            j_lane = j0 + lane
            wraps = ((j_lane.to(tl.float32) + 0.5) * inv_M).to(tl.int32)
            j_lane -= wraps * M
            off_lane = (i0 + wraps) * s_i + j_lane * s_j
            return off_lane + i * s_j + tl.where(j_lane + i >= M, s_i - M * s_j, 0)

    @triton.jit
    def _load_or_zero(ptr, mask):
        # values in their stored type; None: no mask (no predicate, no default to move in)
        if mask is None:
            return tl.load(ptr)
        else:
            return tl.load(ptr, mask=mask, other=0.0)

    @triton.jit
    def _tile_base(t, L, CHUNK: tl.constexpr, REVERSE: tl.constexpr, ALIGNED: tl.constexpr):
        # First position of a walk's tile t: the reversal's tiles count from the sequence's end.
        # The walk's last tile is moved back to lie within the sequence (its done positions are
        # masked by the caller).
        if REVERSE:
            base = tl.maximum(L - (t + 1) * CHUNK, 0)
        else:
            base = tl.minimum(t * CHUNK, L - CHUNK)
        if ALIGNED:
            # L and the tile are multiples of 8, so is every tile's start: the contiguous loads
            # of a lane's positions become 16-byte vectors
            base = tl.multiple_of(base, 8)
        return base

    @triton.jit
    def _tile_inputs(
        planes,
        strides,
        base,
        M,
        inv_M,
        r_low,
        m_n3,
        LOWRANK: tl.constexpr,
        DOT_DT: tl.constexpr,
        DT_BY_POSITION: tl.constexpr,
        FLAT: tl.constexpr,
        ONE_WRAP: tl.constexpr,
        SAME_PLANE: tl.constexpr,
        SUB: tl.constexpr,
        NSUB: tl.constexpr,
    ):
        # The global loads of the tile at `base`, in their stored types: u [SUB, 1, NSUB] per
        # channel, B and C [SUB, NP, NSUB], and dt's source: the dt_low tile [SUB * NSUB, RP]
        # (DOT_DT with DT_BY_POSITION; [RP, SUB * NSUB] without), delta [SUB, 1, NSUB] per
        # channel, or (low rank without the dot) the offsets of dt_low's rows, which are read
        # where dt is built. Nothing here uses a loaded value, so a
        # prefetch of the next tile does not wait for its loads. planes: the walk's u, dt source,
        # B and C pointers; strides: the (i, j) strides of u, dt's source, B, C and out.
        u_b, dt_b, B_b, C_b = planes
        s_ui, s_uj, s_ti, s_tj, s_Bi, s_Bj, s_Ci, s_Cj, s_oi, s_oj = strides
        i0 = base // M
        j0 = base - i0 * M
        off_u = _tile_offsets(base, i0, j0, M, inv_M, s_ui, s_uj, FLAT, ONE_WRAP, SUB, NSUB)
        if SAME_PLANE:  # every plane has u's spatial strides: one offset for all
            off_t = off_u
            off_B = off_u
            off_C = off_u
            off_o = off_u
        else:
            off_t = _tile_offsets(base, i0, j0, M, inv_M, s_ti, s_tj, FLAT, ONE_WRAP, SUB, NSUB)
            off_B = _tile_offsets(base, i0, j0, M, inv_M, s_Bi, s_Bj, FLAT, ONE_WRAP, SUB, NSUB)
            off_C = _tile_offsets(base, i0, j0, M, inv_M, s_Ci, s_Cj, FLAT, ONE_WRAP, SUB, NSUB)
            off_o = _tile_offsets(base, i0, j0, M, inv_M, s_oi, s_oj, FLAT, ONE_WRAP, SUB, NSUB)
        b_u = tl.load(u_b + off_u[:, None, :])
        if DOT_DT:
            off_p = _spatial(base, i0, j0, tl.arange(0, SUB * NSUB), M, inv_M, s_ti, s_tj, FLAT)
            if DT_BY_POSITION:
                b_src = tl.load(dt_b + off_p[:, None] + r_low)
            else:
                b_src = tl.load(dt_b + r_low + off_p[None, :])
        elif LOWRANK:
            b_src = off_t
        else:
            b_src = tl.load(dt_b + off_t[:, None, :])
        b_B = _load_or_zero(B_b + off_B[:, None, :], m_n3)
        b_C = _load_or_zero(C_b + off_C[:, None, :], m_n3)
        return b_u, b_src, b_B, b_C, off_o

    @triton.heuristics(
        {
            **_OPTIONAL_INPUTS,
            "EVEN_D": lambda args: args["D"] % args["BLOCK_D"] == 0,
            "DOT_DT": lambda args: _dot_dt_fits(args),
            "RP": lambda args: _dot_dt_depth(args),
            "DT_BY_POSITION": lambda args: _dt_by_position(args),
            "ONE_WRAP": lambda args: args["M"] >= args["SUB"],
            "SAVE": lambda args: args["st_ptr"] is not None,
            "LANE_PICK": lambda args: args["STATIC_CHUNK"] == 0 and args["state_chunk"] >= args["SUB"],
            "ALIGNED": lambda args: (
                args["FLAT"] and args["L"] % 8 == 0 and args["SUB"] * args["NSUB"] % 8 == 0
            ),
        }
    )
    @triton.jit
    def ss2d_fwd_scan_kernel(
        u_ptr,
        delta_ptr,
        low_ptr,
        w_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        Ds_ptr,
        bias_ptr,
        out_ptr,
        st_ptr,
        s_ub,
        s_ud,
        s_ui,
        s_uj,
        s_db,
        s_dk,
        s_dd,
        s_di,
        s_dj,
        s_lb,
        s_lk,
        s_lr,
        s_li,
        s_lj,
        s_Bb,
        s_Bk,
        s_Bn,
        s_Bi,
        s_Bj,
        s_Cb,
        s_Ck,
        s_Cn,
        s_Ci,
        s_Cj,
        s_ob,
        s_od,
        s_oi,
        s_oj,
        D,
        L,
        M,
        n_tiles,
        state_chunk,
        n_slots,
        k_f,
        N: tl.constexpr,
        R: tl.constexpr,
        NP: tl.constexpr,
        LOWRANK: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        EVEN_D: tl.constexpr,
        FLAT: tl.constexpr,
        SUB: tl.constexpr,
        NSUB: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_DT: tl.constexpr,
        RP: tl.constexpr,
        DT_BY_POSITION: tl.constexpr,
        ALIGNED: tl.constexpr,
        SAME_PLANE: tl.constexpr,
        ONE_WRAP: tl.constexpr,
        PREFETCH: tl.constexpr,
        SAVE: tl.constexpr,
        LANE_PICK: tl.constexpr,
        STATIC_CHUNK: tl.constexpr,
    ):
        # One orientation (directions k_f and k_f + 2) of BLOCK_D channels of one image, walked
        # in tiles of SUB x NSUB positions, the state carried from tile to tile: no chunk states,
        # no second pass. Tiles are [SUB, NP, BLOCK_D, NSUB]: lane (channel, s) owns positions
        # s * SUB + i, i along axis 0 within one thread; lanes along the last axis. Per tile: dt,
        # softplus, decay and input once per element, a sequential scan within each lane from a
        # zero state, a scan over the lanes' whole maps for each lane's entering state, then
        # y = C (x_local + decay product * entering state). Low rank (DOT_DT): dt of the whole
        # tile as [positions, RP] x [RP, BLOCK_D] (each dt_low value loaded and converted once per
        # program instead of once per channel and row), moved to the tile's layout through shared
        # memory. The launcher passes the strides of the orientation's major (i) and minor (j)
        # spatial axes: rows and columns alike; SAME_PLANE: all planes share u's offsets.
        # Every tile lies within the sequence (L >= tile): the last one of a walk is moved back to
        # end at its end, and its positions that the walk has done already get dt = 0 (decay 1,
        # no input: the state passes through) and are not stored. So no load is masked; channel
        # and state indices are clamped for loads, padded states get A = B = C = 0.
        pid_d = tl.program_id(0)
        pid_b = tl.program_id(1).to(tl.int64)
        CHUNK = SUB * NSUB
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = offs_d < D
        dl3 = tl.minimum(offs_d, D - 1)[None, :, None]
        offs_n = tl.arange(0, NP)
        m_n = offs_n < N
        n3 = tl.minimum(offs_n, N - 1)[None, :, None]
        # padded states read B = C = 0 (their A = 0 keeps them finite)
        if N == NP:
            m_n3 = None
        else:
            m_n3 = m_n[None, :, None]
        # position within the tile, [SUB, NSUB]
        rel = tl.arange(0, SUB)[:, None] + tl.arange(0, NSUB)[None, :] * SUB
        i4 = tl.arange(0, SUB)[:, None, None, None]
        s3 = tl.arange(0, NSUB)[None, None, :]
        inv_M = 1.0 / M
        b_skip = tl.zeros([1, BLOCK_D, 1], dtype=tl.float32)
        if HAS_D:
            b_skip = tl.load(Ds_ptr + k_f * D + dl3) + tl.load(Ds_ptr + (k_f + 2) * D + dl3)
        u_b = u_ptr + pid_b * s_ub + dl3 * s_ud
        out_b = out_ptr + pid_b * s_ob + offs_d[None, :, None] * s_od
        # the reversal first: the sequence-order walk then adds to what it wrote
        for rev in tl.static_range(2):
            k = k_f + 2 * (1 - rev)
            b_bias = tl.zeros([1, BLOCK_D, 1], dtype=tl.float32)
            if HAS_BIAS:
                b_bias = tl.load(bias_ptr + k * D + dl3)
            # A log2(e) as [1, NP, BLOCK_D, 1]: the decay is one ex2
            p_a = A_ptr + (k * D + tl.minimum(offs_d, D - 1)[None, None, :]) * N + offs_n[None, :, None]
            b_a = tl.load(p_a, mask=m_n[None, :, None], other=0.0)
            b_a = (b_a * 1.4426950408889634)[:, :, :, None]
            if LOWRANK:
                dt_b = low_ptr + pid_b * s_lb + k * s_lk
                s_ti = s_li
                s_tj = s_lj
            else:
                dt_b = delta_ptr + pid_b * s_db + k * s_dk + dl3 * s_dd
                s_ti = s_di
                s_tj = s_dj
            B_b = B_ptr + pid_b * s_Bb + k * s_Bk + n3 * s_Bn
            C_b = C_ptr + pid_b * s_Cb + k * s_Ck + n3 * s_Cn
            if DOT_DT:
                b_wt, r_low = _dt_weight_operand(
                    w_ptr, k, D, offs_d, s_lr, low_ptr.dtype.element_ty, R, RP, DT_BY_POSITION
                )
            b_carry = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
            if not DOT_DT:
                r_low = 0
            # what every tile's loads of this walk share (_tile_inputs)
            planes = (u_b, dt_b, B_b, C_b)
            strides = (s_ui, s_uj, s_ti, s_tj, s_Bi, s_Bj, s_Ci, s_Cj, s_oi, s_oj)
            if PREFETCH:  # the first tile's loads, before the walk
                b_u_next, b_src_next, b_B_next, b_C_next, _ = _tile_inputs(
                    planes, strides, _tile_base(0, L, CHUNK, REVERSE=rev == 0, ALIGNED=ALIGNED),
                    M, inv_M, r_low, m_n3, LOWRANK, DOT_DT, DT_BY_POSITION, FLAT, ONE_WRAP, SAME_PLANE, SUB, NSUB,
                )  # fmt: skip
            for t in range(n_tiles):
                # the tile [base, base + CHUNK) and its positions not done by an earlier tile
                base = _tile_base(t, L, CHUNK, REVERSE=rev == 0, ALIGNED=ALIGNED)
                if rev == 0:
                    m_new = rel < L - t * CHUNK - base
                else:
                    m_new = rel >= t * CHUNK - base
                if PREFETCH:
                    # software pipeline: the next tile's loads are issued before this tile's math,
                    # so their latency hides behind it (the last tile loads itself again)
                    t_load = tl.minimum(t + 1, n_tiles - 1)
                else:
                    t_load = t
                b_u_load, b_src_load, b_B_load, b_C_load, off_o_load = _tile_inputs(
                    planes, strides, _tile_base(t_load, L, CHUNK, REVERSE=rev == 0, ALIGNED=ALIGNED),
                    M, inv_M, r_low, m_n3, LOWRANK, DOT_DT, DT_BY_POSITION, FLAT, ONE_WRAP, SAME_PLANE, SUB, NSUB,
                )  # fmt: skip
                if PREFETCH:
                    b_u, b_src, b_B, b_C = b_u_next, b_src_next, b_B_next, b_C_next
                    b_u_next, b_src_next, b_B_next, b_C_next = b_u_load, b_src_load, b_B_load, b_C_load
                else:
                    b_u, b_src, b_B, b_C, off_o = b_u_load, b_src_load, b_B_load, b_C_load, off_o_load
                b_u = b_u.to(tl.float32)
                if DOT_DT:
                    # dt = dt_low[k]^T dt_weight[k]^T on the tensor cores, [CHUNK, RP] x [RP, BLOCK_D]:
                    # each dt_low value is loaded once per program, not per channel (fp32 dt_low:
                    # tf32x3, fp32 accuracy from three tf32 products; halves: _dt_weight_operand)
                    if DT_BY_POSITION:
                        b_low = b_src
                    else:
                        b_low = tl.trans(b_src)
                    b_dt = _dt_product(b_low, b_wt)
                    # tile position s * SUB + i -> [SUB, BLOCK_D, NSUB]
                    b_dt = tl.permute(tl.reshape(b_dt, [NSUB, SUB, BLOCK_D]), [1, 2, 0])
                elif LOWRANK:
                    # dt = dt_weight[k] @ dt_low[k]: R rows per position, shared by the channels
                    b_dt = tl.zeros([SUB, BLOCK_D, NSUB], dtype=tl.float32)
                    for r in tl.static_range(R):
                        b_w = tl.load(w_ptr + (k * D + dl3) * R + r)
                        b_low = tl.load(dt_b + r * s_lr + b_src).to(tl.float32)
                        b_dt += b_w * b_low[:, None, :]
                else:
                    b_dt = b_src.to(tl.float32)
                b_dt += b_bias
                if DELTA_SOFTPLUS:
                    b_dt = _softplus(b_dt)
                b_dt = tl.where(m_new[:, None, :], b_dt, 0.0)
                b_B = b_B.to(tl.float32)
                # [SUB, NP, BLOCK_D, NSUB]: decay and input of every element and state
                b_decay = tl.exp2(b_dt[:, None, :, :] * b_a)
                b_in = (b_dt * b_u)[:, None, :, :] * b_B[:, :, None, :]
                i_end = None
                if SAVE and LANE_PICK:
                    # a lane's SUB positions hold at most one end of the backward's chunks (they
                    # are at least SUB long): the lane's state there is saved
                    lane = base + tl.arange(0, NSUB) * SUB
                    if rev == 0:
                        i_end = (state_chunk - lane % state_chunk) % state_chunk
                    else:
                        i_end = (state_chunk - 1 - lane % state_chunk) % state_chunk
                    i_end = i_end[None, None, :]
                b_prod, b_xloc, b_lane_a, b_lane_x, b_x_end, b_p_end = _lane_scan(
                    b_decay, b_in, i4, i_end, SUB, rev == 0
                )
                # over the lanes (across threads): each lane's entering map, the tile's whole map
                b_ta, b_tx, b_ea, b_ex = tl.associative_scan(
                    (b_lane_a, b_lane_x, tl.full(b_lane_a.shape, 1.0, tl.float32), tl.zeros_like(b_lane_x)),
                    2,
                    _entry_combine,
                    reverse=rev == 0,
                )
                b_enter = b_ea * b_carry[:, :, None] + b_ex
                whole = (NSUB - 1) * rev
                b_carry = _at_index(b_ta, s3, whole, 2) * b_carry + _at_index(b_tx, s3, whole, 2)
                b_C = b_C.to(tl.float32)
                b_x = b_xloc + b_prod * b_enter[None, :, :, :]
                if SAVE and STATIC_CHUNK > 0:
                    # the backward's chunks divide the lanes and every tile starts at a multiple
                    # of them (the launcher's STATIC_CHUNK): their ends lie at the same places in
                    # every lane, each state a register of the tile
                    lane = base + tl.arange(0, NSUB) * SUB
                    # the chunk the lane's first chunk end enters (the reversal's chunk p / chunk
                    # - 1 from p, sequence order's (p + 1) / chunk from p); the q-th end's is
                    # that + q
                    slot0 = lane // STATIC_CHUNK + (2 * rev - 1)
                    p_st = st_ptr + ((pid_b * 4 + k) * D + offs_d[None, :, None]) * n_slots * NP
                    p_st += slot0[None, None, :] * NP + offs_n[:, None, None]
                    for q in tl.static_range(SUB // STATIC_CHUNK):
                        if rev == 0:
                            i_q = q * STATIC_CHUNK
                            at = lane + i_q
                            m_q = (at > 0) & (at < L - t * CHUNK)
                        else:
                            i_q = q * STATIC_CHUNK + STATIC_CHUNK - 1
                            at = lane + i_q
                            m_q = (at + 1 < L) & (at >= t * CHUNK)
                        m_st = m_d[None, :, None] & m_q[None, None, :]
                        tl.store(p_st + q * NP, _at_index(b_x, i4, i_q, 0), mask=m_st)
                if SAVE and STATIC_CHUNK == 0 and not LANE_PICK:
                    # chunks shorter than a lane that do not divide it: every element that ends one
                    b_slot = _state_slot(base + rel, L, state_chunk, REVERSE=rev == 0)
                    p_st = st_ptr + ((pid_b * 4 + k) * D + offs_d[None, None, :, None]) * n_slots * NP
                    p_st += b_slot[:, None, None, :] * NP + offs_n[None, :, None, None]
                    m_st = (m_new & (b_slot >= 0))[:, None, None, :] & m_d[None, None, :, None]
                    tl.store(p_st, b_x, mask=m_st)
                if SAVE and LANE_PICK:
                    # (what the pick needs no longer, computed after it: fewer registers live
                    # through the scan)
                    lane = base + tl.arange(0, NSUB) * SUB
                    i_lane = tl.reshape(i_end, [NSUB])
                    if rev == 0:
                        m_save = (i_lane < SUB) & (lane + i_lane < L - t * CHUNK)
                    else:
                        m_save = (i_lane < SUB) & (lane + i_lane >= t * CHUNK)
                    b_slot = _state_slot(lane + i_lane, L, state_chunk, REVERSE=rev == 0)
                    # [NP, BLOCK_D, NSUB] as the states (B, 4, D, n_slots, NP)
                    p_st = st_ptr + ((pid_b * 4 + k) * D + offs_d[None, :, None]) * n_slots * NP
                    p_st += b_slot[None, None, :] * NP + offs_n[:, None, None]
                    m_st = m_d[None, :, None] & (m_save & (b_slot >= 0))[None, None, :]
                    tl.store(p_st, b_x_end + b_p_end * b_enter, mask=m_st)
                b_y = tl.sum(b_x * b_C[:, :, None, :], axis=1)
                if HAS_D and rev == 1:
                    b_y += b_skip * b_u
                if PREFETCH:
                    # this tile's output offsets again, late: carried or kept since the loads,
                    # they hold 16 registers through the math and spill
                    i0 = base // M
                    off_o = _tile_offsets(
                        base, i0, base - i0 * M, M, inv_M, s_oi, s_oj, FLAT, ONE_WRAP, SUB, NSUB
                    )
                p_out = out_b + off_o[:, None, :]
                m_out = m_new[:, None, :]
                if not EVEN_D:
                    m_out = m_out & m_d[None, :, None]
                if ACCUMULATE or rev == 1:
                    b_y += tl.load(p_out, mask=m_out, other=0.0).to(tl.float32)
                tl.store(p_out, b_y.to(p_out.dtype.element_ty), mask=m_out)
            # the second walk reads back what the first one stored
            tl.debug_barrier()

    @triton.jit
    def _bwd_load(
        u_ptr,
        s_ud,
        off_u,
        g_ptr,
        s_gd,
        off_g,
        delta_ptr,
        s_dd,
        off_dt,
        shared,
        b_W,
        b_bias,
        offs_d,
        m_d,
        m_p,
        p_saved,
        R: tl.constexpr,
        LOWRANK: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        SAVED_DT: tl.constexpr,
        V_ROW: tl.constexpr,
        LANES_FIRST: tl.constexpr,
    ):
        # One position per lane: u, g, dt (after the softplus), the softplus slope, B and C
        # [1, lanes, NP], and the R rows of dt_low (a tuple of [lanes]), the last three from the
        # values ``_bwd_shared`` loaded (maybe a step ahead). Low rank: dt = sum_r
        # b_W[r] (the channels' weights, [BLOCK_D]) x row r, one FMA per row, each row shared by
        # the channels. dt is 0 outside the map, so padded positions decay by 1 and add nothing
        # in either walk. SAVED_DT: dt and its slope as ``ss2d_bwd_dt_kernel`` left them (p_saved:
        # the scratch's dt and slope rows, the lanes' position offsets in them and the block's
        # channels: each thread's channels contiguous), no rows, no softplus.
        m = m_d[:, None] & m_p[None, :]
        b_u = _lane_load(u_ptr, offs_d * s_ud, off_u, m_d, m_p, LANES_FIRST)
        b_g = _lane_load(g_ptr, offs_d * s_gd, off_g, m_d, m_p, LANES_FIRST)
        b_rows, b_B, b_C = shared
        b_low = ()
        if SAVED_DT:
            vt_ptr, off_vt, offs_dl = p_saved
            b_dt = _lane_load(vt_ptr, offs_dl, off_vt, m_d, m_p, LANES_FIRST)
            b_slope = _lane_load(vt_ptr + V_ROW, offs_dl, off_vt, m_d, m_p, LANES_FIRST)
        else:
            b_dt, b_slope, b_low = _bwd_dt(
                b_rows,
                delta_ptr + offs_d[:, None] * s_dd + off_dt[None, :],
                b_W,
                b_bias,
                m,
                R=R,
                LOWRANK=LOWRANK,
                DELTA_SOFTPLUS=DELTA_SOFTPLUS,
            )
        return b_u, b_g, b_dt, b_slope, b_B.to(tl.float32), b_C.to(tl.float32), b_low

    @triton.jit
    def _lane_access(off_d, off_p, m_d, m_p, LANES_FIRST: tl.constexpr):
        # (offsets, mask) of the [channels, lanes] values at off_d + off_p (channel and lane
        # offsets), in the access's own form. Triton 3.6 lays out an access whose offsets show no
        # contiguity along its first axis: [channels, lanes] then spreads the 4 channels over
        # lanes ([4, 8] threads), unlike the walk's tiles (lanes across threads, channels within
        # each), and converts between the two at every step; LANES_FIRST accesses [lanes,
        # channels] (and transposes), which takes the tiles' layout there. Triton 3.8 lays the
        # direct form out like the tiles (``_BWD_LANES_FIRST``).
        if LANES_FIRST:
            return off_p[:, None] + off_d[None, :], m_p[:, None] & m_d[None, :]
        else:
            return off_d[:, None] + off_p[None, :], m_d[:, None] & m_p[None, :]

    @triton.jit
    def _lane_load(ptr, off_d, off_p, m_d, m_p, LANES_FIRST: tl.constexpr):
        # [channels, lanes] values at ptr + off_d + off_p, in fp32 (``_lane_access``)
        off, m = _lane_access(off_d, off_p, m_d, m_p, LANES_FIRST)
        b = tl.load(ptr + off, mask=m, other=0.0).to(tl.float32)
        if LANES_FIRST:
            b = tl.trans(b)
        return b

    @triton.jit
    def _lane_store(ptr, off_d, off_p, value, m_d, m_p, LANES_FIRST: tl.constexpr):
        # the store of ``_lane_load``: value [channels, lanes] at ptr + off_d + off_p
        off, m = _lane_access(off_d, off_p, m_d, m_p, LANES_FIRST)
        if LANES_FIRST:
            value = tl.trans(value)
        tl.store(ptr + off, value.to(ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd_dt(
        b_rows, p_delta, b_W, b_bias, m, R: tl.constexpr, LOWRANK: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr
    ):
        # dt (after the softplus, 0 outside the map), its slope and the R rows of dt_low in fp32
        b_low = ()
        if LOWRANK:
            b_raw = tl.zeros(m.shape, dtype=tl.float32)
            for r in tl.static_range(R):
                b_row = b_rows[r].to(tl.float32)
                b_low = b_low + (b_row,)  # noqa: RUF005 (Triton's JIT has no starred unpacking)
                b_raw += b_W[r][:, None] * b_row[None, :]
        else:
            b_raw = tl.load(p_delta, mask=m, other=0.0).to(tl.float32)
        b_raw += b_bias[:, None]
        if DELTA_SOFTPLUS and LOWRANK:
            b_dt, b_slope = _softplus_and_slope(b_raw)
        elif DELTA_SOFTPLUS:
            # (full delta keeps tl.sigmoid: the shared exponential costs its N = 16 launch spills)
            b_dt = _softplus(b_raw)
            b_slope = _softplus_grad(b_raw)
        else:
            b_dt = b_raw
            b_slope = tl.full(b_raw.shape, 1.0, tl.float32)
        b_dt = tl.where(m, b_dt, 0.0)
        return b_dt, b_slope, b_low

    @triton.jit
    def _bwd_shared(
        planes,
        strides,
        off,
        i,
        j,
        offs_n,
        m_n,
        m_p,
        R: tl.constexpr,
        LOWRANK: tl.constexpr,
        SAME_PLANE: tl.constexpr,
        TILE_3D: tl.constexpr,
    ):
        # The loads a position's channels share, as stored: the R rows of dt_low (low rank) and
        # B, C [1, lanes, NP] (as the walk's [channels, lanes, NP] tiles broadcast them), at
        # position (i, j) (off: its offset where the plane strides agree); planes (dt_low, B, C)
        # and strides (s_lr, s_li, s_lj, s_Bn, s_Bi, s_Bj, s_Cn, s_Ci, s_Cj).
        low_ptr, B_ptr, C_ptr = planes
        s_lr, s_li, s_lj, s_Bn, s_Bi, s_Bj, s_Cn, s_Ci, s_Cj = strides
        off_low = _plane(off, i, j, s_li, s_lj, SAME_PLANE)
        off_B = _plane(off, i, j, s_Bi, s_Bj, SAME_PLANE)
        off_C = _plane(off, i, j, s_Ci, s_Cj, SAME_PLANE)
        b_rows = ()
        if LOWRANK:
            for r in tl.static_range(R):
                b_row = tl.load(low_ptr + (r * s_lr + off_low), mask=m_p, other=0.0)
                b_rows = b_rows + (b_row,)  # noqa: RUF005
        m_pn = m_p[:, None] & m_n[None, :]
        if TILE_3D:
            # Loaded as [1, lanes, NP], the load has the walk's tile layout: Triton 3.6 otherwise
            # moves a [lanes, NP] load into it with shuffles at every step (stage 1 low rank: 17.7
            # per element of the gradient launch's 222). The offsets straight from the 1-D ones:
            # built from the 2-D ones, they take the 2-D layout and are moved (N = 16: +4 %
            # instructions with Triton 3.8). Low rank only: the full-delta walks took 6 % more
            # instructions at N = 1 with Triton 3.8, and spilled 8 bytes at N = 16 with 3.6.
            m_pn = m_pn[None, :, :]
            b_B = tl.load(B_ptr + offs_n[None, None, :] * s_Bn + off_B[None, :, None], mask=m_pn, other=0.0)
            b_C = tl.load(C_ptr + offs_n[None, None, :] * s_Cn + off_C[None, :, None], mask=m_pn, other=0.0)
        else:
            b_B = tl.load(B_ptr + offs_n[None, :] * s_Bn + off_B[:, None], mask=m_pn, other=0.0)[None, :, :]
            b_C = tl.load(C_ptr + offs_n[None, :] * s_Cn + off_C[:, None], mask=m_pn, other=0.0)[None, :, :]
        return b_rows, b_B, b_C

    @triton.jit
    def _plane(off, i, j, s_i, s_j, SAME_PLANE: tl.constexpr):
        # a tensor's offset of position (i, j) in its plane: the shared one where every tensor's
        # plane strides agree (one offset per step for all of them)
        if SAME_PLANE:
            return off
        else:
            return i * s_i + j * s_j

    @triton.jit
    def _step(p, i, j, M, DESCENDING: tl.constexpr):
        # the next position of a walk: (major, minor) index stepped, never divided out
        if DESCENDING:
            p -= 1
            j -= 1
            wrap = j < 0
            j = tl.where(wrap, M - 1, j)
            i = tl.where(wrap, i - 1, i)
        else:
            p += 1
            j += 1
            wrap = j == M
            j = tl.where(wrap, 0, j)
            i = tl.where(wrap, i + 1, i)
        return p, i, j

    @triton.jit
    def _bwd_walk(
        b_h,
        b_s,
        b_carry,
        b_dA,
        b_dbias,
        u_ptr,
        s_ud,
        s_ui,
        s_uj,
        g_ptr,
        s_gd,
        s_gi,
        s_gj,
        delta_ptr,
        s_dd,
        s_di,
        s_dj,
        low_ptr,
        s_lr,
        s_li,
        s_lj,
        b_W,
        b_bias,
        b_a,
        B_ptr,
        s_Bn,
        s_Bi,
        s_Bj,
        C_ptr,
        s_Cn,
        s_Ci,
        s_Cj,
        du_ptr,
        s_ed,
        s_ei,
        s_ej,
        ddt_ptr,
        s_td,
        s_ti,
        s_tj,
        pBC_ptr,
        s_pn,
        s_pi,
        s_pj,
        pLow_ptr,
        s_qr,
        s_qi,
        s_qj,
        v_ptr,
        vt_ptr,
        offs_d,
        offs_dl,
        m_d,
        offs_n,
        m_n,
        first,
        m_c,
        blk,
        L,
        M,
        chunk,
        LOWRANK: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        ADJOINT: tl.constexpr,
        DESCENDING: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        NP: tl.constexpr,
        R: tl.constexpr,
        SAME_PLANE: tl.constexpr,
        PREFETCH: tl.constexpr,
        LOW_DOT: tl.constexpr,
        V_ROW: tl.constexpr,
        LANES_FIRST: tl.constexpr,
    ):
        # One direction over each lane's chunk, one position per step: the state walk
        # (ADJOINT=False, in sequence order) carries x = a x + b from b_h, the state the forward
        # saved at the chunk's entry; the adjoint walk (against sequence order) carries m = a lam,
        # lam = C g + m, from the chained entering adjoint. b_s is the cumulative dt S at the
        # walk's start, counted from the chunk's entry (the launcher adds S at the entry times
        # the chunk's total of w to dA). Each walk writes its half of every gradient. Returns (exit value,
        # S at the end, q sum, G, the decay over the chunk, dA, d bias, d dt_weight); the
        # state walk's G = sum_t C g prod_{s<=t} a_s (the adjoint's exit from a zero entry) and
        # q sum (the chunk's q total of the state) feed the adjoint's chain and the carries; d
        # dt_weight: a tuple of R [BLOCK_D, BLOCK_C] per-lane sums. The low-rank values are
        # tuples over the R rows, so every tile is [BLOCK_D, BLOCK_C(, NP)]: no layout changes per
        # step, and where the lanes hold only chunks (BLOCK_C x NP = 32 lanes, one warp) every
        # channel sum is adds within a thread. LOW_DOT (low rank): both walks load dt and its slope
        # per position as ``ss2d_bwd_dt_kernel`` left them (vt_ptr: dt, then the slope, V_ROW
        # each per position), neither the rows nor the softplus; the adjoint walk leaves the
        # whole d dt per position in v_ptr, from which ``_bwd_low_rank_sums`` forms d dt_low and
        # d dt_weight after the walks.
        SAVED: tl.constexpr = LOW_DOT
        STATES_3D: tl.constexpr = LOWRANK  # B and C loaded as 3-D tiles (_bwd_shared)
        if DESCENDING:
            p = first + chunk - 1
        else:
            p = first
        i = p // M
        j = p % M
        b_q_sum = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
        b_coef = tl.zeros([BLOCK_D, BLOCK_C, NP], dtype=tl.float32)
        b_decay = tl.full([BLOCK_D, BLOCK_C, NP], 1.0, tl.float32)
        # d dt_weight per lane and row, summed over the lanes once after the walk
        b_dw = ()
        for _r in tl.static_range(R):
            b_dw = b_dw + (tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32),)  # noqa: RUF005
        shared_planes = (low_ptr, B_ptr, C_ptr)
        shared_strides = (s_lr, s_li, s_lj, s_Bn, s_Bi, s_Bj, s_Cn, s_Ci, s_Cj)
        if PREFETCH:
            off = i * s_ui + j * s_uj
            shared = _bwd_shared(
                shared_planes,
                shared_strides,
                off,
                i,
                j,
                offs_n,
                m_n,
                m_c & (p < L),
                R=R,
                LOWRANK=LOWRANK and not SAVED,
                SAME_PLANE=SAME_PLANE,
                TILE_3D=STATES_3D,
            )
        for _ in range(chunk):
            m_p = m_c & (p < L)
            m = m_d[:, None] & m_p[None, :]
            off = i * s_ui + j * s_uj
            if PREFETCH:
                # the next position's shared loads go out before this position's math, which
                # hides their latency; carried to the next step in registers
                p_next, i_next, j_next = _step(p, i, j, M, DESCENDING)
                off_next = i_next * s_ui + j_next * s_uj
                shared_next = _bwd_shared(
                    shared_planes,
                    shared_strides,
                    off_next,
                    i_next,
                    j_next,
                    offs_n,
                    m_n,
                    m_c & (p_next < L) & (p_next >= 0),
                    R=R,
                    LOWRANK=LOWRANK and not SAVED,
                    SAME_PLANE=SAME_PLANE,
                    TILE_3D=STATES_3D,
                )
            else:
                shared = _bwd_shared(
                    shared_planes,
                    shared_strides,
                    off,
                    i,
                    j,
                    offs_n,
                    m_n,
                    m_p,
                    R=R,
                    LOWRANK=LOWRANK and not SAVED,
                    SAME_PLANE=SAME_PLANE,
                    TILE_3D=STATES_3D,
                )
            b_u, b_g, b_dt, b_slope, b_B, b_C, b_low = _bwd_load(
                u_ptr,
                s_ud,
                off,
                g_ptr,
                s_gd,
                _plane(off, i, j, s_gi, s_gj, SAME_PLANE),
                delta_ptr,
                s_dd,
                _plane(off, i, j, s_di, s_dj, SAME_PLANE),
                shared,
                b_W,
                b_bias,
                offs_d,
                m_d,
                m_p,
                (vt_ptr, p * (2 * V_ROW), offs_dl),
                R=R,
                LOWRANK=LOWRANK,
                DELTA_SOFTPLUS=DELTA_SOFTPLUS,
                SAVED_DT=SAVED,
                V_ROW=V_ROW,
                LANES_FIRST=LANES_FIRST,
            )
            b_decay_p = tl.exp(b_dt[:, :, None] * b_a[:, None, :])
            b_in = (b_dt * b_u)[:, :, None] * b_B
            b_direct = b_g[:, :, None] * b_C
            if ADJOINT:
                b_lam = b_direct + b_h
                b_h = b_decay_p * b_lam
                b_w_p = b_in * b_lam  # the adjoint half of w, per n
            else:
                b_h = b_decay_p * b_h + b_in
                b_w_p = b_direct * b_h  # the state half of w
                b_s += b_dt
            b_q = tl.sum(b_a[:, None, :] * b_w_p, axis=2)
            off_p = _plane(off, i, j, s_pi, s_pj, SAME_PLANE)
            m_pn = m_p[:, None] & m_n[None, :]
            p_part = pBC_ptr + offs_n[None, :] * s_pn + off_p[:, None]
            if ADJOINT:
                # d dt = sum_n lam u B - (the adjoint's q summed from here to the chunk's end)
                # + (the state's q of the later chunks and this one: b_carry)
                b_q_sum += b_q
                b_v = tl.sum(b_lam * b_B, axis=2) * b_u - b_q_sum + b_carry
                b_dA -= b_s[:, :, None] * b_w_p
                b_s -= b_dt
                b_du = tl.sum(b_lam * b_B, axis=2) * b_dt
                off_du = _plane(off, i, j, s_ei, s_ej, SAME_PLANE)
                # (du starts as the skip term, (sum_k D_k) g, which the launcher writes)
                b_du += _lane_load(du_ptr, offs_d * s_ed, off_du, m_d, m_p, LANES_FIRST)
                _lane_store(du_ptr, offs_d * s_ed, off_du, b_du, m_d, m_p, LANES_FIRST)
                b_dB = tl.sum(b_lam * (b_dt * b_u)[:, :, None], axis=0)
                _store_partial(p_part, b_dB, m_pn, blk)
            else:
                # d dt: less the state's q this walk has passed (the adjoint walk adds the total)
                b_v = -b_q_sum
                b_q_sum += b_q
                b_dA += b_s[:, :, None] * b_w_p
                # G's decays from the chunk's start as a running product (exp(A S) costs a
                # special-function op per step)
                b_decay *= b_decay_p
                b_coef += b_direct * b_decay
                _store_partial(p_part, tl.sum(b_g[:, :, None] * b_h, axis=0), m_pn, blk)
            if LOWRANK:
                # d dt is linear downstream (d dt_low, d dt_weight, d bias). The state walk
                # parks its half per position in the scratch (v_ptr: [positions, V_ROW], each
                # thread's channels contiguous); the adjoint walk, which comes by the same
                # positions in the next launch, adds it to its own half, so the low-rank sums
                # run once per position instead of once per walk.
                off_v = p * V_ROW
                if ADJOINT:
                    b_v += _lane_load(v_ptr, offs_dl, off_v, m_d, m_p, LANES_FIRST)
                    b_v = tl.where(m, b_v * b_slope, 0.0)
                    if LOW_DOT:
                        _lane_store(v_ptr, offs_dl, off_v, b_v, m_d, m_p, LANES_FIRST)
                    else:
                        # per row: d dt_low's channel sum, d dt_weight per lane
                        off_q = _plane(off, i, j, s_qi, s_qj, SAME_PLANE)
                        b_dw_next = ()
                        for r in tl.static_range(R):
                            b_dlow = tl.sum(b_W[r][:, None] * b_v, axis=0)
                            _store_partial(pLow_ptr + (r * s_qr + off_q), b_dlow, m_p, blk)
                            b_dw_next = b_dw_next + (b_dw[r] + b_v * b_low[r][None, :],)  # noqa: RUF005
                        b_dw = b_dw_next
                        b_dbias += b_v  # (LOW_DOT: d bias by the low-rank kernel)
                else:
                    _lane_store(v_ptr, offs_dl, off_v, b_v, m_d, m_p, LANES_FIRST)
            else:
                p_ddt = ddt_ptr + (
                    offs_d[:, None] * s_td + _plane(off, i, j, s_ti, s_tj, SAME_PLANE)[None, :]
                )
                if ADJOINT:
                    b_v += tl.load(p_ddt, mask=m, other=0.0)
                    b_v = tl.where(m, b_v * b_slope, 0.0)
                    b_dbias += b_v
                tl.store(p_ddt, b_v, mask=m)
            if PREFETCH:
                shared = shared_next
                p, i, j = p_next, i_next, j_next
            else:
                p, i, j = _step(p, i, j, M, DESCENDING)
        # one return type for both walks (the compiler checks it across constexpr branches)
        return b_h, b_s, b_q_sum, b_coef, b_decay, b_dA, b_dbias, b_dw

    @triton.jit
    def _bwd_split(x):
        # x (fp32) as two bf16 parts, x1 = bf16(x) and x2 = bf16(x - x1), both rounded to nearest
        # (x1 + x2 within ~2^-17 of x). The interpreter's conversion truncates (~2^-15), so there
        # the rounding is done on the bits (to nearest even), the parts then convert exactly.
        if _GPU_MATH:
            x1 = x.to(tl.bfloat16)
            x2 = (x - x1.to(tl.float32)).to(tl.bfloat16)
        else:
            x1 = _bwd_round_bf16(x)
            x2 = _bwd_round_bf16(x - x1).to(tl.bfloat16)
            x1 = x1.to(tl.bfloat16)
        return x1, x2

    @triton.jit
    def _bwd_round_bf16(x):
        # x rounded to bf16's 8 significant bits, to nearest even, as fp32
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _bwd_dot(a, b, acc):
        # a half-precision product with fp32 sums (acc: None or the sum to add to); the
        # interpreter multiplies no halves, so it takes them in fp32, which holds them exactly
        if _GPU_MATH:
            return tl.dot(a, b, acc)
        else:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)

    @triton.jit
    def _span_start(p0, M):
        # (i0, j0) of a program's first position p0 and 1 / M, for ``_span_tile``
        i0 = p0 // M
        return i0, p0 - i0 * M, 1.0 / (M * 1.0)  # (M = 1 arrives as a constant: maps of one row)

    @triton.jit
    def _span_tile(offs_t, i0, j0, M, inv_M):
        # (i, j) of the positions offs_t past (i0, j0) from a float quotient, no integer division
        # per tile: exact while j0 + offs_t stays below 2^22 (a row plus the program's chunks)
        di = (((j0 + offs_t).to(tl.float32) + 0.5) * inv_M).to(tl.int32)
        return i0 + di, j0 + offs_t - di * M

    @triton.jit
    def _bwd_low_rank_sums(
        v_ptr,
        low_ptr,
        s_lr,
        s_li,
        s_lj,
        w_ptr,
        s_wd,
        part_ptr,
        s_qr,
        s_qi,
        s_qj,
        dw_ptr,
        dbias_ptr,
        d0,
        n_ch,
        p0,
        p1,
        M,
        chunk,
        HAS_BIAS: tl.constexpr,
        R: tl.constexpr,
        RP: tl.constexpr,
        RD: tl.constexpr,
        V_ROW: tl.constexpr,
        V_SUB: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # The low-rank sums of one direction, once the walks have left the whole d dt of the
        # program's n_ch channels (from d0) at its positions p0 <= p < p1 (at most BLOCK_C chunks)
        # in v_ptr ([positions, V_ROW]): d dt_low[r, p] = sum_d W[d, r] v[d, p], the program's one
        # partial (no read-modify-write per channel block), and d dt_weight[d, r] = sum_p v[d, p]
        # dt_low[r, p] over its positions; R padded to RD (tl.dot's minimum 16) with a row of ones
        # at r = R, so the same product gives d bias[d] = sum_p v[d, p] (the rest of the padding
        # is zeros, or ones in bf16 tiles of 32 positions: its columns are never stored).
        # Products in bf16 with fp32 sums: each fp32 operand as two bf16 parts, x1 = bf16(x) and
        # x2 = bf16(x - x1) (x1 + x2 within ~2^-17 of x), the x2 y2 term left out; bf16 dt_low
        # is exact as it is. tf32x3 took twice the instructions (its NaN guards and splits).
        # The channels go V_SUB at a time (the tiles of 64 spilled at 128 registers, N = 16);
        # a later group adds its d dt_low to the partial the earlier ones wrote (same threads,
        # fixed order).
        offs_r = tl.arange(0, RD)
        m_r = offs_r < R
        i0, j0, inv_M = _span_start(p0, M)
        n_tiles = (BLOCK_C * chunk + BLOCK_P - 1) // BLOCK_P
        for h in tl.static_range((V_ROW + V_SUB - 1) // V_SUB):
            offs_ch = h * V_SUB + tl.arange(0, V_SUB)
            m_ch = offs_ch < n_ch
            m_wr = m_ch[:, None] & m_r[None, :]
            b_w = tl.load(w_ptr + (d0 + offs_ch)[:, None] * s_wd + offs_r[None, :], mask=m_wr, other=0.0)
            b_w1, b_w2 = _bwd_split(b_w)
            b_dw = tl.zeros([V_SUB, RD], dtype=tl.float32)
            for t in tl.range(n_tiles, num_stages=1):
                offs_t = t * BLOCK_P + tl.arange(0, BLOCK_P)
                m_p = p0 + offs_t < p1
                i, j = _span_tile(offs_t, i0, j0, M, inv_M)
                p_v = v_ptr + (p0 + offs_t)[:, None] * V_ROW + offs_ch[None, :]
                b_v = tl.load(p_v, mask=m_p[:, None] & m_ch[None, :], other=0.0)
                b_v1, b_v2 = _bwd_split(b_v)
                b_dlow = _bwd_dot(b_v1, b_w1, None)
                b_dlow = _bwd_dot(b_v1, b_w2, b_dlow)
                b_dlow = _bwd_dot(b_v2, b_w1, b_dlow)
                m_pr = m_p[:, None] & m_r[None, :]
                p_part = part_ptr + offs_r[None, :] * s_qr + (i * s_qi + j * s_qj)[:, None]
                if h > 0:
                    b_dlow += tl.load(p_part, mask=m_pr, other=0.0)
                tl.store(p_part, b_dlow, mask=m_pr)
                p_low = low_ptr + offs_r[None, :] * s_lr + (i * s_li + j * s_lj)[:, None]
                # The column r = R of dt_low's tile is a row of ones (for d bias). bf16 tiles of 32
                # positions read it as the masked entries' value (the columns past it are never
                # stored, and v is 0 wherever m_p is false): a select converts each bf16 value to
                # fp32 and back (the interpreter has no bf16 1.0). Elsewhere the select: fewer
                # instructions in fp32, fewer spills at R = 48 (tiles of 16, Triton 3.8).
                if low_ptr.dtype.element_ty == tl.bfloat16 and BLOCK_P > 16:
                    b_low = tl.load(p_low, mask=m_pr, other=1.0)
                else:
                    b_low = tl.load(p_low, mask=m_pr, other=0.0)
                    if HAS_BIAS:
                        m_one = (offs_r == R)[None, :] & m_p[:, None]
                        b_low = tl.where(m_one, 1.0, b_low.to(tl.float32)).to(b_low.dtype)
                b_v1t = tl.trans(b_v1)
                b_v2t = tl.trans(b_v2)
                if b_low.dtype == tl.bfloat16:
                    b_dw = _bwd_dot(b_v1t, b_low, b_dw)
                    b_dw = _bwd_dot(b_v2t, b_low, b_dw)
                else:
                    b_low1, b_low2 = _bwd_split(b_low.to(tl.float32))
                    b_dw = _bwd_dot(b_v1t, b_low1, b_dw)
                    b_dw = _bwd_dot(b_v1t, b_low2, b_dw)
                    b_dw = _bwd_dot(b_v2t, b_low1, b_dw)
            tl.store(dw_ptr + (d0 + offs_ch)[:, None] * RP + offs_r[None, :], b_dw, mask=m_wr)
            if HAS_BIAS:
                m_bias = m_ch[:, None] & (offs_r == R)[None, :]
                tl.store(dbias_ptr + (d0 + offs_ch)[:, None] + 0 * offs_r[None, :], b_dw, mask=m_bias)

    @triton.heuristics({"HAS_BIAS": _OPTIONAL_INPUTS["HAS_BIAS"]})
    @triton.jit
    def ss2d_bwd_dt_kernel(
        low_ptr,
        w_ptr,
        bias_ptr,
        vt_ptr,
        s_lb,
        s_lk,
        s_lr,
        s_li,
        s_lj,
        D,
        L,
        M,
        chunk,
        k_f,
        rev,
        R: tl.constexpr,
        RP: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        V_ROW: tl.constexpr,
        V_SUB: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # dt and its softplus slope of one direction (k_f + 2 rev) for the low-rank walks, before
        # them, one program per program of theirs: its chunk block's positions, its V_ROW
        # channels, into its scratch rows (dt, then the slope, V_ROW each per position). dt of a
        # tile of positions is one product [BLOCK_P, RP] x [RP, V_SUB] as in the forward
        # (``_dt_weight_operand``: half dt_low exact against dt_weight in two half parts, fp32
        # dt_low in tf32x3), so each dt_low value is loaded once per program, not per channel,
        # and the walks build no dt of their own (R loads and FMAs and a softplus per step).
        pid_c = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_b = tl.program_id(2).to(tl.int64)
        k = k_f + 2 * rev
        d0 = pid_d * V_ROW
        p0 = pid_c * BLOCK_C * chunk
        p1 = tl.minimum(L, p0 + BLOCK_C * chunk)
        low_b = low_ptr + pid_b * s_lb + k * s_lk
        vt_b = vt_ptr + (pid_b * tl.num_programs(1) + pid_d) * L * (2 * V_ROW)
        i0, j0, inv_M = _span_start(p0, M)
        n_tiles = (BLOCK_C * chunk + BLOCK_P - 1) // BLOCK_P
        for h in tl.static_range((V_ROW + V_SUB - 1) // V_SUB):
            offs_ch = h * V_SUB + tl.arange(0, V_SUB)
            m_ch = (offs_ch < V_ROW) & (d0 + offs_ch < D)
            b_wt, r_low = _dt_weight_operand(
                w_ptr, k, D, d0 + offs_ch, s_lr, low_ptr.dtype.element_ty, R, RP, True
            )
            if HAS_BIAS:
                b_bias = tl.load(bias_ptr + k * D + d0 + offs_ch, mask=m_ch, other=0.0)
            else:
                b_bias = tl.zeros([V_SUB], dtype=tl.float32)
            for t in tl.range(n_tiles, num_stages=1):
                offs_t = t * BLOCK_P + tl.arange(0, BLOCK_P)
                m_p = p0 + offs_t < p1
                i, j = _span_tile(offs_t, i0, j0, M, inv_M)
                off_p = i * s_li + j * s_lj
                b_low = tl.load(low_b + off_p[:, None] + r_low, mask=m_p[:, None], other=0.0)
                b_raw = _dt_product(b_low, b_wt) + b_bias[None, :]
                if DELTA_SOFTPLUS:
                    b_dt, b_slope = _softplus_and_slope(b_raw)
                else:
                    b_dt = b_raw
                    b_slope = tl.full(b_raw.shape, 1.0, tl.float32)
                p_vt = vt_b + (p0 + offs_t)[:, None] * (2 * V_ROW) + offs_ch[None, :]
                m_vt = m_p[:, None] & m_ch[None, :]
                tl.store(p_vt, b_dt, mask=m_vt)
                tl.store(p_vt + V_ROW, b_slope, mask=m_vt)

    @triton.heuristics(
        {
            "LOWRANK": _OPTIONAL_INPUTS["LOWRANK"],
            "HAS_BIAS": _OPTIONAL_INPUTS["HAS_BIAS"],
        }
    )
    @triton.jit(do_not_specialize=["chunk_step"])
    def ss2d_bwd_chunk_kernel(
        u_ptr,
        g_ptr,
        delta_ptr,
        low_ptr,
        w_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        bias_ptr,
        state_ptr,
        adj_ptr,
        G_ptr,
        K_ptr,
        dtsum_ptr,
        qx_ptr,
        carry_ptr,
        du_ptr,
        ddt_ptr,
        pB_ptr,
        pC_ptr,
        pLow_ptr,
        pA_ptr,
        pBias_ptr,
        pW_ptr,
        v_ptr,
        vt_ptr,
        s_ub,
        s_ud,
        s_ui,
        s_uj,
        s_gb,
        s_gd,
        s_gi,
        s_gj,
        s_db,
        s_dk,
        s_dd,
        s_di,
        s_dj,
        s_lb,
        s_lk,
        s_lr,
        s_li,
        s_lj,
        s_Bb,
        s_Bk,
        s_Bn,
        s_Bi,
        s_Bj,
        s_Cb,
        s_Ck,
        s_Cn,
        s_Ci,
        s_Cj,
        s_eb,
        s_ed,
        s_ei,
        s_ej,
        s_tb,
        s_tk,
        s_td,
        s_ti,
        s_tj,
        s_pp,
        s_pb,
        s_pk,
        s_pn,
        s_pi,
        s_pj,
        s_qp,
        s_qb,
        s_qk,
        s_qr,
        s_qi,
        s_qj,
        D,
        L,
        M,
        chunk,
        n_chunks,
        n_group,
        k_f,
        chunk_step,
        N: tl.constexpr,
        R: tl.constexpr,
        NP: tl.constexpr,
        RP: tl.constexpr,
        LOWRANK: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        ADJOINT: tl.constexpr,
        SAME_PLANE: tl.constexpr,
        PREFETCH: tl.constexpr,
        LOW_DOT: tl.constexpr,
        V_ROW: tl.constexpr,
        LANES_FIRST: tl.constexpr,
        SAME_CHANNELS: tl.constexpr,
        REV: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # One direction (k_f + 2 REV) of one orientation, lanes = channels x chunks as in the
        # forward, one walk per launch. The state walk (ADJOINT=False) starts every chunk from
        # the state the forward saved at its entry and stores, besides its half of the
        # gradients, the chunk values the adjoint's chain and the q totals need (G twice: the
        # chain updates its copy in place; K, the exit from a zero entry; the q total and the summed dt). The
        # adjoint walk (the next launch, after the chain) starts from the chained adjoint.
        # Channel sums go to one partial per program (its n_group channel blocks in turn; low
        # rank: d dt_low by the low-rank kernel after the walks), parameter sums to one partial
        # per chunk block, image and walk (the launcher adds them in fixed order).
        pid_c = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_b = tl.program_id(2).to(tl.int64)
        n_batch = tl.num_programs(2)
        # The program walks n_group channel blocks in turn, adding each block's channel sums to
        # its one partial (fewer partials: the bound on their memory), in a fixed order.
        # The low-rank scratch, per position of this image's orientation: d dt of the direction
        # for all the program's channels, V_ROW per position (the state walk's half, then the
        # whole, which ``ss2d_bwd_low_rank_kernel`` reads next), and (LOW_DOT) dt with its slope
        # (2 V_ROW per position), from the state walk for the adjoint walk.
        slot = pid_b * tl.num_programs(1) + pid_d
        if LOWRANK:
            v_slot = v_ptr + slot * L * V_ROW
        else:
            v_slot = v_ptr
        if LOW_DOT:
            vt_slot = vt_ptr + slot * L * (2 * V_ROW)
        else:
            vt_slot = vt_ptr
        offs_dl = tl.arange(0, BLOCK_D)
        k = k_f + 2 * REV
        for blk in range(n_group):
            offs_d = (pid_d * n_group + blk) * BLOCK_D + offs_dl
            m_d = offs_d < D
            offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            m_c = offs_c < n_chunks
            offs_n = tl.arange(0, NP)
            m_n = offs_n < N
            m_dn = m_d[:, None] & m_n[None, :]
            first = offs_c * chunk
            # chunk_step (1, not specialised): with the chunks' contiguity unknown, the compiler
            # lays these tiles out as the walk's (chunks across lanes, channels in a thread) rather
            # than along the chunks, and the walk's carried state needs no layout change per step
            offs_cx = offs_c * chunk_step
            offs_cs = (offs_d[:, None, None] * n_chunks + offs_cx[None, :, None]) * NP + offs_n[None, None, :]
            m_cs = m_d[:, None, None] & m_c[None, :, None] & m_n[None, None, :]
            offs_cv = offs_d[:, None] * n_chunks + offs_cx[None, :]
            m_cv = m_d[:, None] & m_c[None, :]
            if HAS_BIAS:
                b_bias = tl.load(bias_ptr + k * D + offs_d, mask=m_d, other=0.0)
            else:
                b_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
            b_a = tl.load(A_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
            # the R weights of each channel (a tuple of [BLOCK_D]): dt in the state walk, and
            # with _BWD_LOW_DOT off the per-step sums in the adjoint walk
            b_W = ()
            if LOWRANK:
                for r in tl.static_range(R):
                    b_W = b_W + (tl.load(w_ptr + (k * D + offs_d) * R + r, mask=m_d, other=0.0),)  # noqa: RUF005
                dt_src = low_ptr + pid_b * s_lb + k * s_lk
                ddt_bk = ddt_ptr
                low_part = pLow_ptr + pid_d * s_qp + pid_b * s_qb + k * s_qk
            else:
                dt_src = delta_ptr + pid_b * s_db + k * s_dk
                ddt_bk = ddt_ptr + pid_b * s_tb + k * s_tk
                low_part = pLow_ptr
            bk = (pid_b * 4 + k) * D * n_chunks
            part = pid_d * s_pp + pid_b * s_pb + k * s_pk
            if ADJOINT:
                # from the chained adjoint and the chunk's summed dt (S counted from its entry)
                b_h = tl.load(adj_ptr + bk * NP + offs_cs, mask=m_cs, other=0.0)
                b_s = tl.load(dtsum_ptr + bk + offs_cv, mask=m_cv, other=0.0)
                b_carry = tl.load(carry_ptr + bk + offs_cv, mask=m_cv, other=0.0)
                p_part = pB_ptr + part
            else:
                # from the state the forward saved at the chunk's entry, S counted from there
                b_h = tl.load(state_ptr + bk * NP + offs_cs, mask=m_cs, other=0.0)
                b_s = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
                b_carry = b_s
                p_part = pC_ptr + part
            if LOWRANK:
                v_blk = v_slot + blk * BLOCK_D
            else:
                v_blk = v_slot
            if LOW_DOT:
                vt_blk = vt_slot + blk * BLOCK_D
            else:
                vt_blk = vt_slot
            res = _bwd_walk(
                b_h=b_h,
                b_s=b_s,
                b_carry=b_carry,
                b_dA=tl.zeros([BLOCK_D, BLOCK_C, NP], dtype=tl.float32),
                b_dbias=tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32),
                u_ptr=u_ptr + pid_b * s_ub,
                s_ud=s_ud,
                s_ui=s_ui,
                s_uj=s_uj,
                g_ptr=g_ptr + pid_b * s_gb,
                s_gd=s_ud if SAME_CHANNELS else s_gd,
                s_gi=s_gi,
                s_gj=s_gj,
                delta_ptr=dt_src,
                s_dd=s_dd,
                s_di=s_di,
                s_dj=s_dj,
                low_ptr=dt_src,
                s_lr=s_lr,
                s_li=s_li,
                s_lj=s_lj,
                b_W=b_W,
                b_bias=b_bias,
                b_a=b_a,
                B_ptr=B_ptr + pid_b * s_Bb + k * s_Bk,
                s_Bn=s_Bn,
                s_Bi=s_Bi,
                s_Bj=s_Bj,
                C_ptr=C_ptr + pid_b * s_Cb + k * s_Ck,
                s_Cn=s_Cn,
                s_Ci=s_Ci,
                s_Cj=s_Cj,
                du_ptr=du_ptr + pid_b * s_eb,
                s_ed=s_ud if SAME_CHANNELS else s_ed,
                s_ei=s_ei,
                s_ej=s_ej,
                ddt_ptr=ddt_bk,
                s_td=s_td,
                s_ti=s_ti,
                s_tj=s_tj,
                pBC_ptr=p_part,
                s_pn=s_pn,
                s_pi=s_pi,
                s_pj=s_pj,
                pLow_ptr=low_part,
                s_qr=s_qr,
                s_qi=s_qi,
                s_qj=s_qj,
                v_ptr=v_blk,
                vt_ptr=vt_blk,
                offs_d=offs_d,
                offs_dl=offs_dl,
                m_d=m_d,
                offs_n=offs_n,
                m_n=m_n,
                first=first,
                m_c=m_c,
                blk=blk,
                L=L,
                M=M,
                chunk=chunk,
                LOWRANK=LOWRANK,
                DELTA_SOFTPLUS=DELTA_SOFTPLUS,
                ADJOINT=ADJOINT,
                DESCENDING=(REV == 1) != ADJOINT,
                BLOCK_D=BLOCK_D,
                BLOCK_C=BLOCK_C,
                NP=NP,
                R=R,
                SAME_PLANE=SAME_PLANE,
                PREFETCH=PREFETCH,
                LOW_DOT=LOW_DOT,
                V_ROW=V_ROW,
                LANES_FIRST=LANES_FIRST,
            )
            b_h, b_s, b_q_sum, b_G, b_decay, b_dA, b_dbias, b_dw = res
            # the next block's walk adds to this one's channel-sum partials
            tl.debug_barrier()
            par = ((pid_c * n_batch + pid_b) * 4 + k) * D + offs_d
            tl.store(pA_ptr + par[:, None] * NP + offs_n[None, :], tl.sum(b_dA, axis=1), mask=m_dn)
            if ADJOINT:
                if HAS_BIAS and not LOW_DOT:  # (LOW_DOT: after the walks, with d dt_weight)
                    tl.store(pBias_ptr + par, tl.sum(b_dbias, axis=1), mask=m_d)
                if LOWRANK and not LOW_DOT:  # (only the adjoint walk gathers d dt_weight)
                    for r in tl.static_range(R):
                        tl.store(pW_ptr + par * RP + r, tl.sum(b_dw[r], axis=1), mask=m_d)
            else:
                # the adjoint's chunk values are the state walk's, by duality: from zero, the
                # adjoint leaves the chunk (at its start) with G = sum_t C_t g_t prod_{s<=t} a_s,
                # and its coefficient on its entering value is the state's exit from a zero
                # entry, K = exit - (the chunk's decay) x entering state
                b_x_in = tl.load(state_ptr + bk * NP + offs_cs, mask=m_cs, other=0.0)
                tl.store(K_ptr + bk * NP + offs_cs, b_h - b_decay * b_x_in, mask=m_cs)
                tl.store(G_ptr + bk * NP + offs_cs, b_G, mask=m_cs)
                tl.store(adj_ptr + bk * NP + offs_cs, b_G, mask=m_cs)
                tl.store(qx_ptr + bk + offs_cv, b_q_sum, mask=m_cv)
                tl.store(dtsum_ptr + bk + offs_cv, b_s, mask=m_cv)

    @triton.heuristics({"HAS_BIAS": lambda args: args["pBias_ptr"] is not None})
    @triton.jit
    def ss2d_bwd_low_rank_kernel(
        v_ptr,
        low_ptr,
        w_ptr,
        pLow_ptr,
        pW_ptr,
        pBias_ptr,
        s_lb,
        s_lk,
        s_lr,
        s_li,
        s_lj,
        s_qp,
        s_qb,
        s_qk,
        s_qr,
        s_qi,
        s_qj,
        D,
        L,
        M,
        chunk,
        n_group,
        k_f,
        rev,
        HAS_BIAS: tl.constexpr,
        R: tl.constexpr,
        RP: tl.constexpr,
        RD: tl.constexpr,
        V_ROW: tl.constexpr,
        V_SUB: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # The low-rank gradient pass's sums after its walks (LOW_DOT), one program per program of
        # that pass (direction k_f + 2 rev): its chunk block's positions, its n_group x BLOCK_D channels.
        # (A kernel of its own: inside the walks' kernel its tiles took the registers the walks
        # need, and both spilled at 128.)
        pid_c = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_b = tl.program_id(2).to(tl.int64)
        k = k_f + 2 * rev
        n_batch = tl.num_programs(2)
        d0 = pid_d * n_group * BLOCK_D
        par = ((pid_c * n_batch + pid_b) * 4 + k) * D
        _bwd_low_rank_sums(
            v_ptr + (pid_b * tl.num_programs(1) + pid_d) * L * V_ROW,
            low_ptr + pid_b * s_lb + k * s_lk,
            s_lr,
            s_li,
            s_lj,
            w_ptr + k * D * R,
            R,
            pLow_ptr + pid_d * s_qp + pid_b * s_qb + k * s_qk,
            s_qr,
            s_qi,
            s_qj,
            pW_ptr + par * RP,
            pBias_ptr + par if HAS_BIAS else pBias_ptr,
            d0,
            tl.minimum(n_group * BLOCK_D, D - d0),
            pid_c * BLOCK_C * chunk,
            tl.minimum(L, (pid_c + 1) * BLOCK_C * chunk),
            M,
            chunk,
            HAS_BIAS=HAS_BIAS,
            R=R,
            RP=RP,
            RD=RD,
            V_ROW=V_ROW,
            V_SUB=V_SUB,
            BLOCK_C=BLOCK_C,
            BLOCK_P=BLOCK_P,
        )


# Triton 3.8 or later (CI's): the GPU image's 3.6 lays some tiles out differently, and a few launch
# choices below follow the version (read once: some are taken per launch)
_TRITON_3_8 = HAS_TRITON and tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 8)


# Chunks the chain kernel loads at once: one wait for memory per CHAIN_STEP chunks (stage 1's
# backward chains ~370 chunks one after another).
CHAIN_STEP = 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def triton_supports(u: torch.Tensor, N: int) -> str | None:
    """None when the fused kernels can run this problem, else the reason they cannot."""
    if u.dtype not in TRITON_DTYPES:
        return f"dtype {u.dtype} (fp16, bf16 or fp32 only)"
    if N > MAX_D_STATE:
        return f"d_state N = {N} > {MAX_D_STATE}"
    return None


def _chunk_states_fit(L: int, chunk: int, NP: int) -> bool:
    """Whether chunks of ``chunk`` positions keep the chunk states (four buffers of n_chunks x NP
    values per channel and direction) within one (B, 4, D, L) tensor."""
    return 4 * NP * cdiv(L, chunk) <= L


def _fwd_config(D: int, L: int, N: int):
    """(BLOCK_D, BLOCK_C, chunk, num_warps) of the chunk walk: the forward at N > TILE_SCAN_MAX_N
    and, through ``_bwd_config``, the backward.

    A program walks BLOCK_C chunks of ``chunk`` positions for BLOCK_D channels, one position per
    step (channels and chunks across the lanes; no tile over L, so no padding of L). Chunks of
    about sqrt(L) positions keep both the walk and the chain over chunks short, and enough of
    them to fill the GPU; the chunk states (n_chunks x NP values per channel and direction) stay
    within a quarter of one (B, 4, D, L) tensor.
    """
    NP = _next_pow2(N)
    chunk = math.isqrt(L - 1) + 1
    while not _chunk_states_fit(L, chunk, NP) and chunk < L:
        chunk *= 2
    chunk = min(chunk, L)
    if TRITON_INTERPRET:
        # the interpreter pays per step, not per lane: every channel and chunk in one program
        return min(_next_pow2(D), 16), min(_next_pow2(cdiv(L, chunk)), 64), chunk, 4
    if N <= 4:
        return min(_next_pow2(D), 16), 8, chunk, 4
    return min(_next_pow2(D), 4), 8, chunk, 4


def _named_strides(prefix: str, t: torch.Tensor | None, column: bool, dims: str) -> dict:
    """Stride arguments s_<prefix><dim> of t (..., H, W), its last two dims as the orientation's
    major (i) and minor (j) axes: (H, W) row-major, (W, H) column-major. Zeros for an absent t."""
    if t is None:
        s = (0,) * len(dims)
    else:
        s = t.stride()
        s = (*s[:-2], s[-1], s[-2]) if column else s
    return {f"s_{prefix}{dim}": v for dim, v in zip(dims, s)}


@contextlib.contextmanager
def _on_device(t: torch.Tensor):
    """Launch on t's GPU (a tensor on a second GPU), not on the current one."""
    if t.is_cuda:
        with torch.cuda.device(t.device):
            yield
    else:
        yield


def _f32_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    """Parameters (A, D, bias, dt_weight) as contiguous fp32; None stays None."""
    return None if t is None else t.detach().float().contiguous()


def _param_ptrs(dt_weight, A, D, bias, forward: bool = False) -> dict:
    """The parameter pointer arguments every SS2D kernel takes (None where absent)."""
    A = _f32_or_none(A)
    if forward:
        # A = -inf (-exp of a large A_log) becomes half of float32's lowest (so that A log2(e)
        # stays finite): the same decay, 0, wherever dt > 0, but 0 * A is 0, not NaN, where the
        # tile scan passes a position with dt = 0 (a tile's padding). Not in the backward: there
        # A's own terms would turn huge instead of NaN (d dt ~ 1e30), which training would take
        # for a gradient; NaN there, as the PyTorch path's, stops it.
        A = A.clamp(min=-torch.finfo(torch.float32).max / 2)
    return dict(
        w_ptr=_f32_or_none(dt_weight),
        A_ptr=A,
        Ds_ptr=_f32_or_none(D),
        bias_ptr=_f32_or_none(bias),
    )


def _input_strides(column: bool, u, delta, dt_low, B, C) -> dict:
    """The stride arguments of the scan's inputs in one orientation, as every SS2D kernel names them."""
    return {
        **_named_strides("u", u, column, "bdij"),
        **_named_strides("d", delta, column, "bkdij"),
        **_named_strides("l", dt_low, column, "bkrij"),
        **_named_strides("B", B, column, "bknij"),
        **_named_strides("C", C, column, "bknij"),
    }


def _orientation_args(column: bool, u, delta, dt_low, B, C, out, params: dict, softplus: bool) -> dict:
    """The launch arguments both forward kernels take for one orientation (column: the
    column-major one, which adds to what the row-major one stored), ``out_ptr`` aside."""
    H, W = u.shape[-2:]
    N = params["A_ptr"].shape[2]
    return dict(
        u_ptr=u,
        delta_ptr=delta,
        low_ptr=dt_low,
        B_ptr=B,
        C_ptr=C,
        **params,
        **_input_strides(column, u, delta, dt_low, B, C),
        **_named_strides("o", out, column, "bdij"),
        D=u.shape[1],
        L=H * W,
        M=H if column else W,
        k_f=int(column),
        N=N,
        R=1 if dt_low is None else dt_low.shape[2],
        NP=_next_pow2(N),
        DELTA_SOFTPLUS=softplus,
        ACCUMULATE=column,
    )


# Short maps' forward tiles (``_fwd_scan_config``): Triton 3.8 compiles the wider channel blocks
# without spills (sm_90, bf16 low rank: 8 x 8 at 32 channels, 4 x 4 at 128); Triton 3.6 spilled
# 84 and 256 bytes there, so it keeps 16 channels and tiles that run past the map's end.
SHORT_MAP_TILES = _TRITON_3_8


def _fit_tile(sub: int, nsub: int, L: int) -> tuple[int, int]:
    """(SUB, NSUB) cut down until the tile of SUB x NSUB positions lies within the sequence:
    fewer lanes per channel first."""
    while sub * nsub > L:
        if nsub > 1:
            nsub //= 2
        else:
            sub //= 2
    return sub, nsub


def _fwd_scan_config(D: int, L: int, N: int):
    """(BLOCK_D, SUB, NSUB, num_warps) of the forward.

    A program walks one orientation of BLOCK_D channels of one image in tiles of SUB x NSUB
    positions: NSUB lanes per channel, each owning SUB consecutive positions (its scan stays
    within a thread). SUB x NP values per lane bound the registers (the launch caps them at
    128); BLOCK_D keeps at least 4 blocks per SM at stage 1 (B = 128, D = 96: 6 channel blocks at
    N = 1, 12 at N <= 4). At N = 1, 16 positions per lane halve the scan over the lanes per
    element against 8. Used at N <= TILE_SCAN_MAX_N only.
    """
    NP = _next_pow2(N)
    if TRITON_INTERPRET:
        # the interpreter pays per tile, and per element in a scan: small tiles, few programs
        return min(_next_pow2(D), 16), 4, min(_next_pow2(cdiv(L, 4)), 8), 4
    if NP == 1:
        # 16 positions per lane where the planes (and with them contiguous strides) are multiples
        # of 16 elements; otherwise the loads come in narrower pieces that take more registers
        # (sm_90: 192-244 bytes spilled at 128 with L = 1000 or 56 x 57), and 8 fit
        sub, nsub = 16 if L % 16 == 0 else 8, 8
        if SHORT_MAP_TILES:
            # short maps (VMamba's later stages): a tile of 8 lanes per channel would be mostly
            # positions past the map's end (128 for 16 at 4 x 4); fewer lanes per channel and more
            # channels per block keep the block's 128 lanes, each tile within the map
            sub, nsub = _fit_tile(sub, nsub, L)
        return min(_next_pow2(D), 128 // nsub), sub, nsub, 4
    return min(_next_pow2(D), 8), 4, 16, 4


def _dot_dt_fits(args: dict) -> bool:
    """Whether the forward tile computes the low-rank dt with ``tl.dot``: at least 16 positions
    and 8 channels, 16 for fp32 dt_low (Triton pads smaller products; tf32x3 over 8 channels
    costs more than the FMA loop over R that the other tiles keep)."""
    low = args["low_ptr"]
    if low is None or args["SUB"] * args["NSUB"] < 16:
        return False
    return args["BLOCK_D"] >= (16 if low.dtype == torch.float32 else 8)


def _dot_dt_depth(args: dict) -> int:
    """The inner dimension of that product: R rows of dt_low, twice for half dt_low (dt_weight in
    two half parts), padded to a power of two and to tl.dot's minimum of 16 (Triton 3.6)."""
    low = args["low_ptr"]
    parts = 1 if low is None or low.dtype == torch.float32 else 2
    return max(16, _next_pow2(args["R"] * parts))


def _dt_by_position(args: dict) -> bool:
    """Whether the forward tile loads dt_low as [positions, RP] rather than [RP, positions] (the
    product's left operand as it is, or transposed). Each compiler lays the tile out so that the
    positions' offsets are computed once per position in one orientation and repeated in the
    other. Stage 1, bf16, PTX per element of the column-major launch, where every offset costs
    a division: Triton 3.8 104 ([RP, positions]) against 122; Triton 3.6 142 against 124. The
    row-major launch's offsets cost one multiply, and [positions, RP] is 2-3 % lower there under
    both at bf16 (fp32 dt_low with Triton 3.8: 0.2 % higher)."""
    return args["FLAT"] or not _TRITON_3_8


def _flat(t: torch.Tensor | None, column: bool) -> bool:
    """Whether t's (H, W) plane is contiguous in the orientation's walk order (offset = p s_j)."""
    if t is None:
        return True
    H, W = t.shape[-2:]
    s_h, s_w = t.stride()[-2:]
    if column:
        return W == 1 or s_w == H * s_h
    return H == 1 or s_h == W * s_w


# The tile scan keeps SUB x NP states per lane in a thread and scans them across lanes; at
# larger N (16: mamba's default) the chunk walk, which holds NP per lane, is the cheaper one.
TILE_SCAN_MAX_N = 4

# The tile scan issues the next tile's loads before the current tile's math (a software
# pipeline in registers): a walk is a chain of dependent tiles, and without it every tile
# waits for its loads. False: each tile loads its inputs itself (the GPU gate times both).
TILE_PREFETCH = True
# The same in launches whose planes are not contiguous in walk order (the column-major one):
# their loads are per element, the carried tiles take ~64 registers instead of ~24, and at the
# 128-register cap Triton 3.6 spills 100 bytes at stage 1 (3.8: none). Off until the GPU gate
# shows the hidden latency outweighs the spills.
TILE_PREFETCH_STRIDED = False
# The tile scan's register cap: 4 blocks of 4 warps per SM (at stage 1 its 768 blocks run in
# 1.45 waves). The GPU gate times lower caps (more resident blocks, maybe spills) against it.
TILE_MAX_REGISTERS = 128
# The chunk walk (N > TILE_SCAN_MAX_N) issues the next position's loads (u, delta, B, C) before
# the current position's math; dt_low's R rows are still read at their step. False: v2.2's walk.
WALK_PREFETCH = True


def _tile_prefetch(u, delta, flat: bool = True, saving: bool = False) -> bool:
    """Whether a tile-scan launch carries the next tile's loads, where they fit in the 128
    registers without spills (sm_90, Triton 3.6 and 3.8): planes of a multiple of 16 positions
    (vector loads; with other sizes each element's address is its own and 56 x 57 or 1 x 1000
    spill 116-244 bytes), not fp32 u with fp32 delta (four carried fp32 tiles: 52 bytes spilled
    at stage 1), planes contiguous in walk order unless TILE_PREFETCH_STRIDED, and not where
    the launch saves the backward's states under Triton 3.8 (the pick of each lane's state and
    the carried tiles spilled 16 bytes at stage 1; Triton 3.6, the GPU image's, fits both)."""
    L = u.shape[-2] * u.shape[-1]
    halves = delta is None or max(u.element_size(), delta.element_size()) < 4
    fits = not (saving and _TRITON_3_8)
    return TILE_PREFETCH and L % 16 == 0 and halves and (flat or TILE_PREFETCH_STRIDED) and fits


def ss2d_fwd(
    u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus: bool, out_dtype, config=None, state_chunk=None
):
    """Launcher of the forward: out has u's shape and memory layout, in out_dtype. ``config``
    overrides the chosen path's block sizes (``_fwd_scan_config`` or ``_fwd_config``). With
    ``state_chunk``, returns (out, states): the state entering each chunk of that many positions
    in every direction's own order, (B, 4, D, cdiv(L, state_chunk), NP) fp32, which the backward
    walks from (chunks are numbered in row / column order; the first one a direction walks
    enters with zero)."""
    launch = _ss2d_fwd_tiles if A.shape[2] <= TILE_SCAN_MAX_N else _ss2d_fwd_chunks
    batch, d_inner, H, W = u.shape
    states = None
    if state_chunk is not None:
        n_slots = cdiv(H * W, state_chunk)
        states = torch.zeros(
            batch, 4, d_inner, n_slots, _next_pow2(A.shape[2]), device=u.device, dtype=torch.float32
        )
    saving = dict(
        st_ptr=states if states is not None and states.shape[3] > 1 else None,
        state_chunk=state_chunk or 1,
        n_slots=1 if states is None else states.shape[3],
    )
    out = launch(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype, config, saving)
    return out if states is None else (out, states)


# From this rank on (VMamba's R = D / 16 at D >= 384) the forward's lanes hold at most 4 positions
# each where a channel keeps several lanes: with 8 the dt product's [channels x positions, 2R]
# operands spilled (sm_90, bf16, VMamba-T's 14 x 14 and 7 x 7 stages: 72 and 124 bytes under
# Triton 3.8, 24 under 3.6). Not where that would leave a channel one lane (Triton 3.8's 4 x 4
# tile of 16 positions does not spill) or a tile under tl.dot's 16 positions (5 x 5's 8 x 2).
FWD_WIDE_RANK = 24
FWD_WIDE_RANK_SUB = 4


def _fwd_tile(sub: int, nsub: int, L: int, dt_low: torch.Tensor | None) -> tuple[int, int]:
    """The forward tile (SUB positions on each of NSUB lanes per channel) for a sequence of L,
    from the configuration's: with fp32 dt_low at most 8 positions a lane (the tf32x3 dt product
    holds more registers: 16 spilled under Triton 3.6); from rank FWD_WIDE_RANK on at most
    FWD_WIDE_RANK_SUB where the channel keeps several lanes and the tile 16 positions."""
    if dt_low is not None and dt_low.dtype == torch.float32:
        sub = min(sub, 8)
    if dt_low is not None and dt_low.shape[2] >= FWD_WIDE_RANK:
        narrow, lanes = _fit_tile(min(sub, FWD_WIDE_RANK_SUB), nsub, L)
        if lanes > 1 and narrow * lanes >= 16:
            return narrow, lanes
    return _fit_tile(sub, nsub, L)


def _static_state_chunk(saving: dict, sub: int, L: int) -> int:
    """The backward's chunk as a compile-time constant where it divides the forward tile's lanes
    and L (so every tile starts at a multiple of it: the chunks' ends lie at fixed places in
    every lane, and each saved state is a register of the tile), else 0 (found per lane or per
    element at run time)."""
    chunk = saving["state_chunk"]
    if saving["st_ptr"] is None or chunk > sub or sub % chunk or L % chunk:
        return 0
    return chunk


def _ss2d_fwd_tiles(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype, config, saving):
    """The forward at N <= TILE_SCAN_MAX_N: one launch per orientation (row-major stores,
    column-major adds); each program carries its scan from tile to tile, so there is no chunk
    state, chain or second pass.
    """
    batch, d_inner, H, W = u.shape
    L = H * W
    N = A.shape[2]
    block_d, sub, nsub, num_warps = config or _fwd_scan_config(d_inner, L, N)
    sub, nsub = _fwd_tile(sub, nsub, L, None if config else dt_low)
    out = new_output(u, dtype=out_dtype)
    params = _param_ptrs(dt_weight, A, D, bias, forward=True)
    grid = (cdiv(d_inner, block_d), batch)

    def orientation(column: bool):
        tensors = (u, delta, dt_low, B, C, out)
        flat = all(_flat(t, column) for t in tensors)
        ss2d_fwd_scan_kernel[grid](
            **_orientation_args(column, u, delta, dt_low, B, C, out, params, softplus),
            out_ptr=out,
            **saving,
            STATIC_CHUNK=_static_state_chunk(saving, sub, L),
            n_tiles=cdiv(L, sub * nsub),
            FLAT=flat,
            SAME_PLANE=len({t.stride()[-2:] for t in tensors if t is not None}) == 1,
            SUB=sub,
            NSUB=nsub,
            BLOCK_D=block_d,
            PREFETCH=_tile_prefetch(u, delta, flat, saving["st_ptr"] is not None),
            num_warps=num_warps,
            # Triton 3.6 lets ptxas take 140-168 registers in the column-major launch (3.8: 128)
            maxnreg=TILE_MAX_REGISTERS,
        )

    with _on_device(u):
        orientation(column=False)
        orientation(column=True)
    return out


def _ss2d_fwd_chunks(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype, config, saving):
    """The forward at N > TILE_SCAN_MAX_N, in three steps: per orientation, each chunk's exit
    state from a zero entry (state pass); per direction, the chain over chunks turns them into
    entering states; per orientation, the chunks again from their entering states, writing y
    (the row-major orientation stores, the column-major one adds). With a single chunk only the
    last step runs.
    """
    batch, d_inner, H, W = u.shape
    L = H * W
    N = A.shape[2]
    NP = _next_pow2(N)
    block_d, block_c, chunk, num_warps = config or _fwd_config(d_inner, L, N)
    n_chunks = cdiv(L, chunk)
    out = new_output(u, dtype=out_dtype)
    params = _param_ptrs(dt_weight, A, D, bias, forward=True)
    grid = (cdiv(n_chunks, block_c), cdiv(d_inner, block_d), batch)
    state = dtsum = None

    def chunk_pass(column: bool, output: bool):
        ss2d_fwd_chunk_kernel[grid](
            **_orientation_args(column, u, delta, dt_low, B, C, out, params, softplus),
            state_ptr=state,
            dtsum_ptr=dtsum,
            out_ptr=out if output else None,
            **(saving if output else dict(st_ptr=None, state_chunk=1, n_slots=1)),
            chunk=chunk,
            n_chunks=n_chunks,
            PREFETCH=WALK_PREFETCH,
            BLOCK_D=block_d,
            BLOCK_C=block_c,
            num_warps=num_warps,
        )

    with _on_device(u):
        if n_chunks > 1:
            state = new_buffer(batch, 4, d_inner, n_chunks, NP, device=u.device)
            dtsum = new_buffer(batch, 4, d_inner, n_chunks, device=u.device)
            chunk_pass(column=False, output=False)
            chunk_pass(column=True, output=False)
            ss2d_fwd_chain_kernel[(cdiv(d_inner, block_d), batch * 4)](
                state_ptr=state,
                dtsum_ptr=dtsum,
                A_ptr=params["A_ptr"],
                D=d_inner,
                n_chunks=n_chunks,
                k0=0,
                N=N,
                NP=NP,
                N_K=4,
                ADJOINT=False,
                BLOCK_D=block_d,
                CHAIN_STEP=CHAIN_STEP,
                num_warps=1,
            )
        chunk_pass(column=False, output=True)
        chunk_pass(column=True, output=True)
    return out


# Four waves of blocks over the H100/H200's 132 SMs: what the backward's grid aims for.
_BWD_MIN_BLOCKS = 4 * 132
# The backward walks load the next position's shared values (the dt_low rows, B, C) a step
# ahead of the math (bench/NOTES.md, v2.3 backward). Off: at stage 1 it adds ~7 % instructions
# and spills at 128 registers; the GPU gate times it against the default (bench/gate_ss2d.py).
_BWD_PREFETCH = False
# The low-rank walks' [channels, lanes] loads and stores (u, g, du, the d dt and dt scratch)
# written as [lanes, channels] and transposed (``_lane_load``) where every lane holds chunks:
# under Triton 3.6 the direct form takes a layout of its own and is converted at every step
# (stage 1 bf16 low rank: 913.8 -> 822.6 PTX per element over a backward, 0.31 -> 0.59 barriers
# per element in a gradient launch), under 3.8 the transposed one is (786.0 -> 903.1). The GPU
# gate times the direct form under 3.6 too (bench/gate_ss2d.py).
_BWD_LANES_FIRST = not _TRITON_3_8
# Positions and channels per product of the low-rank sums after the walks (``_bwd_low_rank_sums``;
# 64 channels spilled at N = 16, where a program's part has 48). 32 positions take half the
# tiles of 16, so half the steps and waits for memory; where they spill, 16
# (``_bwd_low_dot_positions``).
_BWD_LOW_DOT_POSITIONS = 32
# Positions per product of ``ss2d_bwd_dt_kernel`` (dt and its slope before the low-rank walks).
_BWD_DT_POSITIONS = 32
_BWD_LOW_DOT_CHANNELS = 32
# The low-rank gradient pass forms d dt_low, d dt_weight and d bias after the walks, from the
# whole d dt they leave in a scratch (``ss2d_bwd_low_rank_kernel``). False: the v2.3 algorithm,
# per-step channel sums in the adjoint walk, both directions per launch (it fit 128 registers
# with 2 channels per thread: set ``_BWD_WARP_BLOCK_D = 2`` with it); the GPU gate times it
# against the default (bench/gate_ss2d.py's BWD_VARIANTS).
_BWD_LOW_DOT = True
# Warps of ``ss2d_bwd_low_rank_kernel``'s blocks at its 128-register cap: 2 (1 spilled; Triton 3.6
# with tiles of 16 positions spilled 4 bytes, and with 4 warps took ~25 more instructions per
# element-direction and half the resident blocks).
_BWD_LOW_DOT_WARPS = 2
# Past this rank (VMamba's later stages: R = D / 16 = 12, 24) the products' [channels, R] tiles
# spilled at 128 registers (4-20 bytes at R = 12, 116-232 at R = 24, Triton 3.8 / 3.6): half the
# channels per product on twice the warps (``_bwd_low_dot_tiles``) spill nothing on either.
_BWD_LOW_DOT_MAX_RANK = 8


def _bwd_low_dot_tiles(R: int) -> tuple[int, int]:
    """(channels per product, warps) of ``ss2d_bwd_low_rank_kernel`` at rank R."""
    if R <= _BWD_LOW_DOT_MAX_RANK:
        return _BWD_LOW_DOT_CHANNELS, _BWD_LOW_DOT_WARPS
    return max(16, _BWD_LOW_DOT_CHANNELS // 2), 2 * _BWD_LOW_DOT_WARPS  # (tl.dot: >= 16)


# Past this rank 32 positions per product spilled under Triton 3.6 too (VMamba-T's stage 4, 7 x 7,
# R = 48: 244-320 bytes per thread); with 16 it spills nothing there (3.8 spills 8 bytes at R = 48).
_BWD_LOW_DOT_WIDE_RANK = 24


def _bwd_low_dot_positions(R: int, one_product: bool = True, bf16_low: bool = True) -> int:
    """Positions per product of ``ss2d_bwd_low_rank_kernel`` at rank R; ``one_product``: the
    program's channels fit one product; ``bf16_low``: dt_low is bf16.

    Triton 3.6 takes 32 without spills up to R = 24. Triton 3.8 takes 32 only at R <= 8 with one
    product of bf16 dt_low (stage 1); elsewhere 32 spilled 4-24 bytes (N = 16's two products,
    R = 12 and 24, fp32 dt_low), so 16."""
    narrow = min(16, _BWD_LOW_DOT_POSITIONS)
    if R > _BWD_LOW_DOT_WIDE_RANK:
        return narrow
    if _TRITON_3_8 and not (R <= _BWD_LOW_DOT_MAX_RANK and one_product and bf16_low):
        return narrow
    return _BWD_LOW_DOT_POSITIONS


def _partial_split(D: int, block_d: int, N: int, R: int):
    """(n_parts, n_group): programs per chunk block and image along the channels, and channel
    blocks each one walks in turn.

    Each program writes one partial of the channel-summed gradients (dB, dC, d dt_low: 2N + R
    values per direction and position); n_parts is the largest count that keeps all partials
    within a quarter of one (B, 4, D, L) tensor (D / 4 values), so more parallelism where it is
    cheap.
    """
    n_blocks = cdiv(D, block_d)
    n_parts = max(1, min(n_blocks, D // (4 * (2 * N + R))))
    n_group = cdiv(n_blocks, n_parts)
    return cdiv(n_blocks, n_group), n_group


def _bwd_partial_split(D: int, block_d: int, N: int, R: int, batch: int, n_cblk: int):
    """``_partial_split``, with more channel parts where the grid would otherwise be under
    ``_BWD_MIN_BLOCKS`` (large N, few images: the partial bound allows one part at N = 16). The
    partials may then exceed the quarter bound, up to one (B, 4, D, L) tensor in all;
    ``_bwd_config`` trades them against shorter chunks."""
    n_parts, n_group = _split_within_scratch(*_partial_split(D, block_d, N, R), D, block_d, N, R)
    if TRITON_INTERPRET or batch * n_parts * n_cblk >= _BWD_MIN_BLOCKS:
        return n_parts, n_group
    # at most one (B, 4, D, L) tensor of partials in all
    bound = max(1, D // (2 * N + R))
    needed = min(cdiv(_BWD_MIN_BLOCKS, batch * n_cblk), bound)
    if needed <= n_parts:
        return n_parts, n_group
    n_blocks = cdiv(D, block_d)
    n_group = max(1, n_blocks // needed)  # parts >= needed
    if cdiv(n_blocks, n_group) > bound:  # rounded up past the bound (small blocks)
        n_group = cdiv(n_blocks, needed)
    return _split_within_scratch(cdiv(n_blocks, n_group), n_group, D, block_d, N, R)


def _split_within_scratch(n_parts: int, n_group: int, D: int, block_d: int, N: int, R: int):
    """(n_parts, n_group) with fewer parts where the low-rank gradient pass's scratch of dt and
    its slope (2 x BLOCK_D values per part and position) would exceed (B, D, L) values, a quarter
    of one (B, 4, D, L) tensor: on small maps the grid policy would give every channel block its
    own part. Stage 1 and N = 16 keep their split."""
    if not (R and _BWD_LOW_DOT) or 2 * block_d * n_parts <= D:
        return n_parts, n_group
    n_blocks = cdiv(D, block_d)
    n_group = cdiv(n_blocks, max(1, D // (2 * block_d)))
    return cdiv(n_blocks, n_group), n_group


def _bwd_config(D: int, L: int, N: int, batch: int, lowrank: bool, sms: int = 132, rank: int | None = None):
    """(BLOCK_D, BLOCK_C, chunk, num_warps) of the backward: the forward's chunks, with fewer
    chunks per program while the grid is under 4 waves of 132 SMs. Still under 4 waves with one
    chunk per program (N = 16: few images, one channel part), the chunks get shorter and the
    channel parts more (``_bwd_partial_split``), in the mix that adds the least memory: four
    chunk-state buffers of 4 NP values per channel and chunk against 2N values per position for
    each further partial. N <= 4: ``_bwd_warp_config`` (its channel parts depend on the low-rank R:
    ``rank``, the launcher's; None takes VMamba's, D / 16). Low rank at N > 4: then at most as
    many channels per block as fill one warp (BLOCK_D x BLOCK_C x NP lanes), so the R rows of
    d dt_low (and dB, dC) reduce over the channels within the warp at every step, with shuffles
    and no barriers (channels across warps cost a shared-memory round trip per step); a program
    walks more channel blocks in turn, the grid and partials stay as they were or grow. (Full
    delta at N > 4 sums only dB and dC over the channels; one warp would double its registers.)"""
    block_d, block_c, chunk, num_warps = _fwd_config(D, L, N)
    if TRITON_INTERPRET:
        return block_d, block_c, chunk, num_warps
    if N <= 4:  # (rank: the low-rank variant's R; None: VMamba's, D / 16)
        R = (cdiv(D, 16) if rank is None else rank) if lowrank else 0
        return _bwd_warp_config(D, L, N, batch, chunk, sms, R)
    NP = _next_pow2(N)
    n_chunks = cdiv(L, chunk)
    n_parts, _ = _partial_split(D, block_d, N, 0)
    while block_c > 1 and batch * n_parts * cdiv(n_chunks, block_c) < _BWD_MIN_BLOCKS:
        block_c //= 2
    if block_c == 1 and batch * n_parts * n_chunks < _BWD_MIN_BLOCKS:

        def cost(c):  # (short of 4 waves, added memory per image and direction in fp32 values)
            n_c = cdiv(L, c)
            parts, _ = _bwd_partial_split(D, block_d, N, 0, batch, n_c)
            return max(0, _BWD_MIN_BLOCKS - batch * parts * n_c), 4 * NP * D * n_c + 2 * N * L * parts

        shorter = [c for c in range(1, chunk) if _chunk_states_fit(L, c, NP)]
        chunk = min([chunk, *shorter], key=cost)
    if lowrank:
        block_d = min(block_d, max(1, 32 // (block_c * NP)))
        return block_d, block_c, chunk, max(1, block_d * block_c * NP // 32)
    return block_d, block_c, chunk, max(1, min(num_warps, block_d * block_c * NP // 32))


# Channels per block (within each thread) of the backward at N <= 4: 4 fit the low-rank walks'
# 128 registers without spills since d dt_low and d dt_weight are formed after the walks
# (``ss2d_bwd_low_rank_kernel``), the adjoint walk reads dt back (v2.3, which held R d dt_weight
# sums per channel through the walk: 2, 4 spilled ~200 bytes) and du's skip term is the
# launcher's (in the first gradient launch it spilled 12 bytes under Triton 3.6). A program walks
# its channel blocks one after another, so 4 channels halve its chain of steps against 2.
# Triton 3.6 moved the 4-channel tiles between layouts through shared memory in v2.8's local
# pass (~1.1 barriers per element, 3.8 none; that pass is gone since v3); the GPU gate times 2
# (`bwd_two_channels`).
_BWD_WARP_BLOCK_D = 4
# The low-rank walks hold the R rows of dt_low and R weights per channel of the block; past R x
# channels = 24 (stage 1's 6 x 4) they spilled at 128 registers (VMamba's R = D / 16 at D = 192:
# 4-120 bytes, D = 384: 164-396 bytes, Triton 3.8 / 3.6), so larger ranks take fewer channels
# per thread (``_bwd_warp_block_d``).
_BWD_WARP_WEIGHTS = 24
# The backward's one-warp blocks (N <= 4) resident per SM at the low-rank walks' 128 registers
# (sm_90: the register file holds 16 such warps; full delta takes fewer).
_BWD_WARP_BLOCKS_PER_SM = 16
# Steps of a walk beyond its chunk's positions: the entering values' loads and the sums' stores.
_BWD_WALK_SETUP_STEPS = 2


@functools.cache
def _sm_count(device: torch.device) -> int:
    """The GPU's SMs; the H100/H200's 132 elsewhere (the static check captures launches on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _bwd_warp_block_d(R: int, weights: int | None = None) -> int:
    """Channels per thread of the one-warp backward: ``_BWD_WARP_BLOCK_D``, halved while the block's
    R weights per channel exceed ``weights`` (``_BWD_WARP_WEIGHTS`` by default; R = 0: full
    delta, no weights)."""
    if weights is None:
        weights = _BWD_WARP_WEIGHTS
    block_d = _BWD_WARP_BLOCK_D
    while block_d > 1 and R * block_d > weights:
        block_d //= 2
    return block_d


def _bwd_warp_config(D: int, L: int, N: int, batch: int, chunk: int, sms: int, R: int):
    """The backward's blocks at N <= 4: one warp whose lanes are chunks x states (32 // NP chunks)
    and whose channels lie within each thread, so every channel sum (dB, dC, and d dt_low's R
    rows with the low-rank variant) is adds in registers and each B, C (and dt_low row) is
    loaded once per thread for all its channels; no barriers (channels across warps cost a
    shared-memory round trip per step: 8 barriers per element in the full-delta backward of
    before). Short maps, whose chunks cannot fill the lanes, put channels on the lanes left
    (``_short_map_lanes``): their dB and dC sums add across those lanes with shuffles.

    The chunk (about sqrt(L), the forward's) is evened out so the chunks fill whole blocks of
    lanes, then shortened where that shortens the launch's chain of dependent steps: a block
    walks its chunk one position after another, the blocks run in rounds of
    _BWD_WARP_BLOCKS_PER_SM x sms, and a walk costs its chunk plus _BWD_WALK_SETUP_STEPS (the
    entering values' loads, the sums' stores). The least rounds x (chunk + setup), on a tie the
    fewer blocks, among chunks whose states stay within one (B, 4, D, L) tensor (4 NP values per
    chunk and channel). Within a number of rounds the shortest chunk is best, so each of 1-4
    rounds is one bisection (past 4 nothing shortens the chain). Stage 1 on 132 SMs: low rank,
    chunks of 20 in 1,920 blocks, one round (filling every slot took chunks of 17 in 2,304
    blocks: a second round for 192 of them); full delta (4x the channel parts: no d dt_low
    partials) chunks of 25 in 6,144 blocks, three rounds. Channel parts as the launcher takes
    them (``_bwd_partial_split`` with R, 0 for full delta)."""
    # The launcher sizes its grid on every call: the search is cached, keyed on the module's
    # settings it reads too (tests and the GPU gate's variants change them).
    settings = (
        _BWD_WARP_BLOCK_D,
        _BWD_WARP_WEIGHTS,
        _BWD_WARP_BLOCKS_PER_SM,
        _BWD_WALK_SETUP_STEPS,
        _BWD_LOW_DOT,
        _BWD_MIN_BLOCKS,
        SHORT_MAP_LANE_CHANNELS,
        SHORT_MAP_LANE_WEIGHTS,
    )
    return _bwd_warp_search(D, L, N, batch, chunk, sms, R, settings)


# A thread's channels in a short map's low-rank blocks with channel lanes (``_short_map_lanes``):
# at most 2 (4 spilled 12-116 bytes on the digits model's 8 x 8 and 4 x 4 maps, R = 2 and 4,
# Triton 3.8), holding at most SHORT_MAP_LANE_WEIGHTS weights (Triton 3.6 spilled 4 bytes at
# CIFAR's stage 2, 8 x 8 and R = 12, with 2 channels: 24 weights, which 3.8 compiles). Full
# delta keeps its 4 (no spills under either at 8 x 8 and 4 x 4; 3.6 spilled 8 bytes with 2).
SHORT_MAP_LANE_CHANNELS = 2
SHORT_MAP_LANE_WEIGHTS = _BWD_WARP_WEIGHTS if _TRITON_3_8 else _BWD_WARP_WEIGHTS // 2


def _short_map_lanes(n_chunks: int, block_c: int, R: int) -> tuple[int, int, int]:
    """(chunk lanes, channel lanes, channels per thread) of a short map's one-warp block: its
    n_chunks chunks each on a lane (a power of two of them), and channels on the ``block_c``
    chunk lanes left over, which otherwise idle (at 4 x 4, 28 of 32). The tile [BLOCK_D,
    BLOCK_C, NP] spreads its lanes over states, then chunks, then channels, so a thread holds
    channels of one chunk and loads the rows of dt_low, B and C once for them: as many as
    ``_bwd_warp_block_d`` gives for the rank R (0: full delta), and with channel lanes at low
    rank at most SHORT_MAP_LANE_CHANNELS within SHORT_MAP_LANE_WEIGHTS weights. The channel
    sums (dB, dC) then reduce across the channel lanes with shuffles, within the warp."""
    lanes_c = min(block_c, _next_pow2(n_chunks))
    lanes_d = block_c // lanes_c
    per_thread = _bwd_warp_block_d(R)
    if lanes_d > 1 and R:
        per_thread = min(SHORT_MAP_LANE_CHANNELS, _bwd_warp_block_d(R, SHORT_MAP_LANE_WEIGHTS))
    return lanes_c, lanes_d, per_thread


@functools.lru_cache(maxsize=256)
def _bwd_warp_search(D: int, L: int, N: int, batch: int, chunk: int, sms: int, R: int, settings: tuple):
    """``_bwd_warp_config``'s search (``settings``: the module settings it reads, for the cache)."""
    NP = _next_pow2(N)
    block_c = 32 // NP
    block_d = _bwd_warp_block_d(R)
    n_cblk = cdiv(cdiv(L, chunk), block_c)
    slots = _BWD_WARP_BLOCKS_PER_SM * sms

    def blocks(n_cblk):
        parts, _ = _bwd_partial_split(D, block_d, N, R, batch, n_cblk)
        return batch * parts * n_cblk

    def fits(n_cblk):  # the chunk states of n_cblk full blocks of chunks within the bound
        return _chunk_states_fit(L, cdiv(L, n_cblk * block_c), NP)

    def chain(n_cblk):  # (rounds x (chunk + setup), blocks)
        n_blocks = blocks(n_cblk)
        return cdiv(n_blocks, slots) * (cdiv(L, n_cblk * block_c) + _BWD_WALK_SETUP_STEPS), n_blocks

    if not fits(n_cblk):
        # short maps (one block of lanes cannot be filled within the bound): the shortest chunks
        # within it, the fewest steps per walk, each on a lane, and channels on the lanes left
        # (``_short_map_lanes``)
        shortest = next((c for c in range(1, chunk) if _chunk_states_fit(L, c, NP)), chunk)
        lanes_c, lanes_d, per_thread = _short_map_lanes(cdiv(L, shortest), block_c, R)
        return lanes_d * per_thread, lanes_c, shortest, 1
    best = n_cblk
    top = max(n_cblk, L // (4 * NP * block_c) + 1)  # past the chunk-state bound
    for rounds in range(cdiv(blocks(n_cblk), slots), 5):
        lo, hi = n_cblk, top  # the most blocks of chunks within these rounds
        while hi > lo:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) and blocks(mid) <= rounds * slots else (lo, mid - 1)
        best = min(best, lo, key=chain)
    return block_d, block_c, cdiv(L, best * block_c), 1


def _reverse_cumsum_exclusive(t: torch.Tensor) -> torch.Tensor:
    """Sum over the later entries of the last dim."""
    return t.flip(-1).cumsum(-1).flip(-1) - t


def _chunk_carries(x_in, m_in, G, K, q_x, dtsum, A, reverse: bool):
    """One direction's per-chunk scalars for the adjoint walk, from the state walk's chunk values
    and the chained entering adjoint (plain torch on (B, D, n_chunks[, NP]) tensors): the state's
    q of this chunk and the later ones (its half of d dt at each chunk's end, less what the state
    walk passed), and dA's part that the walks left out: they count S from their chunk's entry,
    so S at the entry times the chunk's total of w = C g x - b lam, which is x_in G - m_in K per
    state (summed in float64: S grows along the sequence, and over a whole direction these
    totals cancel). "Later" is in the direction's own order: chunks are stored in row / column
    order, so a reversed direction's are flipped."""
    N = A.shape[-1]
    # w's total over the chunk per state, state part less adjoint part; their parts from zero
    # entering values are equal (duality), so only the entering values' terms remain
    w_total = x_in[..., :N].double() * G[..., :N].double() - m_in[..., :N].double() * K[..., :N].double()
    total = (A.double()[None, :, None, :] * w_total).sum(-1).float()

    def flip(t):  # chunk order <-> the direction's sequence order (its own inverse)
        return t.flip(-1) if reverse else t

    carry = flip(_reverse_cumsum_exclusive(flip(total))) + q_x
    seq_dtsum = flip(dtsum.double())
    start = flip(seq_dtsum.cumsum(-1) - seq_dtsum)
    dA = (start[..., None] * w_total).sum((0, 2)).float()
    return carry, dA


def _bwd_chunk(u: torch.Tensor, A: torch.Tensor, dt_low: torch.Tensor | None) -> int:
    """The backward's chunk length, which the forward saves its states for."""
    # (plain ints: under torch.compile's dynamic shapes the sizes are symbols, which the
    # configuration search cannot take; int() specialises on them)
    batch, d_inner, H, W = (int(size) for size in u.shape)
    lowrank = dt_low is not None
    R = int(dt_low.shape[2]) if lowrank else 1
    return _bwd_config(d_inner, H * W, int(A.shape[2]), batch, lowrank, _sm_count(u.device), R)[2]


def ss2d_bwd(
    grad_out,
    u,
    delta,
    dt_low,
    dt_weight,
    A,
    B,
    C,
    D,
    bias,
    softplus: bool,
    states=None,
    state_chunk=None,
    config=None,
):
    """Launcher of the backward. Returns (du, ddelta_or_None, d_dt_low_or_None,
    d_dt_weight_or_None, dA, dB, dC, dD_or_None, dbias_or_None), each in its input's dtype.

    ``states``: the forward's entering states of chunks of ``state_chunk`` positions (``ss2d_fwd``
    with ``state_chunk``; the differentiable ops save them for ``_bwd_chunk(u, A, dt_low)``).
    Where they are absent or for other chunks than this backward's, the forward runs again to
    save them.
    Per direction: the state walk from those states (its half of the gradients and each chunk's
    values for the adjoint), the adjoint's chain over chunks (the forward's chain kernel, in the
    opposite order), the per-chunk carries (plain torch on chunk-sized tensors), the adjoint
    walk, and at low rank the sums that form d dt_low, d dt_weight and d bias.
    """
    batch, d_inner, H, W = u.shape
    L = H * W
    N = A.shape[2]
    NP = _next_pow2(N)
    lowrank = dt_low is not None
    R = dt_low.shape[2] if lowrank else 1
    RP = _next_pow2(R)
    block_d, block_c, chunk, num_warps = config or _bwd_config(
        d_inner, L, N, batch, lowrank, _sm_count(u.device), R
    )
    n_chunks = cdiv(L, chunk)
    if states is None or state_chunk != chunk:
        _, states = ss2d_fwd(
            u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, torch.float32, state_chunk=chunk
        )
    n_cblk = cdiv(n_chunks, block_c)
    n_dblk, n_group = _bwd_partial_split(d_inner, block_d, N, R if lowrank else 0, batch, n_cblk)
    dev = u.device
    adj, G, K = (new_buffer(batch, 4, d_inner, n_chunks, NP, device=dev) for _ in range(3))
    dtsum, q_x, carry = (new_buffer(batch, 4, d_inner, n_chunks, device=dev) for _ in range(3))
    # du starts as the skip term: every direction's D_k u acts on the same u, so their gradients
    # add up to (sum_k D_k) g; the adjoint walks add their parts to it
    du = new_buffer(batch, d_inner, H, W, device=dev)
    if D is None:
        du.zero_()
    else:
        torch.mul(grad_out, D.float().sum(0)[:, None, None], out=du)
    if lowrank:
        ddt = None
        p_low = new_buffer(n_dblk, batch, 4, R, H, W, device=dev)
    else:
        ddt = (
            new_output(delta, dtype=torch.float32)
            if is_dense(delta)
            else new_buffer(*delta.shape, device=dev)
        )
        p_low = None
    p_B = new_buffer(n_dblk, batch, 4, N, H, W, device=dev)
    p_C = new_buffer(n_dblk, batch, 4, N, H, W, device=dev)
    p_A = new_buffer(2, n_cblk, batch, 4, d_inner, NP, device=dev)  # (the state walk's, the adjoint's)
    dA = torch.zeros(4, d_inner, N, device=dev, dtype=torch.float32)
    p_bias = new_buffer(n_cblk, batch, 4, d_inner, device=dev) if bias is not None else None
    p_w = new_buffer(n_cblk, batch, 4, d_inner, RP, device=dev) if lowrank else None
    # the low-rank scratch of one direction: d dt per position and channel (the state walk's
    # half, then the whole, which the low-rank sums read: (B, D, L) values in all) and, from the
    # state walk for the adjoint walk, dt with its slope (LOW_DOT: twice that)
    low_dot = lowrank and _BWD_LOW_DOT
    v_row = n_group * block_d  # exactly the program's channels: no padding
    v_scratch = new_buffer(batch, n_dblk, L, v_row, device=dev) if lowrank else None
    vt_scratch = new_buffer(batch, n_dblk, L, 2 * v_row, device=dev) if low_dot else None
    params = _param_ptrs(dt_weight, A, D, bias)
    del params["Ds_ptr"]  # (the skip term's gradient is du's start, written above)
    grid = (n_cblk, n_dblk, batch)  # n_dblk programs per chunk block, n_group channel blocks each
    # the chain's own channel blocks: a warp's lanes (channels x states), at least 4 channels (at
    # N = 16 two lanes per thread take fewer instructions per element than two channels), fewer
    # where its grid (one direction: channel blocks x images) would stay under 4 waves
    chain_block_d = max(block_d, min(_next_pow2(d_inner), max(4, 32 // NP)))
    while chain_block_d > 1 and cdiv(d_inner, chain_block_d) * batch < _BWD_MIN_BLOCKS:
        chain_block_d //= 2

    # every tensor the walks index by position (one shared plane offset when their strides agree)
    planes = (u, grad_out, delta, dt_low, B, C, du, ddt, p_B, p_low)
    # low rank: the issue's 128 registers (one-warp blocks would take up to 255; a cap on the
    # full-delta launches makes ptxas take more, 48 -> 64 at stage 1)
    cap = {"maxnreg": 128} if lowrank else {}
    # (low rank with every lane on chunks only: with channel lanes, or full delta, the transposed
    # form spilled up to 304 bytes under Triton 3.6)
    lanes_first = _BWD_LANES_FIRST and lowrank and block_c * NP >= 32 * num_warps

    def walk(column: bool, rev: int, adjoint: bool):
        ss2d_bwd_chunk_kernel[grid](
            u_ptr=u,
            g_ptr=grad_out,
            delta_ptr=delta,
            low_ptr=dt_low,
            B_ptr=B,
            C_ptr=C,
            state_ptr=states,
            adj_ptr=adj,
            G_ptr=G,
            K_ptr=K,
            dtsum_ptr=dtsum,
            qx_ptr=q_x,
            carry_ptr=carry,
            du_ptr=du,
            ddt_ptr=ddt,
            pB_ptr=p_B,
            pC_ptr=p_C,
            pLow_ptr=p_low,
            pA_ptr=p_A[int(adjoint)],
            pBias_ptr=p_bias,
            pW_ptr=p_w,
            v_ptr=v_scratch,
            vt_ptr=vt_scratch,
            **params,
            **_input_strides(column, u, delta, dt_low, B, C),
            **_named_strides("g", grad_out, column, "bdij"),
            **_named_strides("e", du, column, "bdij"),
            **_named_strides("t", ddt, column, "bkdij"),
            **_named_strides("p", p_B, column, "pbknij"),
            **_named_strides("q", p_low, column, "pbkrij"),
            D=d_inner,
            L=L,
            M=H if column else W,
            chunk=chunk,
            n_chunks=n_chunks,
            n_group=n_group,
            k_f=int(column),
            chunk_step=1,
            N=N,
            R=R,
            NP=NP,
            RP=RP,
            DELTA_SOFTPLUS=softplus,
            ADJOINT=adjoint,
            SAME_PLANE=len({t.stride()[-2:] for t in planes if t is not None}) == 1,
            PREFETCH=_BWD_PREFETCH,
            LOW_DOT=low_dot,
            V_ROW=v_row,
            LANES_FIRST=lanes_first,
            # u, grad_out and du one channel stride too: one offset per step and channel for all
            SAME_CHANNELS=len({t.stride()[1:] for t in (u, grad_out, du)}) == 1,
            REV=rev,
            BLOCK_D=block_d,
            BLOCK_C=block_c,
            num_warps=num_warps,
            **cap,
        )

    def adjoint_chain(k: int):  # the entering adjoint of every chunk of direction k, in place
        ss2d_fwd_chain_kernel[(cdiv(d_inner, chain_block_d), batch)](
            state_ptr=adj,
            dtsum_ptr=dtsum,
            A_ptr=params["A_ptr"],
            D=d_inner,
            n_chunks=n_chunks,
            k0=k,
            N=N,
            NP=NP,
            N_K=1,
            ADJOINT=True,
            BLOCK_D=chain_block_d,
            CHAIN_STEP=CHAIN_STEP,
            num_warps=1,
        )

    def dt_and_slope(column: bool, rev: int):  # the low-rank walks' dt and slope of that direction
        channels, warps = _bwd_low_dot_tiles(R)
        ss2d_bwd_dt_kernel[(n_cblk, n_dblk, batch)](
            low_ptr=dt_low,
            w_ptr=params["w_ptr"],
            bias_ptr=params["bias_ptr"],
            vt_ptr=vt_scratch,
            **_named_strides("l", dt_low, column, "bkrij"),
            D=d_inner,
            L=L,
            M=H if column else W,
            chunk=chunk,
            k_f=int(column),
            rev=rev,
            R=R,
            RP=max(16, _next_pow2(R * (1 if dt_low.dtype == torch.float32 else 2))),
            DELTA_SOFTPLUS=softplus,
            V_ROW=v_row,
            V_SUB=max(16, min(_next_pow2(v_row), channels)),  # (tl.dot: >= 16)
            BLOCK_C=block_c,
            BLOCK_P=_BWD_DT_POSITIONS,
            num_warps=warps,
            maxnreg=128,
        )

    def low_rank_sums(column: bool, rev: int):  # d dt_low, d dt_weight, d bias of that launch
        channels, warps = _bwd_low_dot_tiles(R)
        strides = {
            **_named_strides("l", dt_low, column, "bkrij"),
            **_named_strides("q", p_low, column, "pbkrij"),
        }
        ss2d_bwd_low_rank_kernel[(n_cblk, n_dblk, batch)](
            v_ptr=v_scratch,
            low_ptr=dt_low,
            w_ptr=params["w_ptr"],
            pLow_ptr=p_low,
            pW_ptr=p_w,
            pBias_ptr=p_bias,
            **strides,
            D=d_inner,
            L=L,
            M=H if column else W,
            chunk=chunk,
            n_group=n_group,
            k_f=int(column),
            rev=rev,
            R=R,
            RP=RP,
            RD=max(16, _next_pow2(R + 1)),  # (a row for d bias)
            V_ROW=v_row,
            V_SUB=max(16, min(_next_pow2(v_row), channels)),  # (tl.dot: >= 16)
            BLOCK_D=block_d,
            BLOCK_C=block_c,
            BLOCK_P=_bwd_low_dot_positions(R, v_row <= channels, dt_low.dtype == torch.bfloat16),
            num_warps=warps,
            maxnreg=128,
        )

    with _on_device(u):
        for column in (False, True):
            for rev in (0, 1):  # one direction at a time: the scratch holds one
                k = int(column) + 2 * rev
                if low_dot:
                    dt_and_slope(column, rev)
                walk(column, rev, adjoint=False)
                adjoint_chain(k)
                carry[:, k], dA[k] = _chunk_carries(
                    states[:, k], adj[:, k], G[:, k], K[:, k], q_x[:, k], dtsum[:, k], A[k], reverse=rev == 1
                )
                walk(column, rev, adjoint=True)
                if low_dot:
                    low_rank_sums(column, rev)
    # fixed-order sums over channel blocks, chunk blocks and images: deterministic
    dB = p_B.sum(0).to(B.dtype)
    dC = p_C.sum(0).to(C.dtype)
    dA = (dA + p_A[..., :N].sum((0, 1, 2))).to(A.dtype)
    dbias = p_bias.sum((0, 1)).to(bias.dtype) if bias is not None else None
    # every direction's skip term is D_k u: the same sum of g u over images and positions
    dD = None
    if D is not None:
        dD = (grad_out.float() * u.float()).sum((0, 2, 3)).expand(4, d_inner).to(D.dtype).contiguous()
    if lowrank:
        d_low = p_low.sum(0).to(dt_low.dtype)
        d_weight = p_w[..., :R].sum((0, 1)).to(dt_weight.dtype)
        ddelta = None
    else:
        d_low = d_weight = None
        ddelta = ddt.to(delta.dtype)
    return du.to(u.dtype), ddelta, d_low, d_weight, dA, dB, dC, dD, dbias


# ---- torch.library ops: torch.compile traces through them; FLOP counters see one node per scan.

_EMPTY = (0,)


def _or_none(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.numel() == 0 and t.dim() == 1 else t


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_EMPTY) if t is None else t


# one gradient per SCAN_ARGS, an empty tensor for an absent one
_GRADS_SCHEMA = "(" + ", ".join(["Tensor"] * len(SCAN_ARGS)) + ")"


@torch.library.custom_op(
    "svmamba::ss2d_bwd",
    mutates_args=(),
    schema=(
        f"(Tensor grad_out, {SCAN_ARGS_SCHEMA}, bool delta_softplus, Tensor states, int state_chunk)"
        f" -> {_GRADS_SCHEMA}"
    ),
)
def _ss2d_bwd_op(
    grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus, states, state_chunk
):
    grads = ss2d_bwd(
        grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus, states, state_chunk
    )
    return tuple(_or_empty(g, u) for g in grads)


def _grad_like(t: torch.Tensor | None, name: str, u: torch.Tensor) -> torch.Tensor:
    """An empty gradient with the strides ss2d_bwd gives it: d(delta) keeps delta's layout when
    delta is dense; every other gradient is a fresh contiguous tensor (a channels_last u too)."""
    if t is None:
        return u.new_empty(_EMPTY)
    if name == "delta" and is_dense(t):
        return torch.empty_like(t)
    return t.new_empty(t.shape)


@_ss2d_bwd_op.register_fake
def _(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus, states, state_chunk):
    like = dict(u=u, delta=delta, dt_low=dt_low, dt_weight=dt_weight, A=A, B=B, C=C, D=D, bias=bias)
    return tuple(_grad_like(t, name, u) for name, t in like.items())


def _save(ctx, scan_args, softplus, output):
    ctx.delta_softplus = softplus
    # the chunk the forward saved its states for (the same rule as it: the backward takes them
    # only if its own chunk is still this one)
    u, _, dt_low, _, A = scan_args[:5]
    ctx.state_chunk = _bwd_chunk(u, A, dt_low)
    ctx.save_for_backward(*scan_args, output[1])


def _backward(ctx, grad_out):
    *scan_args, states = ctx.saved_tensors
    grads = _ss2d_bwd_op(grad_out, *scan_args, ctx.delta_softplus, states, ctx.state_chunk)
    return tuple(_or_none(g) for g in grads)


def _forward_saving_states(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    """(out, the states entering the backward's chunks): what the backward walks from."""
    chunk = _bwd_chunk(u, A, dt_low)
    return ss2d_fwd(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype, state_chunk=chunk)


def _fake_forward(u, A, dt_low, softplus, out_dtype):
    batch, d_inner, H, W = u.shape
    n_chunks = cdiv(int(H) * int(W), _bwd_chunk(u, A, dt_low))
    states = u.new_empty(batch, 4, d_inner, n_chunks, _next_pow2(A.shape[2]), dtype=torch.float32)
    return torch.empty_like(u, dtype=out_dtype), states


_FORWARD_OPS = define_forward_ops(
    "ss2d",
    returns="(Tensor, Tensor)",  # out, then the states the backward op reads
    forward=_forward_saving_states,
    fake=_fake_forward,
    save=_save,
    backward=_backward,
)
_ss2d_fwd_op, _ss2d_lowrank_fwd_op = _FORWARD_OPS


def _forward_only(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    return ss2d_fwd(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype)


def _fake_forward_only(u, out_dtype):
    return torch.empty_like(u, dtype=out_dtype)


_INFERENCE_OPS = define_inference_ops("ss2d", forward=_forward_only, fake=_fake_forward_only)
_ss2d_infer_op, _ss2d_lowrank_infer_op = _INFERENCE_OPS


def ss2d_triton(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    """The output through the full-delta or low-rank fused op: the differentiable one (which
    saves the states the backward walks from) where a gradient may be asked for, else the
    inference one (no states)."""
    args = (u, delta, dt_low, dt_weight, A, B, C, D, bias)
    return scan_output(_FORWARD_OPS, _INFERENCE_OPS, *args, softplus, out_dtype)

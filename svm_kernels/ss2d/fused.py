"""Fused four-direction selective scan (SS2D): Triton kernels, launchers, autograd, torch.library ops.

Directions come in two *orientations*: row-major (k=0 forward, k=2 its reversal) and
column-major (k=1, k=3). Kernels read every direction's sequence straight from the spatial
tensors (sequence index p -> (h, w)), so the four ordered copies of ``cross_scan`` are never made.

Forward (``ss2d_fwd_chunk_kernel``, ``ss2d_fwd_chain_kernel``): each orientation's sequence is
cut into chunks; a program holds a block of channels x a block of chunks across its lanes and
walks its chunks one position per step (no associative scan, no tile over L, so any H x W).
A state pass stores each chunk's exit state from a zero entry and its summed dt; a chain pass
per direction turns them into entering states; the output pass walks the chunks again from
those, the row-major orientation storing ``out`` and the column-major one adding to it. With
the low-rank variant, dt = dt_weight[k] @ dt_low[k] is rebuilt per position from R rows shared
by the program's channels.

Backward (``fused_ss2d_bwd_kernel``): per orientation, two passes over chunks of CHUNK positions.
Pass 1 walks forward and stores the chunk-start values of the two prefix recurrences (the
forward direction's state and the reversed direction's adjoint); pass 2 walks backward carrying
the two suffix recurrences (the forward direction's adjoint and the reversed direction's state)
and recomputes the prefix ones from the stored chunk starts. With the four of them it forms
every gradient of both directions at once. Gradients that sum over channels (dB, dC, d dt_low)
are reduced over the program's BLOCK_D channels in registers; a program walks n_group channel
blocks in turn, adding each block's sums into its one partial, and the launcher sums the few
partials (together at most a quarter of one (B, 4, D, L) tensor) in a fixed order. Parameter
gradients (dA, dD, d bias, d dt_weight) are written per image and summed over the batch the same way. No float
atomics: the backward is deterministic.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..utils import HAS_TRITON, TRITON_DTYPES, TRITON_INTERPRET, is_dense, new_buffer, new_output
from .common import MAX_D_STATE

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _ssm_combine(a_l, b_l, a_r, b_r):
        # (a_l, b_l) applied first, then (a_r, b_r): x -> a_r * (a_l * x + b_l) + b_r.
        return a_l * a_r, a_r * b_l + b_r

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
        # mamba's softplus: values above 20 pass through unchanged. log1p(e) is e (1 - e / 2) where
        # 1 + e would lose e's digits (relative error < e^2 / 3), so no division is needed.
        e = tl.exp(tl.minimum(x, 20.0))
        log1p_e = tl.where(e < 1e-3, e * (1.0 - 0.5 * e), _log2(1.0 + e) * 0.6931471805599453)
        return tl.where(x > 20.0, x, log1p_e)

    @triton.jit
    def _softplus_grad(x):
        return tl.where(x > 20.0, 1.0, tl.sigmoid(x))

    @triton.jit
    def _orient_hw(p, H, W, COLUMN: tl.constexpr):
        # Sequence index p of the row-major (COLUMN=False) or column-major orientation -> (h, w).
        if COLUMN:
            h = p % H
            w = p // H
        else:
            h = p // W
            w = p % W
        return h, w

    @triton.jit
    def _column(tile, idx, j):
        # tile[:, j] of a [rows, cols] tile, idx = arange(cols).
        return tl.sum(tl.where(idx[None, :] == j, tile, 0.0), axis=1)

    @triton.jit
    def _load_tile(ptr, s_d, s_h, s_w, offs_d, h, w, mask):
        # [channels, positions] fp32 tile of a (D, H, W) slice (ptr offset to it) at (h, w).
        # offsets summed before the pointer add: one 64-bit pointer tile, not two
        offs = offs_d[:, None] * s_d + (h * s_h + w * s_w)[None, :]
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _load_row(ptr, s_h, s_w, h, w, mask):
        # fp32 values of an (H, W) plane (ptr offset to it) at the positions (h, w).
        return tl.load(ptr + (h * s_h + w * s_w), mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _store_partial(ptr, value, mask, blk):
        # Channel-block partial sums: the program's first block writes, later ones add (same
        # program, fixed order: deterministic).
        prev = tl.load(ptr, mask=mask & (blk > 0), other=0.0)
        tl.store(ptr, prev + value, mask=mask)

    @triton.jit
    def _dt_raw(
        delta_ptr,
        s_dd,
        s_dh,
        s_dw,
        low_ptr,
        s_lr,
        s_lh,
        s_lw,
        w_ptr,
        R,
        offs_d,
        mask_d,
        h,
        w,
        mask_p,
        bias,
        LOWRANK: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # delta + bias at positions (h, w) for a block of channels, before the softplus.
        # Pointers are already offset to the image and direction.
        if LOWRANK:
            dt = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
            for r in range(R):
                wr = tl.load(w_ptr + offs_d * R + r, mask=mask_d, other=0.0)
                lr = _load_row(low_ptr + r * s_lr, s_lh, s_lw, h, w, mask_p)
                dt += wr[:, None] * lr[None, :]
        else:
            dt = _load_tile(delta_ptr, s_dd, s_dh, s_dw, offs_d, h, w, mask_d[:, None] & mask_p[None, :])
        return dt + bias[:, None]

    @triton.jit
    def _dt_at(
        delta_ptr,
        s_dd,
        offs_dt,
        low_ptr,
        s_lr,
        offs_low,
        w_ptr,
        offs_d,
        m_d,
        m_p,
        m,
        R: tl.constexpr,
        LOWRANK: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # delta at one position per lane, [channels, lanes], before bias and softplus. Pointers are
        # offset to the image and direction; offs_* are the lanes' positions in each tensor.
        if LOWRANK:
            b_dt = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
            for r in tl.static_range(R):
                b_w = tl.load(w_ptr + offs_d * R + r, mask=m_d, other=0.0)
                b_low = tl.load(low_ptr + r * s_lr + offs_low, mask=m_p, other=0.0).to(tl.float32)
                b_dt += b_w[:, None] * b_low[None, :]
        else:
            b_dt = tl.load(delta_ptr + offs_d[:, None] * s_dd + offs_dt[None, :], mask=m, other=0.0)
            b_dt = b_dt.to(tl.float32)
        return b_dt

    @triton.jit
    def _fwd_walk(
        b_x,
        u_ptr,
        s_ud,
        s_ui,
        s_uj,
        delta_ptr,
        s_dd,
        s_di,
        s_dj,
        low_ptr,
        s_lr,
        s_li,
        s_lj,
        w_ptr,
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
        R: tl.constexpr,
        LOWRANK: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        OUTPUT: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        HAS_D: tl.constexpr,
        REVERSE: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # One direction over each lane's chunk, one position per step, channels and chunks across
        # the lanes: x = exp(dt A) x + dt B u from the chunk's entering state b_x. The position's
        # (major, minor) index (i, j) is stepped, not divided out, at every step.
        # State pass (OUTPUT=False): returns the chunk's exit state and its summed dt (the chunk's
        # decay is exp(A * sum dt)). Output pass: writes (or adds) y = C.x (+ D u) to out.
        if REVERSE:
            p = first + chunk - 1
        else:
            p = first
        i = p // M
        j = p % M
        b_dtsum = tl.zeros([BLOCK_D, BLOCK_C], dtype=tl.float32)
        for _ in range(chunk):
            m_p = m_c & (p < L)
            m = m_d[:, None] & m_p[None, :]
            b_u = tl.load(u_ptr + offs_d[:, None] * s_ud + (i * s_ui + j * s_uj)[None, :], mask=m, other=0.0)
            b_u = b_u.to(tl.float32)
            b_dt = _dt_at(
                delta_ptr,
                s_dd,
                i * s_di + j * s_dj,
                low_ptr,
                s_lr,
                i * s_li + j * s_lj,
                w_ptr,
                offs_d,
                m_d,
                m_p,
                m,
                R=R,
                LOWRANK=LOWRANK,
                BLOCK_D=BLOCK_D,
                BLOCK_C=BLOCK_C,
            )
            b_dt += b_bias[:, None]
            if DELTA_SOFTPLUS:
                b_dt = _softplus(b_dt)
            m_pn = m_p[:, None] & m_n[None, :]
            p_B = B_ptr + offs_n[None, :] * s_Bn + (i * s_Bi + j * s_Bj)[:, None]
            b_B = tl.load(p_B, mask=m_pn, other=0.0).to(tl.float32)
            b_decay = tl.exp(b_dt[:, :, None] * b_a[:, None, :])
            b_x = b_decay * b_x + (b_dt * b_u)[:, :, None] * b_B[None, :, :]
            if OUTPUT:
                p_C = C_ptr + offs_n[None, :] * s_Cn + (i * s_Ci + j * s_Cj)[:, None]
                b_C = tl.load(p_C, mask=m_pn, other=0.0).to(tl.float32)
                b_y = tl.sum(b_x * b_C[None, :, :], axis=2)
                if HAS_D:
                    b_y += b_skip[:, None] * b_u
                p_out = out_ptr + offs_d[:, None] * s_od + (i * s_oi + j * s_oj)[None, :]
                if ACCUMULATE:
                    b_y += tl.load(p_out, mask=m, other=0.0).to(tl.float32)
                tl.store(p_out, b_y.to(p_out.dtype.element_ty), mask=m)
            else:
                b_dtsum += tl.where(m, b_dt, 0.0)
            if REVERSE:
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
        return b_x, b_dtsum

    @triton.heuristics(
        {
            "LOWRANK": lambda args: args["low_ptr"] is not None,
            "HAS_D": lambda args: args["Ds_ptr"] is not None,
            "HAS_BIAS": lambda args: args["bias_ptr"] is not None,
            "OUTPUT": lambda args: args["out_ptr"] is not None,
            "HAS_STATE": lambda args: args["state_ptr"] is not None,
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
        ACCUMULATE: tl.constexpr,
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
            b_x, b_dtsum = _fwd_walk(
                b_x,
                u_ptr + pid_b * s_ub,
                s_ud,
                s_ui,
                s_uj,
                dt_src,
                s_dd,
                s_di,
                s_dj,
                dt_src,
                s_lr,
                s_li,
                s_lj,
                w_k,
                b_bias,
                b_a,
                B_ptr + pid_b * s_Bb + k * s_Bk,
                s_Bn,
                s_Bi,
                s_Bj,
                C_ptr + pid_b * s_Cb + k * s_Ck,
                s_Cn,
                s_Ci,
                s_Cj,
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
                R=R,
                LOWRANK=LOWRANK,
                DELTA_SOFTPLUS=DELTA_SOFTPLUS,
                OUTPUT=OUTPUT,
                ACCUMULATE=ACCUMULATE or rev == 1,
                HAS_D=HAS_D and rev == 0,
                REVERSE=rev == 0,
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
        N: tl.constexpr,
        NP: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # Chunk exit states (computed from a zero entry) -> true entering states, in place: a
        # sequential pass over the chunks of one direction, in that direction's order.
        pid_d = tl.program_id(0)
        pid_bk = tl.program_id(1).to(tl.int64)
        k = pid_bk % 4
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = offs_d < D
        offs_n = tl.arange(0, NP)
        m_dn = m_d[:, None] & (offs_n[None, :] < N)
        b_a = tl.load(A_ptr + (k * D + offs_d[:, None]) * N + offs_n[None, :], mask=m_dn, other=0.0)
        p_state = state_ptr + (pid_bk * D + offs_d[:, None]) * n_chunks * NP + offs_n[None, :]
        p_dtsum = dtsum_ptr + (pid_bk * D + offs_d) * n_chunks
        b_x = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        for t in range(n_chunks):
            c = tl.where(k < 2, t, n_chunks - 1 - t)
            b_exit = tl.load(p_state + c * NP, mask=m_dn, other=0.0)
            b_dtsum = tl.load(p_dtsum + c, mask=m_d, other=0.0)
            tl.store(p_state + c * NP, b_x, mask=m_dn)
            b_x = tl.exp(b_dtsum[:, None] * b_a) * b_x + b_exit

    @triton.jit
    def fused_ss2d_bwd_kernel(
        u_ptr,
        delta_ptr,
        low_ptr,
        w_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        Ds_ptr,
        bias_ptr,
        g_ptr,
        du_ptr,
        ddelta_ptr,
        pBC_ptr,
        pLow_ptr,
        pA_ptr,
        pDs_ptr,
        pBias_ptr,
        pW_ptr,
        carry_ptr,
        s_ub,
        s_ud,
        s_uh,
        s_uw,
        s_db,
        s_dk,
        s_dd,
        s_dh,
        s_dw,
        s_eb,
        s_ek,
        s_ed,
        s_eh,
        s_ew,
        s_lb,
        s_lk,
        s_lr,
        s_lh,
        s_lw,
        s_Bb,
        s_Bk,
        s_Bn,
        s_Bh,
        s_Bw,
        s_Cb,
        s_Ck,
        s_Cn,
        s_Ch,
        s_Cw,
        s_gb,
        s_gd,
        s_gh,
        s_gw,
        n_batch,
        D,
        H,
        W,
        N,
        R,
        n_parts,
        n_group,
        n_chunks,
        LOWRANK: tl.constexpr,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        DELTA_SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr,
        CHUNK: tl.constexpr,
        NP: tl.constexpr,
        RP: tl.constexpr,
    ):
        pid_b = tl.program_id(0).to(tl.int64)
        pid_d = tl.program_id(1)
        L = H * W
        n_idx = tl.arange(0, NP)
        r_idx = tl.arange(0, RP)
        c_idx = tl.arange(0, CHUNK)
        tile_nd = tl.arange(0, BLOCK_D)[:, None] * NP + n_idx[None, :]
        carry_base = carry_ptr + (pid_b * n_parts + pid_d) * (4 * n_chunks * BLOCK_D * NP)
        u_base = u_ptr + pid_b * s_ub
        g_base = g_ptr + pid_b * s_gb
        # The program walks n_group channel blocks in turn; its channel-summed partials (dB, dC,
        # d dt_low) cover all of them, so only n_parts partials exist per image.
        for blk in range(n_group):
            offs_d = (pid_d * n_group + blk) * BLOCK_D + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            d_sum = tl.zeros([BLOCK_D], dtype=tl.float32)  # sum over positions of g * u, for dD
            for o in tl.static_range(2):
                kf = o  # the orientation's forward direction
                kr = o + 2  # ... and its reversal
                if HAS_BIAS:
                    bias_f = tl.load(bias_ptr + kf * D + offs_d, mask=mask_d, other=0.0)
                    bias_r = tl.load(bias_ptr + kr * D + offs_d, mask=mask_d, other=0.0)
                else:
                    bias_f = tl.zeros([BLOCK_D], dtype=tl.float32)
                    bias_r = tl.zeros([BLOCK_D], dtype=tl.float32)
                delta_f = delta_ptr + pid_b * s_db + kf * s_dk
                delta_r = delta_ptr + pid_b * s_db + kr * s_dk
                low_f = low_ptr + pid_b * s_lb + kf * s_lk
                low_r = low_ptr + pid_b * s_lb + kr * s_lk
                w_f = w_ptr + kf * D * R
                w_r = w_ptr + kr * D * R

                # ---- pass 1: forward over chunks, storing chunk-start values of the prefix recurrences
                carry_x = tl.zeros([BLOCK_D, NP], dtype=tl.float32)  # state of direction kf
                carry_l = tl.zeros([BLOCK_D, NP], dtype=tl.float32)  # adjoint of direction kr
                for c in range(n_chunks):
                    slot = carry_base + ((o * n_chunks + c) * 2) * BLOCK_D * NP
                    tl.store(slot + tile_nd, carry_x)
                    tl.store(slot + BLOCK_D * NP + tile_nd, carry_l)
                    p = c * CHUNK + c_idx
                    mask_p = p < L
                    mask = mask_d[:, None] & mask_p[None, :]
                    h, w = _orient_hw(p, H, W, o == 1)
                    hm, wm = _orient_hw(p - 1, H, W, o == 1)
                    mask_pm = mask_p & (p >= 1)
                    u = _load_tile(u_base, s_ud, s_uh, s_uw, offs_d, h, w, mask)
                    g = _load_tile(g_base, s_gd, s_gh, s_gw, offs_d, h, w, mask)
                    dt_f = _dt_raw(
                        delta_f,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_f,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_f,
                        R,
                        offs_d,
                        mask_d,
                        h,
                        w,
                        mask_p,
                        bias_f,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    dt_rm = _dt_raw(
                        delta_r,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_r,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_r,
                        R,
                        offs_d,
                        mask_d,
                        hm,
                        wm,
                        mask_pm,
                        bias_r,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    if DELTA_SOFTPLUS:
                        dt_f = _softplus(dt_f)
                        dt_rm = _softplus(dt_rm)
                    for n in range(N):
                        a_f = tl.load(A_ptr + (kf * D + offs_d) * N + n, mask=mask_d, other=0.0)
                        a_r = tl.load(A_ptr + (kr * D + offs_d) * N + n, mask=mask_d, other=0.0)
                        b_f = _load_row(B_ptr + pid_b * s_Bb + kf * s_Bk + n * s_Bn, s_Bh, s_Bw, h, w, mask_p)
                        c_r = _load_row(C_ptr + pid_b * s_Cb + kr * s_Ck + n * s_Cn, s_Ch, s_Cw, h, w, mask_p)
                        sa, sb = tl.associative_scan(
                            (tl.exp(dt_f * a_f[:, None]), dt_f * u * b_f[None, :]), 1, _ssm_combine
                        )
                        x_f = sb + sa * _column(carry_x, n_idx, n)[:, None]
                        # adjoint of kr: lam[p] = C[p] g[p] + exp(dt[p-1] A) lam[p-1]
                        la, lb = tl.associative_scan(
                            (tl.exp(dt_rm * a_r[:, None]), g * c_r[None, :]), 1, _ssm_combine
                        )
                        lam_r = lb + la * _column(carry_l, n_idx, n)[:, None]
                        carry_x = tl.where(
                            n_idx[None, :] == n, _column(x_f, c_idx, CHUNK - 1)[:, None], carry_x
                        )
                        carry_l = tl.where(
                            n_idx[None, :] == n, _column(lam_r, c_idx, CHUNK - 1)[:, None], carry_l
                        )
                # pass 2 reads the chunk starts (and, for o = 1, du) written by other threads
                tl.debug_barrier()

                # ---- pass 2: backward over chunks; every gradient of directions kf and kr
                carry_xr = tl.zeros([BLOCK_D, NP], dtype=tl.float32)  # state of kr, from the right
                carry_lf = tl.zeros([BLOCK_D, NP], dtype=tl.float32)  # adjoint of kf, from the right
                grad_a_f = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
                grad_a_r = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
                grad_bias_f = tl.zeros([BLOCK_D], dtype=tl.float32)
                grad_bias_r = tl.zeros([BLOCK_D], dtype=tl.float32)
                grad_w_f = tl.zeros([BLOCK_D, RP], dtype=tl.float32)
                grad_w_r = tl.zeros([BLOCK_D, RP], dtype=tl.float32)
                for i in range(n_chunks):
                    c = n_chunks - 1 - i
                    slot = carry_base + ((o * n_chunks + c) * 2) * BLOCK_D * NP
                    start_x = tl.load(slot + tile_nd)
                    start_l = tl.load(slot + BLOCK_D * NP + tile_nd)
                    p = c * CHUNK + c_idx
                    mask_p = p < L
                    mask = mask_d[:, None] & mask_p[None, :]
                    h, w = _orient_hw(p, H, W, o == 1)
                    hp, wp = _orient_hw(p + 1, H, W, o == 1)
                    hm, wm = _orient_hw(p - 1, H, W, o == 1)
                    mask_pp = (p + 1) < L
                    mask_pm = mask_p & (p >= 1)
                    s = h * W + w  # spatial index, for the contiguous fp32 outputs
                    u = _load_tile(u_base, s_ud, s_uh, s_uw, offs_d, h, w, mask)
                    g = _load_tile(g_base, s_gd, s_gh, s_gw, offs_d, h, w, mask)
                    raw_f = _dt_raw(
                        delta_f,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_f,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_f,
                        R,
                        offs_d,
                        mask_d,
                        h,
                        w,
                        mask_p,
                        bias_f,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    raw_r = _dt_raw(
                        delta_r,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_r,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_r,
                        R,
                        offs_d,
                        mask_d,
                        h,
                        w,
                        mask_p,
                        bias_r,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    dt_fp = _dt_raw(
                        delta_f,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_f,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_f,
                        R,
                        offs_d,
                        mask_d,
                        hp,
                        wp,
                        mask_pp,
                        bias_f,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    dt_rm = _dt_raw(
                        delta_r,
                        s_dd,
                        s_dh,
                        s_dw,
                        low_r,
                        s_lr,
                        s_lh,
                        s_lw,
                        w_r,
                        R,
                        offs_d,
                        mask_d,
                        hm,
                        wm,
                        mask_pm,
                        bias_r,
                        LOWRANK,
                        BLOCK_D,
                        CHUNK,
                    )
                    if DELTA_SOFTPLUS:
                        dt_f = _softplus(raw_f)
                        dt_r = _softplus(raw_r)
                        dt_fp = _softplus(dt_fp)
                        dt_rm = _softplus(dt_rm)
                    else:
                        dt_f = raw_f
                        dt_r = raw_r
                    du = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
                    ddt_f = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
                    ddt_r = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
                    for n in range(N):
                        a_f = tl.load(A_ptr + (kf * D + offs_d) * N + n, mask=mask_d, other=0.0)
                        a_r = tl.load(A_ptr + (kr * D + offs_d) * N + n, mask=mask_d, other=0.0)
                        b_f = _load_row(B_ptr + pid_b * s_Bb + kf * s_Bk + n * s_Bn, s_Bh, s_Bw, h, w, mask_p)
                        b_r = _load_row(B_ptr + pid_b * s_Bb + kr * s_Bk + n * s_Bn, s_Bh, s_Bw, h, w, mask_p)
                        c_f = _load_row(C_ptr + pid_b * s_Cb + kf * s_Ck + n * s_Cn, s_Ch, s_Cw, h, w, mask_p)
                        c_r = _load_row(C_ptr + pid_b * s_Cb + kr * s_Ck + n * s_Cn, s_Ch, s_Cw, h, w, mask_p)
                        # state of kf (prefix), from the stored chunk start
                        in_f = dt_f * u * b_f[None, :]
                        sa, sb = tl.associative_scan((tl.exp(dt_f * a_f[:, None]), in_f), 1, _ssm_combine)
                        x_f = sb + sa * _column(start_x, n_idx, n)[:, None]
                        # adjoint of kf (suffix): lam[p] = C[p] g[p] + exp(dt[p+1] A) lam[p+1]
                        ta, tb = tl.associative_scan(
                            (tl.exp(dt_fp * a_f[:, None]), g * c_f[None, :]), 1, _ssm_combine, reverse=True
                        )
                        lam_f = tb + ta * _column(carry_lf, n_idx, n)[:, None]
                        # state of kr (suffix), carried from the right
                        in_r = dt_r * u * b_r[None, :]
                        ra, rb = tl.associative_scan(
                            (tl.exp(dt_r * a_r[:, None]), in_r), 1, _ssm_combine, reverse=True
                        )
                        x_r = rb + ra * _column(carry_xr, n_idx, n)[:, None]
                        # adjoint of kr (prefix), from the stored chunk start
                        qa, qb = tl.associative_scan(
                            (tl.exp(dt_rm * a_r[:, None]), g * c_r[None, :]), 1, _ssm_combine
                        )
                        lam_r = qb + qa * _column(start_l, n_idx, n)[:, None]
                        # channel-summed gradients of B and C at these positions (one partial per block)
                        row = pBC_ptr + ((pid_d * n_batch + pid_b) * 4 * 2 * N + n) * L + s
                        _store_partial(row + (kf * 2 * N) * L, tl.sum(lam_f * dt_f * u, axis=0), mask_p, blk)
                        _store_partial(row + (kf * 2 * N + N) * L, tl.sum(g * x_f, axis=0), mask_p, blk)
                        _store_partial(row + (kr * 2 * N) * L, tl.sum(lam_r * dt_r * u, axis=0), mask_p, blk)
                        _store_partial(row + (kr * 2 * N + N) * L, tl.sum(g * x_r, axis=0), mask_p, blk)
                        du += lam_f * dt_f * b_f[None, :] + lam_r * dt_r * b_r[None, :]
                        # exp(dt A) * x[previous] = x - input: no shifted state needed
                        carry_term_f = lam_f * (x_f - in_f)
                        carry_term_r = lam_r * (x_r - in_r)
                        ddt_f += lam_f * u * b_f[None, :] + a_f[:, None] * carry_term_f
                        ddt_r += lam_r * u * b_r[None, :] + a_r[:, None] * carry_term_r
                        grad_a_f += tl.where(
                            n_idx[None, :] == n, tl.sum(carry_term_f * dt_f, axis=1)[:, None], 0.0
                        )
                        grad_a_r += tl.where(
                            n_idx[None, :] == n, tl.sum(carry_term_r * dt_r, axis=1)[:, None], 0.0
                        )
                        carry_lf = tl.where(n_idx[None, :] == n, _column(lam_f, c_idx, 0)[:, None], carry_lf)
                        carry_xr = tl.where(n_idx[None, :] == n, _column(x_r, c_idx, 0)[:, None], carry_xr)
                    if HAS_D:
                        skip = tl.load(Ds_ptr + kf * D + offs_d, mask=mask_d, other=0.0) + tl.load(
                            Ds_ptr + kr * D + offs_d, mask=mask_d, other=0.0
                        )
                        du += skip[:, None] * g
                        if o == 0:
                            d_sum += tl.sum(g * u, axis=1)
                    if DELTA_SOFTPLUS:
                        ddt_f = ddt_f * _softplus_grad(raw_f)
                        ddt_r = ddt_r * _softplus_grad(raw_r)
                    grad_bias_f += tl.sum(ddt_f, axis=1)
                    grad_bias_r += tl.sum(ddt_r, axis=1)
                    if LOWRANK:
                        low_row = pLow_ptr + ((pid_d * n_batch + pid_b) * 4 * R) * L + s
                        for r in range(R):
                            wr_f = tl.load(w_f + offs_d * R + r, mask=mask_d, other=0.0)
                            wr_r = tl.load(w_r + offs_d * R + r, mask=mask_d, other=0.0)
                            lr_f = _load_row(low_f + r * s_lr, s_lh, s_lw, h, w, mask_p)
                            lr_r = _load_row(low_r + r * s_lr, s_lh, s_lw, h, w, mask_p)
                            _store_partial(
                                low_row + (kf * R + r) * L, tl.sum(wr_f[:, None] * ddt_f, axis=0), mask_p, blk
                            )
                            _store_partial(
                                low_row + (kr * R + r) * L, tl.sum(wr_r[:, None] * ddt_r, axis=0), mask_p, blk
                            )
                            grad_w_f += tl.where(
                                r_idx[None, :] == r, tl.sum(ddt_f * lr_f[None, :], axis=1)[:, None], 0.0
                            )
                            grad_w_r += tl.where(
                                r_idx[None, :] == r, tl.sum(ddt_r * lr_r[None, :], axis=1)[:, None], 0.0
                            )
                    else:
                        e_offs = offs_d[:, None] * s_ed + (h * s_eh + w * s_ew)[None, :]
                        e_base = ddelta_ptr + pid_b * s_eb
                        tl.store(
                            e_base + kf * s_ek + e_offs, ddt_f.to(ddelta_ptr.dtype.element_ty), mask=mask
                        )
                        tl.store(
                            e_base + kr * s_ek + e_offs, ddt_r.to(ddelta_ptr.dtype.element_ty), mask=mask
                        )
                    du_ptrs = du_ptr + (pid_b * D + offs_d[:, None]) * L + s[None, :]
                    if o == 1:
                        du += tl.load(du_ptrs, mask=mask, other=0.0)
                    tl.store(du_ptrs, du, mask=mask)
                # per-image parameter gradients; the launcher sums them over the batch
                nd = (pid_b * 4 * D + offs_d[:, None]) * NP + n_idx[None, :]
                mask_dn = mask_d[:, None] & (n_idx[None, :] < N)
                tl.store(pA_ptr + (nd + kf * D * NP), grad_a_f, mask=mask_dn)
                tl.store(pA_ptr + (nd + kr * D * NP), grad_a_r, mask=mask_dn)
                tl.store(pBias_ptr + pid_b * 4 * D + kf * D + offs_d, grad_bias_f, mask=mask_d)
                tl.store(pBias_ptr + pid_b * 4 * D + kr * D + offs_d, grad_bias_r, mask=mask_d)
                if LOWRANK:
                    dr = (pid_b * 4 * D + offs_d[:, None]) * RP + r_idx[None, :]
                    mask_dr = mask_d[:, None] & (r_idx[None, :] < R)
                    tl.store(pW_ptr + (dr + kf * D * RP), grad_w_f, mask=mask_dr)
                    tl.store(pW_ptr + (dr + kr * D * RP), grad_w_r, mask=mask_dr)
            if HAS_D:
                for k in tl.static_range(4):
                    tl.store(pDs_ptr + pid_b * 4 * D + k * D + offs_d, d_sum, mask=mask_d)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def triton_supports(u: torch.Tensor, N: int) -> str | None:
    """None when the fused kernels can run this problem, else the reason they cannot."""
    if u.dtype not in TRITON_DTYPES:
        return f"dtype {u.dtype} (fp16, bf16 or fp32 only)"
    if N > MAX_D_STATE:
        return f"d_state N = {N} > {MAX_D_STATE}"
    return None


def _bwd_config(D: int, L: int, N: int):
    """(BLOCK_D, CHUNK, num_warps): ~30 [BLOCK_D, CHUNK] tiles plus four [BLOCK_D, N] carries live.

    Tiles of 1024 elements over 8 warps (4 per thread) compile without spills for N <= 4; the
    carries of N = 16 need half the channels. Under the interpreter: small tiles, several chunks.
    """
    if TRITON_INTERPRET:
        return min(_next_pow2(D), 4), min(_next_pow2(L), 8), 4
    block_d = min(_next_pow2(D), 32 if N <= 4 else 16)
    return block_d, min(_next_pow2(L), 32), 8


def _partial_split(D: int, block_d: int, N: int, R: int):
    """(n_parts, n_group): programs per image, and channel blocks each one walks in turn.

    Each program writes one partial of the channel-summed gradients, (2N + R) values per
    direction and position; n_parts is the largest count that keeps all partials within a
    quarter of one (B, 4, D, L) tensor (D / 4 values), so more parallelism where it is cheap.
    """
    n_blocks = triton.cdiv(D, block_d)
    n_parts = max(1, min(n_blocks, D // (4 * (2 * N + R))))
    n_group = triton.cdiv(n_blocks, n_parts)
    return triton.cdiv(n_blocks, n_group), n_group


def _small_f32(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Parameters (A, D, bias, dt_weight) as contiguous fp32; a dummy pointer when absent."""
    return like.new_empty(1, dtype=torch.float32) if t is None else t.detach().float().contiguous()


def _fwd_config(D: int, L: int, N: int):
    """(BLOCK_D, BLOCK_C, chunk, num_warps) of the forward.

    A program walks BLOCK_C chunks of ``chunk`` positions for BLOCK_D channels, one position per
    step (channels and chunks across the lanes; no tile over L, so no padding of L). Chunks of
    about sqrt(L) positions keep both the walk and the chain over chunks short, and enough of
    them to fill the GPU; the chunk states (n_chunks x NP values per channel and direction) stay
    within a quarter of one (B, 4, D, L) tensor.
    """
    NP = _next_pow2(N)
    chunk = math.isqrt(L - 1) + 1
    while triton.cdiv(L, chunk) * NP * 4 > L and chunk < L:
        chunk *= 2
    chunk = min(chunk, L)
    if TRITON_INTERPRET:
        # the interpreter pays per step, not per lane: every channel and chunk in one program
        return min(_next_pow2(D), 16), min(_next_pow2(triton.cdiv(L, chunk)), 64), chunk, 4
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


def ss2d_fwd(
    u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus: bool, out_dtype, config=None
) -> torch.Tensor:
    """Launcher of the forward: out has u's shape and memory layout, in out_dtype.

    Three steps: per orientation, each chunk's exit state from a zero entry (state pass); per
    direction, the chain over chunks turns them into entering states; per orientation, the
    chunks again from their entering states, writing y (the row-major orientation stores, the
    column-major one adds). With a single chunk only the last step runs.
    """
    batch, d_inner, H, W = u.shape
    L = H * W
    N = A.shape[2]
    NP = _next_pow2(N)
    lowrank = dt_low is not None
    R = dt_low.shape[2] if lowrank else 1
    block_d, block_c, chunk, num_warps = config or _fwd_config(d_inner, L, N)
    n_chunks = triton.cdiv(L, chunk)
    out = new_output(u, dtype=out_dtype)
    params = dict(
        w_ptr=_f32_or_none(dt_weight),
        A_ptr=_f32_or_none(A),
        Ds_ptr=_f32_or_none(D),
        bias_ptr=_f32_or_none(bias),
    )
    grid = (triton.cdiv(n_chunks, block_c), triton.cdiv(d_inner, block_d), batch)
    state = dtsum = None

    def chunk_pass(column: bool, output: bool):
        ss2d_fwd_chunk_kernel[grid](
            u_ptr=u,
            delta_ptr=delta,
            low_ptr=dt_low,
            B_ptr=B,
            C_ptr=C,
            state_ptr=state,
            dtsum_ptr=dtsum,
            out_ptr=out if output else None,
            **params,
            **_named_strides("u", u, column, "bdij"),
            **_named_strides("d", delta, column, "bkdij"),
            **_named_strides("l", dt_low, column, "bkrij"),
            **_named_strides("B", B, column, "bknij"),
            **_named_strides("C", C, column, "bknij"),
            **_named_strides("o", out, column, "bdij"),
            D=d_inner,
            L=L,
            M=H if column else W,
            chunk=chunk,
            n_chunks=n_chunks,
            k_f=int(column),
            N=N,
            R=R,
            NP=NP,
            DELTA_SOFTPLUS=softplus,
            ACCUMULATE=column,
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
            ss2d_fwd_chain_kernel[(triton.cdiv(d_inner, block_d), batch * 4)](
                state_ptr=state,
                dtsum_ptr=dtsum,
                A_ptr=params["A_ptr"],
                D=d_inner,
                n_chunks=n_chunks,
                N=N,
                NP=NP,
                BLOCK_D=block_d,
                num_warps=1,
            )
        chunk_pass(column=False, output=True)
        chunk_pass(column=True, output=True)
    return out


def ss2d_bwd(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus: bool):
    """Launcher of the backward kernel. Returns (du, ddelta_or_None, d_dt_low_or_None,
    d_dt_weight_or_None, dA, dB, dC, dD_or_None, dbias_or_None), each in its input's dtype."""
    batch, d_inner, H, W = u.shape
    L = H * W
    N = A.shape[2]
    lowrank = dt_low is not None
    R = dt_low.shape[2] if lowrank else 0
    block_d, chunk, num_warps = _bwd_config(d_inner, L, N)
    n_parts, n_group = _partial_split(d_inner, block_d, N, R)
    n_chunks = triton.cdiv(L, chunk)
    NP, RP = _next_pow2(N), _next_pow2(max(R, 1))
    dev = u.device
    du = new_buffer(batch, d_inner, L, device=dev)
    if lowrank:
        ddelta = u.new_empty(1, dtype=torch.float32)
        d_low_parts = new_buffer(n_parts, batch, 4, R, L, device=dev)
    else:
        ddelta = (
            new_output(delta) if is_dense(delta) else new_buffer(*delta.shape, device=dev, dtype=delta.dtype)
        )
        d_low_parts = u.new_empty(1, dtype=torch.float32)
    bc_parts = new_buffer(n_parts, batch, 4, 2, N, L, device=dev)
    # padded columns (n >= N, r >= R) are neither written nor read back
    a_parts = new_buffer(batch, 4, d_inner, NP, device=dev)
    skip_parts = new_buffer(batch, 4, d_inner, device=dev)
    bias_parts = new_buffer(batch, 4, d_inner, device=dev)
    w_parts = new_buffer(batch, 4, d_inner, RP, device=dev) if lowrank else u.new_empty(1)
    carries = new_buffer(batch * n_parts * 4 * n_chunks * block_d * NP, device=dev)
    dummy = u.new_empty(1, dtype=torch.float32)
    with _on_device(u):
        fused_ss2d_bwd_kernel[(batch, n_parts)](
            u_ptr=u,
            delta_ptr=delta if delta is not None else dummy,
            low_ptr=dt_low if lowrank else dummy,
            w_ptr=_small_f32(dt_weight, u),
            A_ptr=_small_f32(A, u),
            B_ptr=B,
            C_ptr=C,
            Ds_ptr=_small_f32(D, u),
            bias_ptr=_small_f32(bias, u),
            g_ptr=grad_out,
            du_ptr=du,
            ddelta_ptr=ddelta,
            pBC_ptr=bc_parts,
            pLow_ptr=d_low_parts,
            pA_ptr=a_parts,
            pDs_ptr=skip_parts,
            pBias_ptr=bias_parts,
            pW_ptr=w_parts,
            carry_ptr=carries,
            **_named_strides("u", u, False, "bdhw"),
            **_named_strides("d", delta, False, "bkdhw"),
            **_named_strides("e", None if lowrank else ddelta, False, "bkdhw"),
            **_named_strides("l", dt_low, False, "bkrhw"),
            **_named_strides("B", B, False, "bknhw"),
            **_named_strides("C", C, False, "bknhw"),
            **_named_strides("g", grad_out, False, "bdhw"),
            n_batch=batch,
            D=d_inner,
            H=H,
            W=W,
            N=N,
            R=R,
            n_parts=n_parts,
            n_group=n_group,
            n_chunks=n_chunks,
            LOWRANK=lowrank,
            HAS_D=D is not None,
            HAS_BIAS=bias is not None,
            DELTA_SOFTPLUS=softplus,
            BLOCK_D=block_d,
            CHUNK=chunk,
            NP=NP,
            RP=RP,
            num_warps=num_warps,
        )
    # fixed-order sums over channel blocks and images: deterministic
    bc_parts = bc_parts.view(n_parts, batch, 4, 2, N, H, W)
    dB = bc_parts[:, :, :, 0].sum(0).to(B.dtype)  # two sums: two separate tensors, no aliasing
    dC = bc_parts[:, :, :, 1].sum(0).to(C.dtype)
    dA = a_parts[..., :N].sum(0).to(A.dtype)
    dD = skip_parts.sum(0).to(D.dtype) if D is not None else None
    dbias = bias_parts.sum(0).to(bias.dtype) if bias is not None else None
    if lowrank:
        d_low = d_low_parts.sum(0).view(batch, 4, R, H, W).to(dt_low.dtype)
        d_weight = w_parts[..., :R].sum(0).to(dt_weight.dtype)
        ddelta = None
    else:
        d_low = d_weight = None
    return du.view(batch, d_inner, H, W).to(u.dtype), ddelta, d_low, d_weight, dA, dB, dC, dD, dbias


# ---- torch.library ops: torch.compile traces through them; FLOP counters see one node per scan.

_EMPTY = (0,)


def _or_none(t: torch.Tensor) -> torch.Tensor | None:
    return None if t.numel() == 0 and t.dim() == 1 else t


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_EMPTY) if t is None else t


@torch.library.custom_op("svmamba::ss2d_fwd", mutates_args=())
def _ss2d_fwd_op(
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
    return ss2d_fwd(u, delta, None, None, A, B, C, D, delta_bias, delta_softplus, out_dtype)


@torch.library.custom_op("svmamba::ss2d_lowrank_fwd", mutates_args=())
def _ss2d_lowrank_fwd_op(
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
    return ss2d_fwd(u, None, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus, out_dtype)


@_ss2d_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype):
    return torch.empty_like(u, dtype=out_dtype)


@_ss2d_lowrank_fwd_op.register_fake
def _(u, dt_low, dt_weight, A, B, C, D, dt_bias, delta_softplus, out_dtype):
    return torch.empty_like(u, dtype=out_dtype)


@torch.library.custom_op("svmamba::ss2d_bwd", mutates_args=())
def _ss2d_bwd_op(
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
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    grads = ss2d_bwd(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus)
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
def _(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, delta_softplus):
    like = dict(u=u, delta=delta, dt_low=dt_low, dt_weight=dt_weight, A=A, B=B, C=C, D=D, bias=bias)
    return tuple(_grad_like(t, name, u) for name, t in like.items())


def _backward(ctx, grad_out):
    u, delta, dt_low, dt_weight, A, B, C, D, bias = ctx.saved_tensors
    grads = _ss2d_bwd_op(grad_out, u, delta, dt_low, dt_weight, A, B, C, D, bias, ctx.delta_softplus)
    du, ddelta, d_low, d_weight, dA, dB, dC, dD, dbias = (_or_none(g) for g in grads)
    return du, ddelta, d_low, d_weight, dA, dB, dC, dD, dbias


def _setup_full(ctx, inputs, output):
    u, delta, A, B, C, D, bias, softplus, _ = inputs
    ctx.delta_softplus = softplus
    ctx.save_for_backward(u, delta, None, None, A, B, C, D, bias)


def _setup_lowrank(ctx, inputs, output):
    u, dt_low, dt_weight, A, B, C, D, bias, softplus, _ = inputs
    ctx.delta_softplus = softplus
    ctx.save_for_backward(u, None, dt_low, dt_weight, A, B, C, D, bias)


def _backward_full(ctx, grad_out):
    du, ddelta, _, _, dA, dB, dC, dD, dbias = _backward(ctx, grad_out)
    return du, ddelta, dA, dB, dC, dD, dbias, None, None


def _backward_lowrank(ctx, grad_out):
    du, _, d_low, d_weight, dA, dB, dC, dD, dbias = _backward(ctx, grad_out)
    return du, d_low, d_weight, dA, dB, dC, dD, dbias, None, None


_ss2d_fwd_op.register_autograd(_backward_full, setup_context=_setup_full)
_ss2d_lowrank_fwd_op.register_autograd(_backward_lowrank, setup_context=_setup_lowrank)


def ss2d_triton(u, delta, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype):
    """Dispatch to the full-delta or low-rank fused op (both differentiable)."""
    if dt_low is None:
        return _ss2d_fwd_op(u, delta, A, B, C, D, bias, softplus, out_dtype)
    return _ss2d_lowrank_fwd_op(u, dt_low, dt_weight, A, B, C, D, bias, softplus, out_dtype)

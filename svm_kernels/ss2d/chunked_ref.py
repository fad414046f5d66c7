"""Chunk-parallel backward of one selective-scan direction, in plain torch: the algorithm the
v2 backward kernels implement, written pass by pass so each kernel pass can be tested against
the matching step here.

One direction, in its own sequence order (the caller flips the reversed directions):

    x[t] = a[t] x[t-1] + b[t],   a = exp(dt A),  b = dt u B,   y[t] = sum_n C[t] x[t]

with the adjoint lam[t] = C[t] g[t] + a[t+1] lam[t+1]. The only gradient terms that pair the
prefix state with the suffix adjoint are those through the decays; they are rewritten with the
log-space cumulative sum S[t] = sum_{s<=t} dt[s] (per n, w[t] = C g x[t] - b[t] lam[t]):

    d dt[t] = sum_n lam[t] u[t] B[t]  +  sum_{t'>=t} q[t'],   q = sum_n A w,
    dA      = sum_t S[t] w[t]

so every per-position term needs either x (a forward walk) or lam (a reverse walk), never both:
no per-position state is stored between walks. Chunk c's carries are linear in the entering
state / adjoint, which is why each walk also gathers the coefficients G and K.

Passes (lanes = channels x chunks, positions walked one per step, as in the forward):
  0. the forward saves the state entering each chunk (``entering_states``), so no pass of the
     backward walks a chunk from zero or chains states.
  1. state walk, from those states: dC, the x half of d dt (less the chunk's q passed so far)
     and of dA (with S counted from the chunk's entry), and the chunk values for the adjoint:
     G = sum_t C g prod_{s<=t} a_s (a*lam at the chunk start from a zero adjoint, by duality,
     ``adjoint_chunk_values``), K = exit - (the chunk's decay) x entering state (the state's exit
     from zero, which is the adjoint's coefficient on its entering value), the q total, summed dt.
  2. the adjoint's chain over chunks (the forward's, in the opposite order, with the same summed
     dt, because a*lam shifts the decay by one position); the chunks' exact q totals and their
     sums over later chunks; dA's part of S at each chunk's entry, times the chunk's total of w.
  3. adjoint walk from the chained adjoint: du, dB, the lam half of d dt and of dA.

Shapes: dt, u, g (..., D, L); A (..., D, N); B, C (..., N, L). float64 in the tests.
"""

from __future__ import annotations

import torch


def _chunks(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """(..., L) -> (..., n_chunks, chunk), zero padded: dt = 0 decays by 1 and adds nothing."""
    L = t.shape[-1]
    n = -(-L // chunk)
    return torch.nn.functional.pad(t, (0, n * chunk - L)).unflatten(-1, (n, chunk))


def _chain(exits: torch.Tensor, dtsum: torch.Tensor, A: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Entering values per chunk from chunk exits computed from zero: the carry over chunks."""
    n = exits.shape[-2]
    carry = torch.zeros_like(exits[..., 0, :])
    entering = torch.empty_like(exits)
    for c in reversed(range(n)) if reverse else range(n):
        entering[..., c, :] = carry
        carry = torch.exp(dtsum[..., c, None] * A) * carry + exits[..., c, :]
    return entering


def adjoint_chunk_values(exit_state: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a*lam at the chunk start, K) of the reverse walk from a zero adjoint, from the state
    pass's exit state and G. Both walks sum the same products of decays over pairs t <= t':
    a*lam at the start is sum_t' C g[t'] prod_{s<=t'} a[s] = G, and K = sum_t b[t]
    prod_{s>t} a[s] is the exit state from zero (and the q totals, sum over t <= t' of
    b[t] C g[t'] prod_{t<s<=t'} a[s], agree as well)."""
    return G, exit_state


def entering_states(dt, u, A, B, chunk: int) -> torch.Tensor:
    """(..., D, n_chunks, N): the state entering each chunk, which the forward saves."""
    dtc, uc, Bc = (_chunks(t, chunk) for t in (dt, u, B))
    x = torch.zeros(*dtc.shape[:-2], A.shape[-1], dtype=dt.dtype, device=dt.device)
    states = []
    for c in range(dtc.shape[-2]):
        states.append(x)
        for j in range(chunk):
            dt_j = dtc[..., c, j, None]
            x = torch.exp(dt_j * A) * x + (dt_j * uc[..., c, j, None]) * Bc[..., c, j].unsqueeze(-2)
    return torch.stack(states, -2)


def chunked_scan_bwd(dt, u, A, B, C, g, chunk: int):
    """(d dt, du, dA, dB, dC) of sum(g * y) for one direction, by the chunk-parallel passes."""
    L = dt.shape[-1]
    dtc, uc, gc = (_chunks(t, chunk) for t in (dt, u, g))  # (..., D, n, T)
    Bc, Cc = (_chunks(t, chunk).unsqueeze(-4) for t in (B, C))  # (..., 1, N, n, T)
    Ac = A[..., :, None, :]  # (..., D, 1, N): broadcasts over chunks
    x_in = entering_states(dt, u, A, B, chunk)

    def step(j):
        # one position of every chunk: decay, input, and the direct adjoint term, (..., D, n, N)
        dt_j = dtc[..., j, None]
        a = torch.exp(dt_j * Ac)
        b = (dt_j * uc[..., j, None]) * Bc[..., j].transpose(-1, -2)
        lt = gc[..., j, None] * Cc[..., j].transpose(-1, -2)
        return a, b, lt

    # 1. state walk from the entering states: dC, the x halves, the chunk values
    ddt = torch.zeros_like(dtc)
    dC = dtc.new_zeros(*dtc.shape[:-3], A.shape[-1], *dtc.shape[-2:])  # (..., N, n, T)
    dA = torch.zeros_like(x_in)
    x = x_in
    s = torch.zeros_like(dtc[..., 0, None])
    q_x = torch.zeros_like(dtc[..., 0])  # the state's q passed so far, then the chunk's total
    G = torch.zeros_like(x)
    decay = torch.ones_like(x)
    for j in range(chunk):
        a, b, lt = step(j)
        x = a * x + b
        s = s + dtc[..., j, None]
        ddt[..., j] = -q_x
        q_x = q_x + (Ac * lt * x).sum(-1)
        dA = dA + s * lt * x
        decay = decay * a
        G = G + lt * decay
        dC[..., j] = (gc[..., j, None] * x).sum(-3).transpose(-1, -2)
    dtsum = s[..., 0]
    K = x - decay * x_in

    # 2. the adjoint's chain (its chunk values by duality), the carries, dA's entry part
    m, K = adjoint_chunk_values(K, G)
    m_in = _chain(m, dtsum, A, reverse=True)
    w_total = x_in * G - m_in * K  # the chunk's total of w per state (zero-entry parts cancel)
    q_tot = (Ac * w_total).sum(-1)
    carry = q_tot.flip(-1).cumsum(-1).flip(-1) - q_tot + q_x  # later chunks' totals + this one's x total
    s_start = dtsum.cumsum(-1) - dtsum  # S at each chunk's entry
    dA = dA + s_start[..., None] * w_total

    # 3. adjoint walk from the chained adjoint: du, dB and the lam half of d dt and dA
    du = torch.zeros_like(uc)
    dB = torch.zeros_like(dC)
    m = m_in
    s = dtsum[..., None]
    suffix_l = torch.zeros_like(q_x)
    for j in reversed(range(chunk)):
        a, b, lt = step(j)
        lam = lt + m
        m = a * lam
        suffix_l = suffix_l + (Ac * b * lam).sum(-1)
        Bj = Bc[..., j].transpose(-1, -2)
        ddt[..., j] += (lam * uc[..., j, None] * Bj).sum(-1) - suffix_l + carry
        du[..., j] = (lam * dtc[..., j, None] * Bj).sum(-1)
        dB[..., j] = (lam * (dtc[..., j] * uc[..., j])[..., None]).sum(-3).transpose(-1, -2)
        dA = dA - s * b * lam
        s = s - dtc[..., j, None]
    flat = lambda t: t.flatten(-2)[..., :L]
    return flat(ddt), flat(du), dA.sum(-2), flat(dB), flat(dC)

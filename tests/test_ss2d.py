"""Fused four-direction selective scan (Triton; the interpreter on CPU) against the plain reference."""

import math

import pytest
import torch
from helpers import assert_close_rel
from torch.utils._python_dispatch import TorchDispatchMode

from svm_kernels import cross_merge, cross_scan, cross_selective_scan, cross_selective_scan_lowrank
from svm_kernels import utils as kutils
from svm_kernels.ss2d import fused
from svm_kernels.ss2d.naive import cross_selective_scan_naive, lowrank_delta
from svm_kernels.utils import cdiv

pytestmark = pytest.mark.usefixtures("kernel_device")

# Relative tolerance of the outputs and gradients per storage dtype (fp32 state and accumulation).
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kutils, "POISON_OUTPUTS", True)


def make_inputs(batch, D, H, W, N, R=3, lowrank=True, dtype=torch.float32, skip=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, the same on every machine
    dev = torch.get_default_device()

    def rnd(*shape, scale=1.0, to=dtype):
        return (torch.randn(*shape, generator=g, device="cpu") * scale).to(device=dev, dtype=to)

    u = rnd(batch, D, H, W)
    A = -(torch.rand(4, D, N, generator=g, device="cpu") + 0.2).to(dev)
    B, C = rnd(batch, 4, N, H, W), rnd(batch, 4, N, H, W)
    Ds = rnd(4, D, to=torch.float32) if skip else None
    b = rnd(4, D, scale=0.3, to=torch.float32) if bias else None
    if lowrank:
        return dict(
            u=u,
            dt_low=rnd(batch, 4, R, H, W, scale=0.5),
            dt_weight=rnd(4, D, R, scale=0.5, to=torch.float32),
            A=A,
            B=B,
            C=C,
            D=Ds,
            dt_bias=b,
        )
    return dict(u=u, delta=rnd(batch, 4, D, H, W, scale=0.5), A=A, B=B, C=C, D=Ds, delta_bias=b)


def run(inputs, backend, lowrank, grad_out, **kw):
    """Output and the gradient of every tensor input (None for absent ones)."""
    leaves = {
        k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()
    }
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y = op(**leaves, backend=backend, **kw)
    (y.float() * grad_out).sum().backward()
    return y, {k: (v.grad if v is not None else None) for k, v in leaves.items()}


def check_against_reference(inputs, lowrank, tol=2e-5, **kw):
    u = inputs["u"]
    grad_out = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), device="cpu").to(u.device)
    y_ref, g_ref = run(inputs, "torch", lowrank, grad_out, **kw)
    y, grads = run(inputs, "triton", lowrank, grad_out, **kw)
    assert y.dtype == y_ref.dtype and y.shape == u.shape
    assert_close_rel(y, y_ref, tol, "output")
    for name, ref in g_ref.items():
        if ref is None:
            assert grads[name] is None
            continue
        assert grads[name].dtype == inputs[name].dtype, name
        assert_close_rel(grads[name], ref, tol, f"grad {name}")


CASES = [
    # batch, D, H, W, N, lowrank, softplus, skip, bias
    pytest.param(2, 5, 3, 5, 1, False, True, True, True, marks=pytest.mark.slow),  # odd H, W; D % block
    pytest.param(1, 6, 7, 4, 4, True, True, True, True, marks=pytest.mark.slow),
    (1, 3, 1, 6, 1, True, False, False, False),  # H = 1, no softplus, no D, no bias
    pytest.param(2, 5, 5, 1, 4, False, True, True, False, marks=pytest.mark.slow),  # W = 1
    pytest.param(1, 5, 4, 3, 1, True, True, False, True, marks=pytest.mark.slow),
    pytest.param(1, 3, 2, 3, 16, True, True, True, True, marks=pytest.mark.slow),  # Mamba's state size
    (1, 2, 3, 2, 16, False, False, True, True),
]


@pytest.mark.parametrize("batch,D,H,W,N,lowrank,softplus,skip,bias", CASES)
def test_fused_matches_reference(batch, D, H, W, N, lowrank, softplus, skip, bias):
    inputs = make_inputs(batch, D, H, W, N, lowrank=lowrank, skip=skip, bias=bias)
    check_against_reference(inputs, lowrank, delta_softplus=softplus)


def reference_forward(inputs, lowrank, delta_softplus=True):
    """The plain reference in float64."""
    t = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    if lowrank:
        t["delta"] = lowrank_delta(t.pop("dt_low"), t.pop("dt_weight"))
        t["delta_bias"] = t.pop("dt_bias")
    return cross_selective_scan_naive(**t, delta_softplus=delta_softplus)


MULTI_CHUNK = [
    # batch, D, H, W, N, lowrank, forward config (BLOCK_D, BLOCK_C, chunk, num_warps)
    (1, 3, 4, 7, 1, True, (2, 2, 3, 4)),  # chunks end mid-row; several chunk and channel blocks
    (2, 3, 5, 3, 4, False, (4, 4, 2, 4)),  # chunks of 2 across row and column wraps
    (1, 2, 3, 4, 16, True, (2, 2, 5, 4)),  # last chunk shorter than the others
    (1, 3, 1, 9, 2, True, (4, 2, 1, 4)),  # one position per chunk: the chain does all the work
]


@pytest.mark.parametrize("batch,D,H,W,N,lowrank,config", MULTI_CHUNK)
def test_forward_multi_chunk(monkeypatch, batch, D, H, W, N, lowrank, config):
    """Small forced chunks (the walk at N > 4; any N here): the chunk states, the chain over
    chunks, both orientations; the walk that issues each step's loads during the previous step
    (the default) is bit for bit the walk that loads at each step."""
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: config)
    monkeypatch.setattr(fused, "TILE_SCAN_MAX_N", 0)
    inputs = make_inputs(batch, D, H, W, N, lowrank=lowrank)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y = op(**inputs, backend="triton")
    assert_close_rel(y, reference_forward(inputs, lowrank), 2e-5, "output")
    monkeypatch.setattr(fused, "WALK_PREFETCH", False)
    assert torch.equal(op(**inputs, backend="triton"), y)


MULTI_TILE = [
    # batch, D, H, W, N, lowrank, tile scan config (BLOCK_D, SUB, NSUB, num_warps)
    (1, 5, 4, 7, 1, True, (2, 2, 2, 4)),  # L = 28: 7 tiles of 4, several channel blocks
    (2, 3, 5, 3, 4, False, (4, 4, 2, 4)),  # L = 15: the last tile moved back by 1
    (1, 3, 3, 3, 2, True, (4, 2, 4, 4)),  # L = 9: tiles of 8, the last one redoes 7 positions
    (1, 2, 1, 9, 3, True, (2, 1, 4, 4)),  # one position per lane; padded state (N = 3)
    (1, 3, 7, 1, 1, False, (4, 8, 1, 4)),  # one lane of 8: the whole scan within a thread
    (1, 2, 2, 2, 1, True, (2, 4, 4, 4)),  # tile larger than L = 4: shrunk to fit
]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("batch,D,H,W,N,lowrank,config", MULTI_TILE)
def test_forward_tile_scan(monkeypatch, batch, D, H, W, N, lowrank, config, prefetch):
    """The tile scan (N <= 4) with small forced tiles: the scan within lanes and across them,
    the carry from tile to tile in both directions, the last tile's pass-through, both
    orientations, channel blocks that do not divide D; with and without the next tile's loads
    issued ahead (forced: the launch policy prefetches only where it fits a GPU's registers)."""
    monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N: config)
    monkeypatch.setattr(fused, "_tile_prefetch", lambda u, delta, flat, saving: prefetch)
    inputs = make_inputs(batch, D, H, W, N, lowrank=lowrank)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y = op(**inputs, backend="triton")
    assert_close_rel(y, reference_forward(inputs, lowrank), 2e-5, "output")


DOT_DT_TILES = [
    # batch, D, H, W, N, R, storage dtype, tile scan config (BLOCK_D, SUB, NSUB, num_warps)
    (1, 16, 4, 8, 1, 3, torch.float32, (16, 4, 4, 4)),  # L = 32: tiles aligned to multiples of 8
    (1, 20, 5, 7, 1, 6, torch.bfloat16, (16, 4, 4, 4)),  # L = 35: last tile moved back; D % 16 != 0
    (2, 16, 3, 6, 3, 5, torch.float16, (8, 2, 8, 4)),  # 8 channels, two channel blocks, padded N
]


@pytest.mark.parametrize("by_position", [True, False])
@pytest.mark.parametrize("batch,D,H,W,N,R,dtype,config", DOT_DT_TILES)
def test_forward_tile_dot_dt(monkeypatch, batch, D, H, W, N, R, dtype, config, by_position):
    """Tiles of >= 16 positions and >= 8 channels build the low-rank dt with tl.dot (fp32 dt_low:
    tf32x3; half dt_low: dt_weight split into two half parts). The output is fp32 and the
    reference float64 on the same inputs, so a dt_weight rounded to a half would show (~1e-3).
    The dt_low tile loaded either way round in both orientations (the launch picks one per
    orientation and Triton version)."""
    monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N: config)
    monkeypatch.setattr(fused, "_dt_by_position", lambda args: by_position)
    inputs = make_inputs(batch, D, H, W, N, R=R, lowrank=True, dtype=dtype)
    y = cross_selective_scan_lowrank(**inputs, backend="triton")
    assert_close_rel(y, reference_forward(inputs, True), 2e-5, "output")


PREFETCH_TILES = [
    # batch, D, H, W, N, lowrank, storage dtype, tile scan config (BLOCK_D, SUB, NSUB, num_warps)
    # long thin maps (the 1 x 1000 and 1000 x 1 of test_long_thin_maps, shortened: the same tile
    # arithmetic at 200 = 6 x 32 + 8 positions)
    (1, 3, 1, 200, 1, True, torch.bfloat16, (2, 4, 8, 4)),  # 7 tiles, the last moved back by 24
    (1, 3, 200, 1, 4, False, torch.float16, (4, 8, 4, 4)),  # full delta in halves: delta carried
    (2, 5, 7, 9, 1, False, torch.bfloat16, (4, 2, 4, 4)),  # odd sizes, D % BLOCK_D != 0, 8 tiles
    (1, 16, 5, 7, 2, True, torch.float16, (16, 4, 4, 4)),  # the dot's dt_low tile carried
]


@pytest.mark.parametrize("batch,D,H,W,N,lowrank,dtype,config", PREFETCH_TILES)
def test_forward_tile_prefetch(monkeypatch, batch, D, H, W, N, lowrank, dtype, config):
    """The tile scan's software pipeline (each tile's loads issued during the previous tile):
    against the float64 reference on the same half-precision inputs, and bit for bit equal to
    the walk that loads each tile itself (the same arithmetic in the same order), on long thin
    maps whose last tile is moved back, odd sizes and half-precision full delta."""
    monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N: config)
    # forced on any size (the launch policy prefetches where it fits a GPU's registers)
    monkeypatch.setattr(fused, "_tile_prefetch", lambda u, delta, flat, saving: fused.TILE_PREFETCH)
    inputs = make_inputs(batch, D, H, W, N, R=3, lowrank=lowrank, dtype=dtype)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y = op(**inputs, backend="triton")
    # fp32 recurrences of up to 200 steps in different orders: rounding grows like sqrt(L)
    tol = 2e-5 * max(1.0, math.sqrt(H * W / 64))
    assert_close_rel(y, reference_forward(inputs, lowrank), tol, "output")
    monkeypatch.setattr(fused, "TILE_PREFETCH", False)
    assert torch.equal(op(**inputs, backend="triton"), y)


def test_tile_prefetch_policy(monkeypatch):
    """The launch prefetches where the carried tiles fit in 128 registers on sm_90: planes of a
    multiple of 16 positions, not fp32 full delta, planes contiguous in walk order unless
    TILE_PREFETCH_STRIDED; TILE_PREFETCH = False turns it off."""

    def t(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype)

    u16, u32 = t(1, 2, 4, 8), t(1, 2, 4, 8, dtype=torch.float32)
    d16, d32 = t(1, 4, 2, 4, 8), t(1, 4, 2, 4, 8, dtype=torch.float32)
    assert fused._tile_prefetch(u16, None) and fused._tile_prefetch(u32, None)
    assert fused._tile_prefetch(u16, d16)
    assert not fused._tile_prefetch(u32, d32) and not fused._tile_prefetch(u16, d32)
    assert not fused._tile_prefetch(t(1, 2, 56, 57), None)  # L % 16 != 0
    assert not fused._tile_prefetch(t(1, 2, 1, 1000), None)
    assert not fused._tile_prefetch(u16, None, flat=False)
    monkeypatch.setattr(fused, "TILE_PREFETCH_STRIDED", True)
    assert fused._tile_prefetch(u16, None, flat=False)
    monkeypatch.setattr(fused, "TILE_PREFETCH", False)
    assert not fused._tile_prefetch(u16, None) and not fused._tile_prefetch(u16, None, flat=False)


@pytest.mark.parametrize("lowrank", [False, True])
def test_forward_strided_planes(monkeypatch, lowrank):
    """Planes that are not contiguous in either walk order (u, B and dt_low / delta sliced out of
    wider maps): the tile scan's (row, column) index path instead of the flat one."""
    monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N: (2, 2, 4, 4))
    batch, D, H, W, N = 1, 3, 5, 4, 2
    inputs = make_inputs(batch, D, H, W, N, lowrank=lowrank)
    for name in ("u", "B", "dt_low" if lowrank else "delta"):
        t = inputs[name]
        wide = torch.randn(*t.shape[:-1], W + 3, dtype=t.dtype)
        wide[..., 1 : W + 1] = t
        inputs[name] = wide[..., 1 : W + 1]
        assert not inputs[name].is_contiguous()
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    y = op(**inputs, backend="triton")
    assert_close_rel(y, reference_forward(inputs, lowrank), 2e-5, "output")


@pytest.mark.parametrize("N", [2, 5])  # the tile scan and the chunk walk
def test_forward_takes_parameters_of_any_layout(N):
    """A, D, the bias and dt_weight as transposed views (the kernels read them as flat arrays)."""
    inputs = make_inputs(1, 3, 2, 3, N)
    for name in ("A", "dt_weight", "D", "dt_bias"):
        t = inputs[name]
        inputs[name] = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not inputs[name].is_contiguous()
    y = cross_selective_scan_lowrank(**inputs, backend="triton")
    assert_close_rel(y, reference_forward(inputs, True), 2e-5, "output")


def test_forward_tile_config_fills_the_gpu(monkeypatch):
    """The GPU's tile policy (the interpreter's tiles are its own): at least 4 blocks per SM (132
    SMs) per launch at stage 1, B = 128 (what it promises: B = 32 at N = 2 gets 384), and a
    tile of whole lanes."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)  # the GPU's policy, not the interpreter's
    for batch, D, L, N in ((128, 96, 56 * 56, 1), (128, 96, 56 * 56, 4)):
        block_d, sub, nsub, _ = fused._fwd_scan_config(D, L, N)
        assert batch * -(-D // block_d) >= 4 * 132, (batch, D, N)
        assert sub * nsub * block_d >= 32 and sub * nsub <= L


def test_forward_tiles_stay_within_short_maps(monkeypatch):
    """VMamba's later stages (8 x 8, 7 x 7, 4 x 4 maps): the tile gets fewer lanes per channel, so
    it lies within the map (no positions past its end walked with dt = 0), and more channels, so
    the block keeps its 128 lanes; longer maps keep 8 lanes of 16 (or 8) positions and 16 channels."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    monkeypatch.setattr(fused, "SHORT_MAP_TILES", True)  # (Triton 3.6 keeps the long tiles)
    for D, L, expected in (
        (96, 56 * 56, (16, 16, 8, 4)),
        (192, 64, (32, 16, 4, 4)),
        (384, 49, (32, 8, 4, 4)),
        (384, 16, (128, 16, 1, 4)),
        (384, 14 * 14, (16, 8, 8, 4)),
    ):
        block_d, sub, nsub, warps = fused._fwd_scan_config(D, L, 1)
        assert (block_d, sub, nsub, warps) == expected, (D, L)
        assert sub * nsub <= L and block_d * nsub == 128


# The backward's passes are the interpreter's slowest: one case (full delta, batch 2, chunks across
# row and column wraps) in the fast loop, every case in the full suite.
MULTI_CHUNK_BWD = [
    pytest.param(*c, marks=() if i == 1 else pytest.mark.slow) for i, c in enumerate(MULTI_CHUNK)
]


@pytest.mark.parametrize("batch,D,H,W,N,lowrank,config", MULTI_CHUNK_BWD)
def test_backward_multi_chunk(monkeypatch, batch, D, H, W, N, lowrank, config):
    """Small forced chunks in the backward: both chains, the per-chunk carries, several chunk
    blocks, and programs walking several channel blocks into one partial."""
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: config)
    check_against_reference(make_inputs(batch, D, H, W, N, lowrank=lowrank), lowrank)


def test_backward_channel_sums_within_a_thread(monkeypatch):
    """Low rank with one-warp blocks of 2 channels x 4 chunks (on the GPU at N <= 4 the chunks lie
    across the lanes and the channels within each thread, so the channel sums are adds in
    registers): an odd rank (R = 5 rows as tuples), two channel blocks, five chunk blocks of 4
    chunks of 2 positions, chunks across row and column wraps."""
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: (2, 4, 2, 1))
    check_against_reference(make_inputs(1, 3, 5, 7, 2, R=5), lowrank=True)


@pytest.mark.parametrize("lanes_first", [False, True])
def test_backward_lane_accesses_in_either_form(monkeypatch, lanes_first):
    """The low-rank walks' [channels, lanes] loads and stores (u, g, du, the scratch of d dt, dt
    and its slope) as written for Triton 3.8 (channels first) and for 3.6 (lanes first, then
    transposed, where the lanes hold chunks only: 16 chunk lanes x 2 states): every gradient, an
    odd rank, two channel blocks (the second masked), two chunk blocks, chunks across row and
    column wraps."""
    monkeypatch.setattr(fused, "_BWD_LANES_FIRST", lanes_first)
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: (4, 16, 2, 1))
    check_against_reference(make_inputs(1, 6, 5, 7, 2, R=5), lowrank=True)


# (bf16 inputs with tiles of 32: dt_low's masked entries read the row of ones, fp32 selects it)
LOW_RANK_SUMS_CASES = [
    (16, torch.float32, True),
    (32, torch.float32, True),
    (32, torch.bfloat16, True),
    (32, torch.bfloat16, False),
]


@pytest.mark.parametrize(("positions", "dtype", "bias"), LOW_RANK_SUMS_CASES)
def test_backward_low_rank_sums_in_channel_groups(monkeypatch, positions, dtype, bias):
    """d dt_low, d dt_weight and d bias formed after the walks from a part of 20 channels (5 blocks
    of 4) taken 16 at a time: the second group adds its d dt_low to the partial the first wrote,
    and its last 12 channels are masked; several chunk blocks, chunks across row wraps. Tiles of
    16 positions and 32, each past the map's 15 (masked), with and without a bias."""
    monkeypatch.setattr(fused, "_BWD_LOW_DOT_CHANNELS", 16)
    monkeypatch.setattr(fused, "_bwd_low_dot_positions", lambda R, *flags: positions)
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: (4, 4, 2, 1))
    inputs = make_inputs(1, 20, 3, 5, 1, R=3, dtype=dtype, bias=bias)
    check_against_reference(inputs, lowrank=True, tol=TOL[dtype])


@pytest.mark.parametrize(("positions", "dtype", "bias"), LOW_RANK_SUMS_CASES)
def test_backward_low_rank_sums_over_several_tiles(monkeypatch, positions, dtype, bias):
    """The low-rank sums walk a program's positions in tiles: 2 chunks of 20 per program on a 7 x 11
    map, so 40 positions in tiles of 16 (3 tiles) or 32 (2), the last partial, and a last program
    with 37 positions; R = 15 fills the 16 columns but the row of ones."""
    monkeypatch.setattr(fused, "_bwd_low_dot_positions", lambda R, *flags: positions)
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: (4, 2, 20, 1))
    inputs = make_inputs(1, 6, 7, 11, 1, R=15, dtype=dtype, bias=bias)
    check_against_reference(inputs, lowrank=True, tol=TOL[dtype])


def _bwd_grid(D, L, N, R, batch):
    """(chunk, n_chunks, blocks, n_parts) of the backward's own GPU launch policy."""
    block_d, block_c, chunk, _ = fused._bwd_config(D, L, N, batch, lowrank=True)
    n_chunks = -(-L // chunk)
    n_cblk = -(-n_chunks // block_c)
    n_parts, n_group = fused._bwd_partial_split(D, block_d, N, R, batch, n_cblk)
    assert (n_parts - 1) * n_group < -(-D // block_d) <= n_parts * n_group  # every block, once
    return chunk, n_chunks, batch * n_parts * n_cblk, n_parts


@pytest.mark.parametrize(
    "shape", [(128, 96, 56 * 56, 1, 6), (32, 96, 28 * 28, 16, 6), (32, 96, 28 * 28, 4, 6)]
)
def test_backward_grid_fills_four_waves_within_the_memory_bounds(monkeypatch, shape):
    """The GPU's backward launch at VMamba-T stage 1 and at the N = 16 shape: at least 4 x 132
    blocks, with the chunk states (4 buffers of n_chunks x NP per channel) and the channel-sum
    partials (2N + R per position each) each within one (B, 4, D, L) tensor."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    batch, D, L, N, R = shape
    chunk, n_chunks, blocks, n_parts = _bwd_grid(D, L, N, R, batch)
    NP = 1 << (N - 1).bit_length()
    assert blocks >= 4 * 132, (chunk, n_parts, blocks)
    assert 4 * NP * n_chunks <= L and n_parts * (2 * N + R) <= D, (chunk, n_parts)


@pytest.mark.parametrize("lowrank", [True, False])
def test_backward_prefetch(monkeypatch, lowrank):
    """The walks with the next position's dt_low rows, B and C loaded a step ahead (off by
    default, for the GPU gate to time): the same gradients, with several chunks walked both ways
    (the descending walks' prefetch past position 0 is masked)."""
    monkeypatch.setattr(fused, "_BWD_PREFETCH", True)
    monkeypatch.setattr(fused, "_fwd_config", lambda D, L, N: (2, 4, 2, 1))
    check_against_reference(make_inputs(1, 3, 5, 7, 2, R=5, lowrank=lowrank), lowrank=lowrank)


def test_backward_with_the_per_step_low_rank_sums(monkeypatch):
    """The v2.3 low-rank gradient pass (``_BWD_LOW_DOT`` off, for the GPU gate to time): d dt_low
    and d dt_weight summed per step in the adjoint walk, both directions per launch, here with the
    GPU's launch policy at 2 channels per thread (as v2.3 ran) and several channel parts."""
    monkeypatch.setattr(fused, "_BWD_LOW_DOT", False)
    monkeypatch.setattr(fused, "_BWD_WARP_BLOCK_D", 2)
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    check_against_reference(make_inputs(1, 6, 3, 4, 1, R=3), lowrank=True)


def test_lowrank_backward_runs_in_one_round_of_warp_slots(monkeypatch):
    """Stage 1 (low rank, N = 1): one-warp blocks of 32 chunk lanes x 4 channels,
    with the shortest chunks whose blocks all fit one round of 16 x 132 (an SM's 16 warps at 128
    registers): one chunk less would need a second round. The chunk states within a quarter of
    one (B, 4, D, L) tensor; other SM counts give other chunks."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    batch, D, L, N, R = 128, 96, 56 * 56, 1, 6
    assert fused._bwd_config(D, L, N, batch, lowrank=True) == (fused._BWD_WARP_BLOCK_D, 32, 20, 1)
    chunk, n_chunks, blocks, n_parts = _bwd_grid(D, L, N, R, batch)
    slots = fused._BWD_WARP_BLOCKS_PER_SM * 132
    assert slots == 16 * 132 and blocks <= slots < batch * n_parts * (-(-n_chunks // 32) + 1)
    assert 4 * n_chunks <= L / 4, (chunk, n_chunks)
    # on a GPU with twice the SMs one round holds twice the blocks: shorter chunks
    assert fused._bwd_config(D, L, N, batch, lowrank=True, sms=264)[2] == 9 < chunk


@pytest.mark.parametrize("rank", [None, 24])
@pytest.mark.parametrize("lowrank", [True, False])
@pytest.mark.parametrize(
    "D,L,N,batch",
    [
        (96, 56 * 56, 1, 128),
        (96, 28 * 28, 1, 32),
        (192, 28 * 28, 4, 128),
        (96, 1000, 1, 1),
        (384, 14 * 14, 1, 64),
    ],
)
def test_backward_warp_config_takes_the_shortest_chain(monkeypatch, lowrank, rank, D, L, N, batch):
    """The one-warp backward's chunk (N <= 4): the bisections per number of rounds find what a walk
    over every chunk count finds, the least rounds x (chunk + setup steps), fewer blocks on a tie,
    within the chunk-state bound and at most 4 rounds past the forward's chunk; with the launcher's
    rank (its channel parts depend on it) or without, VMamba's D / 16."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    block_d, block_c, chunk, warps = fused._bwd_config(D, L, N, batch, lowrank, rank=rank)
    NP = 1 << (N - 1).bit_length()
    R = (cdiv(D, 16) if rank is None else rank) if lowrank else 0
    assert (block_d, warps) == (fused._bwd_warp_block_d(R), 1)
    slots = fused._BWD_WARP_BLOCKS_PER_SM * 132
    n0 = cdiv(cdiv(L, fused._fwd_config(D, L, N)[2]), block_c)

    def cost(n):
        parts, _ = fused._bwd_partial_split(D, block_d, N, R, batch, n)
        blocks = batch * parts * n
        return cdiv(blocks, slots) * (cdiv(L, n * block_c) + fused._BWD_WALK_SETUP_STEPS), blocks

    def fits(n):
        return 4 * NP * cdiv(L, cdiv(L, n * block_c)) <= L

    candidates = [n for n in range(n0, L + 1) if fits(n) and cost(n)[1] <= 4 * slots] or [n0]
    best = min(candidates, key=cost)
    assert chunk == cdiv(L, best * block_c), (chunk, best, cost(best))


def test_backward_takes_fewer_channels_per_thread_for_larger_ranks():
    """The low-rank walks hold R weights per channel of the block: stage 1's R = 6 keeps 4
    channels per thread, VMamba's later stages (R = D / 16 = 12, 24) take 2 and 1 (at 4 the
    walks spilled 4-396 bytes at 128 registers); full delta (no weights) keeps 4."""
    assert [fused._bwd_warp_block_d(R) for R in (0, 1, 6, 7, 12, 13, 24, 100)] == [4, 4, 4, 2, 2, 1, 1, 1]
    for R in range(1, 40):
        block_d = fused._bwd_warp_block_d(R)
        assert block_d == 1 or R * block_d <= fused._BWD_WARP_WEIGHTS
        assert block_d == fused._BWD_WARP_BLOCK_D or R * 2 * block_d > fused._BWD_WARP_WEIGHTS


@pytest.mark.parametrize("L,N,chunk", [(64, 1, 4), (16, 1, 4), (49, 1, 5), (64, 2, 8), (12, 4, 12)])
def test_backward_on_short_maps_walks_the_shortest_chunks_within_the_bound(monkeypatch, L, N, chunk):
    """Maps too short to fill one block's 32 lanes with chunks (CIFAR's 8 x 8 and 4 x 4 stages,
    ImageNet's 7 x 7): one block of the shortest chunks whose states stay within one (B, 4, D, L)
    tensor (4 NP values per chunk and channel), not the forward's longer ones."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    _, block_c, got, _ = fused._bwd_config(192, L, N, 256, lowrank=True)
    NP = 1 << (N - 1).bit_length()
    assert got == chunk and 4 * NP * cdiv(L, got) <= max(L, 4 * NP) and cdiv(L, got) <= block_c
    assert got == L or 4 * NP * cdiv(L, got - 1) > L  # one shorter would break the bound


@pytest.mark.parametrize("lane_weights", [24, 12])
@pytest.mark.parametrize("R,D", [(12, 20), (24, 12)])
def test_backward_with_the_gpu_policy_at_larger_ranks_on_a_short_map(monkeypatch, R, D, lane_weights):
    """VMamba's later stages under the GPU's launch policy: a 4 x 4 map walked in the shortest
    chunks within the bound (4 chunks of 4), one per lane, and the block's other lanes on
    channels (8 lanes), each thread holding the channels its rank allows (2 at R = 12, 1 at
    R = 24; with Triton 3.6's 12 weights per thread, 1 and 1), so D = 20 and 12 take two or three
    channel blocks, the last part masked; the low-rank sums in tiles of 16 channels on 4 warps; the
    forward in one tile of 16 positions per channel."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    monkeypatch.setattr(fused, "SHORT_MAP_LANE_WEIGHTS", lane_weights)
    per_thread = 2 if (R, lane_weights) == (12, 24) else 1
    assert fused._bwd_config(D, 16, 1, 1, lowrank=True, rank=R) == (8 * per_thread, 4, 4, 1)
    assert fused._bwd_low_dot_tiles(R) == (16, 4)
    monkeypatch.setattr(fused, "SHORT_MAP_TILES", True)
    assert fused._fwd_scan_config(D, 16, 1)[1:3] == (16, 1)  # the forward: one tile of the map
    check_against_reference(make_inputs(1, D, 4, 4, 1, R=R), lowrank=True)


@pytest.mark.parametrize(
    "n_chunks,NP,R,lanes",
    [
        (4, 1, 12, (4, 8, 2)),  # CIFAR-10's 4 x 4 stage at VMamba's stage-2 rank
        (4, 1, 24, (4, 8, 1)),
        (16, 1, 12, (16, 2, 2)),  # 8 x 8
        (10, 1, 48, (16, 2, 1)),  # ImageNet's 7 x 7
        (1, 1, 6, (1, 32, 2)),  # at most 2 channels a thread with channel lanes
        (4, 1, 4, (4, 8, 2)),  # the digits model's 4 x 4 stage
        (3, 4, 0, (4, 2, 4)),  # full delta, N = 4: 4 channels a thread
        (32, 1, 12, (32, 1, 2)),
    ],
)
def test_short_maps_put_channels_on_the_idle_chunk_lanes(monkeypatch, n_chunks, NP, R, lanes):
    """A short map's chunks take a power of two of the warp's 32 // NP chunk lanes and the rest
    take channels (CIFAR's 4 x 4 stage: 4 chunk lanes and 8 channel lanes, not 28 idle lanes),
    each thread holding the channels its rank allows, at most 2 at low rank where there are
    channel lanes, fewer with Triton 3.6's smaller weight bound; full delta keeps 4."""
    monkeypatch.setattr(fused, "SHORT_MAP_LANE_WEIGHTS", 24)
    assert fused._short_map_lanes(n_chunks, 32 // NP, R) == lanes
    lanes_c, lanes_d, per_thread = lanes
    assert lanes_c >= n_chunks and lanes_c * lanes_d * NP == 32
    monkeypatch.setattr(fused, "SHORT_MAP_LANE_WEIGHTS", 12)
    fewer = min(per_thread, fused._bwd_warp_block_d(R, 12)) if lanes_d > 1 and R else per_thread
    assert fused._short_map_lanes(n_chunks, 32 // NP, R) == (lanes_c, lanes_d, fewer)


@pytest.mark.parametrize(
    "batch,D,H,W,N,R,config",
    [
        (1, 20, 1, 1, 1, 2, (64, 1, 1, 1)),  # one position: one chunk lane, 32 channel lanes
        (2, 12, 1, 3, 2, 3, (32, 1, 3, 1)),  # 2 state lanes x 16 channel lanes
        (1, 9, 2, 2, 4, 0, (32, 1, 4, 1)),  # full delta, 4 state lanes x 8 channel lanes
    ],
)
def test_backward_with_the_gpu_policy_on_tiny_maps(monkeypatch, batch, D, H, W, N, R, config):
    """Maps of one chunk under the GPU's launch policy: the whole warp's other lanes on channels,
    a block wider than the channels (masked), and the chains over one chunk."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    lowrank = R > 0
    assert fused._bwd_config(D, H * W, N, batch, lowrank, rank=R if lowrank else None) == config
    check_against_reference(make_inputs(batch, D, H, W, N, R=max(R, 1), lowrank=lowrank), lowrank=lowrank)


def test_forward_lanes_hold_fewer_positions_at_wide_ranks():
    """From R = 24 (VMamba's D / 16 at D = 384) a lane holds at most 4 positions where its channel
    keeps several lanes (8 spilled at 14 x 14 and 7 x 7), but not where that leaves the channel
    one lane (a 4 x 4 tile of 16) or the tile under tl.dot's 16 positions (5 x 5); smaller ranks
    keep their tiles, fp32 dt_low takes at most 8 positions a lane; every tile lies within the
    sequence."""
    wide, narrow, fp32 = (
        torch.empty(1, 4, R, 2, 2, dtype=t)
        for R, t in ((24, torch.bfloat16), (23, torch.bfloat16), (6, torch.float32))
    )
    assert fused._fwd_tile(16, 8, 196, wide) == (4, 8)  # 14 x 14
    assert fused._fwd_tile(8, 4, 49, wide) == (4, 4)  # 7 x 7
    assert fused._fwd_tile(16, 8, 16, wide) == (4, 4)  # 4 x 4 with 8 lanes a channel (Triton 3.6)
    assert fused._fwd_tile(16, 1, 16, wide) == (16, 1)  # one lane a channel (Triton 3.8)
    assert fused._fwd_tile(8, 2, 25, wide) == (8, 2)  # 5 x 5: 4 x 2 would be under 16
    assert fused._fwd_tile(16, 8, 196, narrow) == (16, 8)
    assert fused._fwd_tile(16, 8, 196, fp32) == (8, 8)
    assert fused._fwd_tile(16, 8, 196, None) == (16, 8)  # full delta, or a given configuration
    for L in (1, 5, 16, 25, 49):
        sub, nsub = fused._fwd_tile(16, 8, L, wide)
        assert sub * nsub <= L


def test_low_rank_sums_take_fewer_positions_where_32_spill(monkeypatch):
    """Products of 32 positions spilled at VMamba-T's R = 48 under Triton 3.6, and under 3.8
    everywhere but R <= 8 with one product of bf16 dt_low: there they take 16."""
    positions = fused._bwd_low_dot_positions
    monkeypatch.setattr(fused, "_TRITON_3_8", False)
    assert [positions(R) for R in (6, 24, 25, 48)] == [32, 32, 16, 16]
    assert positions(6, one_product=False, bf16_low=False) == 32
    monkeypatch.setattr(fused, "_TRITON_3_8", True)
    assert [positions(R) for R in (6, 8, 9, 24, 48)] == [32, 32, 16, 16, 16]
    assert positions(6, one_product=False) == 16  # N = 16: a part of 48 channels, two products
    assert positions(6, bf16_low=False) == 16
    monkeypatch.setattr(fused, "_BWD_LOW_DOT_POSITIONS", 16)
    assert {positions(R) for R in (6, 24, 25, 48)} == {16}


def test_backward_warp_config_is_cheap_and_cached(monkeypatch):
    """The launcher sizes the grid on every call: a 512 x 512 map (21,846 chunks) and stage 1 take
    bisections, not a walk over every chunk count, and a second call is served from the cache."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    fused._bwd_warp_search.cache_clear()
    calls = []
    split = fused._bwd_partial_split
    monkeypatch.setattr(fused, "_bwd_partial_split", lambda *a: calls.append(a) or split(*a))
    for D, L, batch in ((96, 512 * 512, 1), (96, 56 * 56, 128)):
        calls.clear()
        first = fused._bwd_config(D, L, 1, batch, lowrank=True)
        assert len(calls) <= 8 * L.bit_length(), (L, len(calls))
        calls.clear()
        assert fused._bwd_config(D, L, 1, batch, lowrank=True) == first and not calls


@pytest.mark.slow  # D = 20 channels under the interpreter
@pytest.mark.parametrize("N,H,W", [(1, 4, 5), (2, 3, 7)])
def test_full_delta_backward_with_the_gpu_launch_policy(monkeypatch, N, H, W):
    """The full-delta backward at N <= 4 takes the same one-warp blocks as the low-rank one since
    v2.8; on these short maps the chunks take a power of two of the lanes (8 of 4 x 5's 5 chunks,
    2 of 3 x 7's at N = 2) and channels the rest, 4 within each thread (no weights to hold):
    its gradients under that policy, 20 channels in blocks of 16 (two, the second masked) or one
    of 32."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    expected = {1: (16, 8, 4, 1), 2: (32, 2, 11, 1)}[N]
    assert fused._bwd_config(20, H * W, N, 1, lowrank=False) == expected
    check_against_reference(make_inputs(1, 20, H, W, N, lowrank=False), lowrank=False)


@pytest.mark.slow  # D = 20 channels under the interpreter
@pytest.mark.parametrize("N,H,W", [(1, 4, 5), (4, 2, 5)])
def test_backward_with_the_gpu_launch_policy(monkeypatch, N, H, W):
    """The GPU's launch policy under the interpreter on one small image: blocks of one warp whose
    lanes are states, then chunks, then channels, 2 channels within each thread (R = 2, with
    channel lanes). N = 1 walks the shortest chunks within the chunk-state bound, 5 of 4, on 8
    lanes, with 4 channel lanes (8 channels a block: 20 take three blocks, the last masked); N = 4
    walks one chunk of 10 on 4 state lanes, with 8 channel lanes (16 channels a block)."""
    monkeypatch.setattr(fused, "TRITON_INTERPRET", False)
    batch, D, R = 1, 20, 2
    assert fused._bwd_config(D, H * W, N, batch, lowrank=True) == ((8, 8, 4, 1) if N == 1 else (16, 1, 10, 1))
    chunk, n_chunks, _, _ = _bwd_grid(D, H * W, N, R, batch)
    assert (chunk, n_chunks) == ((4, 5) if N == 1 else (10, 1))
    check_against_reference(make_inputs(batch, D, H, W, N, R=R), lowrank=True)


def test_forward_config_bounds_the_chunk_states():
    """The chunk states stay within a quarter of one (B, 4, D, L) tensor; enough blocks at stage 1."""
    for L in (1, 7, 16, 20, 784, 1000, 3136, 512 * 512):
        for N in (1, 4, 16):
            _, _, chunk, _ = fused._fwd_config(96, L, N)
            n_chunks = -(-L // chunk)
            assert 1 <= chunk <= L
            assert n_chunks == 1 or n_chunks * N <= L / 4, (L, N, chunk)


@pytest.mark.slow
@pytest.mark.parametrize("H,W", [(1, 1000), (1000, 1)])
def test_long_thin_maps(monkeypatch, H, W):
    """A 1 x 1000 and a 1000 x 1 map: one orientation walks 1000 positions per row, the other one."""
    inputs = make_inputs(1, 2, H, W, 1, R=2, lowrank=True)
    # Both sides are fp32 recurrences of 1000 steps summed in different orders (the reference walks
    # positions, the kernel chunks and chains them): rounding grows like sqrt(L) (2e-5 at L <= 64).
    check_against_reference(inputs, True, tol=2e-5 * math.sqrt(H * W / 64))


def test_any_map_size_is_supported(monkeypatch):
    assert fused.triton_supports(torch.empty(1, 2, 512, 512), 16) is None  # (v1 stopped at 128 x 128)
    # the carry from tile to tile: the same scan in tiles of 16 positions and of 64 (a 512 x 512
    # scan is far too slow for the interpreter; 20 x 48 takes 60 tiles of 16 per walk)
    inputs = make_inputs(1, 2, 20, 48, 1, R=2, lowrank=True)
    results = []
    for nsub in (4, 16):
        monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N, nsub=nsub: (2, 4, nsub, 1))
        results.append(cross_selective_scan_lowrank(**inputs, backend="triton"))
    assert_close_rel(results[0], results[1], 1e-5, "tiles of 16 vs tiles of 64")
    assert_close_rel(results[0], reference_forward(inputs, lowrank=True), 2e-5, "tiles of 16 vs float64")


@pytest.mark.slow  # forward and every gradient at batch 2; the layouts' index paths
@pytest.mark.parametrize("lowrank", [False, True])
def test_channels_last_and_sliced_projections(lowrank):
    """u in channels_last and B, C, dt_low as slices of one projection: read in place."""
    batch, D, H, W, N, R = 2, 6, 3, 5, 2, 3
    inputs = make_inputs(batch, D, H, W, N, R=R, lowrank=lowrank)
    inputs["u"] = inputs["u"].contiguous(memory_format=torch.channels_last)
    proj = torch.randn(batch, 4, R + 2 * N, H, W)  # as x_proj makes them: one tensor, sliced
    inputs["B"], inputs["C"] = proj[:, :, R : R + N], proj[:, :, R + N :]
    if lowrank:
        inputs["dt_low"] = proj[:, :, :R] * 0.5
    assert not inputs["B"].is_contiguous() and not inputs["u"].is_contiguous()
    check_against_reference(inputs, lowrank)
    y = (
        cross_selective_scan_lowrank(**inputs, backend="triton")
        if lowrank
        else cross_selective_scan(**inputs, backend="triton")
    )
    assert y.is_contiguous(memory_format=torch.channels_last)  # the output follows u's layout


@pytest.mark.slow  # every gradient plus two forwards under the interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    inputs = make_inputs(1, 4, 3, 4, 2, lowrank=True, dtype=dtype)
    check_against_reference(inputs, True, tol=TOL[dtype])
    y = cross_selective_scan_lowrank(**inputs, backend="triton")
    assert y.dtype == torch.float32  # "oflex": fp32 output for half inputs
    y16 = cross_selective_scan_lowrank(**inputs, backend="triton", out_dtype=dtype)
    assert y16.dtype == dtype
    assert_close_rel(y16, y, TOL[dtype], "out_dtype")


def test_lowrank_equals_full_delta():
    inputs = make_inputs(2, 5, 3, 4, 2, lowrank=True)
    full = dict(inputs)
    full["delta"] = lowrank_delta(full.pop("dt_low"), full.pop("dt_weight"))
    full["delta_bias"] = full.pop("dt_bias")
    y_low = cross_selective_scan_lowrank(**inputs, backend="triton")
    y_full = cross_selective_scan(**full, backend="triton")
    assert_close_rel(y_low, y_full, 1e-5, "lowrank vs full")


@pytest.mark.parametrize("lowrank", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_backward_is_deterministic(lowrank):
    inputs = make_inputs(2, 5, 2, 3, 1, lowrank=lowrank)  # two images, several channel blocks
    grad_out = torch.randn(inputs["u"].shape)
    _, first = run(inputs, "triton", lowrank, grad_out)
    _, second = run(inputs, "triton", lowrank, grad_out)
    for name, g in first.items():
        if g is not None:
            assert torch.equal(g, second[name]), name


class _LargestAllocation(TorchDispatchMode):
    """Records the element count of the largest tensor allocated: through the dispatcher (what
    autograd and the ops return) and by the launchers inside the custom ops (their scratch,
    chunk states and partials, which run below the mode, through the Python allocation calls
    the package uses)."""

    ALLOCATORS = ("empty", "empty_like", "zeros", "zeros_like", "full", "full_like")

    def __init__(self, monkeypatch):
        super().__init__()
        self.largest = 0
        self.largest_inside = 0
        for name in self.ALLOCATORS:
            monkeypatch.setattr(torch, name, self._spy(getattr(torch, name)))
        for name in ("new_empty", "new_zeros", "new_full"):
            monkeypatch.setattr(torch.Tensor, name, self._spy(getattr(torch.Tensor, name)))

    def _spy(self, allocate):
        def allocating(*args, **kwargs):
            t = allocate(*args, **kwargs)
            self.largest_inside = max(self.largest_inside, t.numel())
            return t

        return allocating

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.slow  # the GPU's block sizes under the interpreter
@pytest.mark.parametrize("lowrank,N,D", [(True, 1, 64), (False, 8, 16)])
def test_no_per_direction_tensor_is_allocated(monkeypatch, lowrank, N, D):
    """Forward and backward allocate nothing of (B, 4, D, L) size (with the GPU block sizes).

    Low rank: the largest is the backward's scratch of dt and its slope for one direction (what
    the state and adjoint walks share across their launches), half of that size. With a large
    state (N = 8: the chunk walk of N > 4) the backward's channel-summed partials (2N values per
    direction and position) are what the bound limits; D = 16 = 2N puts them exactly at the
    bound (N = 16 with D = 32 checks the same ratio in 4x the interpreter time).
    """
    # the GPU's blocks, and its chunk rule at L = 20: 4 chunks of 5 for N = 1, one chunk for N = 16
    monkeypatch.setattr(
        fused, "_fwd_config", lambda D, L, N: (16 if N <= 4 else 4, 8, 5 if N <= 4 else 20, 4)
    )
    batch, H, W, R = 1, 4, 5, 2  # L = 20 > N: per-image parameter partials (B, 4, D, N) are smaller
    inputs = make_inputs(batch, D, H, W, N, R=R, lowrank=lowrank)
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan
    if not lowrank:  # the full variant's delta and its gradient are inputs/outputs of that size
        leaves.pop("delta")
    with _LargestAllocation(monkeypatch) as mode:
        delta = {} if lowrank else {"delta": inputs["delta"].clone().requires_grad_(True)}
        y = op(**leaves, **delta, backend="triton")
        y.sum().backward()
    per_direction = batch * 4 * D * H * W
    limit = per_direction / 2 if lowrank else per_direction  # + d(delta), an input-sized output
    assert mode.largest <= limit, (mode.largest, per_direction)
    # the launchers' own buffers: chunk states, partials, the low-rank pass's scratches
    assert mode.largest_inside <= limit, (mode.largest_inside, per_direction)
    assert mode.largest >= batch * D * H * W  # sanity: the mode saw the (B, D, H, W) tensors


def test_cross_scan_merge_inverse_and_adjoint():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    ys = cross_scan(x)
    assert ys.shape == (2, 4, 3, 35)
    assert torch.equal(cross_merge(ys, 5, 7), 4 * x)
    y = torch.randn_like(ys)
    # <scan(x), y> == <x, merge(y)>: merge is the adjoint (so it is scan's backward)
    torch.testing.assert_close((ys * y).sum(), (x * cross_merge(y, 5, 7)).sum())
    assert torch.equal(cross_merge(y.view(2, 4, 3, 5, 7)), cross_merge(y, 5, 7))
    # the directions visit what they should: k=1 is column-major, k=2 the reversal of k=0
    assert torch.equal(ys[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.equal(ys[:, 2], x.flatten(2).flip(-1))


def test_cross_merge_refuses_other_than_four_directions():
    # guards cross_merge's direction-count check: a fifth direction must not be dropped silently
    for k in (3, 5):
        with pytest.raises(ValueError, match="cross_merge"):
            cross_merge(torch.randn(1, k, 2, 6), 2, 3)


def test_reference_gradcheck_float64():
    inputs = make_inputs(1, 2, 2, 3, 2, lowrank=False)
    tensors = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    names = list(tensors)

    def f(*args):
        return cross_selective_scan_naive(**dict(zip(names, args)), delta_softplus=True)

    assert torch.autograd.gradcheck(f, tuple(tensors.values()))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("lowrank", [True, False])
def test_empty_batch_stays_in_autograd(backend, lowrank):
    inputs = make_inputs(1, 3, 2, 2, 1, lowrank=lowrank)
    empty = {k: (v[:0] if k in ("u", "dt_low", "delta", "B", "C") else v) for k, v in inputs.items()}
    y, grads = run(empty, backend, lowrank, 1.0)
    assert y.shape == (0, 3, 2, 2)
    for k, v in empty.items():  # every gradient there, zeros (none was: backward raised)
        assert grads[k].shape == v.shape and not grads[k].any(), k


@pytest.mark.parametrize("lowrank", [False, True])
def test_the_ops_give_empty_gradients_for_an_empty_batch(lowrank):
    # guards _or_none: only the 1-d placeholders of absent inputs become None, not the empty
    # gradients of a batch of 0 through the op itself (the interface never passes one)
    inputs = make_inputs(0, 3, 2, 2, 1, lowrank=lowrank)
    leaves = [v.clone().requires_grad_(True) if v is not None else None for v in inputs.values()]
    op = fused._ss2d_lowrank_fwd_op if lowrank else fused._ss2d_fwd_op
    y, _ = op(*leaves, True, torch.float32)
    y.sum().backward()
    for name, leaf in zip(inputs, leaves):
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape, name


@pytest.mark.parametrize("N", [1, 5])
def test_a_decay_rate_of_minus_infinity_gives_the_references_output(N):
    """A = -inf (-exp(A_log) past float32's range): decay 0. The tile scan's padding positions
    (dt = 0) took 0 * -inf = NaN, which its lane scan spread to every output."""
    inputs = make_inputs(1, 3, 2, 3, N)
    inputs["A"][0, 0, 0] = inputs["A"][2, 1, 0] = -float("inf")
    want = reference_forward(inputs, lowrank=True)
    got = cross_selective_scan_lowrank(**inputs, backend="triton")
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # the gradients as the PyTorch path's: d dt through A = -inf is NaN there (A times a decay of
    # 0), and must not come out finite and huge (a clamped A in the backward gave ~1e30)
    grad_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    _, g_ref = run(inputs, "torch", True, grad_out)
    _, g = run(inputs, "triton", True, grad_out)
    for name, ref in g_ref.items():
        if ref is not None:
            finite = torch.isfinite(ref)
            assert torch.equal(finite, torch.isfinite(g[name])), name
            torch.testing.assert_close(g[name][finite], ref[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate,tol", [(16.0, 2e-5), (1e4, 2e-3)])
def test_time_step_gradients_lose_digits_as_the_decay_rate_grows(rate, tol):
    """The backward forms d dt's decay term, A lambda[t] a[t] x[t-1], as a suffix sum of
    A (C g x - b lambda) (SS2D v3's identity: no walk holds lambda and x together), whose terms
    are of size |A| while the sum may be far smaller: d dt's error grows about as |A| past ~100.
    Up to VMamba's rates at initialisation (|A| <= 16 at N = 16) it is fp32's; here 5e-4 at
    |A| = 1e4 (bench/NOTES.md, SS2D v3). The other gradients and the output do not depend on it."""
    inputs = make_inputs(2, 3, 4, 5, 2)
    inputs["A"][0, 0, 0] = -rate
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))
    _, g_ref = run({k: v.double() for k, v in inputs.items()}, "torch", True, grad_out.double())
    _, g = run(inputs, "triton", True, grad_out)
    for name in ("dt_low", "dt_weight", "dt_bias"):
        assert_close_rel(g[name].double(), g_ref[name], tol, name)
    for name in ("u", "B", "C", "D"):
        assert_close_rel(g[name].double(), g_ref[name], 2e-6, name)


def _bad(**changes):
    inputs = make_inputs(1, 3, 2, 2, 2)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    "inputs,err",
    [
        (_bad(u=torch.randn(3, 2, 2)), ValueError),
        (_bad(u=torch.randint(0, 2, (1, 3, 2, 2))), TypeError),
        (_bad(A=torch.randn(4, 3, 0)), ValueError),
        (_bad(A=torch.randn(3, 3, 2)), ValueError),
        (_bad(B=torch.randn(1, 4, 2, 2, 3)), ValueError),
        (_bad(C=torch.randn(1, 4, 3, 2, 2)), ValueError),
        (_bad(D=torch.randn(4, 2)), ValueError),
        (_bad(dt_bias=torch.randn(3)), ValueError),
        (_bad(dt_low=torch.randn(1, 4, 0, 2, 2)), ValueError),
        (_bad(dt_weight=torch.randn(4, 3, 5)), ValueError),
        (_bad(B=torch.randn(1, 4, 2, 2, 2, dtype=torch.float64)), TypeError),
        (_bad(u=torch.randn(1, 0, 2, 2), dt_weight=torch.randn(4, 0, 3), A=torch.randn(4, 0, 2)), ValueError),
        (_bad(B=torch.randn(1, 4, 2, 2, 2, device="meta")), ValueError),
    ],
)
def test_bad_inputs_raise(inputs, err):
    for backend in ("triton", "torch"):
        with pytest.raises(err):
            cross_selective_scan_lowrank(**inputs, backend=backend)


def test_full_delta_bad_shape_raises():
    inputs = make_inputs(1, 3, 2, 2, 2, lowrank=False)
    inputs["delta"] = inputs["delta"][:, :3]
    with pytest.raises(ValueError, match="delta"):
        cross_selective_scan(**inputs)


def test_triton_limits_are_explicit():
    inputs = make_inputs(1, 2, 2, 2, 17)  # N above the fused kernels' limit
    with pytest.raises(ValueError, match="d_state"):
        cross_selective_scan_lowrank(**inputs, backend="triton")
    y = cross_selective_scan_lowrank(**inputs, backend="auto")  # falls back to the reference
    assert y.shape == inputs["u"].shape


def test_triton_refuses_float64_and_auto_falls_back():
    inputs = {k: v.double() if v is not None else v for k, v in make_inputs(1, 2, 2, 2, 1).items()}
    with pytest.raises(ValueError, match="dtype torch.float64"):
        cross_selective_scan_lowrank(**inputs, backend="triton")
    y = cross_selective_scan_lowrank(**inputs, backend="auto")
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference_forward(inputs, lowrank=True))


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("lowrank", [False, True])
def test_traces_as_one_node(lowrank, grad):
    # the differentiable op where an input requires a gradient (here only B), else the
    # inference op (no saved states)
    inputs = make_inputs(1, 2, 2, 3, 1, lowrank=lowrank)
    inputs["B"].requires_grad_(grad)
    name = f"svmamba::ss2d_{'lowrank_' if lowrank else ''}{'fwd' if grad else 'infer'}"
    keys = list(inputs)
    op = cross_selective_scan_lowrank if lowrank else cross_selective_scan

    def f(*args):
        return op(**dict(zip(keys, args)), backend="triton")

    graph, _ = torch.jit._get_trace_graph(f, tuple(inputs.values()))
    kinds = [n.kind() for n in graph.nodes() if n.kind() != "prim::Constant"]
    assert kinds == [name]


@pytest.mark.slow  # a compile test
def test_torch_compile_traces_without_graph_breaks():
    inputs = make_inputs(1, 3, 2, 3, 1, lowrank=True)
    keys = list(inputs)

    def f(*args):
        return cross_selective_scan_lowrank(**dict(zip(keys, args)), backend="triton").sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [v.clone().requires_grad_(True) for v in inputs.values()]
    compiled(*leaves).backward()
    ref = [v.clone().requires_grad_(True) for v in inputs.values()]
    f(*ref).backward()
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.slow  # opcheck runs the Triton forward and backward several times under the interpreter
@pytest.mark.parametrize("lowrank", [False, True])
def test_opcheck(lowrank):
    """Schema, fake (meta) kernels with the real strides, autograd registration, AOT dispatch."""
    inputs = make_inputs(1, 3, 2, 3, 2, lowrank=lowrank)
    inputs["u"] = inputs["u"].contiguous(memory_format=torch.channels_last)  # du is contiguous
    params = [v.clone().requires_grad_(True) if v is not None else None for v in inputs.values()]
    if lowrank:
        u, dt_low, dt_weight, A, B, C, D, bias = params
        fwd_args = (u, dt_low, dt_weight, A, B, C, D, bias, True, torch.float32)
        delta = None
    else:
        u, delta, A, B, C, D, bias = params
        fwd_args = (u, delta, A, B, C, D, bias, True, torch.float32)
        dt_low = dt_weight = None
    op = fused._ss2d_lowrank_fwd_op if lowrank else fused._ss2d_fwd_op
    torch.library.opcheck(op, fwd_args)
    inference_op = fused._ss2d_lowrank_infer_op if lowrank else fused._ss2d_infer_op
    torch.library.opcheck(
        inference_op, tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in fwd_args)
    )
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in (u, delta, dt_low, dt_weight)]
    scan_args = (*detached, A.detach(), B.detach(), C.detach(), D.detach(), bias.detach())
    chunk = fused._bwd_chunk(u, A, dt_low)
    _, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=chunk)
    bwd_args = (torch.randn(u.shape), *scan_args, True, states, chunk)
    torch.library.opcheck(fused._ss2d_bwd_op, bwd_args)


@pytest.mark.parametrize("chunk", [1, 4, 5, 23, 30])
def test_chunked_backward_algorithm_float64(chunk):
    # The backward's passes (the state walk from the forward's entering states, the adjoint's
    # chain, decoupled x / adjoint halves of d dt and dA) in plain torch, against autograd
    # through the plain recurrence; L = 23 leaves a partial last chunk for every chunk size but
    # 1 and 23.
    from svm_kernels.ss2d.chunked_ref import chunked_scan_bwd

    g = torch.Generator().manual_seed(3)
    batch, D, L, N = 2, 3, 23, 4
    f64 = dict(dtype=torch.float64, device="cpu")
    dt = (torch.rand(batch, D, L, generator=g, **f64) * 0.5).requires_grad_()
    u = torch.randn(batch, D, L, generator=g, **f64).requires_grad_()
    A = (-3 * torch.rand(D, N, generator=g, **f64)).requires_grad_()
    B = torch.randn(batch, N, L, generator=g, **f64).requires_grad_()
    C = torch.randn(batch, N, L, generator=g, **f64).requires_grad_()
    grad_out = torch.randn(batch, D, L, generator=g, **f64)
    x = torch.zeros(batch, D, N, **f64)
    ys = []
    for t in range(L):
        x = torch.exp(dt[..., t, None] * A) * x + (dt[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((x * C[:, None, :, t]).sum(-1))
    (torch.stack(ys, -1) * grad_out).sum().backward()
    d_dt, du, dA, dB, dC = chunked_scan_bwd(
        dt.detach(), u.detach(), A.detach(), B.detach(), C.detach(), grad_out, chunk
    )
    for mine, ref in ((d_dt, dt.grad), (du, u.grad), (dA.sum(0), A.grad), (dB, B.grad), (dC, C.grad)):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 6, 17])
def test_adjoint_chunk_values_equal_the_state_walks(chunk):
    # The state walk gives the adjoint's chunk values too; here the reverse adjoint walk from
    # zero that it replaces, in float64: a*lam at the chunk start,
    # its coefficient K on the entering adjoint and its q total, against G, the exit state and
    # the state's q total.
    from svm_kernels.ss2d.chunked_ref import adjoint_chunk_values

    g = torch.Generator().manual_seed(5)
    D, N = 3, 4
    f64 = dict(dtype=torch.float64)
    dt = torch.rand(D, chunk, generator=g, **f64)
    u = torch.randn(D, chunk, generator=g, **f64)
    gr = torch.randn(D, chunk, generator=g, **f64)
    A = -3 * torch.rand(D, N, generator=g, **f64)
    B = torch.randn(N, chunk, generator=g, **f64)
    C = torch.randn(N, chunk, generator=g, **f64)
    a = torch.exp(dt[..., None] * A[:, None, :])  # (D, chunk, N)
    b = (dt * u)[..., None] * B.T
    lt = gr[..., None] * C.T
    x = torch.zeros(D, N, **f64)
    G = torch.zeros(D, N, **f64)
    q_x = torch.zeros(D, **f64)
    for t in range(chunk):
        x = a[:, t] * x + b[:, t]
        q_x += (A * lt[:, t] * x).sum(-1)
        G += lt[:, t] * torch.exp(dt[:, : t + 1].sum(-1, keepdim=True) * A)
    m = torch.zeros(D, N, **f64)
    K = torch.zeros(D, N, **f64)
    decay = torch.ones(D, N, **f64)
    q_l = torch.zeros(D, **f64)
    for t in reversed(range(chunk)):
        lam = lt[:, t] + m
        m = a[:, t] * lam
        q_l += (A * b[:, t] * lam).sum(-1)
        K += b[:, t] * decay
        decay = decay * a[:, t]
    m_dual, K_dual = adjoint_chunk_values(x, G)
    for mine, ref in ((m_dual, m), (K_dual, K), (q_x, q_l)):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-13)


def _entering_states_float64(inputs, lowrank, chunk):
    """The state entering each chunk of every direction, as the forward saves it: chunks in row /
    column order; a sequence-order direction's chunk c enters with the state after position
    c * chunk - 1 of its walk, a reversed one's with the state after (c + 1) * chunk (walking
    down); the first chunk each walks enters with zero. Plain recurrence in float64."""
    from svm_kernels.ss2d.naive import direction_order

    t = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    delta = lowrank_delta(t["dt_low"], t["dt_weight"]) if lowrank else t["delta"]
    bias = t["dt_bias"] if lowrank else t["delta_bias"]
    u, A, B = t["u"], t["A"], t["B"]
    batch, D, H, W = u.shape
    L, N = H * W, A.shape[2]
    n = cdiv(L, chunk)
    states = torch.zeros(batch, 4, D, n, fused._next_pow2(N), dtype=torch.float64)
    for k in range(4):
        dt = torch.nn.functional.softplus(direction_order(delta[:, k], k) + bias[k][None, :, None])
        uk, Bk = direction_order(u, k), direction_order(B[:, k], k)
        x = torch.zeros(batch, D, N, dtype=torch.float64)
        after = []  # the state after each position of the walk
        for s in range(L):
            x = (
                torch.exp(dt[..., s, None] * A[k]) * x
                + (dt[..., s] * uk[..., s])[..., None] * Bk[:, None, :, s]
            )
            after.append(x)
        for c in range(n):
            if k < 2 and c > 0:
                states[:, k, :, c, :N] = after[c * chunk - 1]
            elif k >= 2 and c < n - 1:
                states[:, k, :, c, :N] = after[L - 1 - (c + 1) * chunk]
    return states


@pytest.mark.parametrize(
    "H,W,N,chunk,lowrank,tile",
    [
        (5, 7, 1, 4, True, None),
        (3, 9, 2, 5, False, None),
        (6, 5, 8, 3, True, None),  # N > 4: the chunk walk saves them
        (2, 11, 4, 1, True, None),  # every position ends a chunk
        (5, 7, 2, 5, True, (2, 4, 2, 1)),  # lanes of 4: the pick within a lane, the last tile moved back
        (6, 6, 2, 7, True, (2, 8, 4, 1)),
        (2, 11, 2, 3, True, (2, 4, 2, 1)),  # chunks shorter than a lane: every element checked
        (4, 6, 2, 2, True, (2, 4, 4, 1)),  # chunks dividing the lanes: fixed places, last tile moved back
        (3, 8, 1, 4, False, (2, 4, 4, 1)),  # one chunk per lane
    ],
)
def test_forward_saves_the_backwards_entering_states(monkeypatch, H, W, N, chunk, lowrank, tile):
    if tile is not None:
        monkeypatch.setattr(fused, "_fwd_scan_config", lambda D, L, N: tile)
    inputs = make_inputs(2, 3, H, W, N, lowrank=lowrank)
    scan_args = [inputs.get(k) for k in ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D")]
    scan_args.append(inputs["dt_bias"] if lowrank else inputs["delta_bias"])
    out, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=chunk)
    assert_close_rel(out, reference_forward(inputs, lowrank), 2e-5, "output")
    # the inference path (no states saved) computes the same output
    assert torch.equal(fused.ss2d_fwd(*scan_args, True, torch.float32), out)
    expected = _entering_states_float64(inputs, lowrank, chunk)
    assert states.shape == expected.shape
    assert_close_rel(states, expected, 2e-5, "entering states")


def test_backward_without_saved_states_runs_the_forward_for_them():
    """ss2d_bwd called without the forward's states, or with states saved for other chunks than
    its own (another number of them, or as many of another length), saves them itself: the same
    gradients, bit for bit."""
    inputs = make_inputs(1, 3, 4, 5, 2, lowrank=True)
    scan_args = [inputs.get(k) for k in ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")]
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(4))
    chunk = fused._bwd_chunk(inputs["u"], inputs["A"], inputs["dt_low"])
    _, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=chunk)
    given = fused.ss2d_bwd(grad_out, *scan_args, True, states, chunk)
    L = inputs["u"].shape[2] * inputs["u"].shape[3]
    same_count = next(c for c in range(chunk + 1, L + 1) if cdiv(L, c) == cdiv(L, chunk))
    for other_chunk in (2 * chunk, same_count):
        _, other = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=other_chunk)
        for states_arg in ((None, None), (other, other_chunk)):
            for g, h in zip(given, fused.ss2d_bwd(grad_out, *scan_args, True, *states_arg)):
                assert (g is None and h is None) or torch.equal(g, h)


def test_the_differentiable_op_saves_the_states_its_backward_takes(monkeypatch):
    """The forward saves the states for the backward's own chunk, so the backward runs no
    forward of its own."""
    inputs = {k: v.requires_grad_() if v is not None else v for k, v in make_inputs(1, 2, 2, 3, 2).items()}
    y = cross_selective_scan_lowrank(**inputs, backend="triton")
    forwards = []
    fwd = fused.ss2d_fwd
    monkeypatch.setattr(fused, "ss2d_fwd", lambda *a, **kw: forwards.append(kw) or fwd(*a, **kw))
    y.sum().backward()
    assert not forwards and inputs["u"].grad is not None


def test_saved_states_are_fp32_whatever_the_default_dtype():
    """The states the forward saves are fp32, as the op's fake says, under any default dtype."""
    inputs = make_inputs(1, 2, 3, 4, 1, lowrank=True)
    scan_args = [inputs.get(k) for k in ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=5)
        _, fake = fused._fake_forward(inputs["u"], inputs["A"], inputs["dt_low"], True, torch.float32)
    finally:
        torch.set_default_dtype(previous)
    assert states.dtype == fake.dtype == torch.float32


def test_fake_states_have_the_forwards_shape_at_a_state_count_not_a_power_of_two():
    # guards _fake_forward: the states are padded to the next power of two of N, as the forward's
    inputs = make_inputs(1, 2, 3, 4, 3, R=2, lowrank=True)
    scan_args = [inputs.get(k) for k in ("u", "delta", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")]
    chunk = fused._bwd_chunk(inputs["u"], inputs["A"], inputs["dt_low"])
    _, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=chunk)
    _, fake = fused._fake_forward(inputs["u"], inputs["A"], inputs["dt_low"], True, torch.float32)
    assert fake.shape == states.shape and states.shape[-1] == 4


def test_backward_fake_keeps_a_dense_deltas_layout():
    # guards _grad_like: d(delta) of a dense but permuted delta keeps delta's strides, in the fake too
    inputs = make_inputs(1, 2, 2, 3, 1, lowrank=False)
    delta = inputs["delta"]
    inputs["delta"] = (
        delta.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    )  # (B, H, W, 4, D) memory
    assert not inputs["delta"].is_contiguous()
    scan_args = (inputs["u"], inputs["delta"], None, None, inputs["A"], inputs["B"], inputs["C"], None, None)
    chunk = fused._bwd_chunk(inputs["u"], inputs["A"], None)
    _, states = fused.ss2d_fwd(*scan_args, True, torch.float32, state_chunk=chunk)
    bwd_args = (torch.randn(inputs["u"].shape), *scan_args, True, states, chunk)
    torch.library.opcheck(fused._ss2d_bwd_op, bwd_args, test_utils="test_faketensor")

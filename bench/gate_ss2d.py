"""Gate cases of the four-direction selective scan: float64 checks at real shapes (and with small
block / chunk overrides where the launchers expose them), our kernels, the fla-based unfused peer.

Bytes that must move (s = storage bytes of u, B, C, dt_low; the output and grad_out are fp32):
forward reads u, dt_low, B, C and writes out; backward reads them and grad_out and writes their
gradients. The full-delta variant also reads delta (and writes its gradient).
"""

from __future__ import annotations

import math

import torch
from gate import DEVICE, HAS_CUDA, SMOKE, Case, Skip, module_overrides, provider, rel_err, timed_row
from shapes import SS2D_CHECK_SHAPES, SS2D_EDGE_CHECK_SHAPES, SS2D_LATER_CHECK_SHAPES, SS2D_SHAPES, SS2D_SMOKE
from ss2d_unfused import fla_recurrence, fla_recurrence_direct, sequential_recurrence, ss2d_unfused

from svm_kernels import cross_selective_scan, cross_selective_scan_lowrank
from svm_kernels.ss2d.naive import lowrank_delta

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "full")
LOWRANK_ARGS = ("u", "dt_low", "dt_weight", "A", "B", "C", "D", "dt_bias")
FULL_ARGS = ("u", "delta", "A", "B", "C", "D", "dt_bias")


def make(shape, dtype, full_delta=False):
    batch, D, H, W, N, R = shape
    kw = dict(device=DEVICE, dtype=dtype)
    x = dict(
        u=torch.randn(batch, D, H, W, **kw),
        dt_low=torch.randn(batch, 4, R, H, W, **kw) * 0.5,
        dt_weight=torch.randn(4, D, R, device=DEVICE) * R**-0.5,
        A=-torch.rand(4, D, N, device=DEVICE) - 0.5,
        B=torch.randn(batch, 4, N, H, W, **kw),
        C=torch.randn(batch, 4, N, H, W, **kw),
        D=torch.ones(4, D, device=DEVICE),
        dt_bias=torch.randn(4, D, device=DEVICE) * 0.5 - 4.0,
    )
    if full_delta:
        x["delta"] = lowrank_delta(x["dt_low"], x["dt_weight"].to(dtype)).contiguous()
    return x


def ss2d_bytes(x: dict, mode: str, full_delta: bool) -> int:
    # the full-delta op reads delta in place of dt_low (the inputs hold both)
    names = ["u", "B", "C"] + (["delta"] if full_delta else ["dt_low"])
    inputs = sum(x[k].numel() * x[k].element_size() for k in names)
    out = x["u"].numel() * 4  # fp32 output / grad_out
    fwd = inputs + out
    bwd = 2 * inputs + out  # read inputs and grad_out, write their gradients
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def ours_lowrank(x, backend="triton"):
    return cross_selective_scan_lowrank(*(x[k] for k in LOWRANK_ARGS), backend=backend)


def ours_full(x, backend="triton"):
    return cross_selective_scan(*(x[k] for k in FULL_ARGS), backend=backend)


def fla_unfused(x, recurrence=fla_recurrence):
    return ss2d_unfused(*(x[k] for k in LOWRANK_ARGS), recurrence=recurrence)


def _grads(fn, x, names, g):
    leaves = {k: x[k].detach().requires_grad_(True) for k in names}
    out = fn({**x, **leaves})
    return out, torch.autograd.grad(out, list(leaves.values()), g)


def tolerance(dtype, L: int) -> float:
    """Relative error allowed against float64: fp32 roundings accumulate along the L positions
    (~sqrt(L)); half-precision inputs' gradients are rounded once more to their storage dtype."""
    return 2e-5 * math.sqrt(L) + (0.0 if dtype == torch.float32 else 1e-2)


STORAGE = ("u", "dt_low", "B", "C", "delta")
_REFERENCES: dict = {}


def check_inputs(shape, full_delta):
    """Inputs whose half-precision tensors are bf16-representable, the output gradient, and the
    float64 reference's output and gradients: one reference serves the bf16 and fp32 checks."""
    key = (tuple(shape), full_delta)
    if key not in _REFERENCES:
        torch.manual_seed(0)
        x = make(shape, torch.bfloat16, full_delta)
        g = torch.randn(x["u"].shape, device=DEVICE)
        x64 = {k: v.double() for k, v in x.items()}
        names = FULL_ARGS if full_delta else LOWRANK_ARGS
        ref_fn = ours_full if full_delta else ours_lowrank
        ref = _grads(lambda t: ref_fn(t, backend="torch"), x64, names, g.double())
        _REFERENCES.clear()  # one shape at a time: the float64 tensors are large
        _REFERENCES[key] = (x, g, ref)
    return _REFERENCES[key]


def check(fn, shape, dtype, full_delta=False, repeat=True):
    """Output and every gradient against the float64 reference; the backward run twice must be
    bit-identical (the kernels are deterministic: no float atomics)."""
    names = FULL_ARGS if full_delta else LOWRANK_ARGS
    x, g, (ref_out, ref_grads) = check_inputs(shape, full_delta)
    x = {k: v.to(dtype) if k in STORAGE else v for k, v in x.items()}
    out, grads = _grads(fn, x, names, g)
    errs = {"out": rel_err(out, ref_out)}
    errs.update({f"d_{k}": rel_err(a, b) for k, a, b in zip(names, grads, ref_grads)})
    L = shape[2] * shape[3]
    tol = tolerance(dtype, L)
    row = dict(max_rel_err=max(errs.values()), tol=tol, errs={k: float(f"{v:.3g}") for k, v in errs.items()})
    ok = row["max_rel_err"] <= tol
    if repeat:
        _, again = _grads(fn, x, names, g)
        row["bitwise_repeat"] = all(torch.equal(a, b) for a, b in zip(grads, again))
        ok = ok and row["bitwise_repeat"]
    row["ok"] = bool(ok)
    return row


def launcher_overrides(**configs):
    """Replace the SS2D launchers' config functions (block sizes, chunk, warps) for one case, so
    the multi-block / multi-chunk hand-offs run at sizes a real shape would not need them."""
    from svm_kernels.ss2d import fused

    return module_overrides(fused, **configs)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def check_small_blocks(shape, dtype):
    # Small channel blocks and short chunks, so that several chunks are walked per program and
    # chained between programs, and several channel blocks share one partial, with real numbers:
    # 8 channels (2 on tiny shapes) per block, 2 chunks per program, chunks of 16 positions (8 on
    # tiny shapes), 4 warps. The backward at any N; the forward only where it walks chunks (N > 4:
    # at N <= 4 the tile scan keeps its own tiles, ``_fwd_scan_config``).
    def fwd(D, L, N):
        return (8 if D >= 32 else 2, 2, 16 if L >= 256 else 8, 4)

    def bwd(D, L, N, batch, lowrank, sms=None, rank=None):
        return fwd(D, L, N)

    with launcher_overrides(_bwd_config=bwd, _fwd_config=fwd):
        return check(ours_lowrank, shape, dtype)


def time_case(fn, shape, dtype, mode, full_delta=False):
    if SMOKE and dtype != torch.float32:
        raise Skip("smoke run: the interpreter times fp32 only (bf16 is checked above)")
    names = FULL_ARGS if full_delta else LOWRANK_ARGS
    x = make(shape, dtype, full_delta)
    moved = ss2d_bytes(x, mode, full_delta)
    if mode == "fwd":
        with torch.no_grad():
            return timed_row(lambda: fn(x), moved)
    leaves = {k: x[k].requires_grad_(True) for k in names}
    g = torch.randn(x["u"].shape, device=DEVICE)
    tensors = list(leaves.values())
    if mode == "full":
        return timed_row(lambda: torch.autograd.grad(fn(x), tensors, g, allow_unused=True), moved)
    out = fn(x)
    return timed_row(
        lambda: torch.autograd.grad(out, tensors, g, retain_graph=True, allow_unused=True), moved
    )


# The bf16 low-rank forward under named variants, timed in one run, each with a float64 check of
# its output at the matching check shape: the tile scan (stage 1) and the chunk walk (N = 16) with
# and without their software pipelines (the next tile's or position's loads issued before the
# current one's math), and tile-scan configurations whose occupancy and tail the static check
# cannot rank. A variant is a timed shape and a set of launcher_overrides.
FWD_VARIANTS = {
    "prefetch": ("vmamba_t_stage1", {}),  # the default: the row-major launch prefetches
    "no_prefetch": ("vmamba_t_stage1", dict(TILE_PREFETCH=False)),  # each tile loads its own (v2.2)
    # tiles of 8 x 8 positions capped at 96 registers: 5 blocks per SM instead of 4, the 768
    # blocks in 1.16 waves instead of 1.45 (sm_90: no spills with Triton 3.8; with 3.6, the GPU
    # image's, its column-major launch spills 44 bytes)
    "sub8_regs96": (
        "vmamba_t_stage1",
        dict(_fwd_scan_config=lambda D, L, N: (16, 8, 8, 4), TILE_MAX_REGISTERS=96),
    ),
    # the chunk walk without its prefetch (v2.2), against the n16 fwd row of ours_lowrank
    "no_walk_prefetch": ("n16", dict(WALK_PREFETCH=False)),
    # the chunk walk (state pass, chain, output pass) at stage 1 instead of the tile scan: 4x the
    # instructions, but on the first GPU runs its steps ran at 2-3x their issue time where the
    # tile scan's ran at 12-19x (bench/NOTES.md, "The latency view")
    "chunk_walk": ("vmamba_t_stage1", dict(TILE_SCAN_MAX_N=0)),
}
VARIANT_CHECKS = {"vmamba_t_stage1": "stage1_b2", "n16": "n16_b1"}  # shape -> check shape
# Variants timed last (priority 2): the default again (the target rows time it), the N = 16
# walk's, and one that spills on the GPU image's Triton 3.6
LATE_VARIANTS = ("bwd_low_dot", "fwd_no_walk_prefetch", "fwd_sub8_regs96")
# The bf16 low-rank backward under named variants, as the forward's: the default (d dt_low, d
# dt_weight and d bias formed after the walks by their own kernel, 4 channels per thread), the
# per-step sums in the adjoint walk at 2 channels per thread (the v2.3 algorithm: fewer
# instructions is not yet less time), and the walks' next-position prefetch (off by default: it
# spills at 128 registers), and v2.5's grid: chunks of 17 filling every warp slot (2,304 blocks:
# 1.09 rounds of 16 x 132) where the default takes chunks of 20 in one round (1,920 blocks), and
# 2 channels per thread (the Triton 3.6 choice before v2.8: no layout changes through shared
# memory, twice the walk steps per program). Each with a float64 check of every gradient at the
# check shape.
BWD_VARIANTS = {
    "low_dot": ("vmamba_t_stage1", {}),
    "chunks_of_17": ("vmamba_t_stage1", dict(_BWD_WARP_BLOCKS_PER_SM=18)),
    "two_channels": ("vmamba_t_stage1", dict(_BWD_WARP_BLOCK_D=2)),
    "per_step_sums": ("vmamba_t_stage1", dict(_BWD_LOW_DOT=False, _BWD_WARP_BLOCK_D=2)),
    "walk_prefetch": ("vmamba_t_stage1", dict(_BWD_PREFETCH=True)),
    # the walks' [channels, lanes] accesses written channels first: Triton 3.8's default, and under
    # 3.6 (the GPU image's) the form before v2.11: more instructions, fewer barriers
    "channels_first": ("vmamba_t_stage1", dict(_BWD_LANES_FIRST=False)),
}
_FWD_REFERENCE: dict = {}


def fwd_reference(shape):
    """Inputs (bf16-representable) and the float64 forward at ``shape``, once per process."""
    key = tuple(shape)
    if key not in _FWD_REFERENCE:
        torch.manual_seed(0)
        x = make(shape, torch.bfloat16)
        with torch.no_grad():
            ref = ours_lowrank({k: v.double() for k, v in x.items()}, backend="torch")
        _FWD_REFERENCE.clear()
        _FWD_REFERENCE[key] = (x, ref)
    return _FWD_REFERENCE[key]


def fwd_variant(overrides: dict, check_shape, shape, dtype):
    """One variant: the forward's max relative error against float64 at ``check_shape`` (bf16
    inputs), then its time at ``shape`` in ``dtype``, forward only."""
    with launcher_overrides(**overrides):
        x, ref = fwd_reference(check_shape)
        with torch.no_grad():
            err = rel_err(ours_lowrank(x), ref)
        tol = tolerance(torch.bfloat16, check_shape[2] * check_shape[3])
        row = time_case(ours_lowrank, shape, dtype, "fwd")
    return dict(row, max_rel_err=float(f"{err:.3g}"), tol=tol, ok=bool(err <= tol))


def bwd_variant(overrides: dict, check_shape, shape, dtype):
    """One backward variant: every gradient's max relative error against float64 at
    ``check_shape`` (bf16 storage), then its backward time at ``shape`` in ``dtype``."""
    with launcher_overrides(**overrides):
        checked = check(ours_lowrank, check_shape, torch.bfloat16, repeat=False)
        row = time_case(ours_lowrank, shape, dtype, "bwd")
    return dict(row, **{k: checked[k] for k in ("max_rel_err", "tol", "errs", "ok")})


def fla_available():
    if not HAS_CUDA:
        raise Skip("fla-core's chunked HGRN is Triton on CUDA only")
    try:
        import fla.ops.hgrn  # noqa: F401
    except ImportError as exc:
        raise Skip(f"fla-core not importable: {exc}") from exc


def fla_case(shape, dtype, mode):
    fla_available()
    if shape[4] != 1:
        raise Skip("the unfused HGRN peer is built for d_state N = 1")
    return time_case(fla_unfused, shape, dtype, mode)


def fla_check(shape, dtype):
    fla_available()
    return check(fla_unfused, shape, dtype, repeat=False)


def fla_direct_probe(shape):
    """The pipeline with chunk_hgrn on whole sequences (``fla_recurrence_direct``), expected wrong
    on sm_90: its errors and whether the backward repeats bit for bit are recorded, not judged
    (no ``ok``), so that a GPU run shows the race."""
    fla_available()
    row = check(lambda x: fla_unfused(x, fla_recurrence_direct), shape, torch.float32)
    row.pop("ok")
    return row


@provider("ss2d")
def ss2d_cases(smoke: bool):
    check_shapes = SS2D_SMOKE if smoke else SS2D_CHECK_SHAPES
    shapes = dict([next(iter(SS2D_SMOKE.items()))]) if smoke else SS2D_SHAPES  # smoke: time one shape
    first = next(iter(check_shapes))
    for name, shape in check_shapes.items():
        case = dict(shape=name, dims=list(shape), mode="check")
        for dt_name, dtype in DTYPES.items():
            run = lambda s=shape, d=dtype: check(ours_lowrank, s, d)
            # issue 10's accuracy target: stage 1, B = 2; past it, the models' bf16 first (the
            # later stages' checks come before the fp32 ones, and full delta's, which no model uses)
            priority = 0 if name == first else (1 if dt_name == "bf16" else 2)
            yield Case(
                "ss2d", "ours_lowrank", "check", {**case, "dtype": dt_name}, run, 120, priority=priority
            )
        fp32 = {**case, "dtype": "fp32"}
        if name == first:  # (run in priority order: a case after another shape's check rebuilds
            # this shape's float64 reference, a few seconds)
            run = lambda s=shape: check_small_blocks(s, torch.float32)
            yield Case("ss2d", "ours_lowrank", "check", {**fp32, "mode": "check_small_blocks"}, run, 120)
            # the peer's pipeline with fla's kernel (CUDA)
            run = lambda s=shape: fla_check(s, torch.float32)  # its timings are a target's baseline
            yield Case("ss2d", "fla_unfused", "check", fp32, run, 120, priority=0)
            run = lambda s=shape: fla_direct_probe(s)  # (a diagnosis of fla's own carry, kept late)
            yield Case("ss2d", "fla_unfused", "check", {**fp32, "mode": "probe_direct"}, run, 120, priority=2)
        yield Case(
            "ss2d",
            "ours_full",
            "check",
            fp32,
            lambda s=shape: check(ours_full, s, torch.float32, True),
            120,
            priority=2,
        )
    for name, shape in ({} if smoke else {**SS2D_LATER_CHECK_SHAPES, **SS2D_EDGE_CHECK_SHAPES}).items():
        case = dict(shape=name, dims=list(shape), dtype="bf16", mode="check")
        run = lambda s=shape: check(ours_lowrank, s, torch.bfloat16)
        yield Case("ss2d", "ours_lowrank", "check", case, run, 120)
    # the peer's algebra with the plain recurrence, anywhere (the CPU smoke run included)
    small = next(s for s in SS2D_SMOKE.values() if s[4] == 1)
    case = dict(shape="smoke", dims=list(small), dtype="fp32", mode="check_pipeline")
    oracle = lambda x: fla_unfused(x, recurrence=sequential_recurrence)
    yield Case(
        "ss2d", "unfused_loop", "check", case, lambda: check(oracle, small, torch.float32, repeat=False), 60
    )
    main = next(iter(shapes))
    for name, shape in shapes.items():
        for dt_name, dtype in DTYPES.items():
            # issue 10's targets: the stage-1 bf16 low-rank rows and the peer's same rows
            priority = 0 if (name, dt_name) == (main, "bf16") else 2
            for mode in MODES:
                case = dict(shape=name, dims=list(shape), dtype=dt_name, mode=mode)
                a = (shape, dtype, mode)
                run = lambda a=a: time_case(ours_lowrank, *a)
                yield Case("ss2d", "ours_lowrank", "ours", case, run, 60, priority=priority)
                run = lambda a=a: time_case(ours_full, *a, True)  # (no model uses full delta)
                yield Case("ss2d", "ours_full", "ours", case, run, 60, priority=2)
                yield Case(
                    "ss2d", "fla_unfused", "peer", case, lambda a=a: fla_case(*a), 60, priority=priority
                )
    # the variants, after the target rows and before the others (priority 1); smoke: the smoke
    # shape, timed in fp32 as the interpreter's other rows
    v_dtype = "fp32" if smoke else "bf16"
    for prefix, variants, timed in (("fwd", FWD_VARIANTS, fwd_variant), ("bwd", BWD_VARIANTS, bwd_variant)):
        for variant, (v_name, overrides) in variants.items():
            v_name = "smoke" if smoke else v_name
            shape = SS2D_SMOKE[v_name] if smoke else SS2D_SHAPES[v_name]
            v_check = SS2D_SMOKE[v_name] if smoke else SS2D_CHECK_SHAPES[VARIANT_CHECKS[v_name]]
            case = dict(shape=v_name, dims=list(shape), dtype=v_dtype, mode=f"{prefix}_{variant}")
            run = lambda t=timed, o=overrides, s=shape, c=v_check: t(o, c, s, DTYPES[v_dtype])
            priority = 2 if f"{prefix}_{variant}" in LATE_VARIANTS else 1
            yield Case("ss2d", "ours_lowrank", "ours", case, run, 60, priority=priority)

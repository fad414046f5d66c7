"""Gate cases of the multi-step LIF: float64 checks at real shapes, our kernels, spikingjelly and
torch.compile of the plain loop.

Bytes that must move per element-step (s = storage bytes of x): fwd reads x, writes spikes = 2s;
bwd reads x (saved) and grad_spikes, writes grad_x = 3s; full = 5s.

Where the time goes: at ``HOST_SHAPES`` (N = 2^10) a call's GPU work takes a few microseconds,
so the back-to-back time per call is the host side of each implementation (Python, dispatch,
autograd, launches). The first timed shape's bf16 fwd + bwd row of ours and of spikingjelly also
records ``host_issue_us`` (wall clock per call of back-to-back calls before the GPU is waited
for) and ``kernels_us`` (device time per call of each kernel, memset and memcpy, torch.profiler).
"""

from __future__ import annotations

import functools
import time

import torch
from gate import DEVICE, HAS_CUDA, Case, Skip, module_overrides, provider, rel_err, sync, timed_row
from shapes import LIF_CHECK_SHAPES, LIF_SHAPES, LIF_SMOKE

from svm_kernels import multistep_lif
from svm_kernels.lif.common import make_params
from svm_kernels.lif.naive import multistep_lif_naive

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "full")
PARAMS = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True)  # sigmoid surrogate, alpha 4
# tau = 2 is a power of two: the kernels multiply by 1 / tau. The ``ours_tau3`` rows time the
# correctly rounded division that any other tau takes (bf16 only).
PARAMS_TAU3 = dict(PARAMS, tau=3.0)
BYTES_PER_STEP = {"fwd": 2, "bwd": 3, "full": 5}
HOST_SHAPES = {"T4_N1k_host": (4, 2**10)}
# The bf16 backward at T = 16 under named variants, each checked against float64 (at 2^20
# neurons; the smoke run's neurons in smoke mode), then timed: what the static check cannot rank.
# The default holds a segment of 16 steps x 8 neurons per thread in registers (250 at sm_90: 2
# blocks of 4 warps per SM). "four_neurons": 4 per thread, 64-bit accesses, grad_s loaded with x
# as the launcher's rule then says (128 registers, 4 blocks per SM; 5 % more PTX per
# element-step). "segments_of_8": two segments of 8 steps, the first recomputed by a first pass
# that stores v (168 registers, 3 blocks per SM; 192 and 2 under Triton 3.6; 15 % more PTX, x of
# those 8 steps read twice). Each maps a function of svm_kernels.lif.fused to its replacement,
# made from the original.
BWD_VARIANT_T = 16
BWD_VARIANTS = {
    "four_neurons": {
        "launch_config": lambda base: (
            lambda dtype, backward: (4 * 32 * 4, 4) if backward else base(dtype, backward)
        ),
        # the launcher's rule for loading grad_s with x, at 4 neurons per thread (T = 16: with x)
        "grad_s_ahead": lambda base: lambda seg, dtype: base(seg, dtype, per_thread=4),
    },
    "segments_of_8": {"segments": lambda base: lambda T: base(T, max_segment=8)},
}
SPLIT_CALLS = 5


def lif_bytes(x: torch.Tensor, mode: str) -> int:
    return BYTES_PER_STEP[mode] * x.numel() * x.element_size()


def _inputs(T, n, dtype):
    x = (torch.randn(T, n, device=DEVICE) * 2).to(dtype)
    return x, torch.randn(T, n, device=DEVICE).to(dtype)


def ours(x, **params):
    return multistep_lif(x, backend="triton", **(params or PARAMS))


def check(T, n, dtype, params: dict):
    """Forward and backward against the float64 reference; spikes compared exactly, grad_x on the
    neurons whose spikes all agree (a spike that flips at the threshold changes its neuron's
    whole later history); two backward runs must be bit-identical."""
    x, g = _inputs(T, n, dtype)
    ref_x = x.double().requires_grad_(True)
    ref_s, _ = multistep_lif_naive(ref_x, make_params(**params))
    (ref_gx,) = torch.autograd.grad(ref_s, ref_x, g.double())
    x = x.requires_grad_(True)
    s = ours(x, **params)
    (gx,) = torch.autograd.grad(s, x, g, retain_graph=True)
    (gx2,) = torch.autograd.grad(s, x, g)
    agree = (s.double() == ref_s).all(0)
    mismatch = 1.0 - agree.double().mean().item()
    err = rel_err(gx[:, agree], ref_gx[:, agree])
    # fp32 arithmetic in both directions: error ~ T roundings; bf16 grad_x is rounded once more
    tol = 2e-6 * T if dtype == torch.float32 else 8e-3
    ok = err <= tol and mismatch <= 1e-5 and torch.equal(gx, gx2)
    return dict(
        max_rel_err=err, tol=tol, spike_mismatch=mismatch, bitwise_repeat=torch.equal(gx, gx2), ok=bool(ok)
    )


def check_int64_offsets(T: int, n: int) -> dict:
    """More than 2^31 elements (the kernels' offsets in 64 bits): the last neurons' spikes against
    the PyTorch path's (tests/test_lif.py's CUDA-only test, which no CI machine can run)."""
    if not HAS_CUDA:
        raise Skip("needs a GPU: more than 2^31 elements")
    x = torch.randn(T, n, device=DEVICE, dtype=torch.float16)
    s = ours(x)
    tail = multistep_lif(x[:, -1000:].contiguous(), backend="torch", **PARAMS)
    ok = torch.equal(s[:, -1000:], tail)
    del x, s
    return dict(elements=T * n, ok=bool(ok))


def bwd_variant(replacements: dict, n_check: int, n: int) -> dict:
    """One backward variant at T = BWD_VARIANT_T, bf16: its float64 check at ``n_check`` neurons,
    then its backward time at ``n``."""
    from svm_kernels.lif import fused

    # (a name the launcher no longer has reaches module_overrides as None: the case is skipped)
    overrides = {
        name: replace(getattr(fused, name)) if hasattr(fused, name) else None
        for name, replace in replacements.items()
    }
    with module_overrides(fused, **overrides):
        checked = check(BWD_VARIANT_T, n_check, torch.bfloat16, PARAMS)
        row = time_case(ours, BWD_VARIANT_T, n, torch.bfloat16, "bwd")
    kept = ("max_rel_err", "tol", "spike_mismatch", "bitwise_repeat", "ok")
    return dict(row, **{k: checked[k] for k in kept})


def host_device_split(call) -> dict:
    """Per call: the host's time to issue it (back-to-back calls, timed before the GPU is waited
    for: while the host runs ahead, that is its own time) and each device kernel's time."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    start = time.perf_counter()
    for _ in range(SPLIT_CALLS):
        call()
    issued = time.perf_counter() - start
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if HAS_CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(SPLIT_CALLS):
            call()
        sync()
    kernels: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.name[:100]
            kernels[name] = kernels.get(name, 0.0) + event.time_range.elapsed_us() / SPLIT_CALLS
    return dict(
        host_issue_us=round(issued / SPLIT_CALLS * 1e6, 1),
        device_us=round(sum(kernels.values()), 1),
        kernels_us={k: round(v, 1) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])},
    )


def time_case(fn, T, n, dtype, mode, split=False):
    """fn(x) -> spikes, timed in one of the modes; ``split`` adds host_device_split's figures."""
    x, g = _inputs(T, n, dtype)
    moved = lif_bytes(x, mode)

    def timed(call):
        row = timed_row(call, moved)
        if split:
            try:  # the profiler's split must not cost the row its timing
                row.update(host_device_split(call))
            except Exception as exc:
                row["split_error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        return row

    if mode == "fwd":
        with torch.no_grad():
            return timed(lambda: fn(x))
    x.requires_grad_(True)
    if mode == "full":
        return timed(lambda: torch.autograd.grad(fn(x), x, g))
    s = fn(x)
    return timed(lambda: torch.autograd.grad(s, x, g, retain_graph=True))


def spikingjelly_fn():
    """spikingjelly 2.0's multi-step LIF functional (what ``LIFNode(step_mode="m")`` runs) with an
    fp32 initial state built once; its Triton implementation is forced (gate.py), so an
    unavailable Triton path raises with spikingjelly's reason instead of falling back."""
    if not HAS_CUDA:
        raise Skip("spikingjelly's Triton LIF needs CUDA")
    try:
        from spikingjelly.activation_based import surrogate
        from spikingjelly.activation_based.functional.neuron import lif_multi_step
    except ImportError as exc:
        raise Skip(f"spikingjelly not importable: {exc}") from exc
    sg = surrogate.Sigmoid(alpha=4.0)
    v0 = {}

    def run(x):
        key = x.shape[1:]
        if key not in v0:  # (setdefault would build its default, a memset of N values, every call)
            v0[key] = torch.zeros(key, device=x.device, dtype=torch.float32)
        return lif_multi_step(x, v0[key], 2.0, True, 1.0, 0.0, sg, True)[0]

    return run


def _spikingjelly_selected() -> str:
    from spikingjelly._ops.lif import _selection

    chosen = _selection._selections.get(torch.cuda.current_device())
    return getattr(chosen, "name", repr(chosen))


def spikingjelly_case(T, n, dtype, mode, split=False):
    fn = spikingjelly_fn()
    row = time_case(fn, T, n, dtype, mode, split)
    row["selected"] = _spikingjelly_selected()
    if row["selected"] != "triton":
        raise Skip(f"spikingjelly selected its {row['selected']!r} implementation, not Triton")
    x, _ = _inputs(T, n, dtype)
    with torch.no_grad():
        row["max_rel_err"] = rel_err(fn(x), multistep_lif_naive(x.double(), make_params(**PARAMS))[0])
    return row


def compile_case(T, n, dtype, mode):
    """torch.compile of the plain loop: a fresh compiled function per case (no recompile limit),
    its compile time (first forward and backward) reported apart from the timing."""
    if not HAS_CUDA:
        raise Skip("torch.compile peer is timed on CUDA only (smoke run)")
    import torch._dynamo

    torch._dynamo.reset()
    p = make_params(**PARAMS)

    def loop(x):
        return multistep_lif_naive(x, p)[0]

    fn = torch.compile(loop, dynamic=False)
    x, g = _inputs(T, n, dtype)
    # The bwd timing runs one graph's backward again and again (retain_graph), which a compiled
    # backward with donated buffers refuses (it frees what it was given).
    import torch._functorch.config as functorch_config

    with functorch_config.patch(donated_buffer=False):
        start = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                fn(x)
        else:
            torch.autograd.grad(fn(x.requires_grad_(True)), x, g)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        row = time_case(fn, T, n, dtype, mode)
    row["compile_s"] = round(compile_s, 2)
    return row


@provider("lif")
def lif_cases(smoke: bool):
    check_shapes = LIF_SMOKE if smoke else LIF_CHECK_SHAPES
    shapes = LIF_SMOKE if smoke else LIF_SHAPES
    for name, (T, n) in check_shapes.items():
        for dt_name, dtype in DTYPES.items():
            case = dict(shape=name, dims=[T, n], dtype=dt_name, mode="check")
            run = lambda T=T, n=n, d=dtype: check(T, n, d, PARAMS)
            yield Case("lif", "ours", "check", case, run, 60, priority=0)
    # the other reset / surrogate branches of the kernels, once
    other = dict(tau=3.0, v_threshold=0.5, v_reset=None, detach_reset=False, surrogate="atan")
    T, n = next(iter(check_shapes.values()))
    case = dict(shape=next(iter(check_shapes)), dims=[T, n], dtype="fp32", mode="check_soft_atan")
    yield Case("lif", "ours", "check", case, lambda T=T, n=n: check(T, n, torch.float32, other), 60)
    # offsets past 2^31: 5 x (2^29 + 7) fp16 elements, and a second segment whose start passes it
    for T, n in () if smoke else ((5, 2**29 + 7), (20, 2**28 + 7)):
        case = dict(shape=f"T{T}_int64", dims=[T, n], dtype="fp16", mode="check_int64_offsets")
        yield Case("lif", "ours", "check", case, lambda T=T, n=n: check_int64_offsets(T, n), 60, priority=2)
    first = next(iter(shapes))
    for name, (T, n) in shapes.items():
        for dt_name, dtype in DTYPES.items():
            priority = 0 if dt_name == "bf16" and T in (4, 16) else 1  # issue 11's GPU targets
            for mode in MODES:
                case = dict(shape=name, dims=[T, n], dtype=dt_name, mode=mode)
                args = (T, n, dtype, mode)
                split = (name, dt_name, mode) == (first, "bf16", "full")
                run = lambda a=args, s=split: time_case(ours, *a, s)
                yield Case("lif", "ours", "ours", case, run, 30, priority=priority)
                run = lambda a=args, s=split: spikingjelly_case(*a, s)
                yield Case("lif", "spikingjelly", "peer", case, run, 60, priority=priority)
                run = lambda a=args: compile_case(*a)
                yield Case("lif", "torch_compile", "peer", case, run, 90, priority=priority)
                if dt_name == "bf16":
                    tau3 = functools.partial(ours, **PARAMS_TAU3)
                    yield Case("lif", "ours_tau3", "ours", case, lambda a=args, f=tau3: time_case(f, *a), 30)
    # the backward's variants, after the target rows (priority 1)
    if smoke:  # the smoke shape's neurons, checked and timed
        v_name, n = f"T{BWD_VARIANT_T}_N1k", next(iter(LIF_SMOKE.values()))[1]
        n_check = n
    else:  # beside the default's row of the same shape
        v_name, n, n_check = "T16_N16M", LIF_SHAPES["T16_N16M"][1], 2**20
    for variant, replacements in BWD_VARIANTS.items():
        case = dict(shape=v_name, dims=[BWD_VARIANT_T, n], dtype="bf16", mode=f"bwd_{variant}")
        run = lambda r=replacements, c=n_check, n=n: bwd_variant(r, c, n)
        yield Case("lif", "ours", "ours", case, run, 60)
    # host-bound: the same calls at a size where the GPU work is negligible (bf16 only)
    for name, (T, n) in HOST_SHAPES.items():
        for mode in MODES:
            case = dict(shape=name, dims=[T, n], dtype="bf16", mode=mode)
            args = (T, n, torch.bfloat16, mode)
            yield Case("lif", "ours", "ours", case, lambda a=args: time_case(ours, *a), 30)
            yield Case("lif", "spikingjelly", "peer", case, lambda a=args: spikingjelly_case(*a), 60)
            yield Case("lif", "torch_compile", "peer", case, lambda a=args: compile_case(*a), 90)

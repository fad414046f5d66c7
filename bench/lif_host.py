"""Host-side cost of one LIF call, measured on any machine (no GPU needed).

    OMP_NUM_THREADS=1 python bench/lif_host.py [--reps 200] [--groups 21] [--profile]
                                               [--baseline PACKAGE]

Runs the real Python path of ``multistep_lif(x, backend="triton")`` (argument checks, autograd,
the launchers, Triton's launch wrappers) with each kernel's innermost ``JITFunction.run``
replaced by a stub that does the host work of Triton's launch short of the driver (binding and
specialising the arguments for sm_90, the kernel-cache key, the grid) and launches nothing. On a
GPU, back-to-back calls cannot run faster than this (plus the driver's launch, a few us): a row
of the gate above its kernel time by about this much is host-bound.

Prints the median microseconds per call (over ``--groups`` groups of ``--reps`` calls, one
thread) for fwd (no_grad), bwd (the backward of a ready graph) and full (forward + backward),
and the pieces apart: the launchers alone, the stubbed launch alone, and the floor of the bwd
row (torch.autograd.grad through a node that does nothing). ``--baseline`` measures
another copy of ``svm_kernels`` importable under another name (e.g. an older commit's, with its
``svmamba::`` op namespace renamed so both register) in the same process, each case of the two
timed alternately. ``--profile`` adds the top cProfile entries of ``full`` and the aten ops of
one fwd + bwd call (an allocation, copy or fill there is device work on a GPU).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import statistics
import sys
import time
from types import SimpleNamespace

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("lif_host: unset TRITON_INTERPRET (the stub replaces the compiled kernels' launch)")

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

PARAMS = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True)  # the gate's case


def _chain(kernel) -> list:
    """The kernel's wrappers (autotuner, heuristics) down to its JITFunction, outermost first."""
    chain = [kernel]
    while not isinstance(chain[-1], JITFunction):
        chain.append(chain[-1].fn)
    return chain


def _stub_launch(jit: JITFunction, record: dict):
    """JITFunction.run's host work (bind, specialise, cache key, grid), no compile, no launch."""
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    key_cache, kernels = {}, {}

    def run(*args, grid, warmup, **kwargs):
        kwargs["debug"] = kwargs.get("debug", jit.debug)
        bound, specialization, options = binder(*args, **kwargs)
        key = compute_cache_key(key_cache, specialization, options)
        kernels.setdefault(key, key)
        record[jit.__name__] = (args, kwargs)  # (a name: JITFunction's __hash__ is Python)
        return grid(bound) if callable(grid) else grid

    return run


def load(package: str) -> SimpleNamespace:
    """The package's LIF pieces, its kernels' launches replaced by the stub."""
    pkg = SimpleNamespace(
        name=package,
        utils=importlib.import_module(f"{package}.utils"),
        fused=importlib.import_module(f"{package}.lif.fused"),
        multistep_lif=importlib.import_module(package).multistep_lif,
        make_params=importlib.import_module(f"{package}.lif.common").make_params,
        launches={},
    )
    # multistep_lif accepts backend="triton" for CPU tensors only under the interpreter: let it,
    # while the kernels stay compiled JITFunctions (their launch is the stub).
    pkg.utils.TRITON_INTERPRET = True
    for kernel in (pkg.fused.fused_lif_fwd_kernel, pkg.fused.fused_lif_bwd_kernel):
        *wrappers, jit = _chain(kernel)
        jit.run = _stub_launch(jit, pkg.launches)  # instance attribute: wrappers call self.fn.run
        for tuner in wrappers:
            if len(getattr(tuner, "configs", ())) > 1:
                # an autotuner's first call per key times its configs on the GPU: pick the first
                tuner._bench = lambda *a, config, tuner=tuner, **k: [float(tuner.configs.index(config))] * 3
    return pkg


def per_call_us(fn, reps: int, groups: int) -> list[float]:
    """Microseconds per call of each group of ``reps`` back-to-back calls (after one call)."""
    times = []
    fn()
    for _ in range(groups):
        start = time.perf_counter_ns()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter_ns() - start) / reps / 1e3)
    return times


class _Identity(torch.autograd.Function):
    """A node that does nothing: what autograd alone costs the bwd row."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def cases(pkg: SimpleNamespace, T: int, n: int, dtype: torch.dtype) -> dict:
    x = (torch.randn(T, n) * 2).to(dtype)
    g = torch.randn(T, n).to(dtype)
    xg = x.clone().requires_grad_(True)
    p = pkg.make_params(**PARAMS)
    lif = pkg.multistep_lif
    s_ready = lif(xg, backend="triton", **PARAMS)

    def fwd():
        with torch.no_grad():
            return lif(x, backend="triton", **PARAMS)

    def bwd():
        return torch.autograd.grad(s_ready, xg, g, retain_graph=True)

    def full():
        return torch.autograd.grad(lif(xg, backend="triton", **PARAMS), xg, g)

    def launcher_fwd():
        return pkg.fused.lif_fwd(x, None, p, False)

    def launcher_bwd():
        return pkg.fused.lif_bwd(g, None, x, None, p, False)

    # what the launcher hands to the kernel's outermost wrapper, replayed alone
    outer = pkg.fused.fused_lif_fwd_kernel
    stub, seen = outer.__dict__.get("run"), {}

    def recording(*args, **kwargs):
        seen["call"] = (args, kwargs)
        return (stub or type(outer).run.__get__(outer))(*args, **kwargs)

    outer.run = recording
    launcher_fwd()
    if stub is None:
        del outer.run
    else:
        outer.run = stub
    args, kwargs = seen["call"]

    def launch_only():
        outer.run(*args, **kwargs)

    s_floor = _Identity.apply(xg)

    def bwd_floor():
        return torch.autograd.grad(s_floor, xg, g, retain_graph=True)

    return {
        "fwd": fwd,
        "bwd": bwd,
        "full": full,
        "launcher fwd (lif_fwd)": launcher_fwd,
        "launcher bwd (lif_bwd)": launcher_bwd,
        "stubbed fwd launch alone": launch_only,
        "bwd floor (no-op node)": bwd_floor,
    }


def aten_ops(fn) -> list[tuple[str, int]]:
    """The aten ops one call runs, with their counts (CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name.startswith("aten::"):
            counts[event.name] = counts.get(event.name, 0) + 1
    return sorted(counts.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--groups", type=int, default=21)
    parser.add_argument("--baseline", help="another copy of svm_kernels to time alongside")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    packages = [load(name) for name in ([args.baseline] if args.baseline else []) + ["svm_kernels"]]
    fns = {pkg.name: cases(pkg, args.T, args.n, dtype) for pkg in packages}
    print(
        f"LIF host cost per call (us, median of {args.groups} groups of {args.reps} calls), "
        f"T={args.T} N={args.n} {args.dtype}, torch {torch.__version__}"
    )
    print(f"  {'':28s}" + "".join(f"{pkg.name:>16s}" for pkg in packages))
    for case in fns["svm_kernels"]:
        times = {pkg.name: [] for pkg in packages}
        for _ in range(args.groups):  # the packages alternate group by group
            for pkg in packages:
                times[pkg.name] += per_call_us(fns[pkg.name][case], args.reps, 1)
        medians = [statistics.median(times[pkg.name]) for pkg in packages]
        ratio = f"  {medians[0] / medians[-1]:5.2f}x" if len(medians) > 1 else ""
        print(f"  {case:28s}" + "".join(f"{m:16.1f}" for m in medians) + ratio)
    print("launched: " + ", ".join(sorted(packages[-1].launches)))
    if args.profile:
        full = fns["svm_kernels"]["full"]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.reps):
            full()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        print("aten ops of one fwd + bwd call:")
        for name, count in aten_ops(full):
            print(f"  {count:3d} x {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

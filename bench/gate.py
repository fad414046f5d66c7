"""The GPU gate's driver: run every registered case in order, one JSON row per case, flushed at once.

    python bench/gate.py OUT_DIR [--budget-s 420]      (bench/gpu_check.sh calls it)

Each kernel registers a *case provider* (``@provider("lif")``): a function of ``smoke`` that
yields :class:`Case` objects. A case belongs to one phase: ``check`` (correctness against a
float64 reference at real shapes), ``ours`` (timings of our kernels), ``peer`` (timings of the
implementations we compare with), ``model`` (whole models: torch.compile against eager, training
throughput; ``gate_models.py``). All checks run first, then ours, then the peers, each phase's
cases by priority (``Case.priority``), so a run cut short still holds the rows it reached and
those are the ones most needed; bench/gpu_check.sh runs the model phase second. Every case runs under its own time limit (SIGALRM: a
case stuck inside one long C call overruns it until the call returns; the shell's outer
``timeout`` bounds the whole run), a case that raises writes a row with the error, and
:class:`Skip` writes a row with the reason. When the run's time budget is spent the remaining
cases are written as skipped; after an error that loses the CUDA context (illegal address,
device assert) the process's remaining cases are skipped with that reason. On a GPU,
bench/gpu_check.sh runs each phase in its own process (``--phase``), so one phase's lost context
does not cost the next phase its rows.

Timing (``timing: "back_to_back"``): after two warm-up calls (compilation, autotuning,
allocator), ``GROUPS`` groups of ``REPS`` back-to-back calls between two CUDA events, no
synchronisation inside a group, so the host's dispatch overlaps the GPU work of earlier calls;
``ms`` is the median over the groups of (group time / REPS). In smoke mode (CPU, Triton
interpreter) one call is timed with the wall clock (``cpu_wall_smoke``) and means nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SMOKE = os.environ.get("SVM_BENCH_SMOKE", "0") == "1"
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# spikingjelly picks its CUDA implementation once per process: ask for its Triton kernels (it
# raises, with the reason, when they cannot run, instead of silently using its PyTorch loop).
os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")

import torch  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":  # the smoke run: spare the interpreter its re-patching
    from svm_kernels import interpreter_speed

    interpreter_speed.install()

HAS_CUDA = torch.cuda.is_available() and not SMOKE
DEVICE = "cuda" if HAS_CUDA else "cpu"
PHASES = ("check", "ours", "peer", "model")
KERNEL_ORDER = ("device", "lif", "ss2d")  # within a phase; other kernels follow
LAST = ("torch_compile",)  # slow to prepare (compiles): after every other peer
# errors after which the process's CUDA context is unusable
CUDA_FATAL = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "illegal instruction",
)
REPS, GROUPS = 10, 7


class Skip(Exception):
    """A case that cannot run here; the message is the reason written in its row."""


@contextlib.contextmanager
def module_overrides(module, **attrs):
    """Replace a module's attributes (a launcher's config functions, a constant) for one case; a
    name the module no longer has skips the case with the reason."""
    missing = [name for name in attrs if not hasattr(module, name)]
    if missing:
        raise Skip(f"{module.__name__} exposes no {', '.join(missing)} to override")
    saved = {name: getattr(module, name) for name in attrs}
    try:
        for name, value in attrs.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@dataclass
class Case:
    kernel: str  # "lif", "ss2d", "bitpack", "device", "model"
    impl: str  # "ours", "ours_lowrank", "spikingjelly", "torch_compile", "fla_unfused", ...
    phase: str  # one of PHASES
    case: dict  # shape (name), dims, dtype, mode (fwd / bwd / full / check)
    run: Callable[[], dict]  # the figures of the row; raises Skip or any error
    limit_s: float = 60.0
    extra: dict = field(default_factory=dict)
    # Within its phase a case runs by priority, so that a budget cut short costs the least
    # needed rows: 0 = a row an open target or the next design choice is read from (stage 1 bf16
    # low rank, LIF bf16 at T = 4 and 16, the model phase's CUDA compile and throughput), 1 = the
    # default, 2 = completeness (other dtypes and shapes, bit packing, variants known to spill).
    priority: int = 1


PROVIDERS: dict[str, Callable[[bool], Iterator[Case]]] = {}


def provider(kernel: str):
    """Register the case provider of one kernel (a function of ``smoke`` yielding Case)."""

    def register(fn):
        PROVIDERS[kernel] = fn
        return fn

    return register


# ---- measuring ---------------------------------------------------------------------------------


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object]) -> tuple[float, str]:
    """Median time of one call in ms, and how it was measured (see the module docstring)."""
    if not HAS_CUDA:  # smoke: one call, to exercise the case's code
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3, "cpu_wall_smoke"
    fn()
    fn()
    sync()
    times = []
    for _ in range(GROUPS):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(REPS):
            fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / REPS)
    return statistics.median(times), "back_to_back"


def peak_mib(fn: Callable[[], object]) -> float | None:
    """Memory one call allocates above what was live before it (CUDA only)."""
    if not HAS_CUDA:
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)


def timed_row(fn: Callable[[], object], bytes_moved: int) -> dict:
    """ms, timing method, gbps (bytes the case must move / time), peak_mib (of a warm call, after
    the timing: a first call may autotune, and Triton's benchmark allocates a 256 MiB buffer to
    flush the L2)."""
    ms, how = time_ms(fn)
    peak = peak_mib(fn)
    gbps = bytes_moved / (ms * 1e-3) / 1e9
    return dict(ms=float(f"{ms:.5g}"), timing=how, gbps=float(f"{gbps:.4g}"), peak_mib=peak)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| in float64 (a NaN or inf anywhere gives inf)."""
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return math.inf
    scale = ref.abs().max().item()
    return (got - ref).abs().max().item() / max(scale, 1e-30)


# ---- running -----------------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"case time limit of {seconds:.0f} s exceeded")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(c: Case) -> dict:
    row = dict(kernel=c.kernel, impl=c.impl, phase=c.phase, case=c.case, **c.extra)
    start = time.perf_counter()
    try:
        with time_limit(c.limit_s):
            row.update(c.run())
    except Skip as reason:
        row["skipped"] = str(reason)
    except CaseTimeout as exc:
        row["error"], row["timed_out"] = str(exc), True
    except Exception as exc:  # a failing case is a row, and the run goes on
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:400]}"
        row["trace"] = traceback.format_exc(limit=-3)[-1500:]
        if _caused_by(exc, CaseTimeout):  # (Dynamo, for one, wraps the alarm in its own error)
            row["timed_out"] = True
    finally:
        if HAS_CUDA:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    row["wall_s"] = round(time.perf_counter() - start, 2)
    return row


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def all_cases(smoke: bool) -> list[Case]:
    import gate_cases  # noqa: F401  (registers the providers)

    cases = []
    for kernel, make in PROVIDERS.items():
        try:
            cases += list(make(smoke))
        except Exception as exc:  # a provider that cannot even list its cases still leaves a row
            cases.append(Case(kernel, "provider", "check", {"shape": "-"}, _raiser(exc)))
    first = {k: i for i, k in enumerate(KERNEL_ORDER)}
    return sorted(
        cases,
        key=lambda c: (PHASES.index(c.phase), c.priority, c.impl in LAST, first.get(c.kernel, len(first))),
    )


def _raiser(exc: Exception):
    def run():
        raise exc

    return run


def describe(row: dict) -> str:
    c = row["case"]
    what = " ".join(str(c.get(k, "")) for k in ("shape", "dtype", "mode"))
    if "skipped" in row:
        status = f"skipped: {row['skipped']}"
    elif "error" in row:
        status = f"ERROR {row['error']}"
    else:
        status = " ".join(
            f"{k}={row[k]}" for k in ("ms", "gbps", "peak_mib", "max_rel_err", "ok", "compile_s") if k in row
        )
    return f"[{row['phase']}] {row['kernel']:7s} {row['impl']:16s} {what:40s} {status} ({row['wall_s']} s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--budget-s", type=float, default=120.0 if SMOKE else 420.0)
    parser.add_argument("--phase", choices=PHASES, help="run only this phase's cases")
    parser.add_argument("--only", default="", help="substring filter on 'kernel impl' (debugging)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cases = [
        c for c in all_cases(SMOKE) if args.only in f"{c.kernel} {c.impl}" and args.phase in (None, c.phase)
    ]
    print(
        f"gate: {len(cases)} cases, device {DEVICE}, smoke={SMOKE}, budget {args.budget_s:.0f} s", flush=True
    )
    failed, poisoned = 0, None
    with open(out / "results.jsonl", "a") as f:
        for c in cases:
            left = deadline - time.monotonic()
            if left < 5 or poisoned:
                row = dict(kernel=c.kernel, impl=c.impl, phase=c.phase, case=c.case, wall_s=0.0)
                row["skipped"] = poisoned or "the gate's time budget was spent before this case"
            else:
                cut = left - 2 < c.limit_s  # the budget, not the case's own limit, ends it
                c.limit_s = min(c.limit_s, left - 2)
                row = run_case(c)
                if row.pop("timed_out", False) and cut:  # not a failure: the run ran out of time
                    row.pop("trace", None)
                    row["skipped"] = f"the gate's time budget ran out during this case ({row.pop('error')})"
                if any(m in row.get("error", "") for m in CUDA_FATAL):
                    # the CUDA context is lost: every later case of this process would fail
                    poisoned = (
                        f"CUDA context lost at {c.kernel} {c.impl} {describe(row).split(']')[1][:60].strip()}"
                    )
            failed += "error" in row or row.get("ok") is False
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
            print(describe(row), flush=True)
    print(f"gate: done, {failed} case(s) failed or wrong", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    # the case modules import ``gate``: run this file's code once, as that module
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gate

    sys.exit(gate.main())

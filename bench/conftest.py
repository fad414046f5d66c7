"""Shared pieces of the kernel benchmarks (pytest-benchmark).

Run on a CUDA machine:  pytest bench/bench_lif.py bench/bench_ss2d.py --benchmark-only --benchmark-json=out.json
(the files are named, since pytest collects only test_*.py by itself)
Without a GPU every provider that needs CUDA skips. ``SVM_BENCH_SMOKE=1`` runs tiny shapes on
the CPU (Triton interpreter) to check the benchmark code itself; its timings mean nothing.
"""

import os

SMOKE = os.environ.get("SVM_BENCH_SMOKE", "0") == "1"
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def require_device():
    if not (HAS_CUDA or SMOKE):
        pytest.skip("needs CUDA (or SVM_BENCH_SMOKE=1 for a CPU smoke run)")


def run_benchmark(benchmark, fn, bytes_moved: int, rounds: int = 20, **info):
    """Time ``fn`` (synchronised inside), record GB/s and peak memory in extra_info."""

    def timed():
        fn()
        sync()

    timed()  # warm-up: compilation, autotuning, allocator
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        timed()
        info["peak_mem_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)
    benchmark.pedantic(timed, rounds=1 if SMOKE else rounds, iterations=1, warmup_rounds=0 if SMOKE else 2)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(info)
    benchmark.extra_info["bytes"] = bytes_moved
    benchmark.extra_info["GB/s"] = round(bytes_moved / mean / 1e9, 2)
    benchmark.extra_info["ms"] = round(mean * 1e3, 4)

"""The GPU gate in its CPU smoke mode: `SVM_BENCH_SMOKE=1 bash bench/gpu_check.sh OUT` must write the
same files as on a GPU, with a row (figures, or a skip with its reason) for every kernel x impl x
case, correct results for every check that ran, and no failed case.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = {"results.jsonl", "environment.txt", "gate.log", "summary.md", "summary.png"}
DTYPES = ("bf16", "fp32")
# (kernel, impl): the modes each must have a row for, in each dtype
EXPECTED = {
    ("lif", "ours"): ("check", "fwd", "bwd", "full"),
    ("lif", "spikingjelly"): ("fwd", "bwd", "full"),
    ("lif", "torch_compile"): ("fwd", "bwd", "full"),
    ("ss2d", "ours_lowrank"): ("check", "fwd", "bwd", "full"),
    ("ss2d", "ours_full"): ("fwd", "bwd", "full"),
    ("ss2d", "fla_unfused"): ("fwd", "bwd", "full"),
    ("bitpack", "ours"): ("check", "pack", "unpack"),
}
EXTRA = [  # (kernel, impl, mode, dtype) checked once
    ("device", "torch_copy", "copy", "fp32"),
    ("lif", "ours", "check_soft_atan", "fp32"),
    ("ss2d", "ours_lowrank", "check_small_blocks", "fp32"),
    ("ss2d", "ours_full", "check", "fp32"),
    ("ss2d", "fla_unfused", "check", "fp32"),
    ("ss2d", "unfused_loop", "check_pipeline", "fp32"),
    # the launcher variants, each timed after its float64 check (fp32 under the interpreter)
    *[
        ("ss2d", "ours_lowrank", mode, "fp32")
        for mode in (
            "fwd_prefetch",
            "fwd_no_prefetch",
            "fwd_chunk_walk",
            "bwd_low_dot",
            "bwd_per_step_sums",
            "bwd_chunks_of_17",
            "bwd_two_channels",
        )
    ],
    # whole models: torch.compile against eager (the flagship in smoke mode), training throughput
    ("model", "compiled_vs_eager", "check", "fp64"),
    ("model", "eager", "train", "fp32"),
    ("model", "compiled", "train", "fp32"),
]
CUDA_ONLY = {"spikingjelly", "torch_compile", "fla_unfused"}
# One gate run serves every test: under `pytest -n ... --dist loadgroup` they share a worker.
pytestmark = pytest.mark.xdist_group("gpu_gate_smoke")


# session scope: under xdist the worker interleaves other modules' tests with this group, which
# would tear a module-scoped fixture down and build it again
@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    env = dict(os.environ, SVM_BENCH_SMOKE="1", OMP_NUM_THREADS="1")
    # a loaded CI machine gets more than the default budget: this test is about the rows
    env.setdefault("GATE_BUDGET_S", "300")
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return proc, out, rows


@pytest.mark.slow
def test_smoke_writes_the_gate_files(smoke_run):
    proc, out, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    entries = list(out.iterdir())
    assert {p.name for p in entries} == FILES  # at most 8 files, no folders
    assert all(p.is_file() and p.stat().st_size > 0 for p in entries)
    assert "smoke: 1" in (out / "environment.txt").read_text()
    summary = (out / "summary.md").read_text()
    assert "## Correctness" in summary and "## lif" in summary and "## ss2d" in summary
    assert "## Whole models" in summary and "digits_svmamba" in summary


@pytest.mark.slow
def test_smoke_has_a_row_for_every_case(smoke_run):
    _, _, rows = smoke_run
    seen = {(r["kernel"], r["impl"], r["case"].get("mode"), r["case"].get("dtype")) for r in rows}
    wanted = [(k, i, m, d) for (k, i), modes in EXPECTED.items() for m in modes for d in DTYPES] + EXTRA
    missing = [w for w in wanted if w not in seen]
    assert not missing, missing
    for r in rows:
        assert "error" not in r, r
        assert r["phase"] in ("check", "ours", "peer", "model")
        if "skipped" in r:
            assert r["skipped"].strip(), r
            assert "time budget" not in r["skipped"], r
        elif r["phase"] == "check" and r["kernel"] != "device":
            assert r["ok"] is True, r
        elif r["kernel"] == "model":
            assert r.get("ok", True) is True and r.get("ms", 1) > 0, r
        else:  # a timing (the device's copy bandwidth is measured first, with the checks)
            assert r["ms"] > 0 and r["gbps"] > 0 and r["timing"] == "cpu_wall_smoke", r
            assert r.get("ok", True) is True, r  # a variant's row carries its check


@pytest.mark.slow
def test_smoke_skips_cuda_only_peers_with_a_reason(smoke_run):
    _, _, rows = smoke_run
    peers = [r for r in rows if r["impl"] in CUDA_ONLY and r["case"].get("mode") != "check_pipeline"]
    assert peers and all("skipped" in r for r in peers)
    assert all("CUDA" in r["skipped"] or "not importable" in r["skipped"] for r in peers)
    # our kernels and the checks really ran under the interpreter
    ours = [r for r in rows if r["impl"].startswith("ours") and r["kernel"] in ("lif", "ss2d")]
    assert ours and not any("skipped" in r for r in ours if r["case"]["dtype"] == "fp32")
    # the interpreter times SS2D in fp32 only; its bf16 rows say so
    assert all(r["skipped"].startswith("smoke run:") for r in ours if "skipped" in r)
    # the float64 checks caught nothing and the backward repeated bit for bit
    checks = [r for r in rows if r["phase"] == "check" and r["kernel"] in ("lif", "ss2d") and "ok" in r]
    assert checks and all(r["ok"] and r.get("bitwise_repeat", True) for r in checks)


def test_the_gpu_run_orders_each_phase_by_priority(fresh_gate):
    # the GPU run's case list (listed, not run): within a phase the rows a target is read from
    # come first, so a phase cut short by its budget loses the least needed ones
    gate, _ = fresh_gate
    cases = gate.all_cases(smoke=False)
    for phase in gate.PHASES:
        priorities = [c.priority for c in cases if c.phase == phase]
        assert priorities == sorted(priorities), phase
    ours = [c for c in cases if c.phase == "ours"]

    def at(kernel, impl=None, **case):
        return next(
            i
            for i, c in enumerate(ours)
            if c.kernel == kernel
            and impl in (None, c.impl)
            and all(c.case.get(k) == v for k, v in case.items())
        )

    stage1_bf16 = [
        at("ss2d", "ours_lowrank", shape="vmamba_t_stage1", dtype="bf16", mode=m)
        for m in ("fwd", "bwd", "full")
    ]
    first_variant = at("ss2d", mode="fwd_chunk_walk")
    assert max(stage1_bf16) < first_variant < at("ss2d", mode="bwd_chunks_of_17")
    assert at("ss2d", mode="bwd_two_channels") < at("ss2d", "ours_lowrank", dtype="fp32", mode="fwd")
    assert at("ss2d", "ours_full", shape="vmamba_t_stage1", dtype="bf16", mode="fwd") > first_variant
    assert at("lif", "ours", shape="T16_N16M", dtype="bf16", mode="full") < at("lif", "ours", dtype="fp32")
    assert at("bitpack") > at("ss2d", mode="fwd_sub8_regs96") - 1 > first_variant
    checks = [c for c in cases if c.phase == "check"]
    assert [c.kernel for c in checks[:1]] == ["device"] and checks[-1].kernel == "bitpack"


@pytest.fixture
def fresh_gate(monkeypatch):
    """bench/'s gate modules imported anew, and the ones of before put back afterwards, so that
    no test finds a provider registered with another test's ``gate`` (the modules import each
    other: a cached gate_lif would register its cases with a gate no longer imported)."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "bench"))

    def gate_modules():
        return {m: sys.modules[m] for m in list(sys.modules) if m == "gate" or m.startswith("gate_")}

    before = gate_modules()
    for name in before:
        del sys.modules[name]
    import gate
    import gate_cases  # noqa: F401  (registers the providers)
    import gate_lif

    yield gate, gate_lif
    for name in gate_modules():
        del sys.modules[name]
    sys.modules.update(before)


def test_lif_backward_variants_change_the_launch(fresh_gate):
    # each variant's replacements are what the launcher takes inside the case, and only there
    import torch

    from svm_kernels.lif import fused

    gate, gate_lif = fresh_gate

    def launch():
        return (
            fused.segments(16),
            fused.launch_config(torch.bfloat16, True),
            fused.grad_s_ahead(16, torch.bfloat16),
        )

    default = launch()
    assert default[0] == (16, 1, 16) and default[2] is False
    seen = {}
    for variant, replacements in gate_lif.BWD_VARIANTS.items():
        overrides = {name: replace(getattr(fused, name)) for name, replace in replacements.items()}
        with gate.module_overrides(fused, **overrides):
            seen[variant] = launch()
        assert launch() == default, variant  # undone
    assert seen["segments_of_8"] == ((8, 2, 8), default[1], False)
    assert seen["four_neurons"] == (default[0], (4 * 32 * 4, 4), True)
    with pytest.raises(gate.Skip, match="no gone"), gate.module_overrides(fused, gone=None):
        pass


def test_lif_backward_variant_cases_run_at_their_shape(fresh_gate, monkeypatch):
    # the cases call bwd_variant with the sizes their rows name (bound when the case is made)
    _, gate_lif = fresh_gate
    calls = []
    monkeypatch.setattr(gate_lif, "bwd_variant", lambda r, n_check, n: calls.append((n_check, n)))
    monkeypatch.setattr(gate_lif, "check", lambda T, n, dtype, params: calls.append((T, n)))
    cases = [
        c
        for c in gate_lif.lif_cases(smoke=False)
        if c.case["mode"] in ("check_soft_atan", "bwd_four_neurons")
    ]
    for c in cases:
        c.run()
    assert [c.case["dims"] for c in cases] == [[4, 2**24], [16, 2**24]]
    assert calls == [(4, 2**24), (2**20, 2**24)]


def test_a_case_the_budget_cuts_short_is_skipped_not_failed(fresh_gate, tmp_path, monkeypatch):
    # a case stopped by the phase's budget (not its own limit) is no failure: the run was clean;
    # one that times out within its own limit stays an error, also when wrapped (as by Dynamo)
    import time

    gate, _ = fresh_gate

    def slow():
        time.sleep(30)
        return {}

    def wrapped():
        try:
            slow()
        except gate.CaseTimeout as exc:
            raise RuntimeError("backend compiler failed") from exc

    cases = [
        gate.Case("lif", "ours", "ours", {"shape": "a"}, wrapped, limit_s=1.0),
        gate.Case("lif", "ours", "ours", {"shape": "b"}, slow, limit_s=60.0),
    ]
    monkeypatch.setattr(gate, "all_cases", lambda smoke: cases)
    assert gate.main([str(tmp_path), "--budget-s", "8", "--phase", "ours"]) == 1
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert "error" in rows[0] and "trace" in rows[0] and "timed_out" not in rows[0]
    assert "error" not in rows[1] and rows[1]["skipped"].startswith("the gate's time budget ran out")
    (tmp_path / "results.jsonl").unlink()
    alone = [gate.Case("lif", "ours", "ours", {"shape": "b"}, slow, limit_s=60.0)]
    monkeypatch.setattr(gate, "all_cases", lambda smoke: alone)
    assert gate.main([str(tmp_path), "--budget-s", "8", "--phase", "ours"]) == 0


def test_a_timeout_wrapped_without_from_is_still_a_timeout(fresh_gate):
    # an error raised while handling the alarm (no "from": only __context__) hid the timeout
    gate, _ = fresh_gate

    def implicit():
        try:
            raise gate.CaseTimeout("case time limit of 1 s exceeded")
        except gate.CaseTimeout:
            raise RuntimeError("backend compiler failed")  # noqa: B904

    row = gate.run_case(gate.Case("lif", "ours", "ours", {"shape": "a"}, implicit, limit_s=5.0))
    assert row["timed_out"] is True and "backend compiler failed" in row["error"]


def test_a_case_whose_limit_the_budget_shortened_is_cut_by_the_budget(fresh_gate, tmp_path, monkeypatch):
    # a limit of 7 s with 8 s left runs under left - 2 = 6 s: a timeout then is the budget's
    # (skipped), not the case's (an error), though the case's own limit is below what was left
    gate, _ = fresh_gate

    def times_out():
        raise gate.CaseTimeout("case time limit of 6 s exceeded")  # as the shortened alarm would

    cases = [gate.Case("lif", "ours", "ours", {"shape": "a"}, times_out, limit_s=7.0)]
    monkeypatch.setattr(gate, "all_cases", lambda smoke: cases)
    assert gate.main([str(tmp_path), "--budget-s", "8", "--phase", "ours"]) == 0
    row = json.loads((tmp_path / "results.jsonl").read_text())
    assert "error" not in row and row["skipped"].startswith("the gate's time budget ran out")


def test_the_models_checks_come_before_fp32_and_full_delta_checks(fresh_gate):
    gate, _ = fresh_gate
    checks = [c for c in gate.all_cases(smoke=False) if c.phase == "check" and c.kernel == "ss2d"]
    later = max(i for i, c in enumerate(checks) if c.case["shape"] in ("row_1x1000", "column_1000x1"))
    assert all(
        i > later
        for i, c in enumerate(checks)
        if c.impl == "ours_full" or (c.case["shape"] == "n16_b1" and c.case["dtype"] == "fp32")
    )


@pytest.mark.slow  # compiles the flagship (twice) and a training step
def test_the_compiled_training_row_compiles_static_sizes_after_the_checks(fresh_gate, monkeypatch):
    # the model phase's checks compile the same model classes at other sizes first; without a
    # reset dynamo built the timed training graph with symbolic sizes (not what a user's first
    # compile builds, and a slower compile counted as compile_s)
    import gate_models
    import torch

    symbolic = []
    real_compile = torch.compile

    def spy_compile(model, fullgraph=False, **kw):
        def backend(gm, example_inputs):
            symbolic.append(sum(isinstance(x, torch.SymInt) for x in example_inputs))
            return gm.forward

        return real_compile(model, fullgraph=fullgraph, backend=backend)

    monkeypatch.setattr(torch, "compile", spy_compile)
    assert gate_models.compile_check(gate_models.FLAGSHIP, True)["ok"]
    assert max(symbolic) > 0  # the check's second batch size compiled symbolically
    symbolic.clear()
    gate_models.throughput(gate_models.SMOKE_CONFIG, True, True)
    assert symbolic and max(symbolic) == 0, symbolic


def test_the_report_prints_speed_ups_only_between_rows_of_the_same_work(monkeypatch):
    # ours_full takes delta made outside its call (the fla pipeline builds it), ours_tau3 runs
    # another tau: their rows are shown, but not divided by the peers'
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    def row(kernel, impl, ms, mode="fwd"):
        case = {"shape": "s", "dtype": "bf16", "mode": mode}
        return dict(kernel=kernel, impl=impl, phase="ours", case=case, ms=ms, gbps=1.0, timing="events")

    rows = [
        row("lif", "ours", 1.0),
        row("lif", "ours_tau3", 1.0),
        row("lif", "spikingjelly", 2.0),
        row("ss2d", "ours_lowrank", 1.0),
        row("ss2d", "ours_full", 1.0),
        row("ss2d", "fla_unfused", 3.0),
    ]
    text = "\n".join(report.timing_tables(rows))
    assert "ours vs spikingjelly" in text and "ours_lowrank vs fla_unfused" in text
    assert "ours_tau3 vs" not in text and "ours_full vs" not in text
    assert "| 2.00x |" in text and "| 3.00x |" in text


def test_the_kernel_tables_leave_the_model_rows_to_their_own(monkeypatch):
    # the model phase's training rows carry ms (but no gbps): taken for kernel rows, they broke the report
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    case = {"shape": "digits_svmamba", "dtype": "fp32", "mode": "train"}
    rows = [
        dict(
            kernel="lif",
            impl="ours",
            phase="ours",
            case={"shape": "s", "dtype": "bf16", "mode": "fwd"},
            ms=1.0,
            gbps=1.0,
        ),
        dict(kernel="model", impl="eager", phase="model", case=case, ms=5.0, images_per_s=100.0),
    ]
    text = "\n".join(report.timing_tables(rows))
    assert "## lif" in text and "## model" not in text


def test_the_report_puts_our_columns_first(monkeypatch):
    # ours before the peers whatever their names sort to (fla_unfused came before ours_lowrank)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    rows = [
        dict(
            kernel="ss2d",
            impl=impl,
            phase="ours",
            case={"shape": "s", "dtype": "bf16", "mode": "fwd"},
            ms=1.0,
            gbps=1.0,
        )
        for impl in ("fla_unfused", "ours_lowrank")
    ]
    head = next(line for line in report.timing_tables(rows) if line.startswith("| shape"))
    assert head.index("ours_lowrank ms") < head.index("fla_unfused ms")


def test_the_full_delta_rows_count_delta_not_dt_low(fresh_gate):
    # the full-delta op never reads dt_low (the inputs hold both): it was counted, +4 % of bytes
    import gate_ss2d
    import torch

    x = {k: torch.empty(n, dtype=torch.bfloat16) for k, n in dict(u=10, dt_low=3, B=2, C=2, delta=40).items()}
    out = 10 * 4  # fp32 output / grad_out
    assert gate_ss2d.ss2d_bytes(x, "fwd", True) == 2 * (10 + 2 + 2 + 40) + out
    assert gate_ss2d.ss2d_bytes(x, "fwd", False) == 2 * (10 + 3 + 2 + 2) + out
    assert gate_ss2d.ss2d_bytes(x, "bwd", True) == 2 * 2 * (10 + 2 + 2 + 40) + out


def _gate_row(kernel, impl, phase, mode="fwd", dtype="bf16", shape="s", **fields):
    return dict(
        kernel=kernel, impl=impl, phase=phase, case={"shape": shape, "dtype": dtype, "mode": mode}, **fields
    )


def test_the_report_reads_the_rows_a_killed_run_left(monkeypatch, tmp_path):
    # a line cut short by a killed run is left out; the rows before and after it are read
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    path = tmp_path / "results.jsonl"
    path.write_text('{"kernel": "lif"}\n\n{"kernel": "ss2d", "im\n{"kernel": "bitpack"}\n')
    assert [r["kernel"] for r in report.load_rows(path)] == ["lif", "bitpack"]


def test_the_report_lists_checks_failures_and_skips_each_where_it_belongs(monkeypatch):
    # Guards checks_table and problems: only checks that ran are in the correctness table; a
    # wrong result is FAILED as an error is, a skip is "skipped"
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    rows = [
        _gate_row("lif", "ours", "check", "check", ok=True, max_rel_err=1e-7, tol=1e-5),
        _gate_row("ss2d", "ours_lowrank", "check", "check", ok=False, max_rel_err=0.5, tol=1e-5),
        _gate_row("bitpack", "ours", "check", "check", skipped="no CUDA", ok=True),
        _gate_row("lif", "spikingjelly", "peer", error="ImportError: no module"),
    ]
    checks = report.checks_table(rows)
    assert sum(line.startswith("| lif | ours |") for line in checks) == 1
    assert any(line.startswith("| ss2d | ours_lowrank |") and line.endswith("| **NO** |") for line in checks)
    assert not any("bitpack" in line or "spikingjelly" in line for line in checks)
    listed = report.problems(rows)[2:-1]
    assert listed == [
        "- FAILED: ss2d ours_lowrank s bf16 check: wrong result",
        "- skipped: bitpack ours s bf16 check: no CUDA",
        "- FAILED: lif spikingjelly s bf16 fwd: ImportError: no module",
    ]


def test_the_report_model_tables_divide_eager_by_compiled(monkeypatch):
    # Guards model_tables: compiled vs eager is eager ms / compiled ms; skipped rows are left out
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    rows = [
        _gate_row("model", "eager", "model", "train", "fp32", "digits", ms=6.0, images_per_s=10.0),
        _gate_row(
            "model", "compiled", "model", "train", "fp32", "digits", ms=2.0, images_per_s=30.0, compile_s=7.0
        ),
        _gate_row("model", "eager", "model", "train", "bf16", "cifar", skipped="CUDA only", images_per_s=0),
    ]
    lines = report.model_tables(rows)
    (digits,) = [line for line in lines if line.startswith("| digits |")]
    assert digits == "| digits | fp32 | 6 (10) | 2 (30) | 3.00x | 7.0 |"
    assert not any(line.startswith("| cifar |") for line in lines)


def test_the_report_shows_copy_bandwidth_and_each_kernels_own_compile_times(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report

    rows = [
        _gate_row("device", "torch_copy", "check", "copy", "fp32", gbps=123.4),
        _gate_row("lif", "torch_compile", "peer", ms=1.0, gbps=1.0, compile_s=3.0),
        _gate_row("ss2d", "ours_lowrank", "ours", ms=1.0, gbps=1.0, compile_s=9.0),
    ]
    text = "\n".join(report.timing_tables(rows))
    assert "Device copy bandwidth: 123.4 GB/s" in text
    lif, ss2d = text.split("## ss2d")
    assert "torch_compile s bf16 fwd: 3.0 s" in lif and "9.0 s" not in lif
    assert "ours_lowrank s bf16 fwd: 9.0 s" in ss2d and "3.0 s" not in ss2d

"""bench/compile_check.py: the launch-faithful sm_90 compile of the four main kernel variants, checked
against bench/budgets.yaml (bench/budgets-triton3.6.yaml under Triton 3.6); a doctored budget must
make the check fail.

compile_check refuses to run under the Triton interpreter (which compiles nothing), so it runs in a
subprocess without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "compile_check.py"
# The budgets of the Triton installed: 3.8+ (CI's) or 3.6 (the GPU image's); each version compiles
# the same launches to different code
BUDGETS = (
    ROOT
    / "bench"
    / (
        "budgets.yaml"
        if tuple(map(int, version("triton").split(".")[:2])) >= (3, 8)
        else "budgets-triton3.6.yaml"
    )
)
MAIN_OPS = ("lif_fwd", "lif_bwd", "ss2d_fwd", "ss2d_infer", "ss2d_bwd")
TOTAL = " | all launches"  # a case's row over all its launches


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    # A private Triton cache: a cached kernel's PTX names the source file it was first compiled
    # from, and the per-element figures read that file's loops (gone with another checkout).
    env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile-check-cache-")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def _run_with_bench_on_path(code: str, ptx):
    """Run ``code`` in a subprocess with sys.argv[1] = bench/ and sys.argv[2] = ptx: compile_check
    refuses to import under the interpreter, which this process runs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "bench"), str(ptx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# One compile serves the tests that take main_run: under `--dist loadgroup` they share a worker
# (xdist_group "compile_check_main").
# session scope: under xdist the worker interleaves other modules' tests with this group, which
# would tear a module-scoped fixture down and build it again
@pytest.fixture(scope="session")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "main.json"
    proc = _run("--main", "--json", out, "--budgets", BUDGETS, "--require-budgets")
    return proc, out


def _main_kernels(main_run) -> dict:
    """The main compile run's rows (it must have passed its budgets)."""
    proc, out = main_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["kernels"]


@pytest.mark.slow
@pytest.mark.xdist_group("compile_check_main")
def test_main_variants_compile_within_budgets(main_run):
    kernels = _main_kernels(main_run)
    for op in MAIN_OPS:
        rows = {k: v for k, v in kernels.items() if k.startswith(op + " ") and not k.endswith(TOTAL)}
        assert rows, f"no {op} row measured"
        for label, info in rows.items():
            assert "error" not in info, label
            assert info["registers"] > 0 and info["blocks"] > 0 and info["ptx_per_elem"] > 0, label
            assert info["untraced_loops"] == 0, f"{label}: a loop's trip count was not found"
            assert info["blocks_per_sm"] > 0 and info["serial_steps"] >= 1, label
    # every launch of a case is summed (its own budgeted row): the SS2D backward's walks, chains
    # and low-rank sums
    total = next(v for k, v in kernels.items() if k.startswith("ss2d_bwd ") and k.endswith(TOTAL))
    rows = [v for k, v in kernels.items() if k.startswith("ss2d_bwd ") and not k.endswith(TOTAL)]
    assert total["launches"] > len(rows)
    assert total["ptx_per_elem"] > sum(v["ptx_per_elem"] for v in rows)


# Issue 10's static bars for the SS2D kernels at VMamba-T's stage 1 (B = 128, D = 96, 56 x 56,
# N = 1, R = 6, bf16 low rank), per element-direction (the rows count per element of (B, D, H, W);
# each element is scanned in four directions)
SS2D_STAGE1 = "lowrank bf16 vmamba_t_stage1"
ISSUE_BARS = {"fwd_ptx": 60, "fwd_sfu": 4, "bwd_ptx": 150, "registers": 128, "blocks": 4 * 132}


@pytest.mark.slow
@pytest.mark.xdist_group("compile_check_main")
def test_ss2d_stage1_meets_the_issue_bars(main_run):
    kernels = _main_kernels(main_run)
    fwd = kernels[f"ss2d_fwd {SS2D_STAGE1}{TOTAL}"]
    infer = kernels[f"ss2d_infer {SS2D_STAGE1}{TOTAL}"]  # the forward that saves no states
    bwd = kernels[f"ss2d_bwd {SS2D_STAGE1}{TOTAL}"]
    for forward in (fwd, infer):
        assert forward["ptx_per_elem"] / 4 <= ISSUE_BARS["fwd_ptx"], forward
        assert forward["sfu_per_elem"] / 4 <= ISSUE_BARS["fwd_sfu"], forward
    assert infer["ptx_per_elem"] < fwd["ptx_per_elem"], (infer, fwd)
    assert bwd["ptx_per_elem"] / 4 <= ISSUE_BARS["bwd_ptx"], bwd
    for total in (fwd, infer, bwd):
        assert total["spill_bytes"] == 0 and total["registers"] <= ISSUE_BARS["registers"], total
    # every launch fills 4 waves of 132 SMs
    rows = {k: v for k, v in kernels.items() if SS2D_STAGE1 in k and not k.endswith(TOTAL)}
    assert len(rows) >= 5  # the forward's scan; the backward's dt, walks, chain and sums
    for label, row in rows.items():
        assert row["blocks"] >= ISSUE_BARS["blocks"], label


@pytest.mark.slow
@pytest.mark.xdist_group("compile_check_main")
def test_per_element_figures_follow_the_kernels(main_run):
    kernels = _main_kernels(main_run)
    fwd = [v for k, v in kernels.items() if k.startswith("lif_fwd ") and not k.endswith(TOTAL)]
    bwd = [v for k, v in kernels.items() if k.startswith("lif_bwd ") and not k.endswith(TOTAL)]
    # the LIF forward divides by tau once per element-step (as a multiply by 1 / tau when tau is a
    # power of two) and has no barrier; its loads are issued a segment at a time
    for label, v in kernels.items():
        if label.startswith("lif_fwd ") and not label.endswith(TOTAL):
            assert v["sfu_per_elem"] == pytest.approx(0.0 if "tau3" not in label else 1.0, abs=0.05), label
            assert v["memory_waits"] == 1, label
    assert all(v["barriers_per_elem"] == 0 for v in fwd)
    # the backward replays earlier steps: more work per element-step than the forward
    assert min(v["ptx_per_elem"] for v in bwd) > max(v["ptx_per_elem"] for v in fwd)
    # one program per 1024..4096 neurons of N = 2^24: grid = N / BLOCK_N
    assert {v["blocks"] * v["constexprs"]["BLOCK_N"] for v in fwd} == {2**24}


@pytest.mark.slow
@pytest.mark.xdist_group("compile_check_main")
def test_exceeded_budget_fails(main_run, tmp_path):
    proc, out = main_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    budgets = yaml.safe_load(BUDGETS.read_text())
    kernels = json.loads(out.read_text())["kernels"]
    label = next(k for k in kernels if k.startswith("ss2d_bwd ") and not k.endswith(TOTAL))
    doctored = dict(budgets)
    doctored[label] = dict(budgets[label], registers=kernels[label]["registers"] - 1)
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump(doctored))
    bad = _run("--from-json", out, "--budgets", path)
    assert bad.returncode == 1
    assert f"{label}: registers = {kernels[label]['registers']} exceeds" in bad.stdout
    # a row missing from the budgets fails only when budgets are required
    del doctored[label]
    path.write_text(yaml.safe_dump(doctored))
    assert _run("--from-json", out, "--budgets", path).returncode == 0
    missing = _run("--from-json", out, "--budgets", path, "--require-budgets")
    assert missing.returncode == 1 and "no budget" in missing.stdout


def test_narrow_global_accesses_counts_loads_and_stores_below_128_bits(tmp_path):
    """The vectorisation check reads each ld/st.global's width from its opcode (qualifiers such as
    .L1::evict_last included): a synthetic kernel body with one narrow load and one narrow store.
    compile_check refuses to import under the interpreter, so this runs in a subprocess."""
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        ".visible .entry k(\n)\n{\n"
        "\tld.global.L1::evict_last.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];\n"
        "\tld.global.b16 %rs1, [%rd2];\n"
        "\t@%p1 st.global.v4.b32 [%rd3], {%r1, %r2, %r3, %r4};\n"
        "\tst.global.b32 [%rd4], %r5;\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import access_bits, ptx_profile\n"
        "print([access_bits(op) for op in ('ld.global.v4.b32', 'ld.global.b16', 'st.global.v2.f32')])\n"
        "print(ptx_profile(open(sys.argv[2]).read(), {})['narrow_global_accesses'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["[128, 16, 64]", "2"]


def test_memory_waits_count_groups_of_loads_issued_together(tmp_path):
    """Loads wait for memory together until a branch target, a branch, a barrier or an
    instruction ptxas expands with a branch (a correctly rounded division) ends the group; a
    label no branch jumps to (line info) does not."""
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        ".visible .entry k(\n)\n{\n"
        "\tld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];\n"
        "\tld.global.v4.b32 {%r5, %r6, %r7, %r8}, [%rd2];\n"
        "\tdiv.rn.f32 %f1, %f2, %f3;\n"
        "\tld.global.b32 %r9, [%rd3];\n"
        "\tsetp.lt.s32 %p1, %r9, 0;\n\t@%p1 bra \t$L__BB0_2;\n"
        "$L__BB0_2:\n"
        "\tld.global.b32 %r10, [%rd4];\n"
        "$L__tmp0:\n"
        "\tld.global.b32 %r11, [%rd5];\n"
        "\tbar.sync 0;\n"
        "\tadd.s32 %r12, %r10, %r11;\n"
        "\tld.global.b32 %r13, [%rd6];\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import ptx_profile\n"
        "print(ptx_profile(open(sys.argv[2]).read(), {})['memory_waits'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4.0"]


def test_power_of_two_tau_charges_with_an_unfused_exact_multiply():
    """With tau = 2 the LIF kernels multiply by 1 / tau: as mul.rn.f32, which ptxas neither fuses
    with the add after it (an fma would skip the rounding of a subnormal quotient) nor flushes
    to zero (libdevice's mul_rn is .ftz). Read from the sm_90 PTX of both kernels."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import compile_check as cc\n"
        "for case in cc.lif_cases():\n"
        "    if case.label in ('lif_fwd fp32 T4_N16M', 'lif_bwd fp32 T4_N16M'):\n"
        "        for launch in cc.capture_configs(case.call, case.kernels):\n"
        "            ptx = cc.compile_launch(launch, 90)['ptx']\n"
        "            print(case.label.split()[0], ptx.count('mul.rn.f32'), ptx.count('mul.rn.ftz'),\n"
        "                  ptx.count('fma.'), ptx.count('div.rn'))\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in proc.stdout.splitlines()}
    # T = 4 steps x 8 (forward) or 4 (backward, fp32) neurons per thread: one multiply each
    assert rows["lif_fwd"] == [32, 0, 0, 0]
    assert rows["lif_bwd"][0] == 16 and rows["lif_bwd"][1] == 0 and rows["lif_bwd"][3] == 0


@pytest.mark.slow
def test_scan_kernels_compile_for_maps_of_one_row_or_column():
    """A map of one row or one column (1 x 37, 37 x 1) or one position: Triton passes an integer
    argument equal to 1 (the row length M of an orientation) as a compile-time constant, which
    the interpreter never does; every launch of the forward and backward, low rank and full
    delta, must still compile for sm_90. And none holds a float min or max without .NaN: on the
    GPU those return the other operand for a NaN (the interpreter's numpy propagates it), so a
    NaN input would leave finite gradients (a clamped softplus did)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import re\n"
        "import torch\n"
        "import compile_check as cc\n"
        "from svm_kernels.ss2d import fused\n"
        "M = cc._meta\n"
        "for H, W in ((1, 37), (37, 1), (1, 1)):\n"
        "    for low in (True, False):\n"
        "        u = M(2, 8, H, W, dtype=torch.bfloat16)\n"
        "        delta = None if low else M(2, 4, 8, H, W, dtype=torch.bfloat16)\n"
        "        dt_low = M(2, 4, 2, H, W, dtype=torch.bfloat16) if low else None\n"
        "        w = M(4, 8, 2) if low else None\n"
        "        BC = [M(2, 4, 1, H, W, dtype=torch.bfloat16) for _ in range(2)]\n"
        "        args = (delta, dt_low, w, M(4, 8, 1), *BC, M(4, 8), M(4, 8))\n"
        "        calls = (lambda: fused.ss2d_fwd(u, *args, True, torch.float32),\n"
        "                 lambda: fused.ss2d_bwd(M(*u.shape), u, *args, True))\n"
        "        n = drops = 0\n"
        "        for call in calls:\n"
        "            for launch in cc.capture_configs(call, cc._kernels_of(fused)):\n"
        "                ptx = cc.compile_launch(launch, 90)['ptx']\n"
        "                drops += len(re.findall(r'\\b(?:min|max)(?:\\.ftz)?\\.f(?:16|32)', ptx))\n"
        "                n += 1\n"
        "        print(H, W, low, n, drops)\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == 6 and all(int(n) > 0 for *_, n, _ in rows), proc.stdout
    assert all(drops == "0" for *_, drops in rows), proc.stdout


@pytest.mark.slow
def test_lanes_first_backward_compiles_without_spills():
    """The walks' lanes-first accesses (``_BWD_LANES_FIRST``) are the GPU image's (Triton 3.6)
    default, which CI's Triton does not take: forced on, every launch of the stage-1 bf16 low-rank
    backward must still compile for sm_90 within 128 registers and without spills."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import compile_check as cc\n"
        "from svm_kernels.ss2d import fused\n"
        "fused._BWD_LANES_FIRST = True\n"
        "for case in cc.ss2d_cases():\n"
        "    if case.label == 'ss2d_bwd lowrank bf16 vmamba_t_stage1':\n"
        "        for launch in cc.capture_configs(case.call, case.kernels):\n"
        "            info = cc.compile_launch(launch, 90)\n"
        "            print(launch.fn.fn.__name__, launch.kwargs.get('LANES_FIRST'), info['registers'],\n"
        "                  info['spill_bytes'])\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    chunk = [r for r in rows if r[0] == "ss2d_bwd_chunk_kernel"]
    # a state walk and an adjoint walk per direction
    assert len(chunk) == 8 and all(r[1] == "True" for r in chunk), proc.stdout
    assert all(int(r[2]) <= 128 and r[3] == "0" for r in rows), proc.stdout


def test_outer_loop_around_an_inlined_walk_counts_its_own_trips(tmp_path):
    """A loop over channel blocks whose body is mostly an inlined helper's walk over positions: the
    outer PTX loop is matched by its own instructions (those outside the nested PTX loop), so it
    counts range(n_group) = 2 trips, not the walk's range(chunk) = 50. A synthetic source file and
    the PTX such a kernel compiles to (locations of inlined code name their call site)."""
    src = tmp_path / "k.py"
    src.write_text(
        "def walk(chunk):\n"  # 1
        "    acc = 0\n"  # 2
        "    for _ in range(chunk):\n"  # 3
        "        acc += 1\n"  # 4
        "    return acc\n"  # 5
        "\n"  # 6
        "def kernel(n_group, chunk):\n"  # 7
        "    for blk in range(n_group):\n"  # 8
        "        x = walk(chunk)\n"  # 9
        "        y = x + blk\n"  # 10
    )
    inlined = ", function_name $L__info_string0, inlined_at 1 9 5"
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        f'.file 1 "{src}"\n.visible .entry k(\n)\n{{\n'
        "$L__BB0_1:\n\t.loc\t1 10 9\n\tadd.s32 %r1, %r1, 1;\n"
        f"\t.loc\t1 2 4{inlined}\n\tmov.u32 %r2, 0;\n"
        "$L__BB0_2:  // inner\n"
        f"\t.loc\t1 4 8{inlined}\n" + "\tadd.s32 %r2, %r2, 1;\n" * 4 + f"\t.loc\t1 3 4{inlined}\n"
        "\tsetp.lt.s32 %p1, %r2, %r3;\n\t@%p1 bra \t$L__BB0_2;\n"
        "\t.loc\t1 8 4\n\tsetp.lt.s32 %p2, %r1, %r4;\n\t@%p2 bra \t$L__BB0_1;\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import ptx_profile\n"
        "p = ptx_profile(open(sys.argv[2]).read(), {'n_group': 2, 'chunk': 50})\n"
        "print(p['loops'], p['untraced_loops'], p['ptx_dynamic'], p['serial_steps'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    # outer: 4 own instructions x 2 trips; inner: 6 x 2 x 50; ret once. The chain of loop trips:
    # 50 inner steps in each of the 2 outer trips, and the 2 outer trips themselves.
    assert proc.stdout.split() == ["2", "0", str(4 * 2 + 6 * 2 * 50 + 1.0), str(2 * 50 + 2.0)]


def test_blocks_per_sm_follow_the_occupancy_limits():
    """Resident blocks per SM (sm_90): registers allocated per warp in units of 256 of the 65,536,
    at most 64 warps and 32 blocks, 228 KiB of shared memory with 1 KiB reserved per block; and
    the case totals sum every launch."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import blocks_per_sm, case_totals\n"
        "print(blocks_per_sm(128, 4, 0), blocks_per_sm(255, 1, 0), blocks_per_sm(230, 4, 0),\n"
        "      blocks_per_sm(32, 4, 0), blocks_per_sm(16, 1, 0), blocks_per_sm(40, 4, 100 * 1024),\n"
        "      blocks_per_sm(96, 1, 0), blocks_per_sm(102, 2, 0))\n"
        "rows = [dict(ptx_per_elem=10.0, sfu_per_elem=1.0, serial_per_launch=6.0, waits_per_launch=3.0,\n"
        "             registers=96, spill_bytes=4),\n"
        "        dict(ptx_per_elem=2.5, sfu_per_elem=0.5, serial_per_launch=4.0, waits_per_launch=8.0,\n"
        "             registers=128, spill_bytes=0),\n"
        "        dict(error='x')]\n"
        "print(case_totals(rows))\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    # 128 x 32 = 4096 per warp: 16 warps, 4 blocks of 4; 255 -> 8192 per warp: 8 one-warp blocks;
    # 230 -> 7424: 8 warps, 2 blocks; 32 registers: the 64-warp limit (16 blocks of 4); one-warp
    # blocks of 16 registers: the 32-block limit; 100 KiB of shared memory: 2 blocks; registers
    # by quarters of the file (CUDA's rule): 96 -> 3072 per warp, 5 warps a quarter, 20 blocks
    # (not 21); 102 -> 3328, 4 a quarter, 16 warps, 8 two-warp blocks (not 9)
    assert first.split() == ["4", "8", "2", "16", "32", "2", "20", "8"]
    # the most registers and spilled bytes of any launch: a spill in an earlier launch shows
    assert second == str(
        dict(
            launches=3,
            ptx_per_elem=12.5,
            sfu_per_elem=1.5,
            serial_steps=10.0,
            memory_waits=11.0,
            registers=128,
            spill_bytes=4,
        )
    )


def test_loop_of_helper_code_is_found_by_its_back_edge(tmp_path):
    """Triton 3.6 writes no call sites of inlined helpers into the line info: a walk whose body
    is all helper code matches no source loop by its instructions, and is found by the ``for``
    line its back-edge branch carries (it counts range(chunk) = 50 trips, not 1)."""
    src = tmp_path / "k.py"
    src.write_text(
        "def step(acc):\n"  # 1
        "    return acc + 1\n"  # 2
        "\n"  # 3
        "def kernel(chunk):\n"  # 4
        "    acc = 0\n"  # 5
        "    for _ in range(chunk):\n"  # 6
        "        acc = step(acc)\n"  # 7
    )
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        f'.file 1 "{src}"\n.visible .entry k(\n)\n{{\n'
        "\t.loc\t1 5 4\n\tmov.u32 %r1, 0;\n"
        "$L__BB0_1:\n"
        "\t.loc\t1 2 11\n" + "\tadd.s32 %r1, %r1, 1;\n" * 4 + "\t.loc\t1 6 4\n"
        "\tsetp.lt.s32 %p1, %r1, %r2;\n\t@%p1 bra \t$L__BB0_1;\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import ptx_profile\n"
        "p = ptx_profile(open(sys.argv[2]).read(), {'chunk': 50})\n"
        "print(p['loops'], p['untraced_loops'], p['ptx_dynamic'], p['serial_steps'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    # mov and ret once; the loop's 6 instructions 50 times
    assert proc.stdout.split() == ["1", "0", str(2 + 6 * 50.0), "50.0"]


@pytest.mark.slow  # compiles the stage-1 forward's second launch for sm_90
def test_a_failed_launch_stays_reported_when_a_later_one_of_its_kernel_compiles():
    # the row of a kernel keeps the last launch: a failure of the first was overwritten by the
    # second's figures, and the case passed its budgets with a launch missing from its totals
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import compile_check as cc\n"
        "case = next(c for c in cc.ss2d_cases() if c.label == 'ss2d_infer lowrank bf16 vmamba_t_stage1')\n"
        "real, calls = cc.compile_launch, []\n"
        "def first_fails(launch, arch):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 1:\n"
        "        raise RuntimeError('ptxas died')\n"
        "    return real(launch, arch)\n"
        "cc.compile_launch = first_fails\n"
        "rows = cc.measure(case, 90)\n"
        "print(len(calls), [k for k, v in rows.items() if 'error' in v])\n"
        "print(cc.check_budgets(rows, {}))\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[-2:]
    assert first == "2 ['ss2d_infer lowrank bf16 vmamba_t_stage1 | ss2d_fwd_scan_kernel']"
    assert "compile failed: RuntimeError: ptxas died" in second


def test_a_loop_with_a_step_counts_whole_trips(tmp_path):
    """range(0, n, 16) runs ceil(n / 16) times: 7 chunks one trip (it was counted 7/16), 157 ten."""
    src = tmp_path / "k.py"
    src.write_text(
        "def kernel(n):\n"  # 1
        "    acc = 0\n"  # 2
        "    for t0 in range(0, n, 16):\n"  # 3
        "        acc += t0\n"  # 4
    )
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        f'.file 1 "{src}"\n.visible .entry k(\n)\n{{\n'
        "\t.loc\t1 2 4\n\tmov.u32 %r1, 0;\n"
        "$L__BB0_1:\n\t.loc\t1 4 8\n" + "\tadd.s32 %r1, %r1, 1;\n" * 3 + "\t.loc\t1 3 4\n"
        "\tsetp.lt.s32 %p1, %r1, %r2;\n\t@%p1 bra \t$L__BB0_1;\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import ptx_profile\n"
        "for n in (7, 157, 16):\n"
        "    p = ptx_profile(open(sys.argv[2]).read(), {'n': n})\n"
        "    print(p['untraced_loops'], p['ptx_dynamic'], p['serial_steps'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    # the loop: 5 instructions a trip; outside it the mov and the ret
    assert [line.split() for line in proc.stdout.splitlines()] == [
        ["0", str(5 * 1 + 2.0), "1.0"],
        ["0", str(5 * 10 + 2.0), "10.0"],
        ["0", str(5 * 1 + 2.0), "1.0"],
    ]


def test_a_kernels_row_holds_the_most_any_of_its_launches_reports():
    # the row kept the last launch's figures, so the budgets never saw an earlier launch's more
    # registers or narrow accesses (the SS2D backward's state walks: 104 registers, 41 narrow
    # accesses against the row's 96 and 33)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import compile_check as cc\n"
        "case = next(c for c in cc.ss2d_cases() if c.label == 'ss2d_infer lowrank bf16 vmamba_t_stage1')\n"
        "figures = iter([(104, 41, 30.0), (96, 33, 20.0)])\n"
        "def fake_compile(launch, arch):\n"
        "    regs, narrow, ptx = next(figures)\n"
        "    return dict(registers=regs, spill_bytes=0, shared_bytes=16, num_warps=1, num_stages=1,\n"
        "                constexprs={}, ptx=(narrow, ptx), env={})\n"
        "def fake_profile(ptx, env):\n"
        "    narrow, dynamic = ptx\n"
        "    return dict(serial_steps=1.0, memory_waits=1.0, ptx_static=10, ptx_dynamic=dynamic,\n"
        "                sfu_dynamic=0.0, barriers_dynamic=0.0, shfl_dynamic=0.0,\n"
        "                narrow_global_accesses=narrow, loops=0, untraced_loops=0)\n"
        "cc.compile_launch, cc.ptx_profile = fake_compile, fake_profile\n"
        "row = cc.measure(case, 90)['ss2d_infer lowrank bf16 vmamba_t_stage1 | ss2d_fwd_scan_kernel']\n"
        "print(row['registers'], row['narrow_global_accesses'], row['ptx_per_elem'] > 0)\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["104", "41", "True"]


def test_trip_counts_of_a_triangular_walk_and_an_empty_range(tmp_path):
    # range(t) with t = T - 1 - i inside `for i in range(T)` averages (T - 1) / 2 trips: the outer
    # variable stands at its mean (T - 1) / 2 (not T / 2), the assignment is replayed after the
    # loop variable is known; an empty range(5, 3) runs 0 times (not -2)
    src = tmp_path / "k.py"
    src.write_text(
        "def kernel(T, lo, hi):\n"  # 1
        "    for i in range(T):\n"  # 2
        "        t = T - 1 - i\n"  # 3
        "        for j in range(t):\n"  # 4
        "            pass\n"  # 5
        "    for k in range(lo, hi):\n"  # 6
        "        pass\n"  # 7
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import _eval_trip, _source_loops\n"
        "loops = _source_loops(sys.argv[2])\n"
        "print([(loop[0], _eval_trip(loop, {'T': 8, 'lo': 5, 'hi': 3})) for loop in loops])\n"
    )
    proc = _run_with_bench_on_path(code, src)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([(2, 8.0), (4, 3.5), (6, 0.0)])


def test_a_loop_head_entered_by_falling_through_starts_a_memory_wait_group(tmp_path):
    # the loop's first load waits again every trip, though no branch comes before its label:
    # joined to the load above the loop, the group was counted once
    ptx = tmp_path / "k.ptx"
    ptx.write_text(
        ".visible .entry k(\n)\n{\n"
        "\tld.global.b32 %r1, [%rd1];\n"
        "$L__BB0_1:\n"
        "\tld.global.b32 %r2, [%rd2];\n"
        "\tadd.s32 %r3, %r1, %r2;\n"
        "\tsetp.lt.s32 %p1, %r3, 0;\n\t@%p1 bra \t$L__BB0_1;\n"
        "\tret;\n}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import ptx_profile\n"
        "p = ptx_profile(open(sys.argv[2]).read(), {})\n"
        "print(p['loops'], p['memory_waits'])\n"
    )
    proc = _run_with_bench_on_path(code, ptx)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2.0"]


def test_blocks_per_sm_reserve_1kib_of_shared_memory_per_block():
    # 76 KiB of shared memory: 3 x 76 KiB fit the 228 KiB, but not with the driver's 1 KiB per block
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import blocks_per_sm\n"
        "print(blocks_per_sm(16, 1, 76 * 1024), blocks_per_sm(16, 1, 75 * 1024))\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "3"]


def test_initial_budgets_keep_the_launch_count_exact():
    # a launch more is a change of design: the launches budget is today's count, not count + 5 %
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import budgets_from\n"
        "total = dict(launches=3, ptx_per_elem=10.0, sfu_per_elem=0.0, serial_steps=4.0, memory_waits=2.0,\n"
        "             registers=250, spill_bytes=0)\n"
        "print(budgets_from({'c | all launches': total, 'd | all launches': {'error': 'x'}}))\n"
    )
    proc = _run_with_bench_on_path(code, "-")
    assert proc.returncode == 0, proc.stderr
    budgets = eval(proc.stdout.strip())
    assert budgets == {
        "c | all launches": dict(
            launches=3,
            ptx_per_elem=10.5,
            sfu_per_elem=0,
            serial_steps=4.2,
            memory_waits=2.1,
            registers=255,
            spill_bytes=0,
        )
    }


def test_an_empty_budgets_file_is_no_budgets(tmp_path):
    # yaml reads an empty file as None: checking against it crashed instead of finding no budget
    empty = tmp_path / "budgets.yaml"
    empty.write_text("# no budgets yet\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from compile_check import check_budgets, load_budgets\n"
        "print(check_budgets({'c | k': {'registers': 40}}, load_budgets(sys.argv[2]), require=True))\n"
    )
    proc = _run_with_bench_on_path(code, empty)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(["c | k: no budget in the budgets file"])

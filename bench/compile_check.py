"""Launch-faithful ahead-of-time compile of every Triton kernel for sm_90, without a GPU.

Each case calls a real launcher of ``svm_kernels`` on ``meta`` tensors of a benchmark shape
(no memory, no device). The kernels' ``run`` is intercepted, so what gets compiled is exactly
what that launch would compile: the constexprs the launcher passes, Triton's own specialization
of the runtime arguments (ints equal to 1 become constants, ints and pointers divisible by 16
get divisibility hints), the num_warps / num_stages / block sizes it passes, and for an
autotuned kernel every config of its autotuner (the GPU picks one at run time; each is a row).
Triton -> PTX -> ptxas for sm_90a. Per kernel, shape and config it reports:

* registers, spilled bytes (ptxas -v), shared memory, warps, grid size (blocks) and waves over
  the H100/H200's 132 SMs;
* per element processed (the case's unit: a LIF element-step, an SS2D (b, d, position)):
  PTX instructions, special-function ops and CTA barriers, as dynamic estimates from the PTX
  (see ``ptx_profile`` and bench/NOTES.md for the exact definition);
* the latency view: blocks resident per SM (registers, warps, shared memory), rounds of them
  over the grid, and the serial steps of a program (its loop trips, one after another), so
  rounds x serial steps is the chain a launch waits through when each step waits on its loads;
* per case, every launch of the launcher call summed (a kernel launched several times shows
  its last launch in its row): launches, PTX and special-function ops per element, serial steps,
  and the most registers and spilled bytes of any launch.

    python bench/compile_check.py [--main] [--only SUBSTR] [--json out.json] [--budgets bench/budgets.yaml]
    python bench/compile_check.py --from-json out.json --budgets bench/budgets.yaml

Exit status 1 when a kernel fails to compile or a budget is exceeded. Run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)")

# A private Triton cache unless one is given: a cached kernel's PTX names the source file it was
# first compiled from (maybe another checkout, edited since), and the per-element figures are
# read from that file's loops.
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="compile-check-cache-"))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import LIF_SHAPES, SS2D_LATER_STAGES, SS2D_SHAPES

N_SMS = 132  # H100 SXM / H200
WARP_SIZE = 32  # what Triton's CUDA driver reports as the target's warp size
# sm_90's per-SM limits that decide how many blocks of a launch run at once (CUDA occupancy rules)
SM_REGISTERS = 65536
SM_SUBPARTITIONS = 4  # each holds a quarter of the register file and of the warps
SM_REGISTER_UNIT = 256  # registers are allocated per warp in units of this many
SM_MAX_WARPS = 64
SM_MAX_BLOCKS = 32
SM_SHARED_BYTES = 233472  # 228 KiB
BLOCK_RESERVED_SHARED = 1024  # the driver's reserve per block
BUDGET_METRICS = (
    "registers",
    "spill_bytes",
    "shared_bytes",
    "ptx_per_elem",
    "sfu_per_elem",
    "barriers_per_elem",
    "narrow_global_accesses",
)
# A case's row over all its launches: "<case> | all launches", budgeted on these
TOTAL_SUFFIX = " | all launches"
TOTAL_METRICS = (
    "launches",
    "ptx_per_elem",
    "sfu_per_elem",
    "serial_steps",
    "memory_waits",
    "registers",
    "spill_bytes",
)


# ---- launch capture -------------------------------------------------------------------------


@dataclass
class Launch:
    """What one ``kernel[grid](...)`` call would hand to the compiler and the driver."""

    fn: JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    config: str = ""


def _innermost(kernel) -> JITFunction:
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _kernels_of(module) -> list:
    return [v for v in vars(module).values() if _is_kernel(v)]


@contextlib.contextmanager
def capture(kernels):
    """Record every launch of ``kernels`` (JITFunction / Autotuner / Heuristics) instead of running it."""
    launches: list[Launch] = []
    jits = {id(j): j for j in map(_innermost, kernels)}

    def recorder(jit):
        def run(*args, grid, warmup, **kwargs):
            bound = {**dict(zip(jit.arg_names, args)), **kwargs}
            launches.append(Launch(jit, args, kwargs, tuple(grid(bound) if callable(grid) else grid)))

        return run

    for jit in jits.values():
        jit.run = recorder(jit)  # instance attribute: wrappers call self.fn.run
    try:
        yield launches
    finally:
        for jit in jits.values():
            del jit.run


def _is_kernel(obj) -> bool:
    while hasattr(obj, "fn") and not isinstance(obj, JITFunction):
        obj = obj.fn
    return isinstance(obj, JITFunction)


def capture_configs(call, kernels) -> list[Launch]:
    """Launches of ``call()``, once per autotuner config (an autotuner given one config runs it)."""
    tuners = [k for k in kernels if isinstance(k, Autotuner)]
    saved = {id(t): t.configs for t in tuners}
    n = max([len(t.configs) for t in tuners], default=1)
    out = []
    try:
        for i in range(n):
            for t in tuners:
                t.configs = [saved[id(t)][min(i, len(saved[id(t)]) - 1)]]
            with capture(kernels) as launches:
                call()
            for launch in launches:
                tuner = next((t for t in tuners if _innermost(t) is launch.fn), None)
                if tuner is not None and len(saved[id(tuner)]) > 1:
                    cfg = tuner.configs[0]
                    launch.config = " ".join(
                        [*(f"{k}={v}" for k, v in cfg.kwargs.items()), f"w{cfg.num_warps}"]
                    )
            out += launches
    finally:
        for t in tuners:
            t.configs = saved[id(t)]
    return out


# ---- compile ----------------------------------------------------------------------------------


def _specialize(fn: JITFunction, backend, args, kwargs):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` derives them."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options.__dict__, bound


def _ptxas(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run(
            [ptxas, f"-arch=sm_{arch}{suffix}", "-v", path, "-o", os.devnull], capture_output=True, text=True
        )
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stderr + out.stdout


_COMPILED: dict = {}


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile one captured launch; the static figures (cached per specialization)."""
    from triton.compiler import make_backend

    target = GPUTarget("cuda", arch, WARP_SIZE)
    backend = make_backend(target)
    signature, constexprs, attrs, options, bound = _specialize(launch.fn, backend, launch.args, launch.kwargs)
    key = (id(launch.fn), repr(signature), repr(constexprs), repr(attrs), repr(sorted(options.items())))
    if key not in _COMPILED:
        src = ASTSource(fn=launch.fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target, options=options)
        ptx = compiled.asm["ptx"]
        report = _ptxas(ptx, arch)
        regs = re.search(r"Used (\d+) registers", report)
        spills = re.search(r"(\d+) bytes spill stores", report)
        _COMPILED[key] = dict(
            ptx=ptx,
            registers=int(regs.group(1)) if regs else None,
            spill_bytes=int(spills.group(1)) if spills else 0,
            shared_bytes=compiled.metadata.shared,
            num_warps=compiled.metadata.num_warps,
            num_stages=compiled.metadata.num_stages,
        )
    info = dict(_COMPILED[key])
    info["env"] = {k: v for k, v in bound.items() if isinstance(v, (int, float))}
    info["constexprs"] = {
        launch.fn.arg_names[path[0]]: v for path, v in constexprs.items() if isinstance(v, (int, float, bool))
    }
    return info


# ---- PTX metrics ------------------------------------------------------------------------------

_LINE = re.compile(r"^\s*(?:@(!?%\w+)\s+)?([a-z][\w.]*)\s*([^;]*);")
_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+(?:.*inlined_at\s+(\d+)\s+(\d+))?")
_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', re.M)
SFU_OPS = ("ex2", "lg2", "rcp", "div", "sqrt", "rsqrt", "tanh", "sin", "cos")
BARRIER_OPS = ("bar.sync", "barrier.sync", "bar.arrive", "barrier.arrive", "bar.red")
GLOBAL_ACCESS = ("ld.global", "st.global")
# PTX instructions ptxas expands with a branch around a slow path (correctly rounded division,
# reciprocal and square root): like a branch, a load after them cannot be issued before them
SLOW_PATH_OPS = ("div.rn.f", "rcp.rn.f", "sqrt.rn.f", "div.rz.f", "div.rm.f", "div.rp.f")
GROUP_ENDS = ("bra", "ret", "call", "exit", *BARRIER_OPS, *SLOW_PATH_OPS)


def _full_opcode(op: str, operands: str) -> str:
    """The opcode with qualifiers that ``_LINE`` leaves in the operands (``.L1::evict_last.v4.b32``)."""
    return op + operands.split()[0] if operands.startswith("::") else op


def access_bits(op: str) -> int:
    """Bits one ``ld.global`` / ``st.global`` instruction moves per thread (``.v4.b32`` -> 128)."""
    parts = op.split(".")
    lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    width = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bsuf]\d+", p)), 0)
    return lanes * width


def _instructions(ptx: str):
    """Kernel-body instructions [(opcode, operands, source locations)] and {label: index}.

    A source location is (file, line); an inlined helper's instruction also carries its call site.
    """
    files = dict(_FILE.findall(ptx))
    body = ptx[ptx.index(".entry") :]
    instrs, labels, loc = [], {}, ()
    for raw in body.splitlines():
        m = _LOC.match(raw)
        if m:
            f, line, f2, line2 = m.groups()
            loc = ((files.get(f), int(line)),) + (((files.get(f2), int(line2)),) if f2 else ())
            continue
        line = raw.split("//")[0].strip()
        if re.match(r"^\$?[\w$]+:$", line):
            labels[line[:-1]] = len(instrs)
            continue
        m = _LINE.match(line)
        if m and not line.startswith("."):
            instrs.append((m.group(2), m.group(3), loc))
    return instrs, labels


def _source_loops(path: str) -> list:
    """Every ``for ... in range(...)`` of a source file: (first line, last line, range args, node, parents)."""
    import ast

    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, TypeError):
        return []
    loops = []

    def visit(node, parents):
        for child in ast.iter_child_nodes(node):
            chain = parents
            if isinstance(node, (ast.For, ast.FunctionDef)):
                chain = [*parents, node]
            if (
                isinstance(child, ast.For)
                and isinstance(child.iter, ast.Call)
                and getattr(child.iter.func, "id", getattr(child.iter.func, "attr", "")) == "range"
            ):
                loops.append((child.lineno, child.end_lineno, child.iter.args, child, chain))
            visit(child, chain)

    visit(tree, [])
    return loops


def _eval_trip(loop, env: dict):
    """Trip count of a source loop at this launch: its range() evaluated with the kernel's arguments;
    an enclosing loop's variable stands at the middle of its range, and simple assignments in the
    enclosing function are replayed, so ``range(t)`` with ``t = T - 1 - i`` gives the average trip."""
    import ast

    _, _, args, node, parents = loop
    scope = dict(env)

    def ev(expr):
        return eval(
            compile(ast.Expression(expr), "<trip>", "eval"),
            {"__builtins__": {}, "min": min, "max": max},
            scope,
        )

    for parent in parents + parents:  # twice: assignments may use loop variables and vice versa
        if isinstance(parent, ast.FunctionDef):
            for stmt in ast.walk(parent):
                simple = isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                if simple and isinstance(stmt.targets[0], ast.Name) and stmt.lineno < node.lineno:
                    with contextlib.suppress(Exception):
                        scope[stmt.targets[0].id] = ev(stmt.value)
        elif isinstance(parent, ast.For) and isinstance(parent.target, ast.Name):
            with contextlib.suppress(Exception):
                bounds = [ev(a) for a in parent.iter.args]
                lo, hi = (0, bounds[0]) if len(bounds) == 1 else bounds[:2]
                scope[parent.target.id] = (lo + hi - 1) / 2
    try:
        bounds = [ev(a) for a in args]
    except Exception:
        return None
    lo, hi, step = (0, bounds[0], 1) if len(bounds) == 1 else ([*bounds, 1])[:3]
    trips = (hi - lo) / step
    # range(0, 7, 16) runs once, not 7/16 times (a bound averaged over an outer loop's variable
    # may be fractional: with step 1 the mean is kept as it is)
    return max(0.0, float(math.ceil(trips)) if step != 1 else trips)


def _within(i: int, spans) -> bool:
    return any(s <= i <= e for s, e in spans)


def match_source_loop(own_locs: list, source: dict, exclude=()):
    """The source loop of one PTX loop: the smallest ``for ... in range`` (of ``source``: {path:
    _source_loops(path)}) that holds more than half of the loop's *own* instructions, those
    outside the PTX loops nested in it. Matching on the own instructions keeps an outer loop
    whose body is mostly an inlined helper's inner loop (a loop over channel blocks around a
    walk over positions) from being taken for that inner loop; a source loop already matched by
    a nested PTX loop (``exclude``) is not a candidate. An instruction counts once, whether its
    own line or the call site it was inlined at lies in the loop."""
    best = None
    for path, candidates in source.items():
        for cand in candidates:
            if any(cand is other for other in exclude):
                continue
            inside = sum(
                1 for locs in own_locs if any(f == path and cand[0] <= line <= cand[1] for f, line in locs)
            )
            if inside * 2 > len(own_locs) and (best is None or cand[1] - cand[0] < best[1] - best[0]):
                best = cand
    return best


def loop_of_back_edge(locs, source: dict, exclude=()):
    """The source loop whose ``for`` line a loop's back-edge branch carries: the fallback where
    the loop's instructions name no call sites (Triton 3.6 writes none for inlined helpers, so a
    walk whose body is mostly helper code matches no loop by its instructions)."""
    for path, line in locs[:1]:
        for cand in source.get(path, ()):
            if cand[0] == line and not any(cand is other for other in exclude):
                return cand
    return None


def ptx_profile(ptx: str, env: dict) -> dict:
    """Dynamic per-thread instruction estimate of one program (the definition bench/NOTES.md gives).

    Every PTX instruction of the kernel body counts once per execution. A loop of the PTX (a
    backward branch) is matched to the source ``for ... in range(...)`` that holds most of its
    instructions (by their ``.loc`` line, or the line of the call an inlined helper came from;
    only the instructions outside the PTX loops nested in it, see ``match_source_loop``) and
    counts its trip count: the range evaluated with the launch's argument values (``env``).
    Where no source loop holds most of them (Triton 3.6 writes no call sites of inlined helpers
    into the PTX line info), the loop whose ``for`` line the back-edge branch carries is taken.
    A loop that matches no source loop, or whose range cannot be evaluated, counts once and is
    reported in ``untraced_loops``. Nested loops multiply.
    """
    instrs, labels = _instructions(ptx)
    # {branch instruction: the instruction it jumps to}; a jump backwards closes a loop
    jumps = {
        i: labels[ops.strip()]
        for i, (op, ops, _) in enumerate(instrs)
        if op.startswith("bra") and ops.strip() in labels
    }
    loops = {}
    for i, target in jumps.items():
        if target <= i:
            loops[target] = max(loops.get(target, i), i)
    source = {path: _source_loops(path) for path in set(re.findall(r'\.file\s+\d+\s+"([^"]+)"', ptx))}
    weight = [1.0] * len(instrs)
    untraced = 0
    matched = {}  # PTX loop -> its source loop, innermost loops first
    for start, end in sorted(loops.items(), key=lambda se: se[1] - se[0]):
        nested = [(s, e) for s, e in matched if start <= s and e <= end]
        taken = [matched[n] for n in nested]  # source loops of the PTX loops inside this one
        best = match_source_loop(
            [locs for i, (_, _, locs) in enumerate(instrs[start : end + 1], start) if not _within(i, nested)],
            source,
            exclude=taken,
        )
        if best is None:
            best = loop_of_back_edge(instrs[end][2], source, exclude=taken)
        matched[(start, end)] = best
        trip = _eval_trip(best, env) if best is not None else None
        if trip is None:
            untraced += 1
            trip = 1.0
        for j in range(start, end + 1):
            weight[j] *= trip

    def total(match) -> float:
        return sum(w for (op, _, _), w in zip(instrs, weight) if match(op))

    # a thread's chain of loop trips: every loop's iterations (times those of the loops around
    # it: each back edge's count), summed, since one loop runs after another (two unrolled
    # directions are two loops); 1 for a kernel without loops
    serial_steps = max(1.0, sum(weight[end] for end in loops.values()))

    # a thread's waits for memory: groups of global loads that can be in flight together. ptxas
    # issues the loads of a basic block early, but not above a branch, a barrier or an
    # instruction it expands with a branch (GROUP_ENDS); the first load after one of those
    # starts a new group. Each group counts its executions (its loop trips).
    starts = set(jumps.values())
    memory_waits, open_group = 0.0, False
    for i, (op, _, _) in enumerate(instrs):
        if i in starts:
            open_group = False
        if op.startswith("ld.global") and not open_group:
            memory_waits += weight[i]
            open_group = True
        if op.startswith(GROUP_ENDS):
            open_group = False

    return dict(
        ptx_static=len(instrs),
        ptx_dynamic=total(lambda op: True),
        sfu_dynamic=total(lambda op: op.split(".")[0] in SFU_OPS),
        barriers_dynamic=total(lambda op: op.startswith(BARRIER_OPS)),
        shfl_dynamic=total(lambda op: op.startswith("shfl")),
        # global loads/stores narrower than 128 bits in the kernel text (vectorisation check)
        narrow_global_accesses=sum(
            1
            for op, operands, _ in instrs
            if op.startswith(GLOBAL_ACCESS) and access_bits(_full_opcode(op, operands)) < 128
        ),
        loops=len(loops),
        untraced_loops=untraced,
        serial_steps=serial_steps,
        memory_waits=memory_waits,
    )


# ---- cases: one per launcher call at a benchmark shape --------------------------------------


@dataclass
class Case:
    label: str  # "<op> <dtype> <shape name>"
    elements: int  # the unit "per element" refers to
    call: object  # runs the launcher on meta tensors
    kernels: list = field(default_factory=list)
    main: bool = False  # part of the CI selection (--main)


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def lif_cases():
    """Both LIF kernels at the benchmark shapes with tau = 2 (spikingjelly's default: a power of
    two, so the kernels multiply by 1 / tau), and at T = 4 and 16 in bf16 with tau = 3 (the
    correctly rounded division: cases ``... tau3``)."""
    from svm_kernels.lif import fused as lif
    from svm_kernels.lif.common import make_params

    kernels = _kernels_of(lif)
    variants = [(2.0, "", dt, name) for dt in DTYPES for name in LIF_SHAPES]
    variants += [(3.0, " tau3", "bf16", name) for name, (T, _) in LIF_SHAPES.items() if T in (4, 16)]
    for tau, suffix, dtype_name, shape_name in variants:
        params = make_params(tau=tau, v_threshold=1.0, v_reset=0.0, detach_reset=True)
        T, n = LIF_SHAPES[shape_name]
        x = _meta(T, n, dtype=DTYPES[dtype_name])
        main = dtype_name == "bf16" and T == 4
        yield Case(
            f"lif_fwd {dtype_name} {shape_name}{suffix}",
            T * n,
            lambda x=x, p=params: lif.lif_fwd(x, None, p, False),
            kernels,
            main,
        )
        yield Case(
            f"lif_bwd {dtype_name} {shape_name}{suffix}",
            T * n,
            lambda x=x, p=params: lif.lif_bwd(torch.empty_like(x), None, x, None, p, False),
            kernels,
            main,
        )


def ss2d_cases():
    from svm_kernels.ss2d import fused as ss2d

    kernels = _kernels_of(ss2d)
    shapes = [(d, shape, lowrank) for d in DTYPES for shape in SS2D_SHAPES for lowrank in (True, False)]
    shapes += [("bf16", shape, True) for shape in SS2D_LATER_STAGES]  # larger ranks, short maps
    for dtype_name, shape_name, lowrank in shapes:
        dtype = DTYPES[dtype_name]
        batch, D, H, W, N, R = {**SS2D_SHAPES, **SS2D_LATER_STAGES}[shape_name]
        u = _meta(batch, D, H, W, dtype=dtype)
        t = dict(
            delta=None if lowrank else _meta(batch, 4, D, H, W, dtype=dtype),
            dt_low=_meta(batch, 4, R, H, W, dtype=dtype) if lowrank else None,
            dt_weight=_meta(4, D, R) if lowrank else None,
            A=_meta(4, D, N),
            B=_meta(batch, 4, N, H, W, dtype=dtype),
            C=_meta(batch, 4, N, H, W, dtype=dtype),
            D=_meta(4, D),
            bias=_meta(4, D),
        )
        args = [t[k] for k in ("delta", "dt_low", "dt_weight", "A", "B", "C", "D", "bias")]
        variant = "lowrank" if lowrank else "full"
        main = dtype_name == "bf16" and lowrank and shape_name == "vmamba_t_stage1"
        elements = batch * D * H * W
        # as the differentiable op runs them: the forward saves the states entering the
        # backward's chunks, the backward walks from them
        _, states = ss2d._fake_forward(u, t["A"], t["dt_low"], True, torch.float32)
        chunk = ss2d._bwd_chunk(u, t["A"], t["dt_low"])
        forwards = {"ss2d_fwd": ss2d._forward_saving_states}
        if main:  # the forward without a backward to follow (no states saved): inference
            forwards["ss2d_infer"] = ss2d._forward_only
        for op, forward in forwards.items():
            yield Case(
                f"{op} {variant} {dtype_name} {shape_name}",
                elements,
                lambda u=u, args=args, forward=forward: forward(u, *args, True, torch.float32),
                kernels,
                main,
            )
        yield Case(
            f"ss2d_bwd {variant} {dtype_name} {shape_name}",
            elements,
            lambda u=u, args=args, states=states, chunk=chunk: ss2d.ss2d_bwd(
                _meta(*u.shape), u, *args, True, states, chunk
            ),
            kernels,
            main,
        )


# A new op registers its cases here (a generator of Case).
CASE_PROVIDERS = [lif_cases, ss2d_cases]


def blocks_per_sm(registers: int, num_warps: int, shared_bytes: int) -> int:
    """Blocks of one launch resident on an SM at once (sm_90): the least of the block limit, the
    warp limit, the registers and the shared memory. Registers are allocated per warp in units
    of 256 from each of the SM's 4 sub-partitions' quarter of the file (CUDA's occupancy rule:
    96 registers give 5 warps a quarter, 20 one-warp blocks, not 65,536 / 3,072 = 21)."""
    per_warp = -(-registers * WARP_SIZE // SM_REGISTER_UNIT) * SM_REGISTER_UNIT
    quarter = SM_REGISTERS // SM_SUBPARTITIONS
    by_registers = (quarter // per_warp) * SM_SUBPARTITIONS // num_warps if per_warp else SM_MAX_BLOCKS
    by_shared = SM_SHARED_BYTES // (shared_bytes + BLOCK_RESERVED_SHARED)
    return max(0, min(SM_MAX_BLOCKS, SM_MAX_WARPS // num_warps, by_registers, by_shared))


def measure(case: Case, arch: int) -> dict:
    """{row label: figures} for every launch (and autotuner config) of one case, and the case's
    row over all its launches (``case_totals``): launches of one kernel share a label, whose
    row has the last one's figures but the most any of them reports in each budgeted metric
    (BUDGET_METRICS), or the first failure of any of them."""
    rows = {}
    every = []  # every launch's row, in launch order
    for launch in capture_configs(case.call, case.kernels):
        name = launch.fn.fn.__name__
        label = " | ".join(x for x in (case.label, name, launch.config) if x)
        start = time.perf_counter()
        try:
            info = compile_launch(launch, arch)
        except Exception as exc:  # report every failure, not only the first
            error = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            rows[label] = error
            every.append(error)
            continue
        prof = ptx_profile(info.pop("ptx"), info.pop("env"))
        blocks = math.prod(launch.grid)
        threads = blocks * info["num_warps"] * WARP_SIZE
        per = threads / case.elements
        resident = blocks_per_sm(info["registers"] or 255, info["num_warps"], info["shared_bytes"])
        rounds = math.ceil(blocks / (resident * N_SMS)) if resident else None
        row = dict(
            registers=info["registers"],
            spill_bytes=info["spill_bytes"],
            shared_bytes=info["shared_bytes"],
            num_warps=info["num_warps"],
            num_stages=info["num_stages"],
            grid=list(launch.grid),
            blocks=blocks,
            waves=round(blocks / N_SMS, 2),
            blocks_per_sm=resident,
            rounds=rounds,
            serial_steps=round(prof["serial_steps"], 1),
            serial_per_launch=round(rounds * prof["serial_steps"], 1) if rounds else None,
            memory_waits=round(prof["memory_waits"], 1),
            waits_per_launch=round(rounds * prof["memory_waits"], 1) if rounds else None,
            elements=case.elements,
            ptx_static=prof["ptx_static"],
            ptx_per_elem=round(prof["ptx_dynamic"] * per, 2),
            sfu_per_elem=round(prof["sfu_dynamic"] * per, 3),
            barriers_per_elem=round(prof["barriers_dynamic"] * per, 4),
            shfl_per_elem=round(prof["shfl_dynamic"] * per, 3),
            narrow_global_accesses=prof["narrow_global_accesses"],
            loops=prof["loops"],
            untraced_loops=prof["untraced_loops"],
            constexprs=info["constexprs"],
            compile_s=round(time.perf_counter() - start, 1),
        )
        every.append(row)
        before = rows.get(label, {})
        if "error" in before:  # a failure of an earlier launch of it stays reported
            continue
        # the budgets bound every launch of it (a copy: the case's totals sum each launch's own)
        rows[label] = {**row, **{m: max(row[m], before[m]) for m in BUDGET_METRICS if before}}
    rows[case.label + TOTAL_SUFFIX] = case_totals(every)
    return rows


def case_totals(launches: list) -> dict:
    """One case (a launcher call) over all its launches, in launch order: their number, PTX and
    special-function instructions per element summed, the serial steps summed (each launch's
    rounds of resident blocks times its programs' chain of loop trips: what a launch sequence
    costs when every step waits on its loads rather than on issue), the memory waits summed the
    same way (rounds times a program's groups of loads issued together), and the most registers and
    spilled bytes of any launch (a kernel's own row shows only its last launch)."""
    ok = [r for r in launches if "error" not in r]
    return dict(
        launches=len(launches),
        ptx_per_elem=round(sum(r["ptx_per_elem"] for r in ok), 2),
        sfu_per_elem=round(sum(r["sfu_per_elem"] for r in ok), 3),
        serial_steps=round(sum(r["serial_per_launch"] or 0 for r in ok), 1),
        memory_waits=round(sum(r["waits_per_launch"] or 0 for r in ok), 1),
        registers=max((r["registers"] or 0 for r in ok), default=0),
        spill_bytes=max((r["spill_bytes"] for r in ok), default=0),
    )


# ---- budgets ----------------------------------------------------------------------------------


def load_budgets(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f) or {}


def check_budgets(results: dict, budgets: dict, require: bool = False) -> list[str]:
    """Violations: a measured figure above its budget, a failed compile, a budgeted row not measured
    (only when its case was selected: a renamed kernel must not pass silently), and with
    ``require`` a measured row without a budget."""
    problems = []
    for label, info in results.items():
        if "error" in info:
            problems.append(f"{label}: compile failed: {info['error']}")
            continue
        if require and label not in budgets:
            problems.append(f"{label}: no budget in the budgets file")
        for metric, limit in (budgets.get(label) or {}).items():
            value = info.get(metric)
            if value is None:
                problems.append(f"{label}: {metric} not measured (budget {limit})")
            elif value > limit:
                problems.append(f"{label}: {metric} = {value} exceeds the budget {limit}")
    measured_cases = {label.split(" | ")[0] for label in results}
    for label in budgets:
        if label.split(" | ")[0] in measured_cases and label not in results:
            problems.append(f"{label}: budgeted but no such launch was measured")
    return problems


def budgets_from(results: dict, slack: float = 1.05) -> dict:
    """Initial budgets: today's figures rounded up slightly (the kernel owners lower them)."""
    out = {}
    for label, info in results.items():
        if "error" in info:
            continue
        b = {}
        for m in TOTAL_METRICS if label.endswith(TOTAL_SUFFIX) else BUDGET_METRICS:
            v = info[m]
            if m == "launches":
                b[m] = v  # a launch more is a change of design, not noise
            elif m == "registers":
                b[m] = min(255, math.ceil(v * slack))  # 255: the hardware's per-thread limit
            elif m in ("spill_bytes", "shared_bytes"):
                b[m] = math.ceil(v * slack)
            else:
                b[m] = float(f"{v * slack:.3g}") if v else 0
        out[label] = b
    return out


BUDGETS_HEADER = """\
# Per kernel launch (case | kernel | autotuner config) and metric: the most bench/compile_check.py
# may report (sm_90). tests/test_compile_check.py fails when a figure exceeds its budget or a
# measured row has none. Metrics are defined in bench/NOTES.md (gate section). The first values
# were the figures of the day plus 5 %; a kernel's owner lowers them as the kernel improves.
# A "<case> | all launches" row sums every launch of that launcher call (its launches exactly).
"""


# ---- command line -----------------------------------------------------------------------------


def run_cases(only: str = "", main_only: bool = False, arch: int = 90) -> dict:
    results = {}
    for provider in CASE_PROVIDERS:
        for case in provider():
            if only not in case.label or (main_only and not case.main):
                continue
            for label, info in measure(case, arch).items():
                results[label] = info
                shown = info
                if not label.endswith(TOTAL_SUFFIX):
                    shown = {
                        k: info.get(k)
                        for k in (
                            "registers",
                            "spill_bytes",
                            "blocks",
                            "blocks_per_sm",
                            "ptx_per_elem",
                            "sfu_per_elem",
                            "serial_per_launch",
                            "waits_per_launch",
                        )
                    }
                print(f"{label:72s} {info.get('error', shown)}", flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", default="", help="substring filter on the case label")
    parser.add_argument("--main", action="store_true", help="only the four main variants (CI)")
    parser.add_argument("--budgets", help="YAML of per-row metric limits; exit 1 when one is exceeded")
    parser.add_argument(
        "--require-budgets", action="store_true", help="a measured row without a budget fails"
    )
    parser.add_argument("--from-json", help="check a previous --json output instead of compiling")
    parser.add_argument("--write-budgets", help="write today's figures (+5%%) as a budgets YAML here")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)["kernels"]
    else:
        results = run_cases(args.only, args.main, args.arch)
    if args.json:
        meta = {"triton": triton.__version__, "torch": torch.__version__, "arch": args.arch, "sms": N_SMS}
        with open(args.json, "w") as f:
            json.dump({**meta, "kernels": results}, f, indent=1)
    if args.write_budgets:
        import yaml

        with open(args.write_budgets, "w") as f:
            f.write(BUDGETS_HEADER)
            yaml.safe_dump(budgets_from(results), f, sort_keys=True, width=200)
    problems = [f"{label}: compile failed: {i['error']}" for label, i in results.items() if "error" in i]
    if args.budgets:
        problems = check_budgets(results, load_budgets(args.budgets), args.require_budgets)
    for p in problems:
        print("BUDGET" if "exceeds" in p else "FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every Triton kernel of the package for a GPU target without a GPU (ahead of time).

The interpreter (how the tests run on a CPU) accepts code the real compiler rejects; this script
runs the real compiler (Triton -> PTX -> cubin with ptxas) for sm_90 (H100/H200) and reports
per kernel variant: registers, spilled bytes, shared memory, and whether the half-precision
loads are vectorised. Run it without TRITON_INTERPRET:

    python bench/compile_check.py [--arch 90] [--json out.json]

Exit status 1 when a kernel fails to compile or spills more than --max-spill bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner, Heuristics

from svm_kernels.lif import fused as lif
from svm_kernels.ss2d import fused as ss2d


def _jit_fn(kernel):
    """The JITFunction under an Autotuner and/or Heuristics (or the kernel itself)."""
    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return kernel


def _signature(fn, types: dict, constexprs: dict):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs or (name in types and types[name] is None):
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_variant(kernel, types, constexprs, num_warps, arch, divisible=()):
    fn = _jit_fn(kernel)
    sig = _signature(fn, types, constexprs)
    const = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    # absent pointers (None at launch)
    const.update(
        {(fn.arg_names.index(k),): None for k, v in types.items() if v is None and k in fn.arg_names}
    )
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in divisible}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    info = {"shared_bytes": compiled.metadata.shared}
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run(
            [ptxas, f"-arch=sm_{arch}{suffix}", "-v", path, "-o", os.devnull], capture_output=True, text=True
        )
    report = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    info["registers"] = int(regs.group(1)) if regs else None
    info["spill_bytes"] = int(spills.group(1)) if spills else 0
    info["vector_loads"] = sorted(set(re.findall(r"ld\.global(?:\.[a-z]+)*\.v(\d)", ptx)))
    info["vector_stores"] = sorted(set(re.findall(r"st\.global(?:\.[a-z]+)*\.v(\d)", ptx)))
    # PTX instructions in the kernel body (statements ending in ';', declarations excluded).
    body = ptx[ptx.index("{", ptx.index(".entry")) :]
    info["ptx_instructions"] = sum(
        1 for line in body.splitlines() if line.strip().endswith(";") and not line.strip().startswith(".")
    )
    return info


def variants():
    """(label, kernel, arg types, constexprs, num_warps, divisible args) for every shipped shape class."""
    # LIF as launched without an initial state or a final-state gradient (absent pointers: None).
    lif_scalars = {"N": "i32", "tau": "fp32", "v_threshold": "fp32", "v_reset": "fp32", "alpha": "fp32"}
    absent = {"v_init_ptr": None, "v_out_ptr": None, "grad_v_ptr": None, "grad_v_init_ptr": None}
    for dtype in ("bf16", "fp32"):
        ptr = {
            "x_ptr": f"*{dtype}",
            "s_ptr": f"*{dtype}",
            "grad_s_ptr": f"*{dtype}",
            "grad_x_ptr": f"*{dtype}",
        }
        for T in (4, 8, 16, 40):
            seg = min(T, lif.MAX_SEGMENT)
            num_seg = -(-T // seg)
            segs = dict(T=T, SEG=seg, NUM_SEG=num_seg, LAST_SEG=T - (num_seg - 1) * seg)
            flags = dict(HARD_RESET=True, DECAY_INPUT=True, USE_INITIAL_STATE=False)
            for block, warps in ((1024, 4), (2048, 8)):
                yield (
                    f"lif_fwd {dtype} T={T} BLOCK_N={block} w{warps}",
                    lif.fused_lif_fwd_kernel,
                    {**lif_scalars, **ptr, **absent},
                    dict(**segs, **flags, STORE_FINAL_STATE=False, BLOCK_N=block),
                    warps,
                    ("x_ptr", "s_ptr", "N"),
                )
            block, warps = lif.bwd_config(torch.bfloat16 if dtype == "bf16" else torch.float32)
            bwd_flags = dict(DETACH_RESET=False, SURROGATE_ATAN=False, HAS_GRAD_FINAL_STATE=False)
            if True:
                yield (
                    f"lif_bwd {dtype} T={T} BLOCK_N={block} w{warps}",
                    lif.fused_lif_bwd_kernel,
                    {**lif_scalars, **ptr, **absent, "v_start_ptr": "*fp32" if num_seg > 1 else None},
                    dict(**segs, **flags, **bwd_flags, STORE_GRAD_INITIAL_STATE=False, BLOCK_N=block),
                    warps,
                    ("x_ptr", "grad_s_ptr", "grad_x_ptr", "N") + (("v_start_ptr",) if num_seg > 1 else ()),
                )
    # SS2D at the shapes the models use: (D, L) of VMamba-T / SVMamba stages and CIFAR stages.
    for dtype in ("bf16", "fp32"):
        ptr = {
            "u_ptr": f"*{dtype}",
            "delta_ptr": f"*{dtype}",
            "low_ptr": f"*{dtype}",
            "B_ptr": f"*{dtype}",
            "C_ptr": f"*{dtype}",
            "g_ptr": "*fp32",
            "ddelta_ptr": f"*{dtype}",
        }
        for D, L in ((96, 3136), (384, 196), (96, 256), (384, 16)):
            for lowrank in (True, False):
                block_d, block_l, warps = ss2d._fwd_config(D, L)
                flags = dict(LOWRANK=lowrank, HAS_D=True, HAS_BIAS=True, DELTA_SOFTPLUS=True)
                yield (
                    f"ss2d_fwd {dtype} D={D} L={L} lowrank={lowrank}",
                    ss2d.fused_ss2d_fwd_kernel,
                    ptr,
                    dict(**flags, BLOCK_D=block_d, BLOCK_L=block_l),
                    warps,
                    (),
                )
                for n in (1, 16):
                    block_d, chunk, warps = ss2d._bwd_config(D, L, n)
                    yield (
                        f"ss2d_bwd {dtype} D={D} L={L} N={n} lowrank={lowrank}",
                        ss2d.fused_ss2d_bwd_kernel,
                        ptr,
                        dict(**flags, BLOCK_D=block_d, CHUNK=chunk, NP=n, RP=8),
                        warps,
                        (),
                    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", default="", help="substring filter on the variant label")
    parser.add_argument("--max-spill", type=int, default=1024, help="spilled bytes tolerated per kernel")
    args = parser.parse_args(argv)
    results, failed = {}, False
    for label, kernel, types, constexprs, warps, divisible in variants():
        if args.only not in label:
            continue
        try:
            info = compile_variant(kernel, types, constexprs, warps, args.arch, divisible)
        except Exception as exc:  # report every failure, not only the first
            info = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            failed = True
        failed |= info.get("spill_bytes", 0) > args.max_spill
        results[label] = info
        print(f"{label:60s} {info}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch, "kernels": results}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

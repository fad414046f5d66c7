"""The real Triton compiler (not the interpreter) accepts the kernels: PTX and cubin for sm_90.

The interpreter runs Python semantics and accepts code the compiler rejects (loop-carried type
changes, unsupported ops). bench/compile_check.py compiles ahead of time, without a GPU; here a
representative variant of each kernel is compiled in a subprocess with the interpreter off.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "only,vectorised",
    [
        ("lif_fwd bf16 BLOCK_N=2048 w4", True),
        ("lif_bwd bf16 BLOCK_N=2048 w4", True),
        ("ss2d_fwd fp32 D=384 L=16 lowrank=True", False),
        ("ss2d_bwd bf16 D=384 L=16 N=1 lowrank=True", False),
    ],
)
def test_kernels_compile_for_sm90(tmp_path, only, vectorised):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compile_check.py"), "--only", only, "--json", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kernels = json.loads(out.read_text())["kernels"]
    assert list(kernels) == [only]
    info = kernels[only]
    assert "error" not in info and info["spill_bytes"] == 0 and info["registers"] <= 255
    if vectorised:  # 16-byte loads of the half-precision input
        assert "4" in info["vector_loads"]

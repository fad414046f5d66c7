"""Gate cases of whole models (the ``model`` phase): torch.compile(fullgraph=True) against eager,
and training throughput eager against compiled.

* ``compiled_vs_eager`` / ``check``: a small instance of each family compiled with fullgraph=True and
  compared with eager, forward and backward (``bench/model_compile.py``); the flagship at two
  batch sizes, so the second compiles with symbolic sizes. On CUDA: fp32, inductor, the Triton
  kernels inside the graph. In smoke mode (CPU): float64, ``aot_eager``, the flagship only (the
  test suite checks every family so).
* ``eager`` / ``compiled`` / ``train``: training steps per second of a config's model on
  synthetic images (``bench/train_throughput.py``'s step: the config's autocast, loss,
  optimizer), ``ms`` per step, ``images_per_s``; the compiled row's ``compile_s`` is its first
  step. On CUDA the CIFAR-10 configs; in smoke mode two steps of the digits config.
"""

from __future__ import annotations

import contextlib

import model_compile
import torch
import train_throughput
from gate import DEVICE, HAS_CUDA, Case, Skip, provider

FLAGSHIP = "svmamba_cifar"
# the compiled graph's own fusions round differently from eager: loose enough for fp32 rounding,
# far below what a wrong gradient or a flipped spike gives
TOLERANCE = {"logits": 1e-3, "grads": 1e-2} if HAS_CUDA else {"logits": 1e-5, "grads": 1e-4}
THROUGHPUT_CONFIGS = ("configs/cifar10_svmamba.yaml", "configs/cifar10_vmamba.yaml")
SMOKE_CONFIG = "configs/digits_svmamba.yaml"


def compile_check(name: str, smoke: bool) -> dict:
    if smoke and name != FLAGSHIP:
        raise Skip("smoke mode runs the flagship only; tests/test_torch_compile.py checks every family")
    dtype, backend = (torch.float32, "triton") if HAS_CUDA else (torch.float64, "torch")
    model = model_compile.tiny_model(name, DEVICE, dtype, backend=backend)
    batches = (3, 5) if name == FLAGSHIP else (3,)
    # fp32 convolutions and matmuls, not TF32: a spike must not flip between eager and compiled
    with _no_tf32():
        res = model_compile.compare(model, batches, backend="inductor" if HAS_CUDA else "aot_eager")
    ok = (
        res["grad_names_match"]
        and res["logits_err"] <= TOLERANCE["logits"]
        and res["grads_err"] <= TOLERANCE["grads"]
    )
    return dict(res, max_rel_err=max(res["logits_err"], res["grads_err"]), tol=TOLERANCE["grads"], ok=ok)


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def throughput(config: str, compiled: bool, smoke: bool) -> dict:
    cfg = train_throughput.read_config(config)
    backend = "inductor" if HAS_CUDA else "aot_eager"  # (inductor on the CPU compiles for minutes)
    if compiled:
        # as a user's first compile: the checks before compiled the same model classes at other
        # sizes, and dynamo would build this graph with those sizes symbolic (slower, and
        # compile_s would count the symbolic compile)
        torch._dynamo.reset()
    step, batch = train_throughput.training_step(cfg, DEVICE, compiled, fullgraph=True, backend=backend)
    steps, warmup = (2, 1) if smoke else (20, 3)
    res = train_throughput.measure(step, batch, steps, warmup, DEVICE)
    row = dict(ms=round(res["ms"], 3), images_per_s=round(res["images_per_s"], 1))
    row["first_step_s"] = round(res["first_step_s"], 2)
    if compiled:
        row["compile_s"] = row["first_step_s"]
    return row


def _throughput_cases(config: str, smoke: bool):
    """Eager then compiled training steps of one config (its shape read here when PyYAML is
    importable; otherwise the rows record the error when they run)."""
    try:
        cfg = train_throughput.read_config(config)
        dims = [cfg.get("batch_size", 32), cfg.get("img_size") or 32]
        dtype = "bf16" if HAS_CUDA and cfg.get("amp") else "fp32"
    except Exception:  # the run raises it again, into its row
        dims, dtype = None, "-"
    case = dict(shape=config.split("/")[-1].removesuffix(".yaml"), dims=dims, dtype=dtype, mode="train")
    for impl, compiled in (("eager", False), ("compiled", True)):
        run = lambda c=config, comp=compiled: throughput(c, comp, smoke)
        yield Case("model", impl, "model", case, run, 300)


def _compile_case(name: str, smoke: bool):
    dtype = "fp32" if HAS_CUDA else "fp64"
    case = dict(shape=name, dims=[model_compile.IMG], dtype=dtype, mode="check")
    return Case("model", "compiled_vs_eager", "model", case, lambda: compile_check(name, smoke), 300)


@provider("model")
def model_cases(smoke: bool):
    # what issue 13 needs first when the phase's time runs out: the flagship compiled against
    # eager, then its training throughput; then the other families and the VMamba throughput
    yield _compile_case(FLAGSHIP, smoke)
    configs = (SMOKE_CONFIG,) if smoke else THROUGHPUT_CONFIGS
    yield from _throughput_cases(configs[0], smoke)
    for name in sorted(n for n in model_compile.TINY if n != FLAGSHIP):
        yield _compile_case(name, smoke)
    for config in configs[1:]:
        yield from _throughput_cases(config, smoke)

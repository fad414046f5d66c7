"""torch.compile(fullgraph=True) of a whole model against eager, forward and backward.

One comparison, run in two places: tests/test_torch_compile.py on the CPU (``aot_eager``: the
captured graphs without code generation, within CI's time) and the GPU gate's ``model`` phase
on CUDA (inductor, the package's Triton kernels inside the graph). ``fullgraph=True`` turns a
graph break into an error; a second batch size recompiles with symbolic sizes (torch.compile's
default automatic dynamic shapes), so the fakes must hold for any batch.
"""

from __future__ import annotations

import time

import torch

# A small instance of every model family (16 px images).
TINY = {
    "svmamba_cifar": dict(dims=[8, 16], depths=[1, 1], T=2, v_threshold=0.5),
    "vmamba_cifar": dict(dims=[8, 16], depths=[1, 1], drop_path_rate=0.0),  # no randomness
    "qkformer_cifar": dict(embed_dim=32, depths=(1, 1, 1), num_heads=2, T=2),
}
IMG = 16
NUM_CLASSES = 5


def tiny_model(name: str, device, dtype: torch.dtype, backend: str) -> torch.nn.Module:
    """The TINY instance of a family, in train mode, with a fixed seed."""
    import svm_models

    torch.manual_seed(0)
    model = svm_models.create_model(
        name, num_classes=NUM_CLASSES, img_size=IMG, backend=backend, **TINY[name]
    )
    return model.to(device=device, dtype=dtype).train()


def outputs_and_grads(model: torch.nn.Module, images: torch.Tensor, run=None):
    """(logits, {parameter name: gradient}) of one forward and backward through ``run`` (or the
    model itself), the loss weighting each class differently so every logit matters."""
    model.zero_grad(set_to_none=True)
    logits = (model if run is None else run)(images)
    weights = torch.linspace(-1, 1, logits.shape[1], device=logits.device, dtype=logits.dtype)
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel_err(got: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """max |got - ref| / max(max |ref|, floor); inf for a non-finite value or, with a zero scale,
    any difference (a gradient that must stay exactly zero)."""
    got, ref = got.double(), ref.double()
    if not (torch.isfinite(got).all() and torch.isfinite(ref).all()):
        return float("inf")  # (a NaN scale would give NaN, and max(0.0, nan) is 0.0: a pass)
    scale = max(ref.abs().max().item(), floor)
    diff = (got - ref).abs().max().item()
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / scale


# A parameter's gradient is compared relative to its own largest value, but never to less than
# this share of the largest gradient of all: a bias that feeds a BatchNorm gets a gradient of
# pure rounding noise, which any other order of operations changes entirely.
GRAD_FLOOR = 1e-3


def compare(model: torch.nn.Module, batches=(3,), backend: str = "inductor", seed: int = 1) -> dict:
    """Compile ``model`` (fullgraph=True) and compare it with eager at each batch size.

    Returns ``compile_s`` (the first compiled call, forward and backward, compilation included),
    ``logits_err`` and ``grads_err`` (the largest relative error over the batches; over every
    parameter for the gradients, each against its own scale floored at GRAD_FLOOR of the
    largest), ``worst_grad`` (that parameter's name) and ``grad_names_match`` (the same
    parameters received gradients)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = dict(logits_err=0.0, grads_err=0.0, worst_grad=None, grad_names_match=True, batches=list(batches))
    gen = torch.Generator().manual_seed(seed)
    for i, batch in enumerate(batches):
        images = torch.randn(batch, 3, IMG, IMG, generator=gen, dtype=torch.float64).to(device, dtype)
        ref_logits, ref_grads = outputs_and_grads(model, images)
        start = time.perf_counter()
        logits, grads = outputs_and_grads(model, images, compiled)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i == 0:
            out["compile_s"] = round(time.perf_counter() - start, 2)
        out["logits_err"] = max(out["logits_err"], _rel_err(logits, ref_logits))
        out["grad_names_match"] &= grads.keys() == ref_grads.keys() and len(grads) > 0
        floor = GRAD_FLOOR * max((g.abs().max().item() for g in ref_grads.values()), default=0.0)
        for name, g in ref_grads.items():
            err = _rel_err(grads[name], g, floor) if name in grads else float("inf")
            if out["worst_grad"] is None or err > out["grads_err"]:
                out["grads_err"], out["worst_grad"] = err, name
    return out

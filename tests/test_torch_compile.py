"""torch.compile(fullgraph=True) of every model family, forward and backward, against eager.

The package's ops are torch.library custom ops with fakes and autograd on every backend, so
Dynamo captures a whole model as one graph (a graph break would raise under fullgraph=True),
with symbolic sizes as well (a second batch size recompiles with dynamic shapes, torch.compile's
default). The ``aot_eager`` backend runs the captured
forward and backward graphs without code generation, which keeps this within CI's budget;
what it checks (capture, fakes, autograd through the custom ops) is what inductor builds on.
"""

import pytest
import torch
from helpers import assert_close_rel

import svm_models

COMPILED = {
    "svmamba_cifar": dict(dims=[8, 16], depths=[1, 1], T=2, v_threshold=0.5),
    "vmamba_cifar": dict(dims=[8, 16], depths=[1, 1], drop_path_rate=0.0),  # no randomness
    "qkformer_cifar": dict(embed_dim=32, depths=(1, 1, 1), num_heads=2, T=2),
}

# Dynamic shapes are checked on the flagship only: every recompilation costs CI time.
DYNAMIC_CHECKED = "svmamba_cifar"


def test_every_model_family_is_covered():
    families = {name.split("_")[0] for name in svm_models.list_models()}
    assert families == {name.split("_")[0] for name in COMPILED}


def _outputs_and_grads(model, images, run=None):
    model.zero_grad(set_to_none=True)
    logits = (model if run is None else run)(images)
    (logits * torch.linspace(-1, 1, logits.shape[1])).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_model_compiles_fullgraph_and_matches_eager(name):
    # float64: a rounding difference between the eager and the captured graph must not flip a
    # spike that sits on the threshold
    torch.manual_seed(0)
    model = svm_models.create_model(name, num_classes=5, img_size=16, backend="torch", **COMPILED[name])
    model.double().train()
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    ref_logits, ref_grads = _outputs_and_grads(model, images)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, grads = _outputs_and_grads(model, images, compiled)
    assert_close_rel(logits, ref_logits, 1e-5, "logits")
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for n, g in ref_grads.items():
        if g.abs().max() > 0:
            assert_close_rel(grads[n], g, 1e-4, f"grad {n}")
        else:
            assert grads[n].abs().max() == 0, n
    if name != DYNAMIC_CHECKED:
        return
    # a second batch size recompiles with symbolic sizes (the default automatic dynamic shapes)
    more = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    ref_logits, ref_grads = _outputs_and_grads(model, more)
    logits, grads = _outputs_and_grads(model, more, compiled)
    assert_close_rel(logits, ref_logits, 1e-5, "logits, batch 5")
    for n, g in ref_grads.items():
        if g.abs().max() > 0:
            assert_close_rel(grads[n], g, 1e-4, f"grad {n}, batch 5")

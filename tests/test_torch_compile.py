"""torch.compile(fullgraph=True) of every model family, forward and backward, against eager.

The package's ops are torch.library custom ops with fakes and autograd on every backend, so
Dynamo captures a whole model as one graph (a graph break would raise under fullgraph=True),
with symbolic sizes as well (a second batch size recompiles with dynamic shapes, torch.compile's
default). On the CPU the ``aot_eager`` backend runs the captured forward and backward graphs
without code generation, which keeps this within CI's budget; what it checks (capture, fakes,
autograd through the custom ops) is what inductor builds on. On a GPU the same comparison runs
with inductor and the Triton kernels (bench/model_compile.py, the gate's ``model`` phase).
"""

import pytest
import torch
from helpers import load_bench

import svm_models

model_compile = load_bench("model_compile")

# Dynamic shapes are checked on the flagship only: every recompilation costs CI time.
DYNAMIC_CHECKED = "svmamba_cifar"


def test_every_model_family_is_covered():
    families = {name.split("_")[0] for name in svm_models.list_models()}
    assert families == {name.split("_")[0] for name in model_compile.TINY}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(model_compile.TINY))
def test_model_compiles_fullgraph_and_matches_eager(name):
    # float64: a rounding difference between the eager and the captured graph must not flip a
    # spike that sits on the threshold
    model = model_compile.tiny_model(name, "cpu", torch.float64, backend="torch")
    batches = (3, 5) if name == DYNAMIC_CHECKED else (3,)
    res = model_compile.compare(model, batches, backend="aot_eager")
    assert res["grad_names_match"], res
    assert res["logits_err"] <= 1e-5, res
    assert res["grads_err"] <= 1e-4, res


def test_compare_reports_a_wrong_gradient():
    """The comparison must be able to fail: a compiled model whose backward differs from eager's."""

    class Doubled(torch.autograd.Function):  # forward x, backward 2 g: only the gradient is wrong
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 16 * 16, 5).double()

        def forward(self, x):
            y = self.lin(x.flatten(1))
            return Doubled.apply(y) if torch.compiler.is_compiling() else y

    res = model_compile.compare(Net(), (2,), backend="aot_eager")
    assert res["logits_err"] == 0.0
    assert res["grads_err"] == pytest.approx(1.0)


def test_a_non_finite_reference_is_no_pass():
    # a NaN scale gave a NaN error, and max(0.0, nan) is 0.0
    good = torch.tensor([1.0, 2.0])
    for bad in (float("nan"), float("inf")):
        assert model_compile._rel_err(good, torch.tensor([bad, 2.0])) == float("inf")
    assert model_compile._rel_err(good, good) == 0.0

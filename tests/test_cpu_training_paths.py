"""The CPU training path's speed-ups keep the numbers: channels_last models, the fused AdamW, the
scan's threshold-free fp32 softplus and its gather-free direction layouts, the LIF's start from
rest. Each is compared with the plain computation it replaces."""

import pytest
import torch
import torch.nn.functional as F
from helpers import images, tiny_model

from svm_kernels.lif import vectorized as lif_vec
from svm_kernels.lif.common import make_params
from svm_kernels.ss2d import vectorised as ss2d_vec
from svm_kernels.ss2d.naive import softplus_thresholded
from svm_models.training import config as C
from svm_models.training import engine, optim


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), torch.arange(x.shape[0]) % 5)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["svmamba_cifar", "qkformer_cifar"])
def test_channels_last_model_matches_contiguous_float64(name):
    plain, img = tiny_model(name)
    fast, _ = tiny_model(name)
    fast.load_state_dict(plain.state_dict())
    plain, fast = plain.double(), fast.double().to(memory_format=torch.channels_last)
    assert fast.first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = images(4, img).double()
    loss_p, grads_p = _loss_and_grads(plain, x)
    loss_f, grads_f = _loss_and_grads(fast, x)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-12, atol=0)
    assert grads_p.keys() == grads_f.keys() and grads_p
    for n in grads_p:
        torch.testing.assert_close(grads_f[n], grads_p[n], rtol=1e-9, atol=1e-12, msg=n)


def test_channels_last_config_key_builds_channels_last_weights():
    base = dict(task_name="t", model="svmamba_cifar", dataset="digits", img_size=16, T=2)
    small = dict(dims=[8, 16], depths=[1, 1])
    model = engine.build_model(C.validate({**base, "model_args": small, "channels_last": True}), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    default = engine.build_model(C.validate({**base, "model_args": small}), 10)
    assert default.first_conv.weight.is_contiguous()


def test_fused_adamw_on_cpu_matches_the_loop():
    model, img = tiny_model("svmamba_cifar")
    twin, _ = tiny_model("svmamba_cifar")
    twin.load_state_dict(model.state_dict())
    cfg = {"lr": 5e-3, "weight_decay": 0.05}
    fused = optim.build_optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    loop = torch.optim.AdamW(optim.param_groups(twin, 0.05), lr=5e-3, foreach=False)
    x = images(4, img)
    for _ in range(3):
        for m, opt in ((model, fused), (twin, loop)):
            _loss_and_grads(m, x)
            opt.step()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_fp32_softplus_without_threshold_is_bit_identical():
    z = torch.cat(
        [
            torch.randn(10_000) * 30,
            torch.linspace(19.0, 21.0, 2001),
            torch.tensor([20.0, -20.0, 88.0, -88.0, 1e30, -1e30, 0.0, -0.0, float("inf"), float("-inf")]),
        ]
    )
    expected = softplus_thresholded(z)
    got = ss2d_vec._softplus(z.clone())
    assert torch.equal(got, expected)
    nan = torch.tensor([float("nan")])
    assert torch.isnan(ss2d_vec._softplus(nan)).all()


@pytest.mark.parametrize("H,W", [(5, 7), (8, 8), (1, 6), (4, 1)])
@pytest.mark.parametrize("per_direction", [False, True])
def test_sequence_layouts_match_the_gather(H, W, per_direction):
    order, _ = ss2d_vec.direction_index(H, W, torch.device("cpu"))
    t = torch.randn(3, 4 if per_direction else 1, 6, H, W, dtype=torch.float64)
    if not per_direction:  # channels_last, as the models' u arrives
        t = t.squeeze(1).contiguous(memory_format=torch.channels_last).unsqueeze(1)
    flat = t.flatten(-2).expand(-1, 4, -1, -1)
    in_order = torch.gather(flat, -1, order[None, :, None, :].expand(3, 4, 6, -1))  # (B, 4, X, L)
    # chunks of W positions, position-major: p = i W + j at [j, i, b, k, x]
    expected = in_order.unflatten(-1, (H, W)).permute(4, 3, 0, 1, 2)
    got = ss2d_vec.to_sequences(t)
    assert got.is_contiguous() and torch.equal(got, expected)
    assert torch.equal(ss2d_vec.from_sequences(got), t.expand(3, 4, 6, H, W))
    y = torch.randn(W, H, 3, 4, 6)
    assert torch.equal(ss2d_vec.sum_sequences(y), ss2d_vec.from_sequences(y).sum(1))


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_lif_start_from_rest_equals_a_zero_initial_state(T, decay_input, v_reset):
    """v_init=None takes the one-op first step; an explicit zero v_init the general formula."""
    p = make_params(2.0, 0.5, v_reset, decay_input, True, "sigmoid", None)
    x = torch.randn(T, 3, 50)
    zeros = torch.zeros(3, 50)
    s_rest, v_rest = lif_vec.lif_forward(x, None, p, True)
    s_zero, v_zero = lif_vec.lif_forward(x, zeros, p, True)
    assert torch.equal(s_rest, s_zero) and torch.equal(v_rest, v_zero)
    g = torch.randn_like(x)
    gx_rest, _ = lif_vec.lif_backward(g, None, x, None, p, False)
    gx_zero, _ = lif_vec.lif_backward(g, None, x, zeros, p, False)
    assert torch.equal(gx_rest, gx_zero)

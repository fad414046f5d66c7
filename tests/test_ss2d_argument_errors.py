"""The SS2D ops' argument errors name the argument that is actually wrong."""

import pytest
import torch

from svm_kernels import CrossSelectiveScan, cross_selective_scan, cross_selective_scan_lowrank


def _args(batch=1, d=3, n=4, h=2, w=3):
    return dict(
        u=torch.randn(batch, d, h, w),
        delta=torch.randn(batch, 4, d, h, w),
        A=-torch.rand(4, d, n),
        B=torch.randn(batch, 4, n, h, w),
        C=torch.randn(batch, 4, n, h, w),
    )


def test_A_with_the_wrong_state_count_blames_A():
    args = _args()
    args["A"] = -torch.rand(4, 3, 5)  # N=5 where B and C have N=4
    with pytest.raises(ValueError, match=r"A has N=5 states but B and C have N=4"):
        cross_selective_scan(**args, backend="torch")


def test_B_or_C_with_the_wrong_state_count_still_blames_them():
    for name in ("B", "C"):
        args = _args()
        args[name] = torch.randn(1, 4, 5, 2, 3)
        with pytest.raises(ValueError, match=rf"^{name} must have shape \(1, 4, 4, 2, 3\)"):
            cross_selective_scan(**args, backend="torch")


def test_time_steps_of_another_dtype_or_map_size_are_refused():
    # guards the dtype check of delta / dt_low (only B and C were checked) and dt_low's (H, W) check
    from svm_kernels import cross_selective_scan_lowrank

    args = _args()
    args["delta"] = args["delta"].double()
    with pytest.raises(TypeError, match="delta has dtype"):
        cross_selective_scan(**args, backend="torch")
    low = {k: v for k, v in _args().items() if k != "delta"}
    dt_weight = torch.randn(4, 3, 2)
    with pytest.raises(TypeError, match="dt_low has dtype"):
        cross_selective_scan_lowrank(**low, dt_low=torch.randn(1, 4, 2, 2, 3).double(), dt_weight=dt_weight)
    with pytest.raises(ValueError, match="dt_low must have shape"):
        cross_selective_scan_lowrank(**low, dt_low=torch.randn(1, 4, 2, 2, 1), dt_weight=dt_weight)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"d_inner": 0}, "d_inner"),
        ({"d_state": -1}, "d_state"),
        ({"dt_rank": 0}, "dt_rank"),
        ({"dt_rank": 2.5}, "dt_rank"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_max"),
        ({"dt_init_floor": 0.0}, "dt_init_floor"),
        ({"dt_max": float("inf")}, "finite numbers"),  # (every dt bias became inf)
        ({"dt_min": "0.1"}, "finite numbers"),  # (a bare TypeError from '<')
        ({"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_module_arguments_are_checked_at_construction(kwargs, name):
    # (they gave ZeroDivisionError, "math domain error" or "negative dimension")
    with pytest.raises(ValueError, match=name):
        CrossSelectiveScan(**{"d_inner": 4, **kwargs})


@pytest.mark.parametrize("shape", [(4, 2, 3), (1, 3, 2, 3), (1, 1, 4, 2, 3)])
def test_module_input_of_the_wrong_shape_is_refused_by_name(shape):
    # a 3-d u went through conv2d as one unbatched image and failed in unflatten
    with pytest.raises(ValueError, match=r"u must have shape \(B, D=4, H, W\)"):
        CrossSelectiveScan(4, backend="torch")(torch.randn(shape))


def _lowrank_args(batch=1, d=3, n=4, h=2, w=3, r=2):
    args = {k: v for k, v in _args(batch, d, n, h, w).items() if k != "delta"}
    return dict(args, dt_low=torch.randn(batch, 4, r, h, w), dt_weight=torch.randn(4, d, r))


@pytest.mark.parametrize(
    "shape,match",
    [
        (dict(h=0), "empty spatial size"),
        (dict(w=0), "empty spatial size"),
        (dict(n=0), "N = 0"),
        (dict(d=0), "D = 0"),
        (dict(r=0), "R = 0"),
    ],
)
def test_empty_sizes_are_refused_by_name(shape, match):
    # every other shape agrees, so only the empty-size checks can refuse these
    with pytest.raises(ValueError, match=match):
        cross_selective_scan_lowrank(**_lowrank_args(**shape), backend="torch")
    if "r" not in shape:
        with pytest.raises(ValueError, match=match):
            cross_selective_scan(**_args(**shape), backend="torch")


def test_delta_of_another_map_size_is_refused():
    args = _args()
    args["delta"] = torch.randn(1, 4, 3, 2, 4)
    with pytest.raises(ValueError, match="delta must have shape"):
        cross_selective_scan(**args, backend="torch")


@pytest.mark.parametrize("name", ["D", "bias", "dt_weight"])
def test_integer_parameters_are_refused(name):
    # D and the bias are cast to the compute dtype, so nothing else would notice
    args = _lowrank_args()
    args["D"], args["dt_bias"] = torch.randn(4, 3), torch.randn(4, 3)
    key = "dt_bias" if name == "bias" else name
    args[key] = torch.ones_like(args[key], dtype=torch.int64)
    with pytest.raises(TypeError, match=f"{key} must be a float16, bfloat16, float32 or float64 tensor"):
        cross_selective_scan_lowrank(**args, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_leading_sizes_are_checked_too(backend):
    # B and C of another image count (the kernels index them by u's), D and the bias of 3 directions
    args = _args()
    for name, bad in (
        ("B", torch.randn(2, 4, 4, 2, 3)),
        ("C", torch.randn(2, 4, 4, 2, 3)),
        ("D", torch.randn(3, 3)),
        ("delta_bias", torch.randn(3, 3)),
    ):
        with pytest.raises(ValueError, match=rf"^{name} must have shape \("):
            cross_selective_scan(**{**args, name: bad}, backend=backend)


def test_equal_time_step_bounds_are_allowed():
    # dt_min == dt_max: every time step starts at that value
    m = CrossSelectiveScan(4, dt_min=0.01, dt_max=0.01, backend="torch")
    torch.testing.assert_close(torch.nn.functional.softplus(m.dt_projs_bias), torch.full((4, 4), 0.01))


def test_dt_weight_on_another_device_is_refused():
    args = _lowrank_args()
    args["dt_weight"] = args["dt_weight"].to("meta")
    with pytest.raises(ValueError, match="dt_weight is on meta"):
        cross_selective_scan_lowrank(**args, backend="torch")


def test_out_dtype_must_be_floating():
    for bad in (torch.int32, torch.float8_e4m3fn, "float32"):
        with pytest.raises(TypeError, match="out_dtype must be a floating dtype"):
            cross_selective_scan(**_args(), out_dtype=bad, backend="torch")


def test_float8_inputs_and_non_bool_flags_are_refused_by_name():
    # float8 passed the floating check and came back as float8 output (the LIF crashed deep
    # inside); delta_softplus=None ran without softplus, "no" failed in the op's schema
    args = _args()
    for name in ("u", "delta", "B", "C"):
        bad = {**args, name: args[name].to(torch.float8_e4m3fn)}
        with pytest.raises(TypeError, match=f"{name} must be a float16, bfloat16, float32 or float64"):
            cross_selective_scan(**bad, backend="torch")
    for flag in (None, "no"):
        with pytest.raises(TypeError, match="delta_softplus must be a bool"):
            cross_selective_scan(**args, delta_softplus=flag, backend="torch")
        with pytest.raises(TypeError, match="delta_softplus must be a bool"):
            cross_selective_scan_lowrank(**_lowrank_args(), delta_softplus=flag, backend="torch")


def test_forward_mode_ad_is_refused_not_answered_with_zeros():
    # the inference op (taken when no input requires a gradient) dropped the tangents: jvp gave 0
    import torch.autograd.forward_ad as fwAD

    args = _args()
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
        torch.func.jvp(
            lambda u: cross_selective_scan(**{**args, "u": u}, backend="torch"),
            (args["u"],),
            (torch.ones_like(args["u"]),),
        )
    with fwAD.dual_level():
        plain = cross_selective_scan(**args, backend="torch")  # no dual input: computed as usual
        torch.testing.assert_close(plain, cross_selective_scan(**args, backend="torch"))
        dual = fwAD.make_dual(args["B"], torch.ones_like(args["B"]))
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            cross_selective_scan(**{**args, "B": dual}, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradient_of_a_gradient_is_refused(backend):
    # a penalty on the scan's gradient needs its backward's derivative, which no backend defines
    args = _args()
    u = args.pop("u").requires_grad_()
    y = cross_selective_scan(u, **args, backend=backend)
    (g,) = torch.autograd.grad(y.sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        (g**2).sum().backward()

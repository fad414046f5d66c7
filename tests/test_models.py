"""Network definitions in svm_models: registry, forward/backward, spikes, state, parameter counts.

Everything runs on the CPU with backend="torch" at tiny sizes, except the parameter-count tests
(which only build the published configurations) and the Triton comparison at the end (the
Triton kernels under the interpreter).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL, assert_close_rel, images, tiny_model
from torch import nn

import svm_models
from svm_kernels import MultiStepLIF
from svm_models import create_model, list_models, register_model
from svm_models.layers import CrossScanSSM, DropPath, Linear2d, set_backend

NUM_CLASSES = 5
SPIKING = ["svmamba_t", "svmamba_cifar", "qkformer_cifar", "qkformer_10_384"]


def small_model(name, backend="torch", **extra):
    return tiny_model(name, num_classes=NUM_CLASSES, backend=backend, **extra)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_every_model():
    assert list_models() == sorted(SMALL), "every registered model needs a tiny test config in SMALL"
    assert list_models("qkformer_10_*") == ["qkformer_10_384", "qkformer_10_512", "qkformer_10_768"]


def test_registering_a_taken_name_raises_and_keeps_the_first(monkeypatch):
    from svm_models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    first = registry._MODELS["vmamba_cifar"]

    def vmamba_cifar(num_classes=1000, **overrides):  # a second factory under a taken name
        raise AssertionError("not to be called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(vmamba_cifar)
    assert registry._MODELS["vmamba_cifar"] is first


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="svmamba_t"):
        create_model("svmamba_huge")


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="d_stat"):
        create_model("svmamba_cifar", d_stat=4)


def test_overrides_and_img_size_reach_the_model():
    model = create_model("svmamba_cifar", num_classes=7, img_size=24, dims=16, depths=[1, 1], T=3, d_state=2)
    assert (model.num_classes, model.img_size, model.T, model.dims, model.depths) == (
        7,
        24,
        3,
        [16, 32],
        [1, 1],
    )
    assert model.head.out_features == 7
    ssm = model.stages[0].block0.mixer.ssm
    assert (ssm.d_state, ssm.dt_rank) == (2, 1)
    assert create_model("vmamba_cifar").img_size == 32 and create_model("svmamba_t").img_size == 224


def test_auto_dt_rank_is_mambas_ceiling_of_a_sixteenth():
    # guards resolve_dt_rank: "auto" rounds d_model / 16 up (VMamba-T's 96 -> 6, 24 -> 2), not down
    from svm_models.layers import resolve_dt_rank

    assert [resolve_dt_rank("auto", d) for d in (8, 16, 17, 24, 96, 200)] == [1, 1, 2, 2, 6, 13]
    assert resolve_dt_rank(3, 96) == 3
    for bad in (0, -2):  # a rank is a positive number of channels
        with pytest.raises(ValueError, match="dt_rank"):
            resolve_dt_rank(bad, 96)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(shortcut="resnet"), "shortcut"),
        (dict(T=0), "T"),
        (dict(T=True), "T must be a positive int, got True"),
        (dict(patch_size=3), "patch_size"),
        (dict(dims=[8, 16]), "dims"),
        # bools and fractions are refused, not taken for 1 or truncated
        (dict(dims=True), "dims must be a sequence of ints, got True"),
        (dict(dims=0), "dims must be >= 1"),
        (dict(dims=[8, 16.5]), "dims must be ints >= 1"),
        (dict(depths=[1, True]), "depths must be ints >= 0"),
        (dict(depths=[1.5, 1]), "depths must be ints >= 0"),
        (dict(depths=[1, -1]), "depths must be ints >= 0"),
        (dict(dt_rank=True), "dt_rank"),
        # refused when built, not at the first forward
        (dict(backend="foo"), "backend must be one of"),
        (dict(mlp_ratio=0), "mlp_ratio must be a positive number"),
        (dict(ssm_ratio=0.0), "ssm_ratio must be a positive number"),
        (dict(in_chans=0), "in_chans must be a positive int"),
    ],
)
def test_bad_svmamba_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("svmamba_cifar", **kwargs)


def test_stage_lists_must_match_the_number_of_stages():
    # one width per stage, not more (a fourth width for three stages was silently dropped)
    with pytest.raises(ValueError, match="dims has 4 entries"):
        create_model("svmamba_cifar", dims=[8, 16, 32, 64], depths=[1, 1, 1])
    with pytest.raises(ValueError, match="dims has 2 entries"):
        create_model("vmamba_cifar", dims=[8, 16], depths=[1, 1, 1])
    # QKFormer has exactly three stages: a fourth depth is refused, not ignored, and two are
    # refused when built, not with an IndexError
    for depths in ((1, 1, 1, 1), (1, 1)):
        with pytest.raises(ValueError, match="depths must have 3 entries"):
            create_model("qkformer_cifar", embed_dim=32, num_heads=1, depths=depths)
    # no stage at all is refused when built (not an IndexError)
    for family in ("svmamba_cifar", "vmamba_cifar"):
        with pytest.raises(ValueError, match="depths must name at least one stage"):
            create_model(family, depths=[])


@pytest.mark.parametrize("family", ["svmamba_cifar", "svmamba_para133", "vmamba_cifar", "qkformer_cifar"])
def test_every_family_checks_backend_and_sizes_when_built(family):
    small = SMALL[family][1]
    for kwargs, match in [
        (dict(backend="foo"), "backend must be one of"),
        (dict(in_chans=0), "in_chans"),
        (dict(in_chans=True), "in_chans"),
    ]:
        with pytest.raises(ValueError, match=match):
            create_model(family, **{**small, **kwargs})
    with pytest.raises(ValueError, match="backend must be one of"):
        set_backend(create_model(family, **small), "cuda")


def test_qkformer_heads_must_divide_widths():
    with pytest.raises(ValueError, match="num_heads"):
        create_model("qkformer_cifar", embed_dim=64, num_heads=3)
    # the stem halves E/4: an odd E/4 (embed_dim 36 -> 9) is refused even with one head
    with pytest.raises(ValueError, match="embed_dim / 4 even"):
        create_model("qkformer_cifar", embed_dim=36, depths=(1, 1, 1), num_heads=1)
    for heads in (0, -1, 2.0):  # (0 divided by zero, -1 built a model that failed in forward)
        with pytest.raises(ValueError, match="num_heads must be a positive int"):
            create_model("qkformer_cifar", embed_dim=32, depths=(1, 1, 1), num_heads=heads)


def test_model_attributes():
    for name in list_models():
        model, _ = small_model(name)
        assert model.spiking == name.startswith(("svmamba", "qkformer")), name
        assert (1 if name.startswith("vmamba") else SMALL[name][1]["T"]) == model.T, name
        first = model.first_conv
        assert isinstance(first, nn.Conv2d) and first.in_channels == 3, name
        assert any(first is m for m in model.modules())


# --------------------------------------------------------------------------------------------
# Forward and backward


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_backward_reaches_every_parameter(name):
    model, img = small_model(name)
    model.train()
    x = images(3, img)
    logits = model(x)
    assert logits.shape == (3, NUM_CLASSES)
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


def test_svmamba_sew_forward_backward():
    model, img = small_model("svmamba_cifar", shortcut="sew")
    logits = model(images(2, img))
    assert logits.shape == (2, NUM_CLASSES)
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", ["vmamba_cifar", "svmamba_cifar", "qkformer_cifar"])
def test_bf16_autocast(name):
    """Under bf16 autocast the scan gets bf16 u/B/C/dt_low (returning fp32) and LIFs bf16 currents."""
    model, img = small_model(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images(2, img))
    assert torch.isfinite(logits).all() and logits.shape == (2, NUM_CLASSES)
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Spikes


def record_lif_outputs(model):
    outputs = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: outputs.append((mod, out.detach())))
        for m in model.modules()
        if isinstance(m, MultiStepLIF)
    ]
    return outputs, hooks


@pytest.mark.parametrize("name,extra", [(n, {}) for n in SPIKING] + [("svmamba_cifar", dict(shortcut="sew"))])
def test_every_lif_output_is_binary(name, extra):
    model, img = small_model(name, **extra)
    outputs, hooks = record_lif_outputs(model)
    model(images(2, img))
    for h in hooks:
        h.remove()
    lifs = [m for m in model.modules() if isinstance(m, MultiStepLIF)]
    assert len(lifs) > 5
    assert {id(m) for m, _ in outputs} == {id(m) for m in lifs}, "some LIF never ran"
    assert len(outputs) == len(lifs), "a LIF ran more than once per forward"
    for mod, out in outputs:
        assert out.shape[0] == model.T, "LIFs must integrate over T (time first)"
        assert ((out == 0) | (out == 1)).all(), f"non-binary output from {mod}"
    rate = sum(out.sum() for _, out in outputs) / sum(out.numel() for _, out in outputs)
    assert 0 < rate < 1, f"firing rate {rate}"


def inputs_of_weight_layers(model):
    """(module name, input) of every Conv2d / Linear, and the scan input u of every SS2D core."""
    names = {m: n for n, m in model.named_modules()}
    seen = []
    kinds = (nn.Conv2d, nn.Linear, CrossScanSSM)
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: seen.append((names[mod], inp[0].detach())))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    return seen, hooks


@pytest.mark.parametrize(
    "name,extra",
    [
        ("svmamba_cifar", {}),
        ("svmamba_cifar", dict(shortcut="sew")),
        ("qkformer_cifar", {}),
        ("qkformer_10_384", {}),
    ],
)
def test_only_the_first_conv_sees_real_values(name, extra):
    """Spike-driven: every weight layer but the stem's first conv gets spikes (sew: spike counts).

    The head is the exception of a different kind: it reads the mean over T and space of
    spikes, which equals the mean of the per-step linear maps of binary inputs.
    """
    model, img = small_model(name, **extra)
    seen, hooks = inputs_of_weight_layers(model)
    model(images(2, img))
    for h in hooks:
        h.remove()
    first = model.first_conv
    first_name = next(n for n, m in model.named_modules() if m is first)
    binary_stream = name.startswith("svmamba") and extra.get("shortcut", "membrane") == "membrane"
    checked = 0
    for lname, inp in seen:
        if lname in (first_name, "head"):
            continue
        checked += 1
        if binary_stream:
            assert ((inp == 0) | (inp == 1)).all(), f"{lname} receives non-spikes"
        else:  # SEW: sums of spikes, non-negative integers
            assert (inp >= 0).all() and (inp == inp.round()).all(), f"{lname} receives non-spike-counts"
    assert checked > 10


def test_svmamba_cifar_stages_run_at_16_8_and_4_px():
    # patch 2 (strides 2 then 1: the first conv already at half resolution) and a stride-2
    # downsampling before stages 2 and 3: 32 px -> 16, 8, 4
    model = create_model("svmamba_cifar", num_classes=5, dims=8, depths=(1, 1, 1), T=2, backend="torch")
    shapes = []
    modules = [model.first_conv, *model.stages]
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for s in modules]
    with torch.no_grad():
        model.eval()(images(1, 32))
    for h in hooks:
        h.remove()
    assert shapes == [(2, 4, 16, 16), (2, 1, 8, 16, 16), (2, 1, 16, 8, 8), (2, 1, 32, 4, 4)]


def test_svmamba_block_adds_both_branches_to_the_stream():
    """x = x + Mixer(x); x = x + MLP(x): with a branch's last BN zeroed the branch adds nothing,
    and the block passes the rest through unchanged."""
    model = create_model("svmamba_cifar", num_classes=5, dims=8, depths=(1, 1, 1), T=2, backend="torch")
    block = model.stages[0].block0.eval()
    x = torch.randn(2, 3, 8, 4, 4)
    with torch.no_grad():
        for bn in (block.mixer.out_proj.bn, block.mlp.fc2.bn):
            bn.weight.zero_()
            bn.bias.zero_()
        assert torch.equal(block(x), x)
        block.mlp.fc2.bn.bias.fill_(1.5)  # the MLP now adds 1.5 everywhere
        torch.testing.assert_close(block(x), x + 1.5)


# --------------------------------------------------------------------------------------------
# No leaked state; batch independence


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_input_twice_gives_identical_logits(name):
    model, img = small_model(name)
    x = images(2, img)
    model.train()  # BN batch statistics; LIFs must still restart from v = 0
    assert torch.equal(model(x), model(x))
    model.eval()
    first = model(x)
    model(images(2, img, seed=7))  # a different batch in between must not matter either
    assert torch.equal(model(x), first)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batch_of_one_matches_row_of_batch(name):
    """In eval mode every sample is computed on its own (fp64 so that no spike sits on a rounding edge)."""
    model, img = small_model(name)
    model = model.double().eval()
    x = images(3, img).double()
    with torch.no_grad():
        batch = model(x)
        for i in range(3):
            single = model(x[i : i + 1])
            torch.testing.assert_close(single[0], batch[i], rtol=1e-9, atol=1e-9)


def test_batch_of_one_matches_row_of_batch_fp32():
    model, img = small_model("svmamba_cifar")
    model.eval()
    x = images(4, img)
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(singles, batch, rtol=1e-5, atol=1e-5)


def test_direct_encoding_presents_each_frame_at_its_own_step():
    # (B, T, C, H, W) frames -> (T, B, C, H, W): step t of sample b is that sample's frame t
    from svm_models.layers import encode_direct

    B, T = 2, 3
    frames = torch.arange(B * T, dtype=torch.float32).view(B, T, 1, 1, 1).expand(B, T, 2, 4, 4)
    x = encode_direct(frames, T)
    assert x.shape == (T, B, 2, 4, 4)
    for t in range(T):
        for b in range(B):
            assert (x[t, b] == b * T + t).all(), (t, b)
    # a static image is the same at every step
    img = torch.randn(B, 2, 4, 4)
    assert all(torch.equal(step, img) for step in encode_direct(img, T))


def test_drop_path():
    dp = DropPath(0.5).train()
    x = torch.ones(64, 3, 2, 2)
    y = dp(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(dp.eval()(x), x)


def test_drop_path_of_one_drops_everything_without_nan():
    # keep = 0: x * mask / keep was 0 / 0
    y = DropPath(1.0).train()(torch.ones(8, 3))
    assert torch.equal(y, torch.zeros(8, 3))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_drop_path_rate_outside_zero_one_raises(p):
    with pytest.raises(ValueError, match="drop path rate"):
        DropPath(p)


def test_vmamba_drop_path_rate_is_checked():
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("vmamba_cifar", dims=[8, 16], depths=[1, 1], drop_path_rate=-0.1)


def test_vmamba_drop_path_rate_of_one_is_accepted():
    # the range is [0, 1], both ends included: the last block is then always dropped in training
    model = create_model("vmamba_cifar", dims=[8, 16], depths=[1, 1], drop_path_rate=1.0)
    assert model.layers[-1][0][-1].drop_path.p == 1.0


def test_vmamba_drop_path_grows_linearly_over_all_blocks():
    # guards the dpr index: each block's rate is its place among *all* blocks (sum(depths[:i]) + j),
    # not its place within its stage
    model = create_model("vmamba_cifar", dims=8, depths=(1, 2, 1), drop_path_rate=0.3)
    rates = [block.drop_path.p for layer in model.layers for block in layer[0]]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_vmamba_averages_event_frames_over_time():
    # guards VMamba.forward_features: (B, T, C, H, W) frames are averaged over T, not one frame taken
    model, img = small_model("vmamba_cifar")
    model.eval()
    frames = torch.randn(2, 3, 3, img, img, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(frames), model(frames.mean(dim=1)))


# --------------------------------------------------------------------------------------------
# timm's head conventions: num_classes=0, reset_classifier, pre_logits, pretrained


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_classifier_returns_pooled_features(name):
    model, img = tiny_model(name, num_classes=0)
    x = images(2, img)
    model.eval()
    with torch.no_grad():
        pooled = model(x)
        assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
        assert pooled.shape == (2, model.num_features)
        # the same features a model with a classifier feeds it
        model.reset_classifier(3)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and head.in_features == model.num_features
        assert head.out_features == 3
        assert model.num_classes == 3 and torch.equal(head.bias, torch.zeros(3))
        torch.testing.assert_close(model(x), head(pooled), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["svmamba_cifar", "vmamba_cifar", "qkformer_cifar", "svmamba_para133"])
def test_reset_classifier_trains_the_new_head(name):
    model, img = small_model(name)
    model.reset_classifier(7)
    assert model.get_classifier().weight.std() < 0.05  # truncated normal(0.02), as at construction
    logits = model(images(2, img))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.get_classifier().weight.grad is not None
    model.reset_classifier(0)
    assert model(images(2, img)).shape == (2, model.num_features)


def test_reset_classifier_follows_the_models_dtype():
    # guards reset_classifier's .to(dtype=...): a float64 model got a float32 head and failed in forward
    model, img = small_model("vmamba_cifar")
    model = model.double().eval()
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.float64
    with torch.no_grad():
        assert model(images(1, img).double()).dtype == torch.float64


@pytest.mark.parametrize("num_classes", [-1, 2.0, True])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("svmamba_cifar", num_classes=num_classes, dims=[8, 16], depths=[1, 1])
    model, _ = small_model("vmamba_cifar")
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(num_classes)


def test_pretrained_weights_are_refused_clearly():
    model = create_model("svmamba_cifar", pretrained=False, num_classes=4, dims=[8, 16], depths=[1, 1])
    assert model.num_classes == 4
    with pytest.raises(ValueError, match="downloads nothing"):
        create_model("svmamba_cifar", pretrained=True)


# --------------------------------------------------------------------------------------------
# Parameter counts of the published configurations


PUBLISHED = [
    ("vmamba_t", 1000, 30_249_064),  # VMamba-T[s1l8], VMamba v2
    ("qkformer_cifar", 100, 6_740_884),  # HST-4-384, CIFAR-100
    ("qkformer_cifar", 10, 6_706_234),  # HST-4-384, CIFAR-10
    ("qkformer_10_384", 1000, 16_473_688),
    ("qkformer_10_512", 1000, 29_079_336),
    ("qkformer_10_768", 1000, 64_962_760),
]


@pytest.mark.parametrize("name,classes,expected", PUBLISHED)
def test_published_parameter_counts(name, classes, expected):
    assert param_count(create_model(name, num_classes=classes)) == expected


def svmamba_param_formula(C, depths, classes, d_state=1, mlp_ratio=4, ssm_ratio=1):
    """SVMamba's parameter count from its definition (independent of the module code)."""
    dims = [C * 2**i for i in range(len(depths))]
    total = 27 * (C // 2) + C + 9 * (C // 2) * C + 2 * C  # stem: conv, BN, conv, BN
    for i, (d, depth) in enumerate(zip(dims, depths)):
        if i:
            total += 9 * dims[i - 1] * d + 2 * d  # downsample conv + BN
        Di, R, N, h = int(ssm_ratio * d), math.ceil(d / 16), d_state, int(mlp_ratio * d)
        mixer = (d * 2 * Di + 4 * Di) + (9 * Di + 2 * Di)  # in_proj (+gate) + BN, dwconv + BN
        mixer += 4 * (R + 2 * N) * Di + 4 * Di * R + 4 * Di + 4 * Di * N + 4 * Di  # x_proj, dt w/b, A, D
        mixer += 2 * Di + Di * d + 2 * d  # y_norm, out_proj + BN
        mlp = d * h + 2 * h + h * d + 2 * d
        total += depth * (mixer + mlp)
    return total + dims[-1] * classes + classes


@pytest.mark.parametrize("name", ["svmamba_t", "svmamba_cifar"])
def test_svmamba_parameter_count(name, capsys):
    model = create_model(name, num_classes=1000)
    n = param_count(model)
    assert n == svmamba_param_formula(96, [1, 2, 4], 1000)
    small = create_model(name, num_classes=10, dims=32, depths=[2, 1], d_state=4, mlp_ratio=2)
    assert param_count(small) == svmamba_param_formula(32, [2, 1], 10, d_state=4, mlp_ratio=2)
    # a scan twice as wide as the block: dt_rank still follows the block width (VMamba's rule)
    wide = create_model(name, num_classes=10, dims=32, depths=[1, 1], ssm_ratio=2.0)
    assert param_count(wide) == svmamba_param_formula(32, [1, 1], 10, ssm_ratio=2)
    with capsys.disabled():
        print(f"\n{name}: {n:,} parameters at 1000 classes")


# --------------------------------------------------------------------------------------------
# Initialisation


def test_vmamba_position_wise_linears_start_truncated_normal():
    # VMamba initialises every linear, its 1x1 Linear2d layers included, with trunc_normal(0.02)
    # and zero bias (PyTorch's conv default at fan-in 32 would have a std near 0.1)
    torch.manual_seed(0)
    model = create_model("vmamba_cifar", dims=32, depths=(1, 1, 1))
    linears = [m for m in model.modules() if isinstance(m, Linear2d)]
    assert len(linears) == 3 * 4  # in_proj, out_proj, fc1, fc2 per block
    for m in linears:
        assert abs(m.weight.std().item() - 0.02) < 0.004, m
        assert m.bias is None or torch.equal(m.bias, torch.zeros_like(m.bias)), m


def test_ssm_init_follows_vmamba():
    torch.manual_seed(0)
    ssm = CrossScanSSM(d_inner=64, d_state=4, dt_rank=4)
    dt = F.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert dt.max() > 0.05 and dt.min() < 2e-3  # log-uniform over [1e-3, 0.1]
    assert ssm.dt_projs_weight.abs().max() <= 4**-0.5
    assert torch.equal(ssm.A_logs, torch.log(torch.arange(1.0, 5.0)).repeat(4 * 64, 1))
    assert torch.equal(ssm.Ds, torch.ones(4 * 64))
    assert ssm.x_proj_weight.shape == (4, 4 + 8, 64) and ssm.x_proj_weight.abs().max() <= 64**-0.5


def test_ssm_init_floors_the_time_steps():
    # guards the dt_init_floor clamp: time steps drawn below the floor start at the floor
    ssm = CrossScanSSM(d_inner=8, d_state=1, dt_rank=1, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(ssm.dt_projs_bias), torch.full((4, 8), 1e-4))


def test_ssm_init_draws_vmambas_distributions():
    """Not only within VMamba's bounds: x_proj U(-D^-0.5, D^-0.5) and dt_proj U(-R^-0.5, R^-0.5)
    fill their ranges symmetrically, and dt = softplus(bias) is log-uniform over [dt_min, dt_max]
    (a uniform dt puts 90 % of the time steps above 0.01 instead of half)."""
    torch.manual_seed(0)
    D, R = 256, 4
    ssm = CrossScanSSM(d_inner=D, d_state=2, dt_rank=R)
    for w, bound in ((ssm.x_proj_weight, D**-0.5), (ssm.dt_projs_weight, R**-0.5)):
        w = w.detach() / bound
        assert w.abs().max() <= 1 and w.max() > 0.98 and w.min() < -0.98
        assert abs(w.mean()) < 0.05 and abs(w.std() - 3**-0.5) < 0.02
    log_dt = torch.log10(F.softplus(ssm.dt_projs_bias.detach().double()))
    assert log_dt.min() >= -3 - 1e-4 and log_dt.max() <= -1 + 1e-4
    assert log_dt.min() < -2.95 and log_dt.max() > -1.05
    assert abs(log_dt.mean() + 2) < 0.1 and abs(log_dt.std() - 3**-0.5) < 0.05


# --------------------------------------------------------------------------------------------
# Backends


@pytest.mark.parametrize("name", ["svmamba_cifar", "vmamba_cifar", "qkformer_cifar"])
@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_backend_reaches_every_lif_and_scan(name, backend):
    model, _ = small_model(name, backend=backend)
    kernels = [m for m in model.modules() if isinstance(m, (MultiStepLIF, CrossScanSSM))]
    assert kernels and all(m.backend == backend for m in kernels)
    set_backend(model, "torch")
    assert all(m.backend == "torch" for m in kernels) and model.backend == "torch"


def test_auto_backend_runs_torch_on_cpu():
    model, img = small_model("svmamba_cifar", backend="auto")
    reference, _ = small_model("svmamba_cifar", backend="torch")
    reference.load_state_dict(model.state_dict())
    x = images(2, img)
    assert torch.equal(model(x), reference(x))


def run_fwd_bwd(model, x):
    model.zero_grad()
    logits = model(x)
    (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def compare_backends(triton_model, torch_model, x):
    lt, gt = run_fwd_bwd(triton_model, x)
    lr, gr = run_fwd_bwd(torch_model, x)
    assert_close_rel(lt, lr, 1e-4, "logits")
    for n in gr:
        assert_close_rel(gt[n], gr[n], 1e-3, n)


TINY_TRITON = dict(num_classes=4, img_size=8, dims=8, depths=(1, 1), T=2, d_state=2)


def test_svmamba_triton_lif_matches_torch():
    """The Triton LIF kernels (interpreter) inside a small SVMamba, scans on the torch backend."""
    torch.manual_seed(0)
    model = create_model("svmamba_cifar", backend="triton", **TINY_TRITON)
    for m in model.modules():
        if isinstance(m, CrossScanSSM):
            m.backend = "torch"
    reference = create_model("svmamba_cifar", backend="torch", **TINY_TRITON)
    reference.load_state_dict(model.state_dict())
    compare_backends(model, reference, images(2, 8))


@pytest.mark.slow  # a whole model through the fused scan's passes under the interpreter
def test_svmamba_triton_matches_torch():
    """The whole small SVMamba on the Triton kernels (LIF and fused scan) against the torch backend.

    Needs svm_kernels' Triton SS2D scan (svm_kernels/ss2d/fused.py).
    """
    torch.manual_seed(0)
    model = create_model("svmamba_cifar", backend="triton", **TINY_TRITON)
    reference = create_model("svmamba_cifar", backend="torch", **TINY_TRITON)
    reference.load_state_dict(model.state_dict())
    # one image: the interpreter's time grows with the batch, the kernels' paths do not
    compare_backends(model, reference, images(1, 8))


def test_package_exports():
    assert set(svm_models.__all__) == {"create_model", "list_models", "register_model"}


def test_created_model_knows_its_registered_name():
    assert svm_models.create_model("vmamba_cifar", num_classes=10).model_name == "vmamba_cifar"

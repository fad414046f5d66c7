"""Memory-lean training: same loss and gradients as the plain path, fewer saved bytes."""

import pytest
import torch
from helpers import SMALL
from torch import nn

import svm_models
from svm_models import spike_layers
from svm_models.layers import ConvBN, SeqConvBN
from svm_models.memory import MemoryReport, compare_memory_efficient, profile_training_memory
from svm_models.memory import main as memory_main
from svm_models.spike_layers import set_memory_efficient, spike_mul

# Spiking models of the shared table (not all: qkformer_10_512 and _768 are left out), plus
# SVMamba with SEW shortcuts and svmamba_para133 at its ablation ladder's last two rungs (their
# depthwise conv takes a channel slice of a channels_last tensor); qkformer_10_384 at 64 px
# instead of 128 (these tests build each model several times: a quarter of the pixels).
_LADDER_TOP = dict(stem="spiking", ffn="spiking", norm="bn", scan_input="spike", gate="conv")
SPIKING = {
    "svmamba_t": SMALL["svmamba_t"],
    "svmamba_cifar": SMALL["svmamba_cifar"],
    "svmamba_cifar_sew": (SMALL["svmamba_cifar"][0], dict(SMALL["svmamba_cifar"][1], shortcut="sew")),
    "qkformer_cifar": SMALL["qkformer_cifar"],
    "qkformer_10_384": (64, SMALL["qkformer_10_384"][1]),
    "svmamba_para133_gate": (16, dict(SMALL["svmamba_para133"][1], **_LADDER_TOP)),
    "svmamba_para133_mixer_bn": (16, dict(SMALL["svmamba_para133"][1], **_LADDER_TOP, mixer_norm="bn")),
}
MODEL_OF = {"svmamba_cifar_sew": "svmamba_cifar", "svmamba_para133_gate": "svmamba_para133"}
MODEL_OF["svmamba_para133_mixer_bn"] = "svmamba_para133"
# Module classes whose saved bytes this change does not touch (the LIF and the scan save their own).
OTHER_OWNERS = {"MultiStepLIF", "CrossScanSSM"}


def build(key, memory_efficient, seed=0):
    img, kw = SPIKING[key]
    torch.manual_seed(seed)
    name = MODEL_OF.get(key, key)
    return svm_models.create_model(name, num_classes=5, img_size=img, memory_efficient=memory_efficient, **kw)


def train_step(model, images, targets):
    model.train()
    loss = nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("key", sorted(SPIKING))
def test_loss_and_every_gradient_bit_identical(key):
    img = SPIKING[key][0]
    images, targets = torch.randn(3, 3, img, img), torch.tensor([0, 3, 4])
    lean, plain = build(key, True), build(key, False)
    assert lean.memory_efficient and not plain.memory_efficient
    loss_a, grads_a, bufs_a = train_step(lean, images, targets)
    loss_b, grads_b, bufs_b = train_step(plain, images, targets)
    assert torch.isfinite(loss_a)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None, name
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert any(g.abs().sum() > 0 for g in grads_a.values())
    for name in bufs_a:  # BN running statistics and step counts
        assert torch.equal(bufs_a[name], bufs_b[name]), name


@pytest.mark.parametrize(
    "kernel,stride,groups,bias,pool,spike_input",
    [
        (1, 1, 1, False, False, True),
        (3, 2, 1, True, False, True),
        (3, 1, 5, False, False, True),  # depthwise
        (3, 1, 1, True, True, True),  # max-pooled
        (1, 2, 1, True, False, False),  # real (non-spike) input: saved as it is
    ],
)
def test_conv_bn_unit_matches_plain_modules(kernel, stride, groups, bias, pool, spike_input):
    torch.manual_seed(0)
    plain = SeqConvBN(5, 15, kernel, stride, groups, bias, pool, spike_input)
    lean = SeqConvBN(5, 15, kernel, stride, groups, bias, pool, spike_input)
    lean.load_state_dict(plain.state_dict())
    lean.memory_efficient = True
    shape = (3, 2, 5, 11, 7)  # (T, B, C, H, W), odd sizes
    x = (torch.rand(shape) < 0.4).float() if spike_input else torch.randn(shape)
    g = torch.randn_like(plain(x.clone()))
    plain.load_state_dict(lean.state_dict())  # undo the statistics update of that call
    outs = {}
    for name, m in (("plain", plain), ("lean", lean)):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * g).sum().backward()
        outs[name] = [y, xi.grad, *(p.grad for p in m.parameters()), *m.buffers()]
    for a, b in zip(outs["plain"], outs["lean"]):
        assert torch.equal(a, b)


def test_conv_bn_cumulative_momentum_and_eval():
    torch.manual_seed(0)
    plain, lean = SeqConvBN(4, 6, 3, spike_input=True), SeqConvBN(4, 6, 3, spike_input=True)
    for m in (plain, lean):
        m.bn.momentum = None  # cumulative average: the factor depends on the step count
    lean.load_state_dict(plain.state_dict())
    lean.memory_efficient = True
    for _ in range(3):
        x = (torch.rand(2, 3, 4, 6, 6) < 0.5).float()
        assert torch.equal(plain(x), lean(x))
    assert torch.equal(plain.bn.running_var, lean.bn.running_var)
    assert plain.bn.num_batches_tracked.item() == lean.bn.num_batches_tracked.item() == 3
    plain.eval(), lean.eval()
    x = (torch.rand(2, 3, 4, 6, 6) < 0.5).float()
    assert torch.equal(plain(x), lean(x))


def test_conv_bn_under_bf16_autocast_matches_plain():
    torch.manual_seed(0)
    plain, lean = SeqConvBN(6, 10, 3, 2, spike_input=True), SeqConvBN(6, 10, 3, 2, spike_input=True)
    lean.load_state_dict(plain.state_dict())
    lean.memory_efficient = True
    x = (torch.rand(2, 3, 6, 9, 9) < 0.4).float()
    outs = {}
    for name, m in (("plain", plain), ("lean", lean)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xi)
        y.float().square().sum().backward()
        outs[name] = [y, xi.grad, *(p.grad for p in m.parameters())]
    for a, b in zip(outs["plain"], outs["lean"]):
        assert a.dtype == b.dtype
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_spike_mul_broadcast_and_mixed_dtypes():
    a = (torch.rand(2, 3, 4, 1, 5) < 0.5).float().requires_grad_(True)
    b = (torch.rand(2, 3, 4, 6, 5) < 0.5).to(torch.bfloat16).requires_grad_(True)
    g = torch.randn(2, 3, 4, 6, 5)
    grads = []
    for lean in (True, False):
        out = spike_mul(a, b, memory_efficient=lean)
        ga, gb = torch.autograd.grad(out, (a, b), g)
        grads.append((out, ga, gb))
    for x, y in zip(*grads):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_debug_check_raises_on_non_binary_input(monkeypatch):
    layer = SeqConvBN(4, 4, 1, spike_input=True)
    layer.memory_efficient = True
    x = torch.rand(2, 2, 4, 3, 3)  # real values into a layer built for spikes
    monkeypatch.setattr(spike_layers, "DEBUG_CHECKS", True)
    with pytest.raises(ValueError, match="built for spike input"):
        layer(x)
    with pytest.raises(ValueError, match="built for spike input"):
        spike_mul(x.requires_grad_(True), x)
    layer.spike_input = False  # built for real input: the normal path, no check
    layer(x)


@pytest.mark.parametrize("key", sorted(SPIKING))
def test_every_layer_built_for_spikes_receives_spikes(key, monkeypatch):
    """With the debug check on, a training step (fp32 and bf16) packs only binary tensors, so
    the per-module spike_input choices (membrane vs sew, stream vs LIF output) are right."""
    monkeypatch.setattr(spike_layers, "DEBUG_CHECKS", True)
    img = SPIKING[key][0]
    model = build(key, True)
    for amp in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(torch.randn(2, 3, img, img) * 3)
        out.float().sum().backward()


def spike_input_flags(model):
    return {n: m.spike_input for n, m in model.named_modules() if hasattr(m, "spike_input")}


def test_svmamba_builds_every_layer_after_the_first_conv_for_spikes():
    """Membrane shortcut: every conv and scan after the stem's first conv reads LIF spikes, so
    every one of them saves its input as bits (the converse of the test above)."""
    flags = spike_input_flags(build("svmamba_cifar", True))
    assert len(flags) > 10 and [n for n, f in flags.items() if not f] == ["stem.conv1"]


def test_qkformer_builds_the_layers_after_a_lif_for_spikes():
    """SPEDS main paths after the first conv, the stem's shortcut, the attention projections
    and fc2 read LIF outputs; the image, q/k/v, fc1 and the stage entries (proj3 and the stage
    shortcuts) read the SEW stream."""

    def reads_spikes(unit):
        last = unit.rsplit(".", 1)[-1]
        return (
            last in ("proj1", "proj2", "proj4", "fc2")
            or unit.endswith("attn.proj")
            or unit == "patch_embed1.shortcut"
        )

    for key in ("qkformer_cifar", "qkformer_10_384"):
        flags = {n.removesuffix(".conv_bn"): f for n, f in spike_input_flags(build(key, True)).items()}
        assert len(flags) > 10
        assert {n: reads_spikes(n) for n in flags} == flags, key


# QKFormer's q/k/v/fc1 read spike counts (the SEW stream), saved as they are: a smaller factor.
@pytest.mark.parametrize("key,factor", [("svmamba_cifar", 5), ("qkformer_cifar", 3)])
def test_saved_bytes_drop(key, factor):
    img = SPIKING[key][0]
    model = build(key, True)
    images = torch.randn(2, 3, img, img)
    for precision in ("fp32", "bf16"):
        r = compare_memory_efficient(model, images, precision)
        old, new = r[False], r[True]
        assert new.saved_bytes < old.saved_bytes
        # The bytes of the layers this change covers (everything but the LIFs and the scan)
        # shrink by ``factor``; spikes alone shrink 16x (bf16) to 32x (fp32).
        covered = [sum(v for k, v in rep.by_module.items() if k not in OTHER_OWNERS) for rep in (old, new)]
        assert covered[1] * factor <= covered[0], (precision, covered)
        # The rest is untouched.
        rest = [sum(v for k, v in rep.by_module.items() if k in OTHER_OWNERS) for rep in (old, new)]
        assert rest[0] == rest[1]
    assert model.memory_efficient  # compare restores the switch


def test_profile_restores_the_model_and_counts_per_image():
    model = build("svmamba_cifar", True)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r1 = profile_training_memory(model, torch.randn(1, 3, 16, 16))
    r4 = profile_training_memory(model, (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert r1.peak_bytes is None  # CPU
    assert r4.batch_size == 4 and r4.saved_bytes_per_image == r4.saved_bytes / 4
    # Activations grow with the batch: 4 images save more than one, about 4x.
    assert 3 * r1.saved_bytes < r4.saved_bytes < 5 * r1.saved_bytes
    assert sum(r4.by_module.values()) == r4.saved_bytes
    with pytest.raises(ValueError, match="precision"):
        profile_training_memory(model, torch.randn(1, 3, 16, 16), precision="int8")


def test_bytes_per_image_are_not_rounded_down():
    # guards MemoryReport's per-image figures: a true division, not a floor one
    r = MemoryReport(3, 1000, 2, 10, "fp32", {})
    assert r.saved_bytes_per_image == pytest.approx(1000 / 3)
    assert r.peak_bytes_per_image == pytest.approx(10 / 3)


def test_switch_off_and_on():
    model = build("qkformer_cifar", True)
    set_memory_efficient(model, False)
    assert not any(getattr(m, "memory_efficient", False) for m in model.modules())
    set_memory_efficient(model, True)
    assert model.stage1[0].attn.proj.conv_bn.memory_efficient


def test_cli_table_and_bad_arguments(capsys):
    args = ["--model", "svmamba_cifar", "--img-size", "16", "--batch-size", "2", "--T", "2"]
    assert memory_main([*args, "--compare", "--precision", "fp32", "--by-module"]) == 0
    out = capsys.readouterr().out
    assert "| fp32 | False |" in out and "| fp32 | True |" in out and "MultiStepLIF" in out
    for bad in (
        ["--model", "nope"],
        ["--model", "svmamba_cifar", "--batch-size", "0"],
        ["--precision", "x"],
        ["--model", "svmamba_cifar", "--img-size", "5"],  # (the accounting CLI's and configs' minimum)
        ["--model", "svmamba_cifar", "--plain", "--compare"],  # (--plain was ignored)
        ["--model", "svmamba_cifar", "--num-classes", "0"],  # (a ZeroDivisionError traceback)
    ):
        with pytest.raises(SystemExit) as e:
            code = memory_main(bad)
            raise SystemExit(code)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
    assert memory_main(["--model", "vmamba_cifar", "--img-size", "16", "--compare"]) == 2


def test_cli_plain_t_and_ratio(capsys):
    # Guards the memory CLI: --plain builds with memory_efficient off, --T reaches the model,
    # and the new / old column is the efficient run's bytes over the plain run's (below 1)
    args = ["--model", "svmamba_cifar", "--img-size", "16", "--batch-size", "2", "--T", "3"]
    assert memory_main([*args, "--plain"]) == 0
    out = capsys.readouterr().out
    assert "T = 3" in out.splitlines()[0] and "| fp32 | False |" in out and "| fp32 | True |" not in out
    assert memory_main([*args, "--compare"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp32 | True |"))
    assert 0 < float(row.split("|")[5]) < 1


def test_config_key(tmp_path):
    from svm_models.training import config as C
    from svm_models.training import engine

    base = dict(task_name="t", model="svmamba_cifar", dataset="digits", img_size=16, T=2)
    small = dict(dims=[8, 16], depths=[1, 1])
    assert C.validate({**base, "model_args": small})["memory_efficient"] is None
    for flag in (True, False):
        cfg = C.validate({**base, "model_args": small, "memory_efficient": flag})
        model = engine.build_model(cfg, 10)
        assert model.memory_efficient is flag and model.stem.conv2.memory_efficient is flag
    assert engine.build_model(C.validate({**base, "model_args": small}), 10).memory_efficient
    # An ANN has nothing to switch: the key is ignored.
    ann = C.validate(
        {**base, "model": "vmamba_cifar", "T": None, "memory_efficient": False, "model_args": small}
    )
    engine.build_model(ann, 10)
    with pytest.raises(C.ConfigError, match="not both"):
        C.validate({**base, "model_args": {**small, "memory_efficient": True}, "memory_efficient": False})
    with pytest.raises(C.ConfigError, match="memory_efficient"):
        C.validate({**base, "memory_efficient": "yes"})


def test_hooked_conv_takes_the_plain_path():
    """A forward hook on a unit's conv (e.g. a firing-rate monitor) still sees every call."""
    model = build("svmamba_cifar", True)
    seen = []
    handle = model.stem.conv2.conv.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    handle.remove()
    assert len(seen) == 1
    assert model.stem.conv2.memory_efficient  # the switch stays on; only this call was plain


def test_recompute_scan_same_gradients_fewer_bytes():
    img = SPIKING["svmamba_cifar"][0]
    images, targets = torch.randn(3, 3, img, img), torch.tensor([0, 3, 4])
    plain = build("svmamba_cifar", False)
    torch.manual_seed(0)
    rs = svm_models.create_model(
        "svmamba_cifar", num_classes=5, img_size=img, recompute_scan=True, **SPIKING["svmamba_cifar"][1]
    )
    assert (
        rs.stages[0].block0.mixer.ssm.recompute_scan and not plain.stages[0].block0.mixer.ssm.recompute_scan
    )
    loss_a, grads_a, _ = train_step(rs, images, targets)
    loss_b, grads_b, _ = train_step(plain, images, targets)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert grads_a[name] is not None and torch.equal(grads_a[name], grads_b[name]), name
    # bf16 autocast: the backward reruns the scan under the forward's autocast state.
    outs = []
    for m in (rs, plain):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(m(images).float(), targets)
        loss.backward()
        outs.append([loss] + [p.grad for p in m.parameters()])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    scan = [profile_training_memory(m, images).by_module.get("CrossScanSSM", 0) for m in (rs, plain)]
    assert scan[0] * 10 < scan[1], scan


def test_recompute_scan_keeps_only_its_spike_input_as_bits():
    """A scan built for spikes with recompute_scan saves nothing for the backward but u, 1 bit
    per spike: 8 * 2 * 4 * 4 = 256 spikes in 32 bytes (4 bytes each as float)."""
    from svm_models.layers import CrossScanSSM

    ssm = CrossScanSSM(8, 1, 1, backend="torch").train()
    ssm.spike_input = ssm.recompute_scan = True
    u = (torch.rand(2, 8, 4, 4) < 0.5).float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ssm(u)
    y.square().sum().backward()
    assert sum(t.numel() * t.element_size() for t in saved) == u.numel() // 8
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_recompute_scan_compiles_fullgraph():
    # dynamo cannot trace the recompute Function's autograd.grad: under compile the scan is
    # checkpointed with torch's own checkpoint (the same gradients)
    img = SPIKING["svmamba_cifar"][0]
    images, targets = torch.randn(3, 3, img, img), torch.tensor([0, 3, 4])
    torch.manual_seed(0)
    model = svm_models.create_model(
        "svmamba_cifar", num_classes=5, img_size=img, recompute_scan=True, **SPIKING["svmamba_cifar"][1]
    )
    _, eager, _ = train_step(model, images, targets)
    eager = {n: g.clone() for n, g in eager.items()}
    model.zero_grad()
    torch._dynamo.reset()
    _, compiled, _ = train_step(torch.compile(model, fullgraph=True, backend="aot_eager"), images, targets)
    compiled = {name.removeprefix("_orig_mod."): g for name, g in compiled.items()}
    assert compiled.keys() == eager.keys()
    for name, g in eager.items():
        torch.testing.assert_close(compiled[name], g, rtol=1e-5, atol=1e-7)


def test_backward_and_pool_hooks_take_the_plain_path():
    """Backward hooks on a unit's conv or BN, and hooks on its pool, are called as without the
    lean path (the fused node would skip them)."""
    model = build("svmamba_cifar", True)
    fired = []
    unit = model.stem.conv2
    handles = [
        unit.conv.register_full_backward_hook(lambda m, gi, go: fired.append("conv")),
        unit.bn.register_full_backward_hook(lambda m, gi, go: fired.append("bn")),
    ]
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    for h in handles:
        h.remove()
    assert sorted(fired) == ["bn", "conv"]
    img, kw = SPIKING["qkformer_10_384"]
    torch.manual_seed(0)
    qk = svm_models.create_model("qkformer_10_384", num_classes=5, img_size=img, memory_efficient=True, **kw)
    pool = qk.patch_embed1.proj.conv_bn.pool
    calls = []
    handle = pool.register_forward_hook(lambda m, a, o: calls.append(1))
    qk(torch.randn(1, 3, img, img)).sum().backward()
    handle.remove()
    assert calls == [1]


def test_global_hooks_take_the_plain_path():
    """Guards the check of global module hooks: the fused node would skip the unit's conv and BN."""
    unit = ConvBN(2, 3, 3, spike_input=True)
    unit.memory_efficient = True
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: seen.append(type(m).__name__))
    try:
        unit(torch.randint(0, 2, (2, 2, 4, 4)).float())
    finally:
        handle.remove()
    assert seen == ["Conv2d", "BatchNorm2d", "ConvBN"]


def test_non_zero_padding_mode_takes_the_plain_path():
    """Guards the padding_mode check: the fused node pads with zeros whatever the conv's mode."""
    torch.manual_seed(0)
    unit = ConvBN(2, 3, 3, spike_input=True)
    unit.conv.padding_mode = "reflect"
    x = torch.randint(0, 2, (2, 2, 4, 4)).float()
    state = {k: v.clone() for k, v in unit.state_dict().items()}
    plain = unit(x)
    unit.load_state_dict(state)
    unit.memory_efficient = True
    assert torch.equal(unit(x), plain)


def test_sync_batchnorm_takes_the_plain_path(monkeypatch):
    """SyncBatchNorm (DDP) must run its own forward, which syncs the batch statistics."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build("svmamba_cifar", True))
    calls = []
    # (no process group here: count the calls, and run a plain BatchNorm's forward in their place)
    monkeypatch.setattr(
        nn.SyncBatchNorm, "forward", lambda self, x: calls.append(1) or nn.BatchNorm2d.forward(self, x)
    )
    model.train()(torch.randn(2, 3, 16, 16))
    assert len(calls) == sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_batchnorm_subclass_takes_the_plain_path():
    """A BatchNorm2d subclass with a forward of its own (here one that counts its calls) is not
    the plain class the fused Conv -> BN node reproduces: its forward runs."""
    calls = []

    class CountingBN(nn.BatchNorm2d):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    unit = ConvBN(4, 6, 3, spike_input=True)
    unit.bn = CountingBN(6)
    unit.memory_efficient = True
    unit.train()((torch.rand(2, 4, 5, 5) < 0.5).float().requires_grad_()).sum().backward()
    assert calls == [1]


def test_one_value_per_channel_is_an_error_as_in_batchnorm():
    """Batch 1 on a 1 x 1 map: BatchNorm2d refuses it; the lean path did not and stored NaN
    running variances."""
    unit = ConvBN(4, 8, 3, spike_input=True)
    x = torch.randint(0, 2, (1, 4, 1, 1)).float()
    for lean in (False, True):
        unit.memory_efficient = lean
        var = unit.bn.running_var.clone()
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            unit.train()(x)
        assert torch.equal(unit.bn.running_var, var)


def test_svmamba_para133_has_the_memory_switch():
    img, kw = SMALL["svmamba_para133"]
    for flag in (True, False):
        model = svm_models.create_model(
            "svmamba_para133", num_classes=5, img_size=img, memory_efficient=flag, stem="spiking", **kw
        )
        units = [m for m in model.modules() if isinstance(m, ConvBN)]
        assert units and all(m.memory_efficient is flag for m in units)


def test_memory_profile_keeps_each_modules_mode():
    model = build("svmamba_cifar", True)
    model.eval()
    model.stem.conv2.train()  # a mixed state the caller set up
    profile_training_memory(model, torch.randn(2, 3, 16, 16))
    assert not model.training and model.stem.conv2.training and not model.head.training


class _Toy(nn.Module):
    """A sigmoid of the model's own forward, a Linear reading its output again, and a Tanh."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(12))
        self.fc, self.act = nn.Linear(12, 3), nn.Tanh()

    def forward(self, x):
        h = torch.sigmoid(x.flatten(1) + self.bias)  # saved by the model's own op, then by the Linear again
        return self.act(self.fc(h))


def test_saved_bytes_by_module_count_each_storage_once_for_its_first_saver():
    # Guards the counter: the model's own ops are "(model)", a storage saved twice is counted
    # once for the first module that saved it, parameters not at all, largest owner first
    model = _Toy()
    r = profile_training_memory(model, torch.randn(5, 3, 2, 2))  # 5 images, 3 classes: labels % 3
    assert list(r.by_module) == ["(model)", "Tanh"]
    assert r.by_module["Tanh"] == 5 * 3 * 4  # its fp32 output
    assert r.by_module["(model)"] >= 5 * 12 * 4 and sum(r.by_module.values()) == r.saved_bytes
    with pytest.raises(ValueError, match="batch must be images"):
        profile_training_memory(model, torch.randn(5, 12))


def test_profile_leaves_the_callers_gradients_as_they_were():
    # the step's gradients must not be added into gradients the caller holds
    model = _Toy()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    held = [p.grad for p in model.parameters()]
    profile_training_memory(model, torch.randn(4, 3, 2, 2))
    for p, g in zip(model.parameters(), held):
        assert p.grad is g and torch.equal(g, torch.ones_like(p))


def test_compare_memory_efficient_plain_first_and_the_switch_restored():
    model = build("svmamba_cifar", False)
    r = compare_memory_efficient(model, torch.randn(1, 3, 16, 16))
    assert list(r) == [False, True] and r[True].saved_bytes < r[False].saved_bytes
    assert model.memory_efficient is False and not model.stem.conv2.memory_efficient
    with pytest.raises(ValueError, match="no memory_efficient switch"):
        compare_memory_efficient(_Toy(), torch.randn(1, 3, 2, 2))


def test_cli_default_size_smallest_size_and_settings_the_model_refuses(monkeypatch, capsys):
    # Guards the CLI: the model's own img_size by default, --img-size 8 (the minimum) accepted,
    # a setting the model refuses (a ValueError) one error line; the ratio only on the lean row
    from fabricate import register_tiny

    tiny = register_tiny(monkeypatch)
    assert memory_main(["--model", tiny]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tiny} at 8 px, batch 4, T = -") and "| fp32 | None |" in out
    assert memory_main(["--model", tiny, "--img-size", "8", "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert memory_main(["--model", "svmamba_cifar", "--T", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    args = ["--model", "svmamba_cifar", "--img-size", "8", "--batch-size", "2", "--T", "1", "--compare"]
    assert memory_main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp32 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["False", "True"]
    assert rows[0].split("|")[5].strip() == "" and 0 < float(rows[1].split("|")[5]) < 1


# ----------------------------------------------------------------------------------------------
# bench/memory_check.py
# ----------------------------------------------------------------------------------------------
def test_memory_check_bytes_table_shows_lif_and_scan_apart(capsys):
    # Guards memory_check's bytes table: MiB (2**20), and the "of which LIF + scan" column is the
    # bytes the LIFs and the scan save, which the lean path leaves as they are
    import argparse

    from helpers import load_bench

    check = load_bench("memory_check")
    assert check.mib(3 * 2**20) == "3.00"
    args = argparse.Namespace(
        models=["svmamba_cifar"],
        precisions=["fp32"],
        img_size=8,
        T=2,
        batch=2,
        device="cpu",
        recompute_scan=False,
    )
    check.saved_bytes(args)
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| svmamba_cifar |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    plain, lean, ratio = float(cells[2]), float(cells[3]), float(cells[4])
    others = [float(v) for v in cells[5].split(" / ")]
    assert lean < plain and ratio == pytest.approx(lean / plain, abs=2e-3)
    assert others[0] == others[1] > 0 and others[0] < lean


def test_memory_check_speed_compares_plain_and_lean_in_alternating_rounds(monkeypatch, capsys):
    # Guards memory_check's speed rows: the plain model has the lean path and recompute_scan off,
    # the lean one both on (even where the config turns the lean path off), the rounds alternate
    # which runs first, and the ratio is lean / plain
    import argparse

    from helpers import load_bench

    check = load_bench("memory_check")
    calls = []

    def fake_steps(model, opt, batches, device):
        recompute = {m.recompute_scan for m in model.modules() if hasattr(m, "recompute_scan")}
        calls.append((model.memory_efficient, recompute))
        return 3.0 if model.memory_efficient else 1.0

    monkeypatch.setattr(check, "_steps", fake_steps)
    args = argparse.Namespace(
        config="configs/digits_svmamba.yaml",  # (memory_efficient: false)
        model_arg=["recompute_scan=true"],
        device="cpu",
        steps=1,
        rounds=2,
        verbose=True,
    )
    check.speed(args)
    assert calls[:2] == [(False, {False}), (True, {True})]  # the warm-up steps
    assert [flag for flag, _ in calls[2:]] == [False, True, True, False]
    out = capsys.readouterr().out
    assert "round 0: plain 1.000 s, lean 3.000 s, lean / plain 3.000" in out
    assert "median of ratios 3.000" in out

"""svm_models.accounting: fvcore MAC handles, firing rates, SOPs, energy, report, CLI.

Everything runs on the CPU with backend="torch" (the Triton op names are checked under the
interpreter). The only full-size model is VMamba-T at 224 px (its published FLOPs).
"""

import json
from collections import Counter

import pytest
import torch
from helpers import SMALL, images, tiny_model
from torch import nn

import svm_models
from svm_kernels import cross_selective_scan, multistep_lif
from svm_models import accounting, create_model, list_models
from svm_models.accounting import handles
from svm_models.accounting.__main__ import main as cli_main
from svm_models.layers import CrossScanSSM

E_MAC, E_AC = 4.6e-9, 0.9e-9  # mJ per op at the default 45 nm fp32 preset


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name="svmamba_cifar", calibrate=True, **extra):
    model, img = tiny_model(name, **extra)
    if calibrate:  # random weights: set BN statistics so that the LIFs fire at all
        accounting.calibrate_batchnorm(model, images(2, img), batches=2)
    return model, img


class Toy(nn.Module):
    """A 1x1 conv and a linear layer fed the same input; marked spiking so rates are measured."""

    spiking = True
    T = 1

    def __init__(self, cin=3, cout=5, hw=4, out=7):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.fc = nn.Linear(cin * hw * hw, out)

    def forward(self, x):
        return self.conv(x).flatten(1).sum(1, keepdim=True) + self.fc(x.flatten(1))


def rows_by(report, name, op):
    found = [r for r in report.rows if r.name == name and r.op == op]
    assert len(found) == 1, (name, op, [(r.name, r.op) for r in report.rows])
    return found[0]


# --------------------------------------------------------------------------------------------
# Hand-computable cases


def spike_batch(batch=2, cin=3, hw=4, ones=29):
    x = torch.zeros(batch * cin * hw * hw)
    x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:ones]] = 1.0
    return x.view(batch, cin, hw, hw)


def test_conv_and_linear_on_spikes_give_hand_computed_sops():
    model, x = Toy(), spike_batch(ones=29)
    r = accounting.profile(model, x)
    conv, fc = rows_by(r, "conv", "conv"), rows_by(r, "fc", "linear")
    # Per image: conv MACs = Cin*Cout*H*W = 240, fc MACs = 48*7 = 336. Each input spike costs
    # one accumulate per output it feeds: 29 spikes over 2 images -> 14.5 per image, times
    # Cout = 5 (1x1 conv) or 7 (linear).
    assert (conv.macs, fc.macs) == (240, 336)
    assert conv.kind == fc.kind == "spike" and conv.cost == fc.cost == "ac"
    assert conv.rate == pytest.approx(29 / 96, rel=1e-15)
    assert conv.sops == pytest.approx(14.5 * 5, rel=1e-12)
    assert fc.sops == pytest.approx(14.5 * 7, rel=1e-12)
    assert conv.mac_ops == fc.mac_ops == 0
    assert r.sops == pytest.approx(14.5 * 12, rel=1e-12)
    assert r.energy_ac_mj == pytest.approx(14.5 * 12 * E_AC, rel=1e-12)
    assert r.mean_firing_rate == pytest.approx(29 / 96, rel=1e-15)


def test_real_input_counts_macs():
    model = Toy()
    r = accounting.profile(model, torch.randn(3, 3, 4, 4))
    conv, fc = rows_by(r, "conv", "conv"), rows_by(r, "fc", "linear")
    assert conv.kind == fc.kind == "real" and conv.cost == fc.cost == "mac"
    assert (conv.mac_ops, fc.mac_ops, conv.sops, fc.sops) == (240, 336, 0, 0)
    assert conv.rate is None and fc.rate is None  # a real input has no firing rate
    assert r.sops == 0 and r.mean_firing_rate is None
    assert r.energy_mj == pytest.approx(r.mac_ops * E_MAC, rel=1e-12)


def test_integer_inputs_cost_one_ac_per_spike_or_macs_on_request():
    x = spike_batch(ones=29) + spike_batch(ones=10)  # values 0, 1, 2: sums of spikes
    assert x.max() == 2
    r = accounting.profile(Toy(), x)
    conv = rows_by(r, "conv", "conv")
    assert conv.kind == "integer" and conv.cost == "ac"
    assert conv.sops == pytest.approx(x.sum().item() / 2 * 5, rel=1e-12)
    r_mac = accounting.profile(Toy(), x, integer_as="mac")
    conv = rows_by(r_mac, "conv", "conv")
    assert conv.cost == "mac" and conv.mac_ops == 240 and conv.sops == 0


class ProductToy(nn.Module):
    """Matrix products on the module's own inputs, as in spiking self-attention (no Conv/Linear)."""

    spiking = True
    T = 1

    def forward(self, a, b):
        return a @ b


def test_matrix_products_on_spikes_cost_the_sparser_operands_rate():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 3, 4, 6, generator=g) < 0.5).float()
    b = (torch.rand(2, 3, 6, 5, generator=g) < 0.2).float()
    macs = 3 * 4 * 6 * 5  # per image

    class Wrap(nn.Module):  # profile() feeds one tensor: split it into the two operands
        spiking, T = True, 1

        def __init__(self, make_b):
            super().__init__()
            self.attn, self.make_b = ProductToy(), make_b

        def forward(self, x):
            return self.attn(x, self.make_b(x))

    r = accounting.profile(Wrap(lambda x: b[: x.shape[0]]), a)
    row = rows_by(r, "attn", "matmul")
    assert row.macs == macs and row.kind == "spike" and row.cost == "ac"
    assert row.rate == pytest.approx(min(a.double().mean().item(), b.double().mean().item()), rel=1e-12)
    assert row.sops == pytest.approx(row.rate * macs, rel=1e-12)
    # A real operand times spikes: the spikes drive the accumulation.
    r = accounting.profile(Wrap(lambda x: b[: x.shape[0]]), torch.randn(2, 3, 4, 6))
    row = rows_by(r, "attn", "matmul")
    assert row.cost == "ac" and row.rate == pytest.approx(b.double().mean().item(), rel=1e-12)
    # Two real operands: MACs.
    real_b = torch.randn(2, 3, 6, 5, generator=g)
    r = accounting.profile(Wrap(lambda x: real_b[: x.shape[0]]), torch.randn(2, 3, 4, 6))
    row = rows_by(r, "attn", "matmul")
    assert row.kind == "real" and row.cost == "mac" and row.mac_ops == macs and row.sops == 0


def test_integer_matrix_operands_follow_integer_as():
    # Guards _product_row: an integer operand (sums of spikes) drives the accumulation under
    # integer_as="ac" (it was left out, so the product was costed as MACs)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 3, 4, 6, generator=g) < 0.5).float() + (
        torch.rand(2, 3, 4, 6, generator=g) < 0.5
    ).float()
    b = torch.randn(2, 3, 6, 5, generator=g)

    class Wrap(nn.Module):
        spiking, T = True, 1

        def __init__(self):
            super().__init__()
            self.attn = ProductToy()

        def forward(self, x):
            return self.attn(x, b[: x.shape[0]])

    row = rows_by(accounting.profile(Wrap(), a), "attn", "matmul")
    assert row.kind == "integer" and row.cost == "ac"
    assert row.rate == pytest.approx(a.double().mean().item(), rel=1e-12)
    row = rows_by(accounting.profile(Wrap(), a, integer_as="mac"), "attn", "matmul")
    assert row.cost == "mac" and row.sops == 0


def test_rates_over_several_batches_equal_the_rate_of_their_concatenation():
    batches = [spike_batch(batch=b, ones=k) for b, k in ((1, 7), (3, 60), (2, 11))]
    split = accounting.profile(Toy(), batches)
    whole = accounting.profile(Toy(), torch.cat(batches))
    assert split.images == whole.images == 6
    for a, b in zip(split.rows, whole.rows):
        assert (a.name, a.op, a.kind, a.rate, a.sops) == (b.name, b.op, b.kind, b.rate, b.sops)
    assert split.mean_firing_rate == whole.mean_firing_rate == 78 / (6 * 48)


def test_rates_over_batches_of_a_spiking_model_equal_one_pass():
    model, img = tiny()
    x = images(5, img, seed=3)
    split = accounting.profile(model, [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(3))])
    whole = accounting.profile(model, x)
    assert split.mean_firing_rate > 0.005
    # Exact on this machine; the tolerance only allows a spike to flip if a different batch size
    # changed a convolution's rounding (the exact property is test_rates_over_several_batches...).
    assert split.mean_firing_rate == pytest.approx(whole.mean_firing_rate, rel=2e-3)
    for a, b in zip(split.rows, whole.rows):
        assert a.kind == b.kind
        assert a.sops == pytest.approx(b.sops, rel=2e-3, abs=1e-9)


def test_rate_hooks_do_not_sync_with_the_host_per_batch(monkeypatch):
    model, x = Toy(), spike_batch()
    rec = accounting.RateRecorder({"conv": model.conv, "fc": model.fc})

    def forbidden(*a, **k):
        raise AssertionError("host sync in the rate pass")

    with monkeypatch.context() as m:
        for attr in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, attr, forbidden)
        with rec:
            for _ in range(3):
                model(x)
    stats = rec.finalize()
    assert stats["conv"].calls == 3 and stats["conv"].numel == 3 * x.numel()
    assert stats["conv"].rate == pytest.approx(29 / 96)


def test_a_layers_input_kind_is_the_widest_seen_over_all_batches():
    # Guards the flags being OR-ed over batches: a real (or integer) batch followed by a spike
    # batch must leave the layer "real" (or "integer"), not follow the last batch alone.
    spikes = spike_batch(ones=29)
    r = accounting.profile(Toy(), [torch.randn(2, 3, 4, 4), spikes])
    conv, fc = rows_by(r, "conv", "conv"), rows_by(r, "fc", "linear")
    assert conv.kind == fc.kind == "real" and conv.cost == fc.cost == "mac"
    assert (conv.mac_ops, conv.sops) == (240, 0) and r.mean_firing_rate is None
    integer = spike_batch(ones=29) + spike_batch(ones=10)  # values 0, 1, 2
    r = accounting.profile(Toy(), [integer, spikes])
    conv = rows_by(r, "conv", "conv")
    assert conv.kind == "integer" and conv.cost == "ac"
    assert conv.sops == pytest.approx((integer.sum() + spikes.sum()).item() / 4 * 5, rel=1e-12)


class TwoInputs(nn.Module):
    """Two linear layers on inputs of different sizes: fc1 on all 48 values, fc2 on the first 16."""

    spiking = True
    T = 1

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 3)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        flat = x.flatten(1)
        return self.fc1(flat) + self.fc2(flat[:, :16])


def test_mean_firing_rate_weights_each_layer_by_its_input_elements():
    # Guards the mean firing rate being total spikes / total elements, not the plain average of
    # the layers' rates (which over-weights the small layer).
    x = torch.zeros(2, 48)
    x[:, :16] = 1.0  # fc2 sees only spikes (rate 1), fc1 a third of ones
    x = x.view(2, 3, 4, 4)
    r = accounting.profile(TwoInputs(), x)
    fc1, fc2 = rows_by(r, "fc1", "linear"), rows_by(r, "fc2", "linear")
    assert fc1.kind == fc2.kind == "spike"
    assert (fc1.rate, fc2.rate) == (pytest.approx(1 / 3, rel=1e-15), 1.0)
    # 32 + 32 spikes over 96 + 32 elements
    assert r.mean_firing_rate == pytest.approx(64 / 128, rel=1e-15)


def test_negative_integers_are_real_inputs():
    # Guards the negative check of the integer kind: -1, 0, 1 values are not spike counts, so they
    # cost MACs (as an integer input they would give negative SOPs).
    x = torch.tensor([-1.0, 0.0, 1.0, -1.0]).repeat(24).view(2, 3, 4, 4)
    r = accounting.profile(Toy(), x)
    conv, fc = rows_by(r, "conv", "conv"), rows_by(r, "fc", "linear")
    assert conv.kind == fc.kind == "real" and conv.cost == fc.cost == "mac"
    assert (conv.mac_ops, fc.mac_ops) == (240, 336)
    assert all(row.sops == 0 for row in r.rows) and r.sops == 0
    stats = accounting.RateRecorder({"conv": nn.Identity()})
    with stats:
        stats.modules["conv"](x)
    assert stats.finalize()["conv"].kind == "real"


# --------------------------------------------------------------------------------------------
# Handles: scan, LIF, names under both backends


class ScanFull(nn.Module):
    def forward(self, u, delta, A, B, C, D, bias):
        return cross_selective_scan(u, delta, A, B, C, D, bias, backend=self.backend)

    def __init__(self, backend="torch"):
        super().__init__()
        self.backend = backend


def scan_inputs(batch=2, d=8, h=5, w=6, n=3):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, d, h, w, generator=g),
        torch.randn(batch, 4, d, h, w, generator=g),
        -torch.rand(4, d, n, generator=g) - 0.1,
        torch.randn(batch, 4, n, h, w, generator=g),
        torch.randn(batch, 4, n, h, w, generator=g),
        torch.randn(4, d, generator=g),
        torch.randn(4, d, generator=g),
    )


def test_scan_handle_reproduces_vmamba_formula():
    batch, d, h, w, n, r = 2, 8, 5, 6, 3, 2
    L = h * w
    by_module, unsupported = accounting.trace_counts(ScanFull(), scan_inputs(batch, d, h, w, n))
    assert not unsupported
    per_direction = 9 * batch * L * d * n + batch * d * L
    assert by_module[""] == Counter({"selective_scan": 4 * per_direction})

    ssm = CrossScanSSM(d, d_state=n, dt_rank=r, backend="torch")
    by_module, unsupported = accounting.trace_counts(ssm, torch.randn(batch, d, h, w))
    assert not unsupported
    assert by_module[""]["selective_scan"] == 4 * per_direction
    assert by_module[""]["scan_dt_proj"] == 4 * batch * L * d * r  # in-kernel dt projection
    assert by_module[""]["conv"] == batch * 4 * (r + 2 * n) * d * L  # x_proj (a 1x1 conv of u)
    # VMamba's convention: D = all four directions' channels in one formula.
    assert handles.cross_scan_macs(batch, d, L, n) == handles.selective_scan_macs(batch, L, 4 * d, n)


def test_scan_volumes_read_u_once_per_direction_and_hold_d_times_n_states():
    # guards the scan's data volumes: u read by all four directions, one direction's D x N states
    batch, d, h, w, n = 2, 8, 5, 6, 3
    inputs = scan_inputs(batch, d, h, w, n)
    by_module, _ = accounting.trace_counts(ScanFull(), inputs, volumes=True)
    macs, volumes = handles.split_volumes(by_module[""])
    assert macs["selective_scan"] == handles.cross_scan_macs(batch, d, h * w, n)
    u, delta, A, B, C, Ds, bias = inputs
    assert volumes["selective_scan"] == Counter(
        {
            "in": 4 * u.numel() + delta.numel() + B.numel() + C.numel(),
            "w": A.numel() + Ds.numel() + bias.numel(),
            "out": u.numel(),
            "batch": batch,
            "state": 4 * batch * h * w * d * n,
            "dn": d * n,
            "calls": 1,
        }
    )


def test_lif_counts_neuron_updates_not_macs():
    lif = svm_models.layers.make_lif(backend="torch")
    by_module, unsupported = accounting.trace_counts(lif, torch.randn(3, 2, 4, 5, 5))
    assert not unsupported
    assert by_module[""] == Counter({"neuron_updates": 3 * 2 * 4 * 5 * 5})


def test_handles_fire_for_the_triton_op_names():
    pytest.importorskip("triton")

    class TritonLIF(nn.Module):
        def forward(self, x):
            return multistep_lif(x, backend="triton")

    by_module, unsupported = accounting.trace_counts(TritonLIF(), torch.randn(2, 3, 4))
    assert not unsupported, unsupported
    assert by_module[""] == Counter({"neuron_updates": 24})
    assert set(handles.LIF_OPS) == {"svmamba::lif_fwd"}
    assert (
        "svmamba::ss2d_fwd" in handles.SCAN_FULL_OPS
        and "svmamba::ss2d_lowrank_fwd" in handles.SCAN_LOWRANK_OPS
    )


def test_handles_fire_for_the_triton_scan_ops():
    pytest.importorskip("triton")
    pytest.importorskip("svm_kernels.ss2d.fused", reason="the Triton SS2D op has not landed yet")
    batch, d, h, w, n, r = 1, 4, 3, 4, 2, 2
    by_module, unsupported = accounting.trace_counts(ScanFull("triton"), scan_inputs(batch, d, h, w, n))
    assert not unsupported, unsupported
    assert by_module[""]["selective_scan"] == handles.cross_scan_macs(batch, d, h * w, n)
    ssm = CrossScanSSM(d, d_state=n, dt_rank=r, backend="triton")
    by_module, unsupported = accounting.trace_counts(ssm, torch.randn(batch, d, h, w))
    assert not unsupported, unsupported
    assert by_module[""]["scan_dt_proj"] == handles.lowrank_dt_macs(batch, d, h * w, r)


@pytest.mark.parametrize("name", list_models())
def test_every_op_of_every_model_is_counted_or_deliberately_ignored(name):
    if name not in SMALL:
        pytest.fail(f"{name} has no tiny config in SMALL")
    model, img = tiny(name, calibrate=False)
    by_module, unsupported = accounting.trace_counts(model, images(1, img))
    assert not unsupported, f"{name}: ops without a handle: {dict(unsupported)}"
    r = accounting.profile(model, images(2, img))
    assert not r.unsupported_ops
    # Rows partition the model's total: each op is attributed to exactly one module.
    total = Counter(by_module[""])
    neuron = total.pop("neuron_updates", 0)
    assert r.macs == pytest.approx(sum(total.values()), rel=1e-12)
    assert r.neuron_updates == neuron
    assert (neuron > 0) == bool(getattr(model, "spiking", True))


# --------------------------------------------------------------------------------------------
# Models


def test_vmamba_t_matches_published_params_and_flops():
    model = create_model("vmamba_t", backend="torch")
    r = accounting.profile(model)  # an ANN: no rates, one 224 px trace
    assert r.params == 30_249_064
    published = 4_905_609_984
    assert abs(r.macs - published) / published < 0.02, r.macs
    assert r.macs == published  # our handles follow VMamba's convention exactly
    assert r.sops == 0 and r.mac_ops == r.macs
    assert r.energy_mj == pytest.approx(r.macs * E_MAC, rel=1e-12)  # ANN baseline: E_MAC x MACs
    assert not r.unsupported_ops
    stages = [s.stage for s in r.stages]
    assert stages == ["patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "classifier"]


def test_counts_are_per_image_whatever_the_batch_size():
    model, img = tiny()
    x = images(4, img, seed=5)
    one_batch = accounting.profile(model, x)
    singles = accounting.profile(model, [x[i : i + 1] for i in range(4)])
    pairs = accounting.profile(model, [x[:2], x[2:]])
    for r in (singles, pairs):
        assert r.macs == one_batch.macs and r.mac_ops == one_batch.mac_ops
        assert r.sops == pytest.approx(one_batch.sops, rel=2e-3)  # (see the test above)
        assert r.energy_mj == pytest.approx(one_batch.energy_mj, rel=2e-3)
    just_one = accounting.profile(model, x[:1])
    assert just_one.macs == one_batch.macs


def test_spiking_model_kinds_and_conventions():
    model, img = tiny()
    x = images(3, img)
    r = accounting.profile(model, x)
    first = rows_by(r, "stem.conv1.conv", "conv")
    assert first.kind == "real" and first.cost == "mac"
    assert rows_by(r, "stem.conv2.conv", "conv").kind == "spike"
    assert rows_by(r, "head", "linear").cost == "mac"
    # The scan: its u is spikes; x_proj (a conv of u) costs ACs, the recurrence MACs.
    ssm = "stages.0.block0.mixer.ssm"
    assert rows_by(r, ssm, "conv").cost == "ac" and rows_by(r, ssm, "selective_scan").cost == "mac"
    assert rows_by(r, ssm, "selective_scan").kind == "spike"
    spikes = [row for row in r.rows if row.cost == "ac"]
    assert spikes and all(row.kind == "spike" for row in spikes)
    assert r.sops == pytest.approx(sum(row.rate * row.macs for row in spikes), rel=1e-12)
    assert r.energy_mj == pytest.approx(r.mac_ops * E_MAC + r.sops * E_AC, rel=1e-12)
    assert r.neuron_updates > 0 and 0 < r.mean_firing_rate < 1
    # The first conv sees the image T times; counted once on request.
    once = accounting.profile(model, x, first_layer_T=False)
    assert rows_by(once, "stem.conv1.conv", "conv").mac_ops == first.mac_ops / model.T
    # BatchNorm: ignored by default, fvcore's count on request.
    assert not any(row.op == "batch_norm" for row in r.rows)
    with_bn = accounting.profile(model, x, count_batchnorm=True)
    assert any(row.op == "batch_norm" and row.macs > 0 for row in with_bn.rows)
    assert with_bn.macs > r.macs


def test_event_frame_models_profile_from_random_input_and_refuse_once_on_frames():
    model, img = tiny(calibrate=False, in_chans=2)
    # No data: the random images take the first layer's 2 channels (they took 3 and crashed).
    r = accounting.profile(model, img_size=img)
    assert rows_by(r, "stem.conv1.conv", "conv").macs > 0
    # Frames (B, T, C, H, W): every step's first conv sees its own frame, so it runs T times
    # and the "once" convention (one image shown T times) does not apply.
    frames = torch.rand(2, model.T, 2, img, img, generator=torch.Generator().manual_seed(0)).round()
    per_step = accounting.profile(model, frames)
    conv = rows_by(per_step, "stem.conv1.conv", "conv")
    assert conv.mac_ops == conv.macs > 0
    with pytest.raises(ValueError, match="frame per step"):
        accounting.profile(model, frames, first_layer="once")


def test_sew_residual_sums_are_integer_inputs():
    model, img = tiny(shortcut="sew")
    r = accounting.profile(model, images(3, img))
    kinds = {row.name: row.kind for row in r.rows if row.op == "conv"}
    assert kinds["stages.0.block0.mlp.fc1.conv"] == "integer"  # x + mixer(x): spike counts
    assert kinds["stages.0.block0.mixer.in_proj.conv"] == "spike"
    integer = [row for row in r.rows if row.kind == "integer" and row.op == "conv"]
    assert all(row.cost == "ac" and row.sops == pytest.approx(row.rate * row.macs) for row in integer)


def test_qkformer_attention_products_run_on_spikes():
    if "qkformer_cifar" not in list_models():
        pytest.skip("QKFormer is not registered")
    model, img = tiny("qkformer_cifar")
    r = accounting.profile(model, images(2, img))
    ssa = rows_by(r, "stage3.0.attn", "matmul")  # K^T V and (K^T V)^T Q
    assert ssa.macs > 0 and ssa.cost == "ac" and ssa.sops == pytest.approx(ssa.rate * ssa.macs, rel=1e-12)
    assert rows_by(r, model_first_conv_name(model), "conv").cost == "mac"
    assert rows_by(r, "head", "linear").cost == "mac"
    assert r.mac_ops < 0.2 * r.macs  # apart from the image conv and the head, everything accumulates


def model_first_conv_name(model):
    return {m: n for n, m in model.named_modules()}[model.first_conv]


def test_calibration_averages_its_batches_and_restores_the_momentum():
    # Guards calibrate_batchnorm: a cumulative average (momentum None) over all of its batches,
    # and each BatchNorm's own momentum back afterwards
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.3))
    example = torch.zeros(2, 3, 4, 4)
    assert accounting.calibrate_batchnorm(model, example, batches=3, seed=5) == 1
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        outs = [model[0](torch.randn(example.shape, generator=gen)) for _ in range(3)]
    want = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, want)
    assert model[1].momentum == 0.3


def test_labels_give_top1_and_loader_batches_are_accepted():
    model, img = tiny()
    x = images(4, img)
    with torch.no_grad():
        model.eval()
        pred = model(x).argmax(1)
    y = pred.clone()
    y[0] = (y[0] + 1) % 5
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    r = accounting.profile(model, loader)
    assert r.images == 4 and r.top1 == pytest.approx(75.0)
    r = accounting.profile(model, loader, max_batches=1)
    assert r.images == 3


def test_a_named_head_is_costed_as_macs_unless_head_as_auto():
    # Guards model_view's head override and head_as: head="fc" makes fc the head (the override
    # was ignored), costed as MACs; head_as="auto" costs it by its input like any other layer
    x = spike_batch()
    default = accounting.profile(Toy(), x)
    assert rows_by(default, "fc", "linear").cost == "ac"
    assert any("names no head" in n for n in default.notes)
    named = accounting.profile(Toy(), x, head="fc")
    fc = rows_by(named, "fc", "linear")
    assert fc.cost == "mac" and fc.mac_ops == 336 and fc.sops == 0
    assert not any("names no head" in n for n in named.notes)
    auto = rows_by(accounting.profile(Toy(), x, head="fc", head_as="auto"), "fc", "linear")
    assert auto.cost == "ac" and auto.sops == pytest.approx(14.5 * 7, rel=1e-12)


def test_an_ann_is_reported_at_one_step_whatever_its_T():
    # Guards model_view: an ANN runs once per image, so its T is 1 even if it declares more
    # (with T kept, first_layer="once" divided its first conv's MACs by T)
    model = Toy()
    model.spiking, model.T = False, 4
    once = accounting.Conventions(first_layer="once")
    r = accounting.profile(model, torch.randn(2, 3, 4, 4), conventions=once, first_layer="conv")
    assert r.T == 1 and r.mac_ops == r.macs == 240 + 336


def test_conventions_and_separate_first_layer_are_refused_together():
    # Guards profile: first_layer="once" next to a Conventions object is an error (it was
    # silently dropped in favour of the conventions)
    with pytest.raises(ValueError, match="not both"):
        accounting.profile(Toy(), spike_batch(), conventions=accounting.Conventions(), first_layer="once")


def test_report_conventions_say_how_the_first_layer_was_counted():
    # Guards Conventions.to_dict: first_layer_T is True for "per_step" and False for "once"
    x = spike_batch()
    assert accounting.profile(Toy(), x).conventions["first_layer_T"] is True
    assert accounting.profile(Toy(), x, first_layer="once").conventions["first_layer_T"] is False


def test_stage_rows_sum_their_layers():
    # Guards Report.stages: every column is the sum of the stage's rows (mac_ops took the
    # dense MACs, neuron updates the MACs)
    model, img = tiny()
    r = accounting.profile(model, images(2, img), first_layer="once")
    for stage in r.stages:
        rows = [row for row in r.rows if row.stage == stage.stage]
        for key in ("macs", "mac_ops", "sops", "neuron_updates", "energy_mac_mj", "energy_ac_mj"):
            assert getattr(stage, key) == pytest.approx(sum(getattr(row, key) for row in rows), rel=1e-12), (
                stage.stage,
                key,
            )
    assert any(s.mac_ops != s.macs for s in r.stages) and any(s.neuron_updates > 0 for s in r.stages)


# --------------------------------------------------------------------------------------------
# Energy presets, report, CLI


def test_energy_presets():
    assert accounting.get_energy_model().e_mac_pj == 4.6 and accounting.get_energy_model().e_ac_pj == 0.9
    assert accounting.get_energy_model("fp32") is accounting.PRESETS["45nm_fp32"]
    fp16, int8 = accounting.get_energy_model("fp16"), accounting.get_energy_model("int8")
    assert (fp16.e_mac_pj, fp16.e_ac_pj, int8.e_mac_pj, int8.e_ac_pj) == (1.5, 0.4, 0.23, 0.03)
    custom = accounting.get_energy_model({"e_mac_pj": 2.0, "e_ac_pj": 0.5})
    r = accounting.profile(Toy(), spike_batch(), energy=custom)
    assert r.energy_mj == pytest.approx(r.sops * 0.5e-9, rel=1e-12)
    # the 45nm_ aliases name the presets of their own format
    assert (
        accounting.get_energy_model("45nm_fp16") is fp16 and accounting.get_energy_model("45nm_int8") is int8
    )
    # a free operation (0 pJ) is a valid model; only negative costs are refused
    assert accounting.EnergyModel("free", 0.0, 0.0).ac_mj(1e6) == 0.0
    with pytest.raises(ValueError, match="unknown energy preset"):
        accounting.get_energy_model("7nm")
    with pytest.raises(ValueError):
        accounting.EnergyModel("bad", -1.0, 0.1)
    with pytest.raises(ValueError, match="e_ac_pj"):  # a bool is no energy (True was 1 pJ)
        accounting.EnergyModel("bad", 1.0, True)


def test_report_outputs(tmp_path):
    model, img = tiny()
    r = accounting.profile(model, images(2, img), name="svmamba_tiny")
    d = json.loads(r.to_json())
    assert d["model"] == "svmamba_tiny" and d["per_image"]["params"] == r.params
    assert d["per_image"]["sops"] == pytest.approx(r.sops)
    assert len(d["layers"]) == len(r.rows) and d["energy_model"]["e_mac_pj"] == 4.6
    assert sum(s["energy_mj"] for s in d["stages"]) == pytest.approx(r.energy_mj, rel=1e-12)
    assert [s.stage for s in r.stages] == [
        "(model)",
        "stem",
        "stages.0",
        "stages.1",
        "stages.2",
        "head_lif",
        "head",
    ]
    md = r.to_markdown()
    assert "| params | " in md and "| stage |" in md and "stem.conv2.conv" in md
    assert "stem.conv2.conv" not in r.to_markdown(layers=False)
    png = tmp_path / "energy.png"
    r.plot(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mJ/image" in r.summary()


def test_markdown_layer_table_leaves_out_neuron_rows_and_says_so():
    # Guards to_markdown's layer table: LIF rows (no MACs) are left out and counted in a note
    from svm_models.accounting.report import LayerRow, Report

    conv = LayerRow("block.conv", "conv", "block", "spike", "ac", 0.25, 4e6, 0.0, 1e6, 0.0, 9e-4)
    lif = LayerRow("block.lif", "lif", "block", "-", "none", None, 0.0, 0.0, 0.0, 0.0, 0.0, 5e5)
    r = Report(
        "toy",
        10,
        2,
        True,
        (3, 8, 8),
        1,
        "input",
        accounting.get_energy_model(),
        {},
        4e6,
        0.0,
        1e6,
        0.0,
        9e-4,
        5e5,
        0.25,
        rows=[conv, lif],
    )
    md = r.to_markdown()
    assert "| block.conv | conv |" in md and "block.lif" not in md
    assert "1 neuron rows (no MACs) are left out" in md


def test_cli_ann_and_spiking(capsys, tmp_path):
    assert (
        cli_main(
            [
                "--model",
                "vmamba_cifar",
                "--img-size",
                "16",
                "--num-classes",
                "5",
                "--set",
                "dims=8",
                "--set",
                "depths=[1, 1, 1]",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "params" in out and "MACs" in out and "(ANN)" in out and "random weights" not in out
    assert json.loads((tmp_path / "r.json").read_text())["spiking"] is False
    assert (
        cli_main(
            [
                "--model",
                "svmamba_cifar",
                "--img-size",
                "16",
                "--num-classes",
                "5",
                "--set",
                "dims=8",
                "--set",
                "depths=[1, 1, 1]",
                "--set",
                "T=2",
                "--set",
                "backend=torch",
                "--batch",
                "2",
                "--calibrate-bn",
                "1",
                "--markdown",
                "--png",
                str(tmp_path / "e.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "SOPs" in out and "random weights" in out and "T = 2" in out and "| stage |" in out
    assert (tmp_path / "e.png").exists()
    assert cli_main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list_models()


def test_cli_passes_the_convention_flags_and_checks_the_size(capsys, tmp_path):
    # Guards the CLI: --first-layer-once, --head-as and --integer-as reach profile (they were
    # dropped), and an image under 8 px is refused with one error line
    args = ["--model", "svmamba_cifar", "--img-size", "16", "--num-classes", "5", "--set", "dims=8"]
    args += ["--set", "depths=[1, 1, 1]", "--set", "T=2", "--set", "backend=torch"]
    path = tmp_path / "r.json"
    flags = ["--first-layer-once", "--head-as", "auto", "--integer-as", "mac", "--json", str(path)]
    assert cli_main([*args, *flags]) == 0
    conventions = json.loads(path.read_text())["conventions"]
    assert conventions["first_layer_T"] is False
    assert (conventions["head_as"], conventions["integer_as"]) == ("auto", "mac")
    capsys.readouterr()
    assert cli_main(["--model", "svmamba_cifar", "--img-size", "4"]) == 2
    assert capsys.readouterr().err.strip() == "error: --img-size must be >= 8, got 4"


def test_cli_refuses_an_unwritable_output_in_one_line(capsys, tmp_path):
    # A --json / --png in a folder that does not exist is refused before the profile (it crashed
    # with a traceback after it); a bad backend is refused when the model is built
    small = ["--model", "vmamba_cifar", "--img-size", "16", "--set", "dims=8", "--set", "depths=[1, 1, 1]"]
    for flag, name in (("--json", "r.json"), ("--png", "r.png")):
        path = tmp_path / "missing" / name
        assert cli_main([*small, flag, str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {flag} {path}: no folder {path.parent}"
    (tmp_path / "taken").write_text("a file, not a folder")
    assert cli_main([*small, "--png", str(tmp_path / "taken" / "r.png")]) == 2
    assert "no folder" in capsys.readouterr().err
    blocker = tmp_path / "dir.json"
    blocker.mkdir()  # a folder where the JSON should go: found only when writing
    assert cli_main([*small, "--json", str(blocker)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: cannot write {blocker}")
    assert cli_main([*small, "--set", "backend=foo"]) == 2
    assert "backend must be one of" in capsys.readouterr().err

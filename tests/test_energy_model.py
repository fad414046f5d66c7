"""The hardware energy model (svm_models.accounting.hardware) and the model protocol.

Hand-computed values of Lemaire et al.'s equations (ICONIP 2022) for one conv and one linear
layer, spiking and formal; the neuron-update terms; component and stage sums; the first-layer
option; the paper preset untouched by the hardware model.
"""

import json
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from helpers import SMALL, images, tiny_model
from torch import nn

from svm_models import accounting, create_model, list_models
from svm_models.accounting import hardware
from svm_models.accounting.__main__ import main as cli_main
from svm_models.base import VisionModel
from svm_models.layers import make_lif

FP32 = hardware.HW_PRESETS["hw_45nm_fp32"]
E_ADD, E_MUL = 0.9, 3.7  # pJ, Horowitz 45 nm fp32
REL = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")


def _least_squares_by_hand():
    # Horowitz: 8 KB -> 10 pJ, 32 KB -> 20 pJ, 1 MB -> 100 pJ; the normal equations, in exact fractions.
    xs, ys = [Fraction(8192), Fraction(32768), Fraction(1048576)], [Fraction(10), Fraction(20), Fraction(100)]
    mx, my = sum(xs) / 3, sum(ys) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return float(slope), float(my - slope * mx)


SLOPE, INTERCEPT = _least_squares_by_hand()


def sram(values: float) -> float:
    """Lemaire et al.'s fit of Horowitz's SRAM figures, for fp32 (4-byte) values."""
    return SLOPE * 4 * values + INTERCEPT


def tiny(name, **extra):
    model, img = tiny_model(name, **extra)
    accounting.calibrate_batchnorm(model, images(2, img), batches=2)
    return model, img


def spike_batch(batch=2, cin=3, hw=4, ones=29):
    x = torch.zeros(batch * cin * hw * hw)
    x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:ones]] = 1.0
    return x.view(batch, cin, hw, hw)


class Toy(nn.Module):
    """A conv and a linear layer fed the same (B, 3, 4, 4) input."""

    T = 1

    def __init__(self, spiking: bool, kernel: int):
        super().__init__()
        self.spiking = spiking
        self.conv = nn.Conv2d(3, 5, kernel, padding=kernel // 2, bias=False)
        self.fc = nn.Linear(48, 7)

    def forward(self, x):
        return self.conv(x).flatten(1).sum(1, keepdim=True) + self.fc(x.flatten(1))


def hw_row(report, name, op):
    found = [r for r in report.hardware.rows if r.name == name and r.op == op]
    assert len(found) == 1, (name, op)
    return found[0]


def assert_components(row, expected_pj):
    for key, value in expected_pj.items():
        assert row.component(key) == pytest.approx(value * 1e-9, rel=REL, abs=0), key


# --------------------------------------------------------------------------------------------
# Lemaire et al.'s equations by hand


def test_sram_fit_is_the_least_squares_line_through_horowitz_points():
    slope, intercept = hardware.sram_fit()
    assert slope == pytest.approx(8.2816e-5, rel=1e-4) and intercept == pytest.approx(13.2563, rel=1e-5)
    residuals = [y - (slope * x + intercept) for x, y in hardware.HOROWITZ_SRAM_POINTS]
    assert sum(residuals) == pytest.approx(0.0, abs=1e-9)
    assert sum(r * x for r, (x, _) in zip(residuals, hardware.HOROWITZ_SRAM_POINTS)) == pytest.approx(
        0, abs=1e-3
    )
    assert FP32.sram_pj(100) == pytest.approx(sram(100), rel=1e-9)


def test_spike_driven_conv_and_linear_match_the_equations_by_hand():
    # 29 input spikes over 2 images: theta_in = 14.5 per image, N_in = 48 values per image.
    r = accounting.profile(Toy(spiking=True, kernel=1), spike_batch(ones=29), preset="hw_45nm_fp32")
    theta = 14.5
    # 1x1 conv, 3 -> 5 channels, 4x4: fan-out = Cout = 5 (Lemaire's ceil(k/s)^2 x Cout), 15 weights,
    # 80 potentials per step.
    sops = theta * 5
    assert_components(
        hw_row(r, "conv", "conv"),
        {
            "compute": sops * E_ADD,  # Eq. 1.4, first term
            "addressing": theta * (2 * (E_MUL + E_ADD) + 1 * E_ADD),  # Eq. 16
            "weights": sops * sram(15),  # Eq. 7f
            "membrane": 2 * sops * sram(80),  # Eq. 9 + 14, first terms
            "io": theta * sram(48),  # Eq. 5
        },
    )
    # linear 48 -> 7: fan-out 7, 336 weights, 7 potentials.
    sops = theta * 7
    assert_components(
        hw_row(r, "fc", "linear"),
        {
            "compute": sops * E_ADD,  # Eq. 2.4, first term
            "addressing": sops * E_ADD,  # Eq. 17
            "weights": sops * sram(336),  # Eq. 8f
            "membrane": 2 * sops * sram(7),  # Eq. 10 + 15, first terms
            "io": theta * sram(48),  # Eq. 5
        },
    )


@pytest.mark.parametrize("reuse", ["none", "ideal"])
def test_formal_conv_and_linear_match_the_equations_by_hand(reuse):
    r = accounting.profile(Toy(spiking=False, kernel=3), torch.randn(3, 3, 4, 4), preset=FP32, reuse=reuse)
    ideal = reuse == "ideal"
    # 3x3 conv (padding 1), 3 -> 5 channels on 4x4: MACs = Cout Hout Wout Cin k^2 = 2160 (Eq. 1.1),
    # 135 weights, N_in 48, N_out 80.
    macs = 5 * 16 * 3 * 9
    assert_components(
        hw_row(r, "conv", "conv"),
        {
            "compute": macs * (E_MUL + E_ADD) + 80 * E_ADD,  # Eq. 1.1 + 1.2
            "addressing": (48 + 80 + 5 * 9) * E_ADD,
            "weights": (135 if ideal else macs) * sram(135),  # Eq. 6.1f, or each weight once
            "membrane": 0.0,
            "io": (48 if ideal else macs) * sram(48) + 80 * sram(80),  # Eq. 3 + 11
        },
    )
    macs = 48 * 7
    assert_components(
        hw_row(r, "fc", "linear"),
        {
            "compute": macs * (E_MUL + E_ADD) + 7 * E_ADD,  # Eq. 2.1 + 2.2
            "addressing": macs * E_ADD,
            "weights": macs * sram(336),  # Eq. 6.2f (336 weights: the same either way)
            "io": 48 * sram(48) + 7 * sram(7),  # Eq. 4 + 12
        },
    )
    assert r.hardware.totals_by_reuse[reuse]["energy_mj"] == pytest.approx(r.hardware.energy_mj, rel=1e-12)


@pytest.mark.parametrize("reuse", ["none", "ideal"])
def test_selective_scan_matches_the_formal_terms_by_hand(reuse):
    # Guards the scan's state being read *and* written per update (membrane 2 x state) and its
    # weights being read once per update without reuse, once per image with ideal reuse.
    v = hardware.Volumes(macs=1000.0, inputs=600.0, outputs=200.0, weights=50.0, batch=2.0, state=400.0)
    comp = hardware.selective_scan(v, reuse, FP32, d_state_map=24.0)
    expected = {
        "compute": 1000 * (E_MUL + E_ADD),
        "addressing": 0.0,
        "weights": (50 if reuse == "ideal" else 400) * sram(50),
        "membrane": 2 * 400 * sram(24),
        "io": 600 * sram(300) + 200 * sram(100),  # per-sample maps: 600 / 2, 200 / 2
    }
    for key, value in expected.items():
        assert getattr(comp, key) == pytest.approx(value, rel=REL, abs=0), key


@pytest.mark.parametrize("reuse", ["none", "ideal"])
def test_elementwise_ops_match_the_formal_terms_by_hand(reuse):
    # Guards the weight reads of an elementwise op: one per op without reuse, each parameter once
    # with ideal reuse; none at all for an op without parameters.
    v = hardware.Volumes(macs=160.0, inputs=160.0, outputs=160.0, weights=16.0, batch=2.0)
    comp = hardware.elementwise(v, False, reuse, FP32)
    expected = {
        "compute": 160 * (E_MUL + E_ADD),
        "weights": (16 if reuse == "ideal" else 160) * sram(16),
        "membrane": 0.0,
        "io": 160 * sram(80) + 160 * sram(80),
    }
    for key, value in expected.items():
        assert getattr(comp, key) == pytest.approx(value, rel=REL, abs=0), key
    adds = hardware.elementwise(hardware.Volumes(40.0, 60.0, 20.0), True, reuse, FP32)
    assert (adds.compute, adds.weights) == (pytest.approx(40 * E_ADD, rel=REL), 0.0)


def test_a_sum_costs_one_add_per_summed_element():
    # Guards the reduction's volumes: x.sum(1) over (3, 4, 5) per image adds 60 - 20 = 40 values,
    # not one add per input element.
    class Sum(nn.Module):
        spiking, T = False, 1

        def forward(self, x):
            return x.sum(1)

    r = accounting.profile(Sum(), torch.randn(2, 3, 4, 5), preset="hw_45nm_fp32")
    assert_components(
        hw_row(r, "", "sum"),
        {"compute": (60 - 20) * E_ADD, "weights": 0.0, "io": 60 * sram(60) + 20 * sram(20)},
    )


class LIFToy(nn.Module):
    """The image repeated T times through one LIF layer."""

    spiking, T = True, 3

    def __init__(self):
        super().__init__()
        self.lif = make_lif(backend="torch", v_threshold=0.5)

    def forward(self, x):
        return self.lif(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))


def test_neuron_updates_match_the_equations_by_hand():
    model, x = LIFToy(), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        spikes = model(x).sum().item() / 2  # per image
    assert spikes > 0
    r = accounting.profile(model, x, preset="hw_45nm_fp32")
    updates, neurons = 3 * 48, 48  # T x neurons, one step's potentials
    assert_components(
        hw_row(r, "lif", "neuron_updates"),
        {
            # leak + charge (a MAC) and the threshold comparison per update, a reset per spike:
            # Eq. 1.3 + 1.4 (second and third terms)
            "compute": updates * (E_MUL + E_ADD + E_ADD) + spikes * E_ADD,
            "membrane": 2 * updates * sram(neurons),  # Eq. 9 + 14, second terms
            "io": spikes * sram(neurons),  # Eq. 13
        },
    )
    loihi = accounting.profile(model, x, preset="hw_loihi")
    row = hw_row(loihi, "lif", "neuron_updates")
    assert row.compute_mj == pytest.approx(updates * 81.0e-9, rel=REL)  # Davies et al. 2018
    assert row.io_mj == pytest.approx(spikes * 1.7e-9, rel=REL) and row.membrane_mj == 0


def test_loihi_costs_a_synaptic_op_as_one_chip_op():
    r = accounting.profile(Toy(spiking=True, kernel=1), spike_batch(ones=29), preset="hw_loihi")
    row = hw_row(r, "conv", "conv")
    assert row.compute_mj == pytest.approx(14.5 * 5 * 23.6e-9, rel=REL)
    assert row.weights_mj == row.membrane_mj == row.io_mj == row.addressing_mj == 0


# --------------------------------------------------------------------------------------------
# Models


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_components_add_up_and_the_paper_figures_are_untouched(name):
    model, img = tiny(name)
    x = images(2, img)
    paper = accounting.profile(model, x)
    r = accounting.profile(model, x, preset="hw_45nm_fp32")
    assert paper.hardware is None and "hardware" not in json.loads(paper.to_json())
    assert [(a.name, a.op, a.macs, a.sops, a.energy_mj) for a in paper.rows] == [
        (b.name, b.op, b.macs, b.sops, b.energy_mj) for b in r.rows
    ]
    assert (paper.energy_mj, paper.sops, paper.macs) == (r.energy_mj, r.sops, r.macs)
    hw = r.hardware
    totals = hw.totals()
    parts = sum(totals[f"{k}_mj"] for k in hardware.COMPONENTS)
    assert totals["energy_mj"] == pytest.approx(parts, rel=1e-12)
    assert totals["energy_mj"] == pytest.approx(sum(row.energy_mj for row in hw.rows), rel=1e-12)
    assert sum(st["energy_mj"] for _, st in hw.stages) == pytest.approx(totals["energy_mj"], rel=1e-12)
    for key in hardware.COMPONENTS:
        assert sum(row.component(key) for row in hw.rows) == pytest.approx(totals[f"{key}_mj"], rel=1e-12)
    assert all(row.energy_mj >= 0 for row in hw.rows)
    assert hw.totals_by_reuse["ideal"]["energy_mj"] < hw.totals_by_reuse["none"]["energy_mj"]
    assert hw.energy_mj > r.energy_mj  # memory traffic on top of the arithmetic
    d = json.loads(r.to_json())["hardware"]
    assert d["per_image"]["energy_mj"] == pytest.approx(totals["energy_mj"])


def test_costs_missing_from_the_paper_convention_are_in_the_hardware_model():
    model, img = tiny("svmamba_cifar")
    r = accounting.profile(model, images(2, img), preset="hw_45nm_fp32")
    mixer = "stages.0.block0.mixer"
    assert hw_row(r, f"{mixer}.y_norm", "batch_norm").energy_mj > 0  # cannot fold into a conv
    assert hw_row(r, f"{mixer}.ssm", "selective_scan").membrane_mj > 0  # the scan's state
    assert hw_row(r, f"{mixer}.u_lif", "neuron_updates").compute_mj > 0  # LIF updates
    assert not any(row.op == "batch_norm" and ".bn" in row.name for row in r.hardware.rows)  # folded
    model, img = tiny("qkformer_cifar")
    r = accounting.profile(model, images(2, img), preset="hw_45nm_fp32")
    assert hw_row(r, "stage1.0.attn", "sum").compute_mj > 0  # QKTA's channel sums


def test_first_layer_once_saves_T_minus_1_steps_of_the_first_layer():
    model, img = tiny("qkformer_10_384")
    x = images(2, img)
    T = model.T
    per_step = accounting.profile(model, x, preset="hw_45nm_fp32")
    once = accounting.profile(model, x, preset="hw_45nm_fp32", first_layer="once")
    first = {m: n for n, m in model.named_modules()}[model.first_conv]
    row = next(r for r in per_step.rows if r.name == first and r.op == "conv")
    one_step_mac_mj = row.macs / T * 4.6e-9
    assert per_step.energy_mj - once.energy_mj == pytest.approx((T - 1) * one_step_mac_mj, rel=1e-9)
    hw_first = hw_row(per_step, first, "conv").energy_mj
    assert per_step.hardware.energy_mj - once.hardware.energy_mj == pytest.approx(
        (T - 1) / T * hw_first, rel=1e-9
    )
    legacy = accounting.profile(model, x, first_layer_T=False)
    assert legacy.energy_mj == once.energy_mj


class _TwoStepNet(nn.Module):
    """A plain spiking module (no VisionModel attributes): the image at both of its 2 steps."""

    spiking, T = True, 2

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 1, bias=False), nn.Linear(64, 5)

    def forward(self, x):
        s = (self.conv(torch.cat([x, x])) > 0).float()
        return self.fc(s.flatten(1)).view(2, -1, 5).mean(0)


def test_a_named_first_layer_with_the_legacy_flag_keeps_its_name():
    # a plain module names its first layer: with first_layer_T=False it runs once (the name
    # was dropped when the flag was given, and no first layer was found)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for flag, steps in ((None, 2), (True, 2), (False, 1)):
        r = accounting.profile(_TwoStepNet(), x, first_layer="conv", first_layer_T=flag)
        row = next(q for q in r.rows if q.name == "conv")
        assert row.mac_ops == 2 * 4 * 3 * 16 * steps / 2, flag  # per image: 16 px x 3 -> 4, x steps
        assert not any("names no first layer" in n for n in r.notes), r.notes


def test_an_explicit_first_layer_mode_wins_over_the_legacy_flag():
    # Guards profile: first_layer="once" is kept when first_layer_T is also given (the legacy
    # flag overrode it)
    model, img = tiny("svmamba_cifar")
    x = images(2, img)
    first = {m: n for n, m in model.named_modules()}[model.first_conv]
    for mode, flag, steps in (("once", True, 1), ("per_step", False, model.T)):
        r = accounting.profile(model, x, first_layer=mode, first_layer_T=flag)
        assert r.conventions["first_layer_T"] is (mode == "per_step")
        row = next(q for q in r.rows if q.name == first and q.op == "conv")
        assert row.mac_ops == row.macs * steps / model.T, mode


def test_first_layer_once_with_ideal_reuse_still_reads_every_weight_once():
    # "once" runs the first conv on 1 sample instead of T: its weights are still read once per
    # image (they were charged 1 / T of a read each)
    model, img = tiny("svmamba_cifar")
    x = images(2, img)
    weights = model.first_conv.weight.numel()
    first = {m: n for n, m in model.named_modules()}[model.first_conv]
    rows = {}
    for mode in ("per_step", "once"):
        r = accounting.profile(model, x, preset="hw_45nm_fp32", reuse="ideal", first_layer=mode)
        rows[mode] = hw_row(r, first, "conv")
        assert rows[mode].weights_mj == pytest.approx(weights * sram(weights) * 1e-9, rel=REL)
    assert rows["once"].compute_mj == pytest.approx(rows["per_step"].compute_mj / model.T, rel=1e-9)


def test_an_op_without_volumes_is_costed_as_its_paper_row():
    # an einsum of spikes: SOPs x E_add, as the paper row (it was MACs x E_MAC, dense)
    class Einsum(nn.Module):
        spiking, T = True, 1

        def forward(self, x):
            return torch.einsum("bij,bjk->bik", x, x)

    x = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    r = accounting.profile(Einsum(), x, preset="hw_45nm_fp32")
    row = next(row for row in r.rows if row.op == "einsum")
    assert row.cost == "ac" and 0 < row.sops < row.macs
    assert hw_row(r, row.name, "einsum").compute_mj == pytest.approx(row.sops * 0.9e-9, rel=REL)


def test_profile_and_calibration_keep_each_modules_mode():
    model, img = tiny("svmamba_cifar")
    model.train()
    model.first_conv.eval()  # e.g. a frozen part
    model.get_classifier().eval()
    accounting.profile(model, images(2, img))
    accounting.calibrate_batchnorm(model, images(2, img), batches=1)
    assert model.training and not model.first_conv.training and not model.get_classifier().training


def test_a_stages_ac_rate_is_its_ac_layers_sops_per_mac_under_either_first_layer_rule():
    model, img = tiny("svmamba_cifar")
    x = images(2, img)
    for mode in ("per_step", "once"):
        r = accounting.profile(model, x, first_layer=mode)
        for stage in r.stages:
            ac = [row for row in r.rows if row.stage == stage.stage and row.cost == "ac"]
            if ac:
                want = sum(row.sops for row in ac) / sum(row.macs for row in ac)
                assert stage.ac_rate == pytest.approx(want, rel=1e-12), (mode, stage.stage)


@pytest.mark.slow
def test_cli_preset_and_first_layer(tmp_path, capsys):
    args = ["--model", "qkformer_10_384", "--img-size", "64", "--num-classes", "5", "--set", "embed_dim=32"]
    args += ["--set", "num_heads=2", "--set", "depths=[1, 1, 1]", "--set", "T=2", "--set", "backend=torch"]
    args += ["--calibrate-bn", "1", "--preset", "hw_45nm_fp32"]
    assert cli_main([*args, "--json", str(tmp_path / "a.json")]) == 0
    assert cli_main([*args, "--first-layer", "once", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "hardware model" in out and "at reuse ideal" in out
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    first = next(r for r in a["layers"] if r["name"] == "patch_embed1.proj.conv_bn.conv")
    saved = a["per_image"]["energy_mj"] - b["per_image"]["energy_mj"]
    assert saved == pytest.approx((2 - 1) * first["macs"] / 2 * 4.6e-9, rel=1e-9)
    assert b["hardware"]["per_image"]["energy_mj"] < a["hardware"]["per_image"]["energy_mj"]
    with pytest.raises(SystemExit) as e:  # two answers to one question
        cli_main([*args, "--first-layer", "per_step", "--first-layer-once"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_report_shows_the_components_and_plots_them(tmp_path):
    model, img = tiny("svmamba_cifar")
    r = accounting.profile(model, images(2, img), preset="hw_45nm_int8", reuse="ideal")
    md = r.to_markdown()
    assert "#### Hardware model: hw_45nm_int8" in md and "| stage | compute (mJ)" in md
    assert "hardware" in r.summary()
    png = tmp_path / "e.png"
    r.plot(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_presets_cite_their_sources_and_bad_values_are_refused():
    for name, preset in hardware.HW_PRESETS.items():
        assert preset.name == name and ("Horowitz" in preset.source or "Davies" in preset.source)
    with pytest.raises(ValueError, match="unknown hardware preset"):
        accounting.get_hardware_model("hw_7nm")
    with pytest.raises(ValueError):
        accounting.HardwareModel("bad", -1.0, 1.0, 4, "")
    with pytest.raises(ValueError, match="e_add_pj"):  # a bool is no energy (True was 1 pJ)
        accounting.HardwareModel("bad", True, 1.0, 4, "")
    with pytest.raises(ValueError, match="reuse"):
        accounting.Conventions(reuse="some")
    with pytest.raises(ValueError, match="first_layer"):
        accounting.Conventions(first_layer="twice")


# --------------------------------------------------------------------------------------------
# The model protocol


@pytest.mark.parametrize("name", list_models())
def test_every_model_follows_the_protocol(name):
    if name not in SMALL and not name.startswith(("svmamba", "vmamba", "qkformer")):
        pytest.fail(f"{name}: unknown family")
    key = name if name in SMALL else next(k for k in SMALL if k.split("_")[0] == name.split("_")[0])
    img, overrides = SMALL[key]
    model = create_model(name, num_classes=5, img_size=img, backend="torch", **overrides).eval()
    assert isinstance(model, VisionModel)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 5
    assert isinstance(model.first_conv, nn.Conv2d) and model.first_conv.in_channels == 3
    assert model.T >= 1 and (model.T > 1) == model.spiking
    x = images(2, img)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["svmamba_cifar", "qkformer_cifar"])
def test_shared_time_step_check(name):
    with pytest.raises(ValueError, match="T must be a positive int"):
        create_model(name, T=0)


def test_accounting_is_reachable_after_import_svm_models():
    code = "import svm_models; print(callable(svm_models.accounting.profile))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_accounting_reads_size_and_name_from_the_protocol():
    """Without data, profile draws images of the model's own img_size and names the report after
    the registered model (a model built from its class: after the class); a module outside the
    protocol may declare the same attributes."""
    model, img = tiny_model("vmamba_cifar")
    assert (model.num_classes, model.img_size, model.model_name) == (5, img, "vmamba_cifar")
    r = accounting.profile(model)
    assert r.input_shape == (3, img, img) and r.model == "vmamba_cifar"
    assert accounting.profile(model, name="mine").model == "mine"

    unregistered = type(model)(num_classes=5, img_size=img, **SMALL["vmamba_cifar"][1]).eval()
    assert unregistered.model_name is None
    assert accounting.profile(unregistered).model == type(model).__name__

    toy = Toy(spiking=False, kernel=1)
    with pytest.raises(ValueError, match="no img_size"):
        accounting.profile(toy)
    toy.img_size, toy.model_name = 4, "toy"
    r = accounting.profile(toy)
    assert r.input_shape == (3, 4, 4) and r.model == "toy"


def test_the_test_reports_accounting_takes_at_most_its_images():
    # whole batches of 100 overshot the stated cap of 512 (600 images)
    from torch.utils.data import DataLoader, TensorDataset

    from svm_models.training import evaluation

    data = TensorDataset(torch.randn(700, 3, 4, 4), torch.zeros(700, dtype=torch.long))
    report = evaluation.accounting_report(_TwoStepNet(), DataLoader(data, batch_size=100), {"model": "net"})
    assert report.images == evaluation.ACCOUNTING_IMAGES == 512

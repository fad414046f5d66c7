"""Golden equivalence with the original projects' code (MzeroMiko/VMamba,
zhouchenlin2096/QKFormer, para133/SNN_Mamba).

The fixtures under tests/fixtures/ hold what the original models produced on the CPU with
fixed seeds (weights, inputs, outputs); ``tests/fixtures/make_golden.py`` regenerates them from
checkouts of the originals. Here the same weights are loaded into our models, renamed and
reshaped, and the outputs compared. Everything runs on the PyTorch backend (the references of
our kernels): these tests pin the architecture, not the kernels.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_bench

import svm_models
from svm_models.layers import Linear2d, set_backend
from svm_models.svmamba_para133 import SCAN_INPUTS

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # golden_io, shared with make_golden.py
from golden_io import unpack_state  # noqa: E402


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def load_renamed(model: torch.nn.Module, original_state: dict, rename) -> torch.nn.Module:
    """Load the original's state dict into ``model`` through ``rename`` (key -> our key).

    Every one of our tensors must be covered exactly once (strict), reshaped where the original
    stores a 1x1 conv as a Linear / Conv1d or the per-direction scan weights flat.
    """
    ours = model.state_dict()
    mapped = {}
    for key, value in original_state.items():
        new = rename(key)
        assert new in ours, f"{key} -> {new}: no such tensor in {type(model).__name__}"
        assert new not in mapped, f"{new} mapped twice"
        assert value.numel() == ours[new].numel(), f"{key}: {tuple(value.shape)} vs {tuple(ours[new].shape)}"
        mapped[new] = value.reshape(ours[new].shape)
    model.load_state_dict(mapped, strict=True)
    return set_backend(model, "torch")


def substitute(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


# --------------------------------------------------------------------------------------------
# VMamba

VMAMBA_RULES = [
    (r"^patch_embed\.0\.", "patch_embed.0."),
    (r"^patch_embed\.2\.", "patch_embed.1."),
    (r"^patch_embed\.5\.", "patch_embed.3."),
    (r"^patch_embed\.7\.", "patch_embed.4."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"layers.\1.0.\2."),
    (r"\.op\.(x_proj_weight|A_logs|Ds|dt_projs_weight|dt_projs_bias)$", r".op.ssm.\1"),
    (r"^layers\.(\d+)\.downsample\.1\.", r"layers.\1.1.0."),
    (r"^layers\.(\d+)\.downsample\.3\.", r"layers.\1.1.1."),
]


def test_vmamba_matches_original():
    fx = load_fixture("vmamba")
    c = fx["config"]
    model = svm_models.create_model(
        "vmamba_t", num_classes=c["num_classes"], img_size=c["img_size"], dims=c["dims"], depths=c["depths"]
    )
    load_renamed(model, unpack_state(fx["state"]), lambda k: substitute(k, VMAMBA_RULES)).eval()
    with torch.no_grad():
        logits = model(fx["inputs"])
    assert torch.isfinite(logits).all()
    err = (logits - fx["logits"]).abs().max().item()
    # 2.2e-7 here; 1e-5 let a scan with B and C swapped through (9.6e-6: the scan is a small part)
    assert err <= 1e-6, f"max abs diff {err:.2e} from the original VMamba"
    assert fx["logits"].std() > 1e-2  # the fixture's logits are not trivially flat


# --------------------------------------------------------------------------------------------
# QKFormer

QKFORMER_UNITS = {"proj": "proj", "proj1": "proj1", "proj2": "proj2", "proj3": "proj3", "proj4": "proj4"}
QKFORMER_UNITS |= {"proj_res": "shortcut", "q": "q", "k": "k", "v": "v"}
QKFORMER_UNITS |= {"mlp1": "fc1", "mlp2": "fc2", "fc1": "fc1", "fc2": "fc2"}


def qkformer_key(key: str) -> str:
    key = re.sub(r"\.(tssa|ssa|attn)\.", ".attn.", key)
    m = re.match(r"^(.*?)([a-z0-9]+(?:_res)?)_(conv|bn)\.(\w+)$", key)
    if m is None:
        return key  # head.*
    prefix, unit, layer, param = m.groups()
    return f"{prefix}{QKFORMER_UNITS[unit]}.conv_bn.{layer}.{param}"


def qkformer_model(fx: dict) -> torch.nn.Module:
    c = fx["config"]
    layout = "cifar" if c["depths"] == 3 and c["img_size"] == 32 else "imagenet"
    depths = (1, 1, c["depths"] - 2) if layout == "cifar" else (1, 2, c["depths"] - 3)
    model = svm_models.create_model(
        "qkformer_cifar" if layout == "cifar" else "qkformer_10_384",
        num_classes=c["num_classes"],
        img_size=c["img_size"],
        embed_dim=c["embed_dim"],
        depths=depths,
        num_heads=c["num_heads"],
        T=c["T"],
    )
    return load_renamed(model, unpack_state(fx["state"]), qkformer_key)


def run(model: torch.nn.Module, images: torch.Tensor, train: bool) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("layout", ["cifar", "imagenet"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_qkformer_batch1_bit_exact(layout, mode):
    fx = load_fixture(f"qkformer_{layout}")
    expected = fx["outputs"][f"{mode}_b1"]
    out = run(qkformer_model(fx), fx["inputs"][:1], train=mode == "train")
    assert torch.equal(out, expected), f"max abs diff {(out - expected).abs().max().item():.2e}"
    assert min(fx["attn_rates"].values()) > 0  # the fixture exercises every attention LIF


@pytest.mark.parametrize("layout", ["cifar", "imagenet"])
def test_qkformer_batch4_equals_original_without_its_batch_leak(layout):
    """Pins the one deliberate deviation: the original SSA's proj_lif integrates over T*B."""
    fx = load_fixture(f"qkformer_{layout}")
    model = qkformer_model(fx)
    out_eval = run(model, fx["inputs"], train=False)
    assert torch.equal(out_eval, fx["outputs"]["eval_b4_patched"])
    assert not torch.allclose(out_eval, fx["outputs"]["eval_b4"], atol=1e-6), "the leak had no effect"
    out_train = run(model, fx["inputs"], train=True)
    assert torch.equal(out_train, fx["outputs"]["train_b4_patched"])


# --------------------------------------------------------------------------------------------
# SVMamba, the original (para133/SNN_Mamba)

PARA133_RULES = [
    (r"^patch_embed\.(conv\d)\.conv\.", r"patch_embed.\1.module.0."),
    (r"^patch_embed\.(conv\d)\.norm\.", r"patch_embed.\1.module.1."),
    (r"^classifier\.head\.", "head."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.(norm\d)\.", r"layers.\1.block\2.\3.module."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.ffn\.net\.", r"layers.\1.block\2.ffn.net.module."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.spikmamba\.", r"layers.\1.block\2.spikmamba."),
    (r"\.ssm\.(A_logs|Ds|dt_projs_bias)$", r".ssm.ssm.\1"),
    (r"\.ssm\.x_proj\.weight$", ".ssm.ssm.x_proj_weight"),
    (r"\.ssm\.dt_projs\.weight$", ".ssm.ssm.dt_projs_weight"),
]


def para133_key(key: str, depths) -> str:
    m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.conv\.(conv|norm)\.(\w+)$", key)
    if m:  # the original appends the downsampling unit to the stage's blocks
        i, j, layer, param = m.groups()
        assert int(j) == depths[int(i)]
        return f"layers.{i}.downsample.module.{0 if layer == 'conv' else 1}.{param}"
    return substitute(key, PARA133_RULES)


def para133_model(fx: dict, **overrides) -> torch.nn.Module:
    c = fx["config"]
    model = svm_models.create_model(
        "svmamba_para133",
        num_classes=c["num_classes"],
        img_size=c["img_size"],
        dims=c["dims"],
        depths=c["depths"],
        T=c["T"],
        **overrides,
    )
    return load_renamed(model, unpack_state(fx["state"]), lambda k: para133_key(k, c["depths"])).eval()


def run_recording_spikes(model, images):
    spikes, hooks = {}, []
    for name, m in model.named_modules():
        if name.endswith("snn_in") or name.endswith("snn2"):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: spikes.__setitem__(n, o.bool())))
    with torch.no_grad():
        logits = model(images)
    for h in hooks:
        h.remove()
    return logits, spikes


def original_name(name: str) -> str:
    return re.sub(r"^layers\.(\d+)\.block(\d+)\.", r"layers.\1.blocks.\2.", name)


def assert_same_spikes(ours: dict, original: dict, T: int) -> None:
    assert len(ours) == len(original) > 0
    for name, s in ours.items():
        ref = original[original_name(name)]
        s = s.reshape(ref.shape)  # ours (T, B, ...) where the original keeps (T*B, ...)
        assert ref.float().mean() > 0.05, f"{name}: the fixture's LIF hardly fires"
        assert torch.equal(s, ref), f"{name}: {(s != ref).sum().item()} spikes differ"


def test_svmamba_para133_parameter_count():
    model = svm_models.create_model("svmamba_para133")
    assert sum(p.numel() for p in model.parameters()) == 15_135_784
    spiking_inputs = [
        m for m in model.modules() if getattr(m, "kernel_size", None) == (3, 3) and m.groups == 1
    ]
    assert len(spiking_inputs) == 2 + 2 + 7  # stem 2, downsampling 2, one dense conv per block


def test_svmamba_para133_with_leak_reproduces_original():
    """fix_batch_leak=False: the original's T*B integration, spike for spike."""
    fx = load_fixture("svmamba_para133")
    model = para133_model(fx, fix_batch_leak=False)
    logits, spikes = run_recording_spikes(model, fx["inputs"])
    assert_same_spikes(spikes, fx["spikes"], fx["config"]["T"])
    err = (logits - fx["logits"]).abs().max().item()
    assert err <= 1e-6, f"max abs diff {err:.2e}"  # the same spikes: only summation order differs


def test_svmamba_para133_default_fixes_the_leak():
    fx = load_fixture("svmamba_para133")
    model = para133_model(fx)
    logits, spikes = run_recording_spikes(model, fx["inputs"])
    assert_same_spikes(spikes, fx["spikes_patched"], fx["config"]["T"])
    assert (logits - fx["logits_patched"]).abs().max().item() <= 1e-6
    assert (logits - fx["logits"]).abs().max().item() > 1e-3, "the leak fix changed nothing"


OUTSIDE_MIXER = {"stem": "spiking", "ffn": "spiking", "norm": "bn"}
ALL_SWITCHES = {**OUTSIDE_MIXER, "scan_input": "spike", "gate": "conv", "mixer_norm": "bn"}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"fix_batch_leak": False},
        OUTSIDE_MIXER,
        {"scan_input": "spike"},
        {"gate": "conv"},  # the gate on the original (real) scan path
        {"mixer_norm": "bn"},
        {"gate": "conv", "mixer_norm": "bn", "fix_batch_leak": False},
        ALL_SWITCHES,
    ],
)
def test_svmamba_para133_trains(variant):
    """Every variant (the ablation switches included) back-propagates finite gradients to every weight."""
    model = svm_models.create_model(
        "svmamba_para133",
        num_classes=5,
        img_size=16,
        patch_size=2,
        dims=[8, 16],
        depths=[1, 1],
        T=2,
        **variant,
    )
    set_backend(model, "torch").train()
    loss = model(torch.randn(3, 3, 16, 16)).logsumexp(dim=1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("variant", [{}, {"scan_input": "spike", "gate": "conv"}])
def test_svmamba_para133_runs_with_a_wider_scan(variant):
    # guards SpikeMamba's scan_width: s is dim wide for the real scan, d_inner for the spiking one
    # (equal at ssm_ratio 1, which every other test uses)
    model = svm_models.create_model(
        "svmamba_para133", num_classes=5, img_size=16, patch_size=2, dims=[8], depths=[1], T=2,
        ssm_ratio=2.0, backend="torch", **variant,
    )  # fmt: skip
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("scan_input", SCAN_INPUTS)
def test_svmamba_para133_mixer_norm_bn_replaces_the_scan_norm(scan_input):
    # guards mixer_norm="bn" on both scan paths: the norm after the scan is a BatchNorm, not LN
    model = svm_models.create_model(
        "svmamba_para133", num_classes=5, img_size=16, patch_size=2, dims=[8], depths=[1], T=2,
        mixer_norm="bn", scan_input=scan_input,
    )  # fmt: skip
    ssm = model.layers[0].block0.spikmamba.ssm
    assert isinstance(ssm.out_norm, torch.nn.BatchNorm2d)
    assert not isinstance(ssm.out_proj, Linear2d)


def test_svmamba_para133_inits_the_scan_projections_as_linears():
    # the original's x_proj and dt_projs are nn.Linear layers: trunc_normal(0.02) like every linear
    # (VMamba's own init would draw U(-D^-0.5, D^-0.5) and U(-R^-0.5, R^-0.5), stds near 0.1 and 0.4)
    torch.manual_seed(0)
    model = svm_models.create_model(
        "svmamba_para133", num_classes=5, img_size=16, patch_size=2, dims=[32], depths=[1], T=2
    )
    ssm = model.layers[0].block0.spikmamba.ssm.ssm
    for w in (ssm.x_proj_weight, ssm.dt_projs_weight):
        assert abs(w.std().item() - 0.02) < 0.004


def test_svmamba_para133_spiking_ffn_fires_at_its_entry():
    """ffn="spiking" is SVMamba's MLP with the membrane shortcut: its first conv reads spikes."""
    model = svm_models.create_model(
        "svmamba_para133", num_classes=5, img_size=16, patch_size=2, dims=[8], depths=[1], T=2,
        v_threshold=0.02, ffn="spiking",
    )  # fmt: skip
    set_backend(model, "torch").eval()
    seen = []
    fc1 = model.layers[0].block0.ffn.fc1.conv
    handle = fc1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    handle.remove()
    (x,) = seen
    assert ((x == 0) | (x == 1)).all() and 0 < x.mean() < 1


def test_svmamba_para133_rejects_unknown_switches():
    for arg in ("stem", "ffn", "norm", "scan_input", "gate", "mixer_norm"):
        with pytest.raises(ValueError, match=arg):
            svm_models.create_model("svmamba_para133", **{arg: "nope"})


def test_svmamba_para133_all_switches_differ_from_svmamba_by_the_prenorms_only():
    """With every switch on, the parameters differ from svmamba's by the block's pre-norms (two
    BatchNorms of 2 C each per block): the last rung of the ladder changes only the block."""
    kw = dict(num_classes=7, img_size=32, dims=[16, 24, 32], depths=[1, 2, 1], T=2)
    ours = svm_models.create_model("svmamba_para133", patch_size=2, **ALL_SWITCHES, **kw)
    flagship = svm_models.create_model("svmamba_cifar", **kw)
    count = lambda m: sum(p.numel() for p in m.parameters())
    prenorms = sum(4 * c * d for c, d in zip(kw["dims"], kw["depths"]))
    assert count(ours) - count(flagship) == prenorms
    # The same scan core: the spiking SS2D's projections have the same shapes as svmamba's.
    ours_ssm = {n.split("ssm.ssm.")[-1]: p.shape for n, p in ours.named_parameters() if "ssm.ssm." in n}
    theirs = {n.split("mixer.ssm.")[-1]: p.shape for n, p in flagship.named_parameters() if "mixer.ssm." in n}
    assert ours_ssm and sorted(ours_ssm.items()) == sorted(theirs.items())


def test_svmamba_para133_mixer_spikes_where_documented():
    """scan_input="spike": the scan reads spikes; gate="conv": out_proj reads spikes x spikes."""
    model = svm_models.create_model(
        "svmamba_para133", num_classes=5, img_size=16, patch_size=2, dims=[16], depths=[1], T=2,
        v_threshold=0.02, **ALL_SWITCHES,
    )  # fmt: skip
    set_backend(model, "torch").eval()
    mixer = model.layers[0].block0.spikmamba
    seen = {}
    for name, m in (("scan", mixer.ssm.ssm), ("out_proj", mixer.ssm.out_proj)):
        m.register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, i[0]))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(logits).all()
    for name, x in seen.items():
        assert ((x == 0) | (x == 1)).all(), f"{name} input is not binary"
        assert 0 < x.mean() < 1, f"{name} input is all {x.mean().item()}"


def load_ablation():
    return load_bench("ablation")


def test_ablation_ladder_one_change_per_rung():
    """Every rung is a real model that runs forward and backward; each para133 rung adds to the
    switches of the one before; the ends are the digits configs of svmamba_para133 and svmamba."""
    from svm_models.training import engine

    ablation = load_ablation()
    ladder = ablation.LADDER
    assert ladder[0].config.endswith("digits_svmamba_para133.yaml") and not ladder[0].model_args
    assert ladder[-1].config.endswith("digits_svmamba.yaml") and not ladder[-1].model_args
    for before, after in zip(ladder[:-2], ladder[1:-1]):
        added = set(after.model_args.items()) - set(before.model_args.items())
        assert set(before.model_args.items()) <= set(after.model_args.items()), after.name
        assert len(added) == 1, f"{after.name} changes {added}"
    assert ladder[-2].model_args == ALL_SWITCHES
    counts = []
    for rung in ladder:
        cfg = ablation.rung_config(rung)
        model = set_backend(engine.build_model(cfg, 10), "torch").train()
        x = torch.rand(4, 3, cfg["img_size"], cfg["img_size"], generator=torch.Generator().manual_seed(0))
        logits = model(x)
        assert logits.shape == (4, 10) and torch.isfinite(logits).all(), rung.name
        logits.logsumexp(dim=1).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{rung.name}: {name}"
        counts.append(sum(p.numel() for p in model.parameters()))
    ends = [
        engine.build_model(ablation.rung_config(ablation.Rung("", "", config)), 10)
        for config in ("configs/digits_svmamba_para133.yaml", "configs/digits_svmamba.yaml")
    ]
    assert [counts[0], counts[-1]] == [sum(p.numel() for p in m.parameters()) for m in ends]
    assert counts[-1] < counts[0]


def test_ablation_short_runs_end_their_warmup_in_time():
    # --epochs 1 left the digits configs' 1 warmup epoch, which validation refuses
    ablation = load_ablation()
    cfg = ablation.rung_config(ablation.LADDER[-1], epochs=1)
    assert cfg["epochs"] == 1 and cfg["warmup_epochs"] == 0
    assert ablation.rung_config(ablation.LADDER[-1], epochs=5)["warmup_epochs"] == 1


def _one_run_done(tmp_path, monkeypatch, rung, top1, spike_inputs, sops):
    """The ablation module, with one finished 1-epoch run of ``rung`` (seed 0) in tmp_path's
    runs file and any further training failing the test."""
    ablation = load_ablation()
    row = dict(
        rung=rung, seed=0, epochs=1, top1_last=top1, top1_profile=top1, params=1000,
        spike_input_layers=spike_inputs, conv_linear_layers=5, macs_M=1.0, mac_ops_M=1.0,
        sops_M=sops, energy_uJ=2.0, mean_rate="", train_s=1.0,
    )  # fmt: skip
    ablation.write_csv(str(tmp_path / "runs_seed0.csv"), [row])
    monkeypatch.setattr(ablation, "run_one", lambda *a: pytest.fail("trained although the run is done"))
    return ablation


def test_ablation_keeps_one_training_length_per_results_folder(tmp_path, capsys, monkeypatch):
    # A repeated command with another --epochs reused the old length's runs as done and summarised
    # them as if they were the new length's; now it is refused, as are --epochs 0 and a bare --only
    ablation = _one_run_done(tmp_path, monkeypatch, rung="vmamba", top1=18.6, spike_inputs=0, sops=0.0)
    base = ["--out", str(tmp_path), "--seeds", "0"]
    for argv, message in [
        (["--epochs", "2", "--only", "vmamba"], "would hold runs of 1 and 2 epochs"),
        (["--only", "vmamba"], "would hold runs of 1 and 15 epochs"),  # (the config's length)
        (["--epochs", "0", "--only", "vmamba"], "--epochs must be >= 1"),
        (["--epochs", "1", "--only"], "expected at least one argument"),
    ]:
        with pytest.raises(SystemExit) as e:
            ablation.main(base + argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    ablation.main([*base, "--epochs", "1", "--only", "vmamba"])  # the run is done: no training
    summary = (tmp_path / "summary.md").read_text()
    assert "| vmamba |" in summary and "18.60 |" in summary and "±" not in summary  # one seed: no spread


def test_ablation_counts_spike_and_spike_count_inputs_of_conv_and_linear_layers():
    # Guards spike_input_share: spikes and SEW spike counts are both spike inputs; only Conv and
    # Linear layers are counted
    from types import SimpleNamespace as Row

    ablation = load_ablation()
    rows = [
        Row(op="conv", kind="spike"),
        Row(op="linear", kind="integer"),
        Row(op="linear", kind="real"),
        Row(op="conv", kind="real"),
        Row(op="lif", kind="real"),
        Row(op="matmul", kind="spike"),
    ]
    assert ablation.spike_input_share(Row(rows=rows)) == (2, 4)


def test_ablation_names_each_run_after_its_rung_and_seed():
    # two seeds of one rung (or two rungs) trained into one folder must not share a run directory
    ablation = load_ablation()
    names = {
        ablation.rung_config(rung, seed=seed, epochs=1)["task_name"]
        for rung in ablation.LADDER
        for seed in (0, 1)
    }
    assert len(names) == 2 * len(ablation.LADDER)
    assert ablation.rung_config(ablation.LADDER[1], seed=2)["task_name"] == "spiking_stem_s2"


def test_ablation_summary_averages_each_rungs_seeds(tmp_path):
    # Guards summarise and read_runs: mean and std over the rung's own seeds, the spike-input
    # share as spiking/all, rungs without runs left out; a runs file not written yet reads as none
    ablation = load_ablation()
    base = dict(
        epochs=1, top1_profile=0.0, params=1000, spike_input_layers=3, conv_linear_layers=5,
        mac_ops_M=1.0, mean_rate="", train_s=1.0, macs_M=2.0, sops_M=1.0,
    )  # fmt: skip
    runs = [
        dict(base, rung="svmamba", seed=0, top1_last=90.0, energy_uJ=1.0),
        dict(base, rung="svmamba", seed=1, top1_last=80.0, energy_uJ=2.0),
        dict(base, rung="svmamba", seed=2, top1_last=70.0, energy_uJ=6.0),
        dict(base, rung="vmamba", seed=0, top1_last=50.0, energy_uJ=9.0, spike_input_layers=0),
    ]
    ablation.write_csv(str(tmp_path / "runs.csv"), runs)
    rows = ablation.read_runs([str(tmp_path / "runs.csv"), str(tmp_path / "absent.csv")])
    assert rows[0]["seed"] == 0 and rows[0]["top1_last"] == 90.0
    summary = ablation.summarise(rows, ablation.LADDER + ablation.BASELINES)
    assert [s["rung"] for s in summary] == ["svmamba", "vmamba"]
    s, v = summary
    assert s["seeds"] == 3 and v["seeds"] == 1
    assert s["top1_mean"] == pytest.approx(80.0) and s["top1_std"] == pytest.approx(10.0)
    assert s["energy_uJ_mean"] == pytest.approx(3.0) and v["energy_uJ_std"] == 0.0
    assert s["spike_input_layers"] == "3/5" and v["spike_input_layers"] == "0/5"


def test_ablation_only_takes_every_rung_and_refuses_unknown_names(tmp_path, capsys, monkeypatch):
    ablation = _one_run_done(tmp_path, monkeypatch, rung="svmamba", top1=91.0, spike_inputs=4, sops=0.5)
    base = ["--out", str(tmp_path), "--seeds", "0", "--epochs", "1"]
    with pytest.raises(SystemExit) as e:
        ablation.main([*base, "--only", "svmamba", "nope"])
    assert e.value.code == 2 and "--only: no rung named nope" in capsys.readouterr().err
    ablation.main([*base, "--only", "svmamba"])  # the ladder's last rung is a rung too
    assert "| svmamba |" in (tmp_path / "summary.md").read_text()


def test_ablation_run_takes_the_last_epochs_accuracy(tmp_path, monkeypatch):
    # digits has no validation split: the row's top-1 is the last epoch's, not the best one's
    from types import SimpleNamespace

    ablation = load_ablation()
    engine = ablation.engine

    def fit(cfg, progress=True):
        run = tmp_path / cfg["task_name"]
        run.mkdir()
        torch.save({"model": engine.build_model(cfg, 10).state_dict()}, run / "last.pt")
        return {"history": [{"val_top1": 90.0}, {"val_top1": 85.0}]}

    rows = [SimpleNamespace(op="conv", kind="spike"), SimpleNamespace(op="linear", kind="real")]
    report = SimpleNamespace(
        rows=rows,
        top1=84.0,
        params=123,
        macs=2e6,
        mac_ops=1e6,
        sops=3e6,
        energy_mj=0.004,
        mean_firing_rate=0.1,
    )
    monkeypatch.setattr(engine, "fit", fit)
    monkeypatch.setattr(ablation.accounting, "profile", lambda model, loader, name: report)
    row = ablation.run_one(ablation.BASELINES[1], 3, 2, str(tmp_path))
    assert row["rung"] == "vmamba" and row["seed"] == 3 and row["epochs"] == 2
    assert row["top1_last"] == 85.0 and row["top1_profile"] == 84.0
    assert (row["spike_input_layers"], row["conv_linear_layers"]) == (1, 2)
    assert row["macs_M"] == 2.0 and row["sops_M"] == 3.0 and row["energy_uJ"] == pytest.approx(4.0)

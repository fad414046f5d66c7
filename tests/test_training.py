"""The training engine: config schema, optimiser/schedule, checkpoints, resume, EMA, non-finite
loss, on small in-process runs with a tiny registered model (digits at 8 px)."""

import os

import pytest
import torch
from fabricate import TINY, TinyNet, register_tiny, tiny_cfg

import svm_models
from svm_models.training import checkpoint as ckpt
from svm_models.training import config as C
from svm_models.training import engine, history, optim


@pytest.fixture
def tiny(monkeypatch):
    return register_tiny(monkeypatch)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **over):
    return C.validate(tiny_cfg(tmp_path, **over), "test")


# ----------------------------------------------------------------------------------------------
# config schema
# ----------------------------------------------------------------------------------------------
def test_config_defaults_and_coercion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "task_name: t\nmodel: svmamba_cifar\ndataset: digits\nlr: 1e-3\nT: 4\nmodel_args: {dims: [16, 32]}\n"
    )
    cfg = C.load_config(str(p))
    assert cfg["lr"] == 1e-3 and isinstance(cfg["lr"], float)  # PyYAML reads 1e-3 as a string
    assert cfg["batch_size"] == 64 and cfg["root_path"] == "data" and cfg["pretrained"] is False
    assert cfg["model_args"] == {"dims": [16, 32]} and cfg["T"] == 4
    assert set(cfg) == set(C.SCHEMA)
    assert C.run_dir(cfg) == os.path.join("runs", "t")


BAD = [
    (
        "task_name: t\nmodel: m\ndataset: digits\nbach_size: 8\n",
        r"unknown key 'bach_size' \(did you mean 'batch_size'\?\)",
    ),
    (
        "task_name: t\nmodel: m\ndataset: digits\nbatch_size: '8'\n",
        r"'batch_size' must be an integer, got '8'",
    ),
    ("task_name: t\nmodel: m\ndataset: digits\nepochs: 2.5\n", r"'epochs' must be an integer, got 2.5"),
    ("task_name: t\nmodel: m\ndataset: digits\nepochs: true\n", r"'epochs' must be an integer, got True"),
    ("task_name: t\nmodel: m\ndataset: digits\nlr: fast\n", r"'lr' must be a number, got 'fast'"),
    ("task_name: t\nmodel: m\ndataset: digits\nlr: .nan\n", r"'lr' must be finite"),
    ("task_name: t\nmodel: m\ndataset: digits\namp: 1\n", r"'amp' must be true/false, got 1"),
    (
        "task_name: t\nmodel: m\ndataset: digits\nmodel_args: [1, 2]\n",
        r"'model_args' must be a mapping, got list",
    ),
    ("task_name: t\nmodel: m\ndataset: digits\nseed: null\n", r"'seed' must be an integer, got null"),
    (
        "task_name: t\nmodel: m\ndataset: digits\npretrained: 3\n",
        r"'pretrained' must be true/false or a string, got 3",
    ),
    ("task_name: t\nmodel: m\n", r"missing required key\(s\): dataset"),
    ("task_name: t\nmodel: m\ndataset: imagenet21k\n", r"'dataset' must be one of digits, cifar10"),
    ("task_name: t\nmodel: m\ndataset: digits\nepochs: 0\n", r"'epochs' must be >= 1, got 0"),
    (
        "task_name: t\nmodel: m\ndataset: digits\nepochs: 5\nwarmup_epochs: 5\n",
        r"'warmup_epochs' must be >= 0 and below epochs \(5\), got 5.0 \(a shorter run: --opts warmup_epochs=0",
    ),
    ("task_name: t\nmodel: m\ndataset: digits\nema: 1.0\n", r"'ema' must be in \[0, 1\)"),
    (
        "task_name: t\nmodel: m\ndataset: digits\nlabel_smoothing: -0.1\n",
        r"'label_smoothing' must be in \[0, 1\)",
    ),
    ("task_name: a/b\nmodel: m\ndataset: digits\n", r"'task_name' must be a non-empty name without slashes"),
    (
        "task_name: t\nmodel: m\ndataset: digits\nT: 4\nmodel_args: {T: 2}\n",
        r"set T either as the top-level key",
    ),
    (
        "task_name: t\nmodel: m\ndataset: digits\nmodel_args: {num_classes: 5}\n",
        r"must not set num_classes or img_size",
    ),
    ("- just\n- a list\n", r"the top level must be a mapping of keys, got list"),
    ("", r"the top level must be a mapping of keys, got an empty file"),
    ("task_name: t\n  model: [unclosed\n", r"not valid YAML \(line 2"),
    (
        "task_name: t\nmodel: m\ndataset: digits\nlr: 0.5\nlr: 0.005\n",
        r"not valid YAML \(line 5, column 1\): the key 'lr' is given twice",
    ),
    (
        "task_name: t\nmodel: m\ndataset: digits\nmodel_args: {dims: 8, dims: 16}\n",
        r"the key 'dims' is given twice",
    ),
]


@pytest.mark.parametrize("text,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_config_errors_are_one_clear_line(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(C.ConfigError, match=message) as e:
        C.load_config(str(p))
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_a_yaml_merge_may_be_overridden(tmp_path):
    # (a key given twice in one mapping is an error; one a merge brings in may be overridden)
    p = tmp_path / "c.yaml"
    p.write_text(
        "task_name: t\nmodel: m\ndataset: digits\nmodel_args:\n  <<: {dims: 8, depths: [1]}\n  dims: 16\n"
    )
    assert C.load_config(str(p))["model_args"] == {"dims": 16, "depths": [1]}


def test_config_missing_file_and_folder(tmp_path):
    with pytest.raises(C.ConfigError, match="config file not found: .*nope.yaml"):
        C.load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(C.ConfigError, match="config path is not a file"):
        C.load_config(str(tmp_path))


def test_pretrained_path_rules(tmp_path):
    cfg = _cfg(tmp_path, pretrained=True)
    with pytest.raises(C.ConfigError, match="'pretrained: true' needs 'checkpoint'"):
        C.pretrained_path(cfg)
    with pytest.raises(C.ConfigError, match="pretrained weights .* not found"):
        C.pretrained_path(dict(cfg, checkpoint=str(tmp_path / "w.pt")))
    assert C.pretrained_path(_cfg(tmp_path)) is None


def test_pretrained_true_takes_the_checkpoint_and_an_empty_path_is_refused(tmp_path):
    # Guards `p is False`: `pretrained: ""` is a weights file that is not there, not "no weights"
    w = tmp_path / "w.pt"
    torch.save(TinyNet().state_dict(), w)
    assert C.pretrained_path(_cfg(tmp_path, pretrained=True, checkpoint=str(w))) == str(w)
    with pytest.raises(C.ConfigError, match=r"pretrained weights \('pretrained'\) not found: $"):
        C.pretrained_path(_cfg(tmp_path, pretrained=""))


def test_unknown_model_and_bad_override_are_config_errors(tmp_path, tiny):
    with pytest.raises(C.ConfigError, match="unknown model 'svmambaa'; registered models: .*svmamba_cifar"):
        engine.build_model(_cfg(tmp_path, model="svmambaa"), 10)
    with pytest.raises(C.ConfigError, match=r"cannot build model .*unknown override\(s\) \['widht'\]"):
        engine.build_model(_cfg(tmp_path, model_args={"widht": 3}), 10)
    m = engine.build_model(_cfg(tmp_path, model_args={"width": 4}), 7)
    assert m.conv.out_channels == 4 and m.head.out_features == 7 and m.img_size == 8


def test_T_key_is_passed_as_the_model_override(tmp_path):
    m = engine.build_model(
        _cfg(
            tmp_path, model="svmamba_cifar", T=3, img_size=16, model_args={"dims": [8, 16], "depths": [1, 1]}
        ),
        10,
    )
    assert m.T == 3 and m.img_size == 16 and m.dims == [8, 16]


# ----------------------------------------------------------------------------------------------
# optimiser and schedule
# ----------------------------------------------------------------------------------------------
def test_weight_decay_groups_skip_biases_and_1d():
    m = TinyNet()
    groups = optim.param_groups(m, 0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert id(m.conv.weight) in decayed and id(m.head.weight) in decayed
    assert id(m.conv.bias) not in decayed and id(m.bn.weight) not in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


@pytest.mark.parametrize("name", ["svmamba_cifar", "vmamba_cifar"])
def test_weight_decay_skips_the_scans_rates_skips_and_time_step_bias(name):
    # A_logs (4D, N) and dt_projs_bias (4, D) are 2-D: the 1-D rule decayed them, pulling the
    # decay rates and the time steps' bias towards 0
    m = svm_models.create_model(name, num_classes=10, dims=[8, 16], depths=[1, 1])
    decayed = {id(p) for p in optim.param_groups(m, 0.05)[0]["params"]}
    scan = [
        (n, p) for n, p in m.named_parameters() if n.rsplit(".", 1)[-1] in ("A_logs", "Ds", "dt_projs_bias")
    ]
    assert len(scan) == 6 and not [n for n, p in scan if id(p) in decayed]
    assert any(n.endswith("x_proj_weight") and id(p) in decayed for n, p in m.named_parameters())


def test_scan_weight_decay_key_decays_rates_and_time_step_bias_as_vmamba():
    # VMamba's classification optimiser reads no _no_weight_decay marks: its 2-D A_logs and
    # dt_projs_bias are decayed, its 1-D Ds is not
    m = svm_models.create_model("vmamba_cifar", num_classes=10, dims=[8, 16], depths=[1, 1])
    cfg = {"lr": 1e-3, "weight_decay": 0.05, "scan_weight_decay": True}

    def decayed_names(cfg):
        groups = optim.build_optimizer(m, cfg).param_groups
        decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        return {n.rsplit(".", 1)[-1] for n, p in m.named_parameters() if id(p) in decayed}

    names = decayed_names(cfg)
    assert {"A_logs", "dt_projs_bias"} <= names and "Ds" not in names
    assert not {"A_logs", "dt_projs_bias"} & decayed_names({**cfg, "scan_weight_decay": False})


def _lr_trace(cfg: dict, steps: int, steps_per_epoch: int = 10) -> list[float]:
    """The learning rate of each of the first ``steps`` optimiser steps under cfg's schedule, then
    the one after the last (steps + 1 values)."""
    opt = optim.build_optimizer(TinyNet(), cfg)
    sched = optim.build_scheduler(opt, cfg, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*lrs, opt.param_groups[0]["lr"]]


def test_warmup_then_cosine_per_iteration():
    cfg = dict(lr=1e-2, weight_decay=0.0, epochs=5, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5)
    lrs = _lr_trace(cfg, 50)
    assert lrs[0] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # linear ramp
    assert lrs[10] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[10:50], lrs[11:50]))  # cosine decay
    assert lrs[30] == pytest.approx(
        1e-5 + (1e-2 - 1e-5) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 20 / 40)).item())
    )
    assert lrs[50] == pytest.approx(1e-5)  # min_lr after the last step


def test_a_warmup_rounding_up_to_the_whole_run_still_ends_at_min_lr():
    # Guards the warmup clamp (total - 1): 1.97 of 2 epochs of 10 steps rounds to all 20 steps,
    # which left no cosine step and ended the run at the peak lr instead of min_lr
    cfg = dict(lr=1e-2, weight_decay=0.0, epochs=2, warmup_epochs=1.97, warmup_lr=1e-4, min_lr=1e-5)
    opt = optim.build_optimizer(TinyNet(), cfg)
    sched = optim.build_scheduler(opt, cfg, steps_per_epoch=10)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_weight_decay_groups_no_weight_decay_frozen_weights_n_d_biases_and_no_empty_group():
    # Guards param_groups' other rules: timm's no_weight_decay() hook (a 2-D position embedding
    # it lists is not decayed), a bias of more than one dimension is a bias, a frozen weight is in
    # no group (fine-tuning with a frozen stem), and an empty group is dropped (a model without
    # decayed weights has one group, so that a checkpoint of it resumes into the same layout)
    class Extras(TinyNet):
        def __init__(self):
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.zeros(16, 8))
            self.table = torch.nn.Module()
            self.table.bias = torch.nn.Parameter(torch.zeros(4, 4))

        def no_weight_decay(self):
            return {"pos_embed"}

    m = Extras()
    m.conv.weight.requires_grad_(False)
    decay, no_decay = ({id(p) for p in g["params"]} for g in optim.param_groups(m, 0.05))
    assert id(m.head.weight) in decay and {id(m.pos_embed), id(m.table.bias)} <= no_decay
    assert id(m.conv.weight) not in decay | no_decay
    assert len(decay | no_decay) == len(list(m.parameters())) - 1
    (only,) = optim.param_groups(torch.nn.BatchNorm2d(4), 0.05)
    assert only["weight_decay"] == 0.0 and len(only["params"]) == 2


def test_fractional_warmup_rounds_to_the_nearest_step():
    # Guards the rounding of warmup_epochs x steps: 0.29 x 10 steps is a 3-step warmup, not 2
    cfg = dict(lr=1e-2, weight_decay=0.0, epochs=2, warmup_epochs=0.29, warmup_lr=1e-4, min_lr=1e-5)
    lrs = _lr_trace(cfg, 4)
    assert lrs[2] < 1e-2 and lrs[3] == pytest.approx(1e-2)


@pytest.mark.parametrize("stop", [5, 10, 15])
def test_an_extended_resume_follows_the_longer_schedule_from_any_step(stop):
    # Guards stretch_schedule: a run of 2 epochs stopped at step `stop` (in the warmup, at its
    # end, in the cosine) and resumed for 4 epochs takes, at every later step, the learning rate
    # of a run planned for 4 epochs (a resume in the warmup was set to the peak at once)
    base = dict(lr=1e-2, weight_decay=0.0, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5)
    short, long = dict(base, epochs=2), dict(base, epochs=4)

    def schedule(cfg):
        opt = optim.build_optimizer(TinyNet(), cfg)
        return opt, optim.build_scheduler(opt, cfg, steps_per_epoch=10)

    def run(opt, sched, steps):
        lrs = []
        for _ in range(steps):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    opt, sched = schedule(long)
    planned = run(opt, sched, 40)
    opt, sched = schedule(short)
    run(opt, sched, stop)
    opt2, sched2 = schedule(long)  # as restore() does: built for the new length, then loaded
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    optim.stretch_schedule(sched2, long, steps_per_epoch=10)
    assert sched2.get_last_lr() == [g["lr"] for g in opt2.param_groups]
    assert opt2.param_groups[0]["lr"] == pytest.approx(planned[stop - 1], rel=1e-9)
    assert run(opt2, sched2, 40 - stop) == pytest.approx(planned[stop:], rel=1e-9)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    ckpt.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = open(path, "rb").read()

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(ckpt.SaveError, match=r"cannot write .*last.pt: disk full"):
        ckpt.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_a_file_in_the_way_of_the_folder_is_named_as_such(tmp_path):
    # (os.makedirs says "File exists" of a file where the folder should be)
    (tmp_path / "notes.md").write_text("a file")
    with pytest.raises(ckpt.SaveError, match=r"cannot write .*notes.md/p.json: Not a directory$"):
        ckpt.atomic_write_text("{}", str(tmp_path / "notes.md" / "p.json"))


def test_load_weights_accepts_the_usual_layouts(tmp_path):
    src = TinyNet()
    sd = src.state_dict()
    layouts = {
        "bare.pt": sd,
        "model.pt": {"model": sd, "epoch": 3},
        "state_dict.pt": {"state_dict": sd},
        "ddp.pt": {"model": {f"module.{k}": v for k, v in sd.items()}},
        # with both keys, 'model' (train.py's) is the one taken
        "both.pt": {"state_dict": TinyNet().state_dict(), "model": sd},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        dst = TinyNet()
        ckpt.load_weights(dst, str(tmp_path / name), strict=True)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items()), name


def test_load_weights_errors_and_head_skipping(tmp_path):
    torch.save(TinyNet(num_classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(C.ConfigError, match=r"does not fit the model: 2 shape mismatch\(es\), e.g. head"):
        ckpt.load_weights(TinyNet(num_classes=5), str(tmp_path / "ten.pt"), strict=True)
    five = TinyNet(num_classes=5)
    skipped, missing = ckpt.load_weights(five, str(tmp_path / "ten.pt"), strict=False)
    assert skipped == ["head.bias", "head.weight"] and missing == []
    torch.save({"epoch": 1}, tmp_path / "nothing.pt")
    with pytest.raises(C.ConfigError, match="holds no state_dict"):
        ckpt.load_weights(TinyNet(), str(tmp_path / "nothing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(C.ConfigError, match="cannot load checkpoint .*junk.pt"):
        ckpt.load_weights(TinyNet(), str(tmp_path / "junk.pt"))
    with pytest.raises(C.ConfigError, match="checkpoint not found"):
        ckpt.load_weights(TinyNet(), str(tmp_path / "absent.pt"))


def test_strict_load_names_missing_and_unexpected_keys_and_a_foreign_file_is_refused(tmp_path):
    # Guards load_state's checks: a strict load (test.py, predict.py) names every kind of misfit
    # in one ConfigError, not torch's RuntimeError; a pretrained file sharing no weight with the
    # model is an error, not a start from scratch that merely reports every key skipped
    sd = dict(TinyNet().state_dict(), **{"extra.weight": torch.ones(2)})
    del sd["conv.bias"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(C.ConfigError) as e:
        ckpt.load_weights(TinyNet(), str(tmp_path / "w.pt"), strict=True)
    assert str(e.value).endswith(
        "does not fit the model: 1 missing key(s), e.g. conv.bias; 1 unexpected key(s), e.g. extra.weight"
    )
    torch.save({"other.weight": torch.ones(3, 3)}, tmp_path / "foreign.pt")
    with pytest.raises(C.ConfigError, match=r"foreign.pt shares no weights with the model"):
        ckpt.load_weights(TinyNet(), str(tmp_path / "foreign.pt"), strict=False, what="pretrained weights")


def test_non_strict_load_reports_keys_the_model_lacks_as_skipped(tmp_path):
    # Guards the (skipped, missing) result: keys of the file the model lacks are skipped too
    sd = dict(TinyNet().state_dict(), **{"extra.weight": torch.ones(2)})
    del sd["conv.bias"]
    torch.save(sd, tmp_path / "w.pt")
    skipped, missing = ckpt.load_weights(TinyNet(), str(tmp_path / "w.pt"), strict=False)
    assert skipped == ["extra.weight"] and missing == ["conv.bias"]


def test_a_child_named_module_is_not_taken_for_a_ddp_prefix(tmp_path):
    # Guards the DDP rule: "module." is stripped only when every key has it (an EMA copy or a
    # wrapper holds a child named `module` next to other weights)
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module, self.extra = TinyNet(), torch.nn.Linear(2, 2)

    src = Wrapper()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = Wrapper()
    ckpt.load_weights(dst, str(tmp_path / "w.pt"), strict=True)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_weights_only_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": TinyNet().state_dict(), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(C.ConfigError, match="cannot load checkpoint") as e:
        ckpt.load_weights(TinyNet(), str(tmp_path / "evil.pt"))
    msg = str(e.value)  # one whole sentence: no colour codes, no line breaks, not cut off
    assert "\x1b" not in msg and "\n" not in msg and msg.endswith("if you trust the file")
    assert "GLOBAL posix.system" in msg or "GLOBAL os.system" in msg  # what it refused
    # the legacy (non-zip) format is a plain pickle: refused alike
    torch.save({"x": Evil()}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(C.ConfigError, match="holds Python objects beyond tensors"):
        ckpt.load_weights(TinyNet(), str(tmp_path / "old.pt"))


def test_empty_text_and_truncated_checkpoints_are_named_plainly(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("epoch: 3\nnot a checkpoint\n")
    # (safe loading called these "Python objects beyond tensors (Unsupported operand 35)")
    (tmp_path / "readme.pt").write_text("# A README\n\nnot a checkpoint\n")
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 256)) * 4)
    good = tmp_path / "good.pt"
    torch.save({"model": TinyNet().state_dict()}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    for name, fragment in [
        ("empty.pt", "the file is empty (0 bytes)"),
        ("text.pt", "not a PyTorch checkpoint, or a truncated one"),
        ("readme.pt", "not a PyTorch checkpoint, or a truncated one"),
        ("noise.pt", "not a PyTorch checkpoint, or a truncated one"),
        ("cut.pt", "not a PyTorch checkpoint, or a truncated one"),
    ]:
        with pytest.raises(C.ConfigError) as e:
            ckpt.load_weights(TinyNet(), str(tmp_path / name))
        assert str(e.value).startswith(f"cannot load checkpoint {tmp_path / name}: {fragment}"), str(e.value)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300
        if name != "empty.pt":  # torch's own reason, its first sentence in whole words
            with pytest.raises(Exception) as raw:
                torch.load(tmp_path / name, weights_only=True)
            detail = str(e.value).rsplit(f"({type(raw.value).__name__}: ", 1)[1][:-1]
            first = str(raw.value).split(". ")[0]
            assert detail == first or (detail.endswith(" ...") and first.startswith(detail[:-4] + " "))


# ----------------------------------------------------------------------------------------------
# whole runs (tiny model, digits at 8 px: a few seconds each)
# ----------------------------------------------------------------------------------------------
def _files(cfg):
    return sorted(os.listdir(C.run_dir(cfg)))


def test_fit_writes_checkpoints_log_and_curves(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=3)
    res = engine.fit(cfg, progress=False)
    assert _files(cfg) == ["best.pt", "config.yaml", "curves.png", "last.pt", "log.csv", "train.log"]
    last = torch.load(os.path.join(C.run_dir(cfg), "last.pt"), weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "best_acc", "config", "history", "classes"} <= set(
        last
    )
    assert last["epoch"] == 3 and last["config"]["model"] == TINY and last["classes"][3] == "3"
    best = torch.load(os.path.join(C.run_dir(cfg), "best.pt"), weights_only=True)
    assert best["best_acc"] == res["best_acc"] == max(r["val_top1"] for r in res["history"])
    assert best["epoch"] == res["best_epoch"]
    rows = history.read_csv(os.path.join(C.run_dir(cfg), "log.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(history.COLUMNS) == set(rows[0])
    assert float(rows[-1]["val_top1"]) == pytest.approx(res["history"][-1]["val_top1"], rel=1e-4)
    # the learning rate decays; the model learns something (chance is 10 %)
    assert float(rows[0]["lr"]) > float(rows[-1]["lr"])
    assert res["best_acc"] > 80.0
    from PIL import Image

    with Image.open(os.path.join(C.run_dir(cfg), "curves.png")) as im:
        assert im.size[0] > 500 and im.size[1] > 200


def test_log_csv_columns_in_order_values_to_six_significant_digits(tmp_path):
    # Guards log.csv's layout: the columns (all of them, in this order: a spreadsheet or a script
    # reading them by position), floats to 6 significant digits, integers as they are, an epoch
    # not validated left empty, keys of no column (first_step_s) left out
    rows = [
        {"epoch": 1, "lr": 0.0123456789, "train_loss": 2.0, "train_acc": 12.5, "epoch_time_s": 3.25}
        | {"images_per_s": 1234.5678, "first_step_s": 9.0},
        {"epoch": 2, "lr": 1e-05, "train_loss": 1.0, "train_acc": 50.0, "val_loss": 0.123456789}
        | {"val_top1": 87.654321, "val_top5": 100.0, "epoch_time_s": 3.0, "images_per_s": 1000.0},
    ]
    path = str(tmp_path / "log.csv")
    history.write_csv(rows, path)
    assert open(path).read().splitlines() == [
        "epoch,lr,train_loss,train_acc,val_loss,val_top1,val_top5,epoch_time_s,images_per_s",
        "1,0.0123457,2,12.5,,,,3.25,1234.57",
        "2,1e-05,1,50,0.123457,87.6543,100,3,1000",
    ]


def test_curves_plot_validated_epochs_only_and_carry_the_title(tmp_path, monkeypatch):
    # Guards plot_curves: the val curves take only the epochs that were validated (eval_every),
    # at their own epochs; the figure is titled with the run
    import matplotlib.pyplot as plt

    figures, real_close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), real_close(fig)))
    rows = [
        {"epoch": e, "train_loss": 3.0 - e, "train_acc": 10.0 * e}
        | ({"val_loss": 2.5 - e, "val_top1": 11.0 * e, "val_top5": 12.0 * e} if e % 2 == 0 else {})
        for e in (1, 2, 3, 4)
    ]
    history.plot_curves(rows, str(tmp_path / "curves.png"), title="tiny (net)")
    (fig,) = figures
    assert fig.get_suptitle() == "tiny (net)"
    loss, acc = fig.axes
    lines = {(ax.get_title(), ln.get_label()): ln for ax in (loss, acc) for ln in ax.get_lines()}
    assert list(lines[("loss", "train")].get_xdata()) == [1, 2, 3, 4]
    assert list(lines[("loss", "val")].get_xdata()) == [2, 4]
    assert list(lines[("loss", "val")].get_ydata()) == [0.5, -1.5]
    assert list(lines[("accuracy", "val top-5")].get_ydata()) == [24.0, 48.0]
    assert os.path.getsize(tmp_path / "curves.png") > 0


def test_each_epoch_is_seeded_from_the_seed_the_epoch_and_the_rank(tmp_path, tiny, monkeypatch):
    # Guards the per-epoch seed: seed + 1000 x epoch + rank, so that epochs draw different
    # augmentations / dropout (one seed for every epoch would repeat them).
    seeds, real = [], engine.seed_everything

    def spy(seed):
        seeds.append(seed)
        real(seed)

    monkeypatch.setattr(engine, "seed_everything", spy)
    engine.fit(_cfg(tmp_path, epochs=2, seed=7), progress=False)
    assert seeds == [7, 7 + 0 * 1000 + 0, 7 + 1 * 1000 + 0]  # fit's own seed, then epochs 0 and 1


def test_evaluate_averages_the_loss_and_accuracies_over_all_samples(tmp_path):
    # Guards evaluate's sums: the loss is summed per sample (not a mean per batch) before dividing
    # by the sample count, over batches of unequal sizes; top-1 / top-5 hit counts likewise.
    from svm_models.training.distributed import DistInfo

    torch.manual_seed(0)
    model = TinyNet(num_classes=10, img_size=8)
    g = torch.Generator().manual_seed(1)
    loader = [
        (torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (5, 2, 9)
    ]
    res = engine.evaluate(model, loader, _cfg(tmp_path), DistInfo(), 10)
    x, y = torch.cat([b[0] for b in loader]), torch.cat([b[1] for b in loader])
    with torch.no_grad():
        logits = model(x)
    top = logits.topk(5, dim=1).indices
    assert res["n"] == 16
    assert res["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert res["val_top1"] == pytest.approx(100.0 * (top[:, 0] == y).sum().item() / 16)
    assert res["val_top5"] == pytest.approx(100.0 * (top == y[:, None]).any(1).sum().item() / 16)


def test_resume_after_a_crash_continues_exactly(tmp_path, tiny):
    """Crash after epoch 2 of 4, resume: the same weights, optimizer state and log as a run that
    never stopped."""
    full_cfg = _cfg(tmp_path, task_name="full", epochs=4, warmup_epochs=1, ema=0.9, clip_grad=1.0)
    full = engine.fit(full_cfg, progress=False)

    cfg = dict(full_cfg, task_name="crashed")

    def crash(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, progress=False, on_epoch_end=crash)
    mid = torch.load(os.path.join(C.run_dir(cfg), "last.pt"), weights_only=True)
    assert mid["epoch"] == 2 and len(history.read_csv(os.path.join(C.run_dir(cfg), "log.csv"))) == 2

    resumed = engine.fit(cfg, resume=True, progress=False)
    a = torch.load(os.path.join(C.run_dir(full_cfg), "last.pt"), weights_only=True)
    b = torch.load(os.path.join(C.run_dir(cfg), "last.pt"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"].items():
        assert torch.equal(v, b["ema"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert a["scheduler"] == b["scheduler"]
    keys = ("train_loss", "train_acc", "val_loss", "val_top1", "lr")
    assert [[r[k] for k in keys] for r in full["history"]] == [
        [r[k] for k in keys] for r in resumed["history"]
    ]
    assert len(history.read_csv(os.path.join(C.run_dir(cfg), "log.csv"))) == 4


def test_resume_needs_last_and_the_same_config(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=1)
    with pytest.raises(C.ConfigError, match="nothing to resume, .*last.pt not found"):
        engine.fit(cfg, resume=True, progress=False)
    engine.fit(cfg, progress=False)
    with pytest.raises(C.ConfigError, match="config differs .* in img_size"):
        engine.fit(dict(cfg, img_size=16), resume=True, progress=False)


def test_resume_restores_the_best_accuracy_so_far(tmp_path, tiny):
    # Guards restore's best_acc: reset on resume, any later epoch counted as an improvement and
    # replaced best.pt with worse weights
    cfg = _cfg(tmp_path, epochs=3)
    model = TinyNet()
    opt = optim.build_optimizer(model, cfg)
    t = engine.Training(model, model, None, opt, optim.build_scheduler(opt, cfg, 4), None, None, 10, [])
    path = str(tmp_path / "last.pt")
    state = dict(model=t.model.state_dict(), optimizer=t.optimizer.state_dict(), ema=None)
    state.update(scheduler=t.scheduler.state_dict(), epoch=2, best_acc=87.5, best_epoch=1, config=cfg)
    state["history"] = [{"epoch": 1, "val_top1": 87.5}, {"epoch": 2, "val_top1": 80.0}]
    ckpt.atomic_save(state, path)
    p = engine.restore(t, cfg, path)
    assert (p.epoch, p.best_acc, p.best_epoch) == (2, 87.5, 1)


def test_ema_weights_are_what_best_holds(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=1, ema=0.5)
    engine.fit(cfg, progress=False)
    last = torch.load(os.path.join(C.run_dir(cfg), "last.pt"), weights_only=True)
    ema_sd = {k[len("module.") :]: v for k, v in last["ema"].items() if k.startswith("module.")}
    assert int(last["ema"]["n_averaged"]) == 1437 // 64  # one update per step (last batch dropped)
    assert any(not torch.equal(ema_sd[k], last["model"][k]) for k in last["model"])
    best = torch.load(os.path.join(C.run_dir(cfg), "best.pt"), weights_only=True)
    assert best["epoch"] == 1  # the first epoch is always the best so far
    assert set(best["model"]) == set(ema_sd)
    assert all(torch.equal(best["model"][k], ema_sd[k]) for k in ema_sd)  # the evaluated weights


def test_pretrained_start_skips_a_head_of_another_size(tmp_path, tiny, capsys):
    src = TinyNet(num_classes=3)
    torch.nn.init.constant_(src.conv.weight, 0.0123)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "pre.pt")
    cfg = _cfg(tmp_path, epochs=1, pretrained=str(tmp_path / "pre.pt"), lr=1e-9, warmup_lr=1e-9, min_lr=0.0)
    res = engine.fit(cfg, progress=False)
    assert "loaded pretrained weights" in capsys.readouterr().out
    w = res["model"].conv.weight
    assert torch.allclose(w, torch.full_like(w, 0.0123), atol=1e-5)  # lr ~ 0: still the loaded values
    assert res["model"].head.out_features == 10


def test_non_finite_loss_stops_without_a_poisoned_checkpoint(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=3)

    def poison(epoch):
        if epoch == 1:
            TinyNet.poison = True

    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, step 1"):
        engine.fit(cfg, progress=False, on_epoch_end=poison)
    TinyNet.poison = False
    last = torch.load(os.path.join(C.run_dir(cfg), "last.pt"), weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len(history.read_csv(os.path.join(C.run_dir(cfg), "log.csv"))) == 1


def test_batch_size_must_split_over_processes(tmp_path):
    from svm_models.training.distributed import DistInfo

    with pytest.raises(
        C.ConfigError, match=r"'batch_size' \(63\) must be divisible by the number of processes \(2\)"
    ):
        engine.per_process_batch({"batch_size": 63}, DistInfo(rank=0, world_size=2))


def test_mixup_cutmix_switch_and_stop():
    from torchvision.transforms import v2

    base = dict(mixup=0.0, cutmix=0.0, mixup_off_epoch=None)
    assert engine.batch_mixing(base, 10, 0) is None
    assert isinstance(engine.batch_mixing(dict(base, mixup=0.5), 10, 0), v2.MixUp)
    both = engine.batch_mixing(dict(base, mixup=0.8, cutmix=1.0), 10, 0)
    assert isinstance(both, v2.RandomChoice)
    assert engine.batch_mixing(dict(base, mixup=0.5, mixup_off_epoch=3), 10, 2) is not None
    assert engine.batch_mixing(dict(base, mixup=0.5, mixup_off_epoch=3), 10, 3) is None
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    _xm, ym = engine.batch_mixing(dict(base, mixup=0.5), 10, 0)(x, y)
    assert ym.shape == (8, 10) and torch.allclose(ym.sum(1), torch.ones(8))


def test_fit_with_mixup_trains(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=2, mixup=0.5, cutmix=1.0, mixup_off_epoch=1, label_smoothing=0.1)
    res = engine.fit(cfg, progress=False)
    assert len(res["history"]) == 2 and res["best_acc"] > 50.0


# ----------------------------------------------------------------------------------------------
# the shipped configs
# ----------------------------------------------------------------------------------------------
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def test_every_model_dataset_pair_has_a_valid_config():
    import svm_models

    names = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))
    static = ("digits", "cifar10", "cifar100", "mini_imagenet")
    event = ("event_digits", "dvs128_gesture", "cifar10_dvs", "nmnist")  # spiking models only
    want = sorted(
        [f"{d}_{m}.yaml" for d in static for m in ("svmamba", "vmamba", "qkformer")]
        + [f"{d}_{m}.yaml" for d in event for m in ("svmamba", "qkformer")]
    )
    assert names == sorted([*want, "digits_svmamba_para133.yaml"])  # the original SVMamba, on digits
    for name in names:
        cfg = C.load_config(os.path.join(CONFIGS, name))
        dataset, family = name[:-5].removesuffix("_para133").rsplit("_", 1)
        assert cfg["dataset"] == dataset and cfg["task_name"] == name[:-5]
        assert cfg["model"] in svm_models.list_models() and cfg["model"].startswith(family)
        spiking = family != "vmamba"
        assert (cfg["T"] is not None) == spiking, name
        if dataset in static[1:]:  # the papers' recipes
            assert cfg["label_smoothing"] == 0.1 and cfg["warmup_epochs"] >= 5 and cfg["augment"]
            assert cfg["epochs"] >= 200 and cfg["weight_decay"] >= 0.05


def test_digits_configs_share_one_budget_and_build():
    keys = (
        "img_size",
        "batch_size",
        "epochs",
        "lr",
        "warmup_epochs",
        "weight_decay",
        "label_smoothing",
        "seed",
        "augment",
        "min_lr",
        "warmup_lr",
    )
    cfgs = [
        C.load_config(os.path.join(CONFIGS, f"digits_{m}.yaml")) for m in ("svmamba", "qkformer", "vmamba")
    ]
    assert all(c[k] == cfgs[0][k] for c in cfgs for k in keys)
    for c in cfgs:
        m = engine.build_model(c, 10)
        x = torch.randn(2, 3, c["img_size"], c["img_size"])
        assert m(x).shape == (2, 10)


def test_a_report_folder_that_cannot_be_made_stops_test_before_the_evaluation(tiny, tmp_path, monkeypatch):
    # test.py ran the whole evaluation, then crashed with a traceback on os.makedirs; now the
    # folder is made first and a failure is one SaveError (one "error:" line, status 2)
    from svm_models.training import evaluation

    cfg = _cfg(tmp_path)
    model = svm_models.create_model(cfg["model"], num_classes=10)
    (tmp_path / "taken").write_text("a file where the folder should go")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking the report folder")

    monkeypatch.setattr(evaluation, "build_split", no_evaluation)
    with pytest.raises(ckpt.SaveError, match="cannot write the report folder .*taken/sub: Not a directory"):
        evaluation.run_test(cfg, model, "x.pt", out_dir=str(tmp_path / "taken" / "sub"))

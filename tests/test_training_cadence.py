"""The ``eval_every`` and ``compile`` config keys, and when curves.png is rendered."""

import os

import pytest
import torch
from fabricate import register_tiny, tiny_cfg

from svm_models.training import compiling, engine, history
from svm_models.training import config as C


@pytest.fixture
def tiny(monkeypatch):
    return register_tiny(monkeypatch)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **over):
    return C.validate(tiny_cfg(tmp_path, **over), "test")


def test_new_keys_defaults_and_ranges(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg["compile"] is False and cfg["eval_every"] == 1
    with pytest.raises(C.ConfigError, match="'eval_every' must be >= 1, got 0"):
        _cfg(tmp_path, eval_every=0)
    with pytest.raises(C.ConfigError, match="'compile' must be true/false"):
        _cfg(tmp_path, compile="yes")


def test_eval_every_validates_on_its_epochs_and_the_last(tmp_path, tiny, monkeypatch):
    plotted = []
    real_plot = engine.plot_curves
    monkeypatch.setattr(
        engine, "plot_curves", lambda h, *a, **k: (plotted.append(len(h)), real_plot(h, *a, **k))
    )
    cfg = _cfg(tmp_path, epochs=5, eval_every=2)
    res = engine.fit(cfg, progress=False)
    validated = [r["epoch"] for r in res["history"] if "val_top1" in r]
    assert validated == [2, 4, 5]
    assert res["best_epoch"] in validated and res["best_acc"] == max(
        r["val_top1"] for r in res["history"] if "val_top1" in r
    )
    rows = history.read_csv(os.path.join(C.run_dir(cfg), "log.csv"))
    assert [r["val_top1"] != "" for r in rows] == [False, True, False, True, True]
    # curves.png: rendered when best.pt is written and after the last epoch, never otherwise
    assert plotted and plotted[-1] == 5 and set(plotted) <= {2, 4, 5}
    assert os.path.getsize(os.path.join(C.run_dir(cfg), "curves.png")) > 0


def test_curves_are_not_rendered_every_epoch(tmp_path, tiny, monkeypatch):
    plotted = []
    monkeypatch.setattr(engine, "plot_curves", lambda h, *a, **k: plotted.append(h[-1]["epoch"]))
    res = engine.fit(_cfg(tmp_path, epochs=4), progress=False)
    improved = [
        e
        for e in range(1, 5)
        if res["history"][e - 1]["val_top1"] > max([-1.0] + [r["val_top1"] for r in res["history"][: e - 1]])
    ]
    assert plotted == sorted(set(improved) | {4})


def test_compile_key_wraps_the_model(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: (calls.append(kw), m)[1])
    model = torch.nn.Linear(2, 2)
    assert compiling.maybe_compile(model, _cfg(tmp_path)) is model and calls == []
    assert compiling.maybe_compile(model, _cfg(tmp_path, compile=True)) is model
    assert calls == [{"fullgraph": True}]


def test_compile_of_a_ddp_model_allows_graph_breaks_and_needs_the_key(monkeypatch):
    # Guards the DDP rule: Dynamo splits a DDP model's graph at the gradient buckets itself, so
    # fullgraph=True would fail there; a config without the key does not compile
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: (calls.append(kw), m)[1])
    ddp = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    assert compiling.maybe_compile(ddp, {"compile": True}) is ddp
    assert calls == [{"fullgraph": False}]
    model = torch.nn.Linear(2, 2)
    assert compiling.maybe_compile(model, {}) is model and len(calls) == 1


@pytest.mark.slow
def test_fit_with_compile_logs_the_compile_time(tmp_path, tiny, capsys):
    cfg = _cfg(tmp_path, epochs=1, compile=True)
    res = engine.fit(cfg, progress=False)
    out = capsys.readouterr()
    assert "torch.compile: the first training step took" in out.out + out.err
    assert res["history"][0]["first_step_s"] > 0 and res["best_acc"] > 0

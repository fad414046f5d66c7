"""train.py / test.py / predict.py as users run them: real processes, real files.

* a short SVMamba training run on digits through train.py (module fixture), reused by the
  test.py and predict.py tests;
* a run killed with SIGKILL mid-training and continued with --resume;
* a 2-process torchrun (gloo on the CPU);
* predict on a folder holding a corrupt file and a text file;
* every bad-config case: exit status 2, one ``error:`` line, no traceback.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fabricate import register_tiny, save_digit_png, tiny_cfg, tiny_checkpoint, write_config
from helpers import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
# Small models gain nothing from intra-op threads; on a busy 2-core machine two threads each
# can be many times slower than one.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

# A tiny real SVMamba for digits at 8 px (patch 2: 4x4 tokens).
SVM_TINY = dict(
    model="svmamba_cifar",
    dataset="digits",
    img_size=8,
    batch_size=32,
    lr=5e-3,
    T=2,
    warmup_epochs=0,
    label_smoothing=0.1,
    augment=False,
    workers=0,
    seed=0,
    model_args={"dims": [16, 32], "depths": [1, 1], "v_threshold": 0.5},
)


def run(args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def torchrun_train(config, *extra, timeout=600):
    """train.py in two processes under torchrun (gloo on the CPU)."""
    return run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            "--config",
            config,
            *extra,
        ],
        timeout=timeout,
    )


def script(name):
    """Import train.py / test.py / predict.py as a module (to call main in-process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", os.path.join(ROOT, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_one_error_line(stderr, *fragments):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ----------------------------------------------------------------------------------------------
# the short end-to-end run
# ----------------------------------------------------------------------------------------------
# Shared by the four tests that read its run: under `--dist loadgroup` they share a worker
# (xdist_group "trained_digits").
# session scope: under xdist the worker interleaves other modules' tests with this group, which
# would tear a module-scoped fixture down and build it again
@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_config(
        tmp / "svm.yaml", task_name="svm_tiny", output_dir=str(tmp / "runs"), epochs=3, **SVM_TINY
    )
    t0 = time.perf_counter()
    r = run(["train.py", "--config", cfg, "--no-test"])
    assert r.returncode == 0, r.stdout + r.stderr
    return {
        "cfg": cfg,
        "dir": tmp / "runs" / "svm_tiny",
        "out": r.stdout,
        "err": r.stderr,
        "seconds": time.perf_counter() - t0,
        "tmp": tmp,
    }


@pytest.mark.slow
@pytest.mark.xdist_group("trained_digits")
def test_train_script_learns_digits(trained):
    d = trained["dir"]
    assert sorted(os.listdir(d)) == [
        "best.pt",
        "config.yaml",
        "curves.png",
        "last.pt",
        "log.csv",
        "train.log",
    ]
    rows = open(d / "log.csv").read().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,lr,train_loss")
    best = torch.load(d / "best.pt", weights_only=True)
    assert best["config"]["model"] == "svmamba_cifar" and best["num_classes"] == 10
    assert best["best_acc"] >= 60.0, trained["out"]  # a modest bar: chance is 10 %
    assert "svmamba_cifar" in trained["out"] and "best val top-1" in trained["out"]
    # the tqdm bar (stderr) shows throughput and loss
    assert "epoch 3/3" in trained["err"] and "img_s=" in trained["err"] and "loss=" in trained["err"]


@pytest.mark.slow
@pytest.mark.xdist_group("trained_digits")
def test_test_script_reports_accuracy_and_energy(trained):
    """test.py: top-1/top-5 on the test split, then the accounting report (table, JSON, PNG)."""
    r = run(["test.py", "-config", trained["cfg"]])  # the original README's one-dash spelling
    assert r.returncode == 0, r.stdout + r.stderr
    assert "top-1" in r.stdout and "top-5" in r.stdout
    report = json.loads((trained["dir"] / "test_report.json").read_text())
    best = torch.load(trained["dir"] / "best.pt", weights_only=True)
    assert report["test_images"] == 360
    assert report["top1"] == pytest.approx(best["best_acc"], abs=1e-3)  # val split = test split for digits
    assert report["top5"] >= report["top1"]
    assert report.get("accounting")
    assert (trained["dir"] / "test_report.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
# predict.py
# ----------------------------------------------------------------------------------------------
def _digit_folder(folder, n=3):
    from sklearn.datasets import load_digits

    d = load_digits()
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        save_digit_png(os.path.join(folder, f"digit_{i}_label{d.target[i]}.png"), d.images[i])
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    return folder


@pytest.mark.slow
@pytest.mark.xdist_group("trained_digits")
def test_predict_skips_unreadable_files_and_predicts_the_rest(trained):
    folder = _digit_folder(trained["tmp"] / "imgs")
    class_json = trained["tmp"] / "classes.json"
    names = {str(i): [f"d{i}", f"digit_{i}"] for i in range(10)}
    class_json.write_text(json.dumps(names))
    out = trained["tmp"] / "pred.json"
    r = run(
        [
            "predict.py",
            "--config",
            trained["cfg"],
            "--class_index_json",
            str(class_json),
            "--img_folder",
            str(folder),
            "--topk",
            "3",
            "--output",
            str(out),
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped" in r.stderr and "broken.jpg" in r.stderr and "notes.txt" in r.stderr
    assert "Traceback" not in r.stderr
    res = json.loads(out.read_text())
    assert [os.path.basename(p["file"]) for p in res["predictions"]] == [
        "digit_0_label0.png",
        "digit_1_label1.png",
        "digit_2_label2.png",
    ]
    assert sorted(os.path.basename(s["file"]) for s in res["skipped"]) == ["broken.jpg", "notes.txt"]
    for p in res["predictions"]:
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
        assert all(t["class"] == f"digit_{t['class_index']} (d{t['class_index']})" for t in p["top"])
    assert "digit_0_label0.png" in r.stdout and "rank" in r.stdout  # the table
    # the trained model gets most of the three right
    right = sum(
        p["top"][0]["class_index"] == int(os.path.basename(p["file"])[-5]) for p in res["predictions"]
    )
    assert right >= 2


@pytest.mark.slow
@pytest.mark.xdist_group("trained_digits")
def test_predict_without_json_uses_the_dataset_names(trained):
    folder = _digit_folder(trained["tmp"] / "imgs2", n=2)
    r = run(["predict.py", "--config", trained["cfg"], "--img_folder", str(folder)])
    assert r.returncode == 0, r.stderr
    res = json.loads((trained["dir"] / "predictions.json").read_text())
    assert len(res["predictions"]) == 2 and len(res["predictions"][0]["top"]) == 5
    assert all(t["class"] == str(t["class_index"]) for p in res["predictions"] for t in p["top"])


def test_predict_folder_of_only_bad_files_is_an_error(tmp_path, monkeypatch, capsys):
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    cfg = tiny_cfg(tmp_path)
    tiny_checkpoint(tmp_path / "w.pt", TinyNet(), classes=[str(i) for i in range(10)])
    cfg_path = write_config(tmp_path / "c.yaml", checkpoint=str(tmp_path / "w.pt"), **cfg)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "imgs" / "sub").mkdir()
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"predictions": ["kept"]}')
    from svm_models.training import cli

    argv = ["--config", cfg_path, "--img_folder", str(tmp_path / "imgs"), "--output", str(earlier)]
    rc = cli.run(script("predict").main, argv)
    err = capsys.readouterr().err
    assert rc == 2 and "skipped" in err and "error: no image could be read among the 2 entries" in err
    assert earlier.read_text() == '{"predictions": ["kept"]}'  # not replaced by an empty result


# ----------------------------------------------------------------------------------------------
# crash + --resume through the CLI, and the 2-process gloo run
# ----------------------------------------------------------------------------------------------
LAUNCHER = """
import runpy, sys
sys.path.insert(0, {tests!r})
import fabricate as F
from svm_models import registry
registry._MODELS[F.TINY] = F.tiny_factory   # the tiny test model, registered in this process only
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_killed_run_resumes_from_last(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=TESTS, script=os.path.join(ROOT, "train.py")))
    cfg = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=40, batch_size=256))
    last = tmp_path / "runs" / "tiny" / "last.pt"
    p = subprocess.Popen(
        [sys.executable, str(launcher), "--config", cfg, "--no-test"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not last.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)  # no chance to clean up, as in a crash
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= killed_at < 40
    r = run([str(launcher), "--config", cfg, "--no-test", "--resume"])
    assert r.returncode == 0, r.stderr
    assert f"resuming from {last} after epoch " in r.stdout
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] == 40
    rows = open(last.parent / "log.csv").read().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 41))
    assert [h["epoch"] for h in ck["history"]] == list(range(1, 41))


@pytest.mark.slow
def test_torchrun_two_processes_with_gloo(tmp_path):
    cfg = write_config(
        tmp_path / "ddp.yaml",
        task_name="ddp",
        output_dir=str(tmp_path / "runs"),
        epochs=1,
        **dict(SVM_TINY, batch_size=64),
    )
    r = torchrun_train(cfg, "--no-test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es) on cpu" in r.stdout
    assert r.stdout.count("epoch 1/1: train loss") == 1  # only rank 0 prints
    ck = torch.load(tmp_path / "runs" / "ddp" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    # the evaluation shards the 360 test images without padding: the accuracy is k/360 exactly
    top1 = ck["history"][0]["val_top1"]
    assert abs(top1 * 360 / 100 - round(top1 * 360 / 100)) < 1e-6
    # 1437 images over 2 processes x 32 per process: 22 steps each
    assert ck["scheduler"]["last_epoch"] == 22
    # the sharded evaluation equals one process evaluating the saved weights
    from svm_models.training import config as C
    from svm_models.training import engine
    from svm_models.training.distributed import DistInfo

    c = C.load_config(cfg)
    model = engine.build_model(c, 10)
    model.load_state_dict(torch.load(tmp_path / "runs" / "ddp" / "best.pt", weights_only=True)["model"])
    single = engine.evaluate(
        model, engine.eval_loader(engine.build_split(c, "test"), c, DistInfo()), c, DistInfo(), 10
    )
    assert single["n"] == 360 and single["val_top1"] == pytest.approx(top1, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# bad configs and missing files: exit status 2, one line, no traceback
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_config_through_real_processes(tmp_path):
    bad = write_config(
        tmp_path / "bad.yaml", task_name="t", model="svmamba_cifar", dataset="digits", bach_size=4
    )
    r = run(["train.py", "--config", bad])
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "unknown key 'bach_size' (did you mean 'batch_size'?)")
    r = run(["test.py", "-config", str(tmp_path / "missing.yaml")])
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "config file not found")
    good = write_config(
        tmp_path / "good.yaml",
        task_name="t",
        model="svmamba_cifar",
        dataset="digits",
        output_dir=str(tmp_path / "runs"),
    )
    r = run(["predict.py", "--config", good, "--img_folder", str(tmp_path / "nowhere")])
    assert r.returncode == 2
    assert_one_error_line(r.stderr, "image folder not found")


def _cases(tmp_path):
    base = dict(task_name="t", model="svmamba_cifar", dataset="digits", output_dir=str(tmp_path / "runs"))
    w = lambda name, **kw: write_config(tmp_path / f"{name}.yaml", **{**base, **kw})
    (tmp_path / "broken.yaml").write_text("task_name: t\nmodel: [oops\n")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "cls.json").write_text("{not json")
    return [
        ("train", [w("type", batch_size="many")], "'batch_size' must be an integer"),
        ("train", [str(tmp_path / "broken.yaml")], "not valid YAML"),
        ("train", [w("missing", dataset=None)], "'dataset' must be a string, got null"),
        ("train", [w("model", model="svmamba_xl")], "unknown model 'svmamba_xl'"),
        ("train", [w("override", model_args={"depth": 3})], "unknown override(s) ['depth']"),
        (
            "train",
            [w("nodata", dataset="cifar10", root_path=str(tmp_path / "data"))],
            "expected layout: <root>/cifar-10/cifar-10-batches-py",
        ),
        (
            "train",
            [w("mini", dataset="mini_imagenet", root_path=str(tmp_path / "data"))],
            "Mini-ImageNet-Dataset/train",
        ),
        (
            "train",
            [w("pre", pretrained=str(tmp_path / "absent.pt"))],
            "pretrained weights ('pretrained') not found",
        ),
        ("train", [w("res"), "--resume"], "nothing to resume"),
        ("test", [w("nockpt")], "run's best.pt; train first"),
        ("test", [w("ck", checkpoint=str(tmp_path / "x.pt"))], "checkpoint not found"),
        ("test", [w("ckdir", checkpoint=str(tmp_path))], "checkpoint is not a file"),
        (
            "predict",
            [
                w("p1"),
                "--img_folder",
                str(tmp_path / "imgs"),
                "--class_index_json",
                str(tmp_path / "nope.json"),
            ],
            "class index json not found",
        ),
        ("predict", [w("p2"), "--img_folder", str(tmp_path / "cls.json")], "image folder is not a folder"),
        ("predict", [w("p3"), "--img_folder", str(tmp_path / "imgs")], "no files in image folder"),
    ]


def test_every_bad_case_exits_2_with_one_line(tmp_path, capsys):
    from svm_models.training import cli

    mains = {name: script(name).main for name in ("train", "test", "predict")}
    for name, argv, fragment in _cases(tmp_path):
        cfg, *rest = argv
        rc = cli.run(mains[name], ["--config", cfg, *rest])
        captured = capsys.readouterr()
        assert rc == 2, (name, argv, captured.err)
        assert_one_error_line(captured.err, fragment)


def test_bad_class_index_json_content(tmp_path, monkeypatch, capsys):
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    from svm_models.training import cli

    tiny_checkpoint(tmp_path / "w.pt", TinyNet())
    cfg = write_config(tmp_path / "c.yaml", checkpoint=str(tmp_path / "w.pt"), **tiny_cfg(tmp_path))
    folder = str(_digit_folder(tmp_path / "imgs", n=1))
    for content, fragment in [
        ("{not json", "cannot read class index json"),
        ('{"0": ["a", "b"]}', "no name for class(es) [1, 2, 3, 4, 5]"),
        ('{"zero": "a"}', "key 'zero' is not a class number"),
        ('{"0": 5}', "entry '0' must be [id, name] or a name"),
    ]:
        (tmp_path / "c.json").write_text(content)
        rc = cli.run(
            script("predict").main,
            ["--config", cfg, "--img_folder", folder, "--class_index_json", str(tmp_path / "c.json")],
        )
        assert rc == 2
        assert_one_error_line(capsys.readouterr().err, fragment)


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    from svm_models.training import cli

    tiny_checkpoint(tmp_path / "w.pt", TinyNet(width=4))
    cfg = write_config(tmp_path / "c.yaml", checkpoint=str(tmp_path / "w.pt"), **tiny_cfg(tmp_path))
    rc = cli.run(script("test").main, ["--config", cfg])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "does not fit the model", "shape mismatch")


def test_train_script_tests_the_best_weights_and_logs_its_closing_lines(tmp_path, monkeypatch, capsys):
    # Guards train.py after engine.fit: rank 0 prints the summary, then tests best.pt (not
    # last.pt) with the run's class count, both into train.log; other ranks do neither
    register_tiny(monkeypatch)
    from svm_models.training import cli, distributed, engine, evaluation
    from svm_models.training.distributed import DistInfo

    cfg = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    result = dict(
        train_time_s=12.34, best_acc=87.5, best_epoch=4, num_classes=7,
        best_path=str(run / "best.pt"), last_path=str(run / "last.pt"),
    )  # fmt: skip
    seen = {}
    infos = [DistInfo(rank=1, world_size=2), DistInfo()]
    monkeypatch.setattr(distributed, "setup", lambda device: infos.pop())
    monkeypatch.setattr(distributed, "cleanup", lambda: seen.setdefault("cleanup", []).append(1))
    monkeypatch.setattr(
        engine, "fit", lambda cfg, info, resume, overwrite: seen.update(fit=(resume, overwrite)) or result
    )

    def load(cfg, path, device):
        seen["loaded"] = path
        return "model", path, {}

    def run_test(cfg, model, path, num_classes, log):
        seen["test"] = (model, path, num_classes)
        log("test top-1 80.00%")

    monkeypatch.setattr(evaluation, "load_trained_model", load)
    monkeypatch.setattr(evaluation, "run_test", run_test)
    assert cli.run(script("train").main, ["--config", cfg, "--resume"]) == 0
    summary = "training time 12.3s; best val top-1 87.50% at epoch 4"
    assert summary in capsys.readouterr().out
    assert seen["fit"] == (True, False) and seen["loaded"] == result["best_path"]
    assert seen["test"] == ("model", result["best_path"], 7)
    assert (run / "train.log").read_text() == f"{summary}\ntest top-1 80.00%\n"
    seen.clear()
    assert cli.run(script("train").main, ["--config", cfg]) == 0  # rank 1 of 2
    assert capsys.readouterr().out == "" and seen == {"fit": (False, False), "cleanup": [1]}


def test_non_finite_loss_exits_1_with_a_message(tmp_path, monkeypatch, capsys):
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    from svm_models.training import cli

    monkeypatch.setattr(TinyNet, "poison", True)
    cfg = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    rc = cli.run(script("train").main, ["--config", cfg])
    assert rc == 1
    err = capsys.readouterr().err  # the progress bar shares stderr: the error is its last line
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss (nan) at epoch 1, step 1") and "no checkpoint" in last
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "last.pt").exists()


# ----------------------------------------------------------------------------------------------
# test.py / predict.py refuse a checkpoint trained under other settings
# ----------------------------------------------------------------------------------------------
def _trained_tiny(tmp_path, monkeypatch, **config):
    """A train.py-style checkpoint of the tiny model trained at img_size 8 (stored config:
    ``tiny_cfg`` with ``config``)."""
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    from svm_models.training import config as C
    from svm_models.training.checkpoint import atomic_save

    stored = C.validate(tiny_cfg(tmp_path, **config), "test")
    atomic_save(
        {"model": TinyNet().state_dict(), "epoch": 1, "config": stored, "num_classes": 10}, tmp_path / "w.pt"
    )
    return str(tmp_path / "w.pt")


def test_test_and_predict_refuse_a_checkpoint_of_other_settings(tmp_path, monkeypatch, capsys):
    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    folder = str(_digit_folder(tmp_path / "imgs", n=1))
    bad = write_config(tmp_path / "c.yaml", checkpoint=weights, **tiny_cfg(tmp_path, img_size=16, T=2))
    for name, extra in (("test", []), ("predict", ["--img_folder", folder])):
        rc = cli.run(script(name).main, ["--config", bad, *extra])
        assert rc == 2
        assert_one_error_line(
            capsys.readouterr().err,
            "does not match checkpoint",
            "img_size 16 (checkpoint: 8)",
            "T 2 (checkpoint: None)",
        )
    assert not (tmp_path / "runs" / "tiny" / "test_report.json").exists()
    # --opts can set the keys back; --allow-mismatch evaluates anyway (the rare intended case)
    rc = cli.run(script("test").main, ["--config", bad, "--opts", "img_size=8", "T=null"])
    assert rc == 0 and (tmp_path / "runs" / "tiny" / "test_report.json").exists()
    rc = cli.run(
        script("predict").main,
        ["--config", bad, "--img_folder", folder, "--allow-mismatch", "--opts", "T=null"],
    )
    assert rc == 0, capsys.readouterr().err


def test_config_mismatch_compares_img_size_and_model_args_by_meaning(tmp_path):
    # Guards config_mismatch: img_size null is the dataset's own size (digits: 32), and a
    # model_args difference (a threshold, a width) is a mismatch, as is any MUST_MATCH key
    from svm_models.training import config as C
    from svm_models.training import evaluation

    stored = C.validate(tiny_cfg(tmp_path, img_size=32), "test")
    assert evaluation.config_mismatch(dict(stored, img_size=None), stored) == []
    assert evaluation.config_mismatch(stored, dict(stored, model_args=None)) == []
    other = dict(stored, model_args={"width": 4})
    assert evaluation.config_mismatch(stored, other) == ["model_args {} (checkpoint: {'width': 4})"]


def test_test_refuses_a_checkpoint_of_another_dataset(tmp_path, monkeypatch, capsys):
    # a digits checkpoint evaluated on CIFAR-100: refused as a config mismatch, and with
    # --allow-mismatch refused for its 10 classes against 100 labels (it crashed on a label)
    from fabricate import make_cifar100

    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    make_cifar100(tmp_path / "data")
    cfg = write_config(
        tmp_path / "c.yaml",
        checkpoint=weights,
        **tiny_cfg(tmp_path, dataset="cifar100", root_path=str(tmp_path / "data")),
    )
    assert cli.run(script("test").main, ["--config", cfg]) == 2
    assert_one_error_line(capsys.readouterr().err, "dataset 'cifar100' (checkpoint: 'digits')")
    assert cli.run(script("test").main, ["--config", cfg, "--allow-mismatch"]) == 2
    assert_one_error_line(
        capsys.readouterr().err, "the model predicts 10 classes but the cifar100 test split has 100"
    )
    assert not (tmp_path / "runs" / "tiny" / "test_report.json").exists()


def test_test_and_predict_of_a_fine_tuning_config_take_the_run_not_its_start(tmp_path, monkeypatch, capsys):
    # pretrained: true names the weights training starts from in 'checkpoint'; what test.py and
    # predict.py evaluate is what the run trained (they evaluated the starting weights)
    from svm_models.training import cli

    start = _trained_tiny(tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "c.yaml", pretrained=True, checkpoint=start, **tiny_cfg(tmp_path, epochs=1))
    assert cli.run(script("train").main, ["--config", cfg, "--no-test"]) == 0
    best = str(tmp_path / "runs" / "tiny" / "best.pt")
    assert cli.run(script("test").main, ["--config", cfg]) == 0
    report = json.loads((tmp_path / "runs" / "tiny" / "test_report.json").read_text())
    assert report["checkpoint"] == best
    folder = str(_digit_folder(tmp_path / "imgs", n=1))
    out = tmp_path / "p.json"
    rc = cli.run(script("predict").main, ["--config", cfg, "--img_folder", folder, "--output", str(out)])
    assert rc == 0 and json.loads(out.read_text())["checkpoint"] == best
    # the starting weights stay one flag away
    assert cli.run(script("test").main, ["--config", cfg, "--checkpoint", start]) == 0
    report = json.loads((tmp_path / "runs" / "tiny" / "test_report.json").read_text())
    assert report["checkpoint"] == start


# ----------------------------------------------------------------------------------------------
# predict.py: bit depths, odd folder entries, class-index files of the wrong size
# ----------------------------------------------------------------------------------------------
def test_predict_scales_16bit_and_float_images_like_their_8bit_copy(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "c.yaml", checkpoint=weights, **tiny_cfg(tmp_path))
    arr8 = np.random.default_rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(arr8, mode="L").save(folder / "a_8bit.png")
    Image.fromarray(arr8.astype(np.uint16) * 257).save(folder / "b_16bit.png")
    Image.fromarray(arr8.astype(np.float32) / 255.0, mode="F").save(folder / "c_float.tiff")
    Image.fromarray(arr8.astype(np.float32) * 4.0 - 100.0, mode="F").save(folder / "d_float_range.tiff")
    out = tmp_path / "p.json"
    rc = cli.run(script("predict").main, ["--config", cfg, "--img_folder", str(folder), "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    preds = json.loads(out.read_text())["predictions"]
    assert len(preds) == 4
    ref = preds[0]["top"]
    for p in preds[1:]:
        assert [t["class_index"] for t in p["top"]] == [t["class_index"] for t in ref], p["file"]
        assert [t["prob"] for t in p["top"]] == pytest.approx([t["prob"] for t in ref], abs=1e-6), p["file"]


def test_predict_lists_symlink_loops_dangling_links_and_folders_as_skipped(tmp_path, monkeypatch, capsys):
    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "c.yaml", checkpoint=weights, **tiny_cfg(tmp_path))
    folder = _digit_folder(tmp_path / "imgs", n=2)
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    os.symlink(str(tmp_path / "gone.png"), folder / "dangling.png")
    (folder / "x.jpg").mkdir()
    out = tmp_path / "p.json"
    rc = cli.run(script("predict").main, ["--config", cfg, "--img_folder", str(folder), "--output", str(out)])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 0 and "Traceback" not in err
    res = json.loads(out.read_text())
    assert len(res["predictions"]) == 2
    assert f"2 image(s) predicted, 6 skipped; wrote {out}" in captured.out
    reasons = {os.path.basename(s["file"]): s["error"] for s in res["skipped"]}
    assert reasons["loop_a.png"] == reasons["loop_b.png"] == "symlink loop"
    assert reasons["dangling.png"].startswith("dangling symlink to ")
    assert reasons["x.jpg"].startswith("a directory")
    assert set(reasons) == {"loop_a.png", "loop_b.png", "dangling.png", "x.jpg", "broken.jpg", "notes.txt"}
    for name in reasons:
        assert f"skipped {folder / name}: " in err
    # one list by name, the unlisted entries among the unreadable files (in the JSON and on stderr)
    names = [os.path.basename(s["file"]) for s in res["skipped"]]
    assert names == sorted(reasons)
    assert [err.index(f"skipped {folder / name}: ") for name in names] == sorted(
        err.index(f"skipped {folder / name}: ") for name in names
    )


def test_predict_folder_of_only_folders_and_links_names_each_entry(tmp_path, monkeypatch, capsys):
    # a folder without a single regular file still lists what it holds, each with why it was skipped
    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "c.yaml", checkpoint=weights, **tiny_cfg(tmp_path))
    folder = tmp_path / "imgs"
    (folder / "sub.png").mkdir(parents=True)
    os.symlink(str(tmp_path / "gone.png"), folder / "dangling.png")
    out = tmp_path / "p.json"
    rc = cli.run(script("predict").main, ["--config", cfg, "--img_folder", str(folder), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"skipped {folder / 'sub.png'}: a directory" in err
    assert f"skipped {folder / 'dangling.png'}: dangling symlink to " in err
    assert "error: no image could be read among the 2 entries" in err


def test_predict_with_a_bare_state_dict_takes_the_models_classes(tmp_path, monkeypatch, capsys):
    # a plain state_dict carries no class count: the built model's own decides the names
    register_tiny(monkeypatch)
    from fabricate import TinyNet

    from svm_models.training import cli

    torch.save(TinyNet().state_dict(), tmp_path / "w.pt")
    cfg = write_config(tmp_path / "c.yaml", checkpoint=str(tmp_path / "w.pt"), **tiny_cfg(tmp_path))
    folder = str(_digit_folder(tmp_path / "imgs", n=1))
    out = tmp_path / "p.json"
    rc = cli.run(script("predict").main, ["--config", cfg, "--img_folder", folder, "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    (pred,) = json.loads(out.read_text())["predictions"]
    assert len(pred["top"]) == 5 and all(t["class"] == str(t["class_index"]) for t in pred["top"])


def test_class_index_json_with_more_names_than_classes_is_refused(tmp_path, monkeypatch, capsys):
    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch)
    cfg = write_config(tmp_path / "c.yaml", checkpoint=weights, **tiny_cfg(tmp_path))
    folder = str(_digit_folder(tmp_path / "imgs", n=1))
    (tmp_path / "c.json").write_text(json.dumps({str(i): [f"n{i}", f"c{i}"] for i in range(100)}))
    rc = cli.run(
        script("predict").main,
        ["--config", cfg, "--img_folder", folder, "--class_index_json", str(tmp_path / "c.json")],
    )
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "100 names for a model of 10 classes")


def test_class_index_json_contradicting_the_checkpoints_classes_is_refused(tmp_path):
    from svm_models.training import inference
    from svm_models.training.config import ConfigError

    meta = {"classes": ["n01532829", "n01558993", "n01704323"]}
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {"0": ["n01704323", "triceratops"], "1": ["n01558993", "robin"], "2": ["n01532829", "finch"]}
        )
    )
    with pytest.raises(ConfigError, match="class 0 is 'n01704323' there but 'n01532829' in the checkpoint"):
        inference.class_names({}, meta, 3, str(path))
    path.write_text(
        json.dumps({"0": ["n01532829", "finch"], "1": ["n01558993", "robin"], "2": "triceratops"})
    )
    assert inference.class_names({}, meta, 3, str(path)) == [
        "finch (n01532829)",
        "robin (n01558993)",
        "triceratops",
    ]
    # ids of its own (digits' "0" shown as "d0") relabel, whatever the checkpoint's names
    path.write_text(json.dumps({"0": ["a", "finch"], "1": ["b", "robin"], "2": ["c", "triceratops"]}))
    assert inference.class_names({}, meta, 3, str(path))[2] == "triceratops (c)"


def test_class_index_json_of_bare_names_in_another_order_is_refused(tmp_path):
    # a name alone ("n01704323" or ["n01704323"]) is the class's id: checked like [id, name]
    from svm_models.training import inference
    from svm_models.training.config import ConfigError

    meta = {"classes": ["n01532829", "n01558993", "n01704323"]}
    path = tmp_path / "c.json"
    for entry in ("n01704323", ["n01704323"]):
        path.write_text(json.dumps({"0": entry, "1": "n01558993", "2": "n01532829"}))
        with pytest.raises(ConfigError, match="class 0 is 'n01704323' there but 'n01532829'"):
            inference.class_names({}, meta, 3, str(path))
    path.write_text(json.dumps({"0": "n01532829", "1": ["n01558993"], "2": "triceratops"}))
    assert inference.class_names({}, meta, 3, str(path)) == ["n01532829", "n01558993", "triceratops"]
    # digits: the checkpoint's names are "0".."9"; a file listing them reversed would relabel every class
    meta = {"classes": [str(i) for i in range(10)]}
    path.write_text(json.dumps({str(i): str(9 - i) for i in range(10)}))
    with pytest.raises(ConfigError, match="class 0 is '9' there but '0'"):
        inference.class_names({}, meta, 10, str(path))


def test_predict_decodes_one_batch_at_a_time(tmp_path):
    # every image was decoded and held before the first batch ran: memory grew with the folder
    from svm_models.training import inference

    folder = _digit_folder(tmp_path / "imgs", n=7)
    files, _ = inference.list_files(str(folder))
    decoded, seen = [], []

    def transform(im):
        decoded.append(1)
        return torch.zeros(3, 8, 8)

    def model(x):
        seen.append(x.shape[0])
        assert len(decoded) == sum(seen)  # the images of the batches so far, not all
        return torch.zeros(x.shape[0], 10)

    model.eval = lambda: None
    preds, skipped = inference.predict_files(
        model, files, transform, [str(i) for i in range(10)], batch_size=2
    )
    assert len(preds) == len(decoded) == len(files) - len(skipped) and len(seen) > 2


def test_predict_table_names_each_file_on_its_first_rank_only():
    # Guards format_table: the file name heads its top-1 row; the other ranks' rows leave it blank
    from svm_models.training import inference

    def top(*ranked):
        return [
            {"rank": i + 1, "class_index": c, "class": str(c), "prob": p} for i, (c, p) in enumerate(ranked)
        ]

    preds = [
        {"file": "/x/a.png", "top": top((3, 0.75), (8, 0.125))},
        {"file": "/x/b.png", "top": top((1, 0.5), (7, 0.25))},
    ]
    assert inference.format_table(preds).splitlines() == [
        "file   rank  class  prob",
        "-----  ----  -----  ------",
        "a.png  1     3: 3   0.7500",
        "       2     8: 8   0.1250",
        "b.png  1     1: 1   0.5000",
        "       2     7: 7   0.2500",
    ]


@pytest.mark.parametrize("bad", [1, 2])
def test_test_script_names_unreadable_test_images_and_refuses_too_many(tmp_path, monkeypatch, capsys, bad):
    # they were skipped without a word (and a batch of only unreadable ones crashed the accounting)
    from fabricate import make_mini_imagenet

    from svm_models.training import cli

    weights = _trained_tiny(tmp_path, monkeypatch, dataset="mini_imagenet")
    make_mini_imagenet(tmp_path, per_class=2, size=(8, 8))
    spoilt = sorted((tmp_path / "Mini-ImageNet-Dataset" / "test").glob("*/*.jpg"))[:bad]
    for path in spoilt:
        path.write_bytes(b"")
    cfg = write_config(
        tmp_path / "c.yaml",
        checkpoint=weights,
        **tiny_cfg(tmp_path, dataset="mini_imagenet", root_path=str(tmp_path), batch_size=2),
    )
    rc = cli.run(script("test").main, ["--config", cfg])
    captured = capsys.readouterr()
    assert rc == 2
    for path in spoilt:
        assert f"warning: skipped unreadable image {path}" in captured.out
    assert_one_error_line(captured.err, f"{bad} of 6 images of the test split could not be read")


# ----------------------------------------------------------------------------------------------
# the accounting CLI: bad arguments are one line, exit 2
# ----------------------------------------------------------------------------------------------
def test_accounting_cli_bad_arguments_are_one_line(capsys):
    from svm_models.accounting.__main__ import main

    cases = [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "svmamba_cifar", "--set", "T=0"], "cannot build svmamba_cifar with these settings"),
        (["--model", "svmamba_cifar", "--img-size", "0"], "--img-size must be >= 8, got 0"),
        (["--model", "svmamba_cifar", "--batch", "0"], "--batch must be >= 1, got 0"),
        (["--model", "svmamba_cifar", "--num-classes", "0"], "--num-classes must be >= 1"),
        (["--model", "svmamba_cifar", "--device", "nonsense"], "--device"),
        # options that were ignored without a word
        (["--model", "svmamba_cifar", "--reuse", "ideal"], "--reuse applies to a hardware model"),
        (["--model", "svmamba_cifar", "--layers"], "--layers extends the --markdown report"),
        (["--model", "svmamba_cifar", "--png", "chart.pdf"], "--png writes a PNG image"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", "svmamba_cifar", "--device", "cuda"], "no CUDA device is available"))
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        assert_one_error_line(capsys.readouterr().err, fragment)


def test_accounting_cli_num_classes_defaults_to_the_models_own(capsys):
    import svm_models
    from svm_models.accounting.__main__ import main

    small = ["--model", "vmamba_cifar", "--set", "dims=[8, 16]", "--set", "depths=[1, 1]"]
    own = svm_models.create_model("vmamba_cifar", dims=[8, 16], depths=[1, 1]).num_classes
    assert main(small) == 0
    assert f"at 32 px, {own} classes" in capsys.readouterr().out
    assert main([*small, "--num-classes", "10"]) == 0
    assert "at 32 px, 10 classes" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_skips_a_batch_that_is_empty_on_one_process_only(tmp_path):
    # one image per process and step; one unreadable image empties one process's batch: the
    # processes skip that step together (one skipping alone left DDP's collectives unmatched)
    from fabricate import make_mini_imagenet

    make_mini_imagenet(tmp_path, per_class=40, size=(8, 8))  # 1 of 121: under the 1 % limit
    (tmp_path / "Mini-ImageNet-Dataset" / "train" / "n01532829" / "empty.jpg").write_bytes(b"")
    cfg = write_config(
        tmp_path / "ddp.yaml",
        task_name="ddp",
        model="vmamba_cifar",
        dataset="mini_imagenet",
        root_path=str(tmp_path),
        img_size=8,
        batch_size=2,
        epochs=1,
        workers=0,
        output_dir=str(tmp_path / "runs"),
        model_args={"dims": [8, 16], "depths": [1, 1]},
    )
    r = torchrun_train(cfg, "--no-test", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "epoch 1: 1 unreadable image(s) skipped" in r.stdout


RANK1_FAILS = """
import os, runpy, sys
from svm_models import data as D
from svm_models.training import engine
if os.environ["RANK"] == "1":  # rank 1 alone finds its shard broken in epoch 2
    real = engine.train_one_epoch
    def train_one_epoch(model, loader, optimizer, scheduler, cfg, info, epoch, *a, **k):
        if epoch == 1:
            raise D.DataError("a file of the training split vanished")
        return real(model, loader, optimizer, scheduler, cfg, info, epoch, *a, **k)
    engine.train_one_epoch = train_one_epoch
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(os.path.join({root!r}, "train.py"), run_name="__main__")
"""


@pytest.mark.slow
def test_torchrun_an_error_on_one_process_only_is_reported(tmp_path):
    # found after the processes joined their group, by rank 1 only: rank 1 prints it, rank 0
    # (whose next collective breaks) says that another process failed, and no traceback of ours
    launcher = tmp_path / "launch.py"
    launcher.write_text(RANK1_FAILS.format(root=ROOT))
    cfg = write_config(
        tmp_path / "ddp.yaml", task_name="ddp", output_dir=str(tmp_path / "runs"), epochs=3, **SVM_TINY
    )
    r = run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(launcher),
            "--config",
            cfg,
            "--no-test",
        ],
        timeout=300,
    )
    assert r.returncode != 0
    assert "rank 1: error: a file of the training split vanished" in r.stderr, r.stderr[-3000:]
    assert "[rank0]: Traceback" not in r.stderr and "[rank1]: Traceback" not in r.stderr, r.stderr[-3000:]


def test_a_backend_error_of_this_rank_is_not_taken_for_another_ranks_exit(monkeypatch, capsys):
    # NCCL's own errors (out of memory, say) are this rank's: raised as they are; a connection
    # closed by a peer is another rank's exit, one line naming it
    from svm_models.training import cli

    monkeypatch.setattr(cli, "group_started", lambda: True)
    monkeypatch.setattr(cli, "fail_together", lambda status: None)

    def own():
        raise RuntimeError("NCCL error: unhandled cuda error, NCCL version 2.21.5: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cli.run(lambda argv: own())

    def peer():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1")

    assert cli.run(lambda argv: peer()) == 2
    assert_one_error_line(
        capsys.readouterr().err, "another process of the run stopped", "Connection closed by peer"
    )


def test_a_connection_reset_by_a_peer_is_another_ranks_exit(monkeypatch, capsys):
    # gloo reports a peer's exit as "reset by peer" too: that was re-raised as this rank's error
    from svm_models.training import cli

    monkeypatch.setattr(cli, "group_started", lambda: True)
    monkeypatch.setattr(cli, "fail_together", lambda status: None)

    def peer():
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection reset by peer")

    assert cli.run(lambda argv: peer()) == 2
    assert_one_error_line(capsys.readouterr().err, "another process of the run stopped", "reset by peer")


def test_a_data_error_of_one_rank_is_printed_by_that_rank(monkeypatch, capsys):
    # a DataError may be this rank's alone (its shard): rank 1 names it; a ConfigError is every
    # rank's and only rank 0 prints it (rank 1's data error was lost when treated the same way)
    from svm_models.data import DataError
    from svm_models.training import cli
    from svm_models.training.config import ConfigError

    monkeypatch.setattr(cli, "env_rank", lambda: 1)
    monkeypatch.setattr(cli, "group_started", lambda: True)
    monkeypatch.setattr(cli, "fail_together", lambda status: None)

    def fails(exc):
        def main(argv):
            raise exc

        return main

    assert cli.run(fails(DataError("a file of the training split vanished"))) == 2
    assert capsys.readouterr().err == "rank 1: error: a file of the training split vanished\n"
    assert cli.run(fails(ConfigError("bad key"))) == 2
    assert capsys.readouterr().err == ""


def test_predict_refuses_a_topk_of_zero(tmp_path, capsys):
    # --topk 0 printed empty predictions instead of a one-line error
    from svm_models.training import cli

    cfg = write_config(tmp_path / "c.yaml", task_name="t", model="svmamba_cifar", dataset="digits")
    (tmp_path / "imgs").mkdir()
    argv = ["--config", cfg, "--img_folder", str(tmp_path / "imgs"), "--topk", "0"]
    assert cli.run(script("predict").main, argv) == 2
    assert_one_error_line(capsys.readouterr().err, "--topk must be >= 1, got 0")


def test_predict_refuses_an_output_not_named_json(tmp_path, capsys):
    # --output best.pt (or an image of the folder) was replaced by the predictions' JSON
    from svm_models.training import cli

    cfg = write_config(tmp_path / "c.yaml", task_name="t", model="svmamba_cifar", dataset="digits")
    (tmp_path / "imgs").mkdir()
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    argv = ["--config", cfg, "--img_folder", str(tmp_path / "imgs"), "--output", str(weights)]
    assert cli.run(script("predict").main, argv) == 2
    assert_one_error_line(capsys.readouterr().err, "--output writes the predictions as JSON: name it *.json")
    assert weights.read_bytes() == b"weights"


# ----------------------------------------------------------------------------------------------
# torchrun with an invalid config: one report, every rank exits 2
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_invalid_config_is_reported_once(tmp_path):
    bad = write_config(
        tmp_path / "bad.yaml", task_name="t", model="svmamba_cifar", dataset="digits", bach_size=4
    )
    r = torchrun_train(bad, timeout=300)
    both = r.stdout + r.stderr
    assert r.returncode != 0
    assert both.count("error: ") == 1 and "unknown key 'bach_size' (did you mean 'batch_size'?)" in both
    # both ranks exit with status 2 (a SIGTERM from torchrun meanwhile also exits 2, not -15)
    assert both.count("exitcode  : 2") == 2 and "exitcode  : -15" not in both, both
    children = both.split("torch/distributed/elastic")[0]  # before torchrun's own report
    assert "Traceback" not in children and "init_process_group" not in both


def test_every_rank_exits_2_on_a_bad_config_and_only_rank_0_reports(tmp_path, monkeypatch, capsys):
    from svm_models.training import cli, distributed

    bad = write_config(
        tmp_path / "bad.yaml", task_name="t", model="svmamba_cifar", dataset="digits", bach_size=4
    )
    monkeypatch.setattr(distributed, "setup", lambda *a: pytest.fail("the process group must not start"))
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.run(script("train").main, ["--config", bad]) == 2
        err = capsys.readouterr().err
        assert (err == "") if rank == "1" else err.startswith("error: ")


def test_fail_together_waits_for_every_rank_but_not_once_the_group_started(monkeypatch):
    # Guards fail_together: each rank counts itself failed in torchrun's store and exits only when
    # all WORLD_SIZE have (an early exit has torchrun SIGTERM the rank still checking); once the
    # process group exists, errors take the collective's path and no store is opened
    from svm_models.training import distributed

    made, polls = [], []

    class Store:
        def __init__(self, host, port, is_master, timeout):
            made.append((host, port, is_master))
            self.failed = 0

        def add(self, key, n):  # n=1: a rank counts itself failed; n=0: a poll
            assert key == "svm_models/failed/run7"
            self.failed += n
            if n == 0:
                self.failed += len(polls) == 1  # the other rank fails while this one waits
                polls.append(self.failed)
            return self.failed

    class Exited(Exception):
        pass

    def exit_(status):
        raise Exited(status)

    for name, value in dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run7")
    monkeypatch.setattr(distributed.dist, "TCPStore", Store)
    monkeypatch.setattr(distributed.signal, "signal", lambda *a: None)
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    monkeypatch.setattr(distributed.os, "_exit", exit_)
    with pytest.raises(Exited) as e:
        distributed.fail_together(2)
    assert e.value.args == (2,) and made == [("127.0.0.1", 29500, False)] and polls == [1, 2]
    monkeypatch.setattr(distributed, "_group_started", True)
    assert distributed.fail_together(2) is None and len(made) == 1


def test_other_ranks_take_rank_0s_run_directory_verdict_and_barriers_span_processes(tmp_path, monkeypatch):
    # Guards broadcast_object and barrier: rank 1 does not claim the run directory itself; it
    # stops with rank 0's refusal (going on, it hung in the first collective without rank 0); a
    # barrier waits for the other processes and costs nothing alone
    from svm_models.training import config as C
    from svm_models.training import distributed, engine

    sent, barriers = [], []

    def broadcast_object_list(box, src):
        sent.append((box[0], src))
        box[0] = "runs/tiny already holds a run (last.pt)"  # rank 0's verdict

    monkeypatch.setattr(distributed.dist, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(distributed.dist, "barrier", lambda **kw: barriers.append(kw))
    cfg = C.validate(tiny_cfg(tmp_path), "test")
    with pytest.raises(C.ConfigError, match=r"^runs/tiny already holds a run \(last.pt\)$"):
        engine.open_run_dir(cfg, distributed.DistInfo(rank=1, world_size=2), resume=False, overwrite=False)
    assert sent == [(None, 0)] and not os.path.exists(tmp_path / "runs")
    distributed.barrier(distributed.DistInfo())
    assert barriers == []
    distributed.barrier(distributed.DistInfo(rank=1, world_size=2))
    assert barriers == [{}]


# ----------------------------------------------------------------------------------------------
# bench/train_throughput.py
# ----------------------------------------------------------------------------------------------
def test_train_throughput_refuses_what_its_workers_would_get_wrong(tmp_path, capsys):
    # A --src without svm_models timed the installed package under that tree's name (exit 0); a
    # missing config and a bad --scan crashed in the worker with a traceback
    throughput = load_bench("train_throughput")
    for argv, message in [
        (["--src", str(tmp_path)], f"--src {tmp_path}: no svm_models package there"),
        (["--config", "configs/nope.yaml"], "--config configs/nope.yaml: no such file"),
        (["--scan", "1,8"], "--scan takes B,D,H,W (four positive ints), got '1,8'"),
        (["--scan", "1,8,0,4"], "four positive ints"),
        (["--steps", "0"], "--steps must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as e:
            throughput.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_train_throughput_accepts_no_warmup_and_needs_a_package_with_its_init(tmp_path, capsys):
    # Guards check_args' limits: --warmup 0 is fine (the first step is timed apart anyway),
    # --rounds 0 is not, and a folder named svm_models without __init__.py is no package
    import argparse

    throughput = load_bench("train_throughput")
    parser = argparse.ArgumentParser()
    ok = dict(src=[ROOT], config="configs/digits_svmamba.yaml", steps=1, rounds=1, warmup=0, scan=None)
    throughput.check_args(parser, argparse.Namespace(**ok))
    (tmp_path / "svm_models").mkdir()
    for bad, message in [
        (dict(rounds=0), "--rounds must be >= 1, got 0"),
        (dict(src=[str(tmp_path)]), f"--src {tmp_path}: no svm_models package there"),
    ]:
        with pytest.raises(SystemExit) as e:
            throughput.check_args(parser, argparse.Namespace(**{**ok, **bad}))
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_train_throughput_times_the_steps_after_the_warmup(monkeypatch):
    # Guards measure and _timed: the first step, then warmup - 1 more, untimed; images/s is
    # steps x batch over the wall clock, and over the CPU clock for the CPU rate
    throughput = load_bench("train_throughput")
    clocks = {"wall": 0.0, "cpu": 0.0}
    calls = []

    def step():
        calls.append(1)
        clocks["wall"] += 0.5  # each step: 0.5 s of wall time, 0.25 s of CPU time
        clocks["cpu"] += 0.25

    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clocks["wall"])
    monkeypatch.setattr(throughput.time, "process_time", lambda: clocks["cpu"])
    res = throughput.measure(step, batch=8, steps=4, warmup=3)
    assert len(calls) == 3 + 4
    assert res["first_step_s"] == pytest.approx(0.5) and res["ms"] == pytest.approx(500.0)
    assert res["images_per_s"] == pytest.approx(4 * 8 / 2.0)
    assert res["cpu_images_per_s"] == pytest.approx(4 * 8 / 1.0)


def test_train_throughput_config_overrides(tmp_path):
    # Guards read_config: "config" keeps the file's value, "true" / "false" set it
    throughput = load_bench("train_throughput")
    path = write_config(
        tmp_path / "c.yaml", model="svmamba_cifar", memory_efficient=True, channels_last=False
    )
    assert throughput.read_config(path)["memory_efficient"] is True
    cfg = throughput.read_config(path, memory_efficient="false", channels_last="true")
    assert cfg["memory_efficient"] is False and cfg["channels_last"] is True
    cfg = throughput.read_config(path, memory_efficient="config", channels_last="config")
    assert cfg["memory_efficient"] is True and cfg["channels_last"] is False


def test_train_throughput_passes_the_flags_to_its_workers_and_reports_ratios(tmp_path, monkeypatch, capsys):
    # Guards main's worker command line and summary: each variant's rate over the first variant's
    throughput = load_bench("train_throughput")
    other = tmp_path / "old"
    (other / "svm_models").mkdir(parents=True)
    (other / "svm_models" / "__init__.py").write_text("")
    cmds = []

    def fake_run(cmd, env, **kw):
        cmds.append((cmd, env["PYTHONPATH"]))
        rate = 100.0 if env["PYTHONPATH"] == os.path.abspath(ROOT) else 50.0
        res = {"images_per_s": rate, "cpu_images_per_s": 2 * rate, "first_step_s": 1.0, "ms": 1.0}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(res) + "\n", stderr="")

    monkeypatch.setattr(throughput.subprocess, "run", fake_run)
    argv = ["--src", ROOT, str(other), "--fullgraph", "--compile", "true", "--steps", "2", "--rounds", "1"]
    assert throughput.main(argv) == 0
    assert [env for _, env in cmds] == [os.path.abspath(ROOT), os.path.abspath(other)]
    for cmd, _ in cmds:
        assert "--worker" in cmd and "--fullgraph" in cmd and cmd[cmd.index("--compile") + 1] == "true"
        assert cmd[cmd.index("--steps") + 1] == "2"
    summary = capsys.readouterr().out.splitlines()
    old = next(line for line in summary if line.startswith(f"  src={other} "))
    assert "wall: median 50.0 (best 50.0) img/s, 0.50x the first" in old
    assert "CPU: median 100.0 (best 100.0) img/s, 0.50x the first" in old

"""Nothing lost: the run directory rules, the lock, early write checks, save errors, command-line
overrides and --resume extending epochs (in-process, tiny registered model, digits at 8 px)."""

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from fabricate import register_tiny, tiny_cfg, write_config

from svm_models.training import checkpoint as ckpt
from svm_models.training import cli, engine, history, rundir, runtime
from svm_models.training import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(monkeypatch):
    return register_tiny(monkeypatch)


def _cfg(tmp_path, **over):
    return C.validate(tiny_cfg(tmp_path, **over), "test")


def _train_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", os.path.join(ROOT, "train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _one_error(err, *fragments):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ----------------------------------------------------------------------------------------------
# a finished run is never silently replaced
# ----------------------------------------------------------------------------------------------
def test_rerun_without_resume_is_refused_and_keeps_best(tmp_path, tiny, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=1))
    main = _train_main()
    assert cli.run(main, ["--config", cfg_path, "--no-test"]) == 0
    out = tmp_path / "runs" / "tiny"
    assert sorted(os.listdir(out)) == [
        "best.pt",
        "config.yaml",
        "curves.png",
        "last.pt",
        "log.csv",
        "train.log",
    ]
    best_before = (out / "best.pt").read_bytes()
    log_before = (out / "log.csv").read_text()
    capsys.readouterr()

    assert cli.run(main, ["--config", cfg_path, "--no-test"]) == 2
    _one_error(
        capsys.readouterr().err, "already holds a run (last.pt, best.pt, log.csv)", "--resume", "--overwrite"
    )
    assert (out / "best.pt").read_bytes() == best_before and (out / "log.csv").read_text() == log_before

    # --overwrite starts over; the saved config and the console log describe the new run
    assert cli.run(main, ["--config", cfg_path, "--no-test", "--overwrite", "--seed", "3"]) == 0
    assert C.load_config(str(out / "config.yaml"))["seed"] == 3
    log = (out / "train.log").read_text()
    assert "deleted" in log and "epoch 1/1: train loss" in log and log.count("epoch 1/1: train loss") == 1
    assert log.rstrip().splitlines()[-1].startswith("training time ")  # the summary line too
    assert not (out / ".lock").exists()


def test_train_log_ends_with_the_test_report(tmp_path, tiny, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=1))
    assert cli.run(_train_main(), ["--config", cfg_path]) == 0
    console = capsys.readouterr().out
    log = (tmp_path / "runs" / "tiny" / "train.log").read_text()
    tail = [line for line in console[console.index("training time ") :].splitlines() if line]
    lines = [line for line in log.splitlines() if line]
    assert "test split" in tail[1] and lines[-len(tail) :] == tail  # every closing console line


def test_dash_c_is_not_an_abbreviation_of_config(tmp_path, capsys):
    main = _train_main()
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "x.yaml"), "-c", "other.yaml"])
    assert e.value.code == 2 and "unrecognized arguments: -c other.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--conf", "x.yaml"])  # no prefix matching either


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _train_main()(["--config", "x.yaml", "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the lock
# ----------------------------------------------------------------------------------------------
def test_a_live_lock_refuses_and_a_dead_one_is_reclaimed(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=1)
    folder = C.run_dir(cfg)
    os.makedirs(folder)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        with open(os.path.join(folder, ".lock"), "w") as f:
            f.write(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(C.ConfigError, match=rf"in use by another run \(pid {live.pid} on this machine\)"):
            engine.fit(cfg, progress=False)
        assert not os.path.exists(os.path.join(folder, "last.pt"))
    finally:
        live.kill()
        live.wait()  # reaped: the pid is dead now
    engine.fit(cfg, progress=False)  # the stale lock is reclaimed
    assert os.path.isfile(os.path.join(folder, "last.pt"))
    assert not os.path.exists(os.path.join(folder, ".lock"))  # released at the end


def test_lock_is_released_when_the_run_fails(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=2)

    def crash(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, progress=False, on_epoch_end=crash)
    assert not os.path.exists(os.path.join(C.run_dir(cfg), ".lock"))
    engine.fit(cfg, resume=True, progress=False)


@pytest.mark.slow
def test_two_concurrent_runs_into_one_directory(tmp_path, tiny, capsys):
    """A real train.py process trains; a second run started meanwhile into the same directory
    exits 2 at once, and the first one finishes undisturbed."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
        "import fabricate as F\n"
        "from svm_models import registry\n"
        "registry._MODELS[F.TINY] = F.tiny_factory\n"
        f"sys.argv = [{os.path.join(ROOT, 'train.py')!r}] + sys.argv[1:]\n"
        f"runpy.run_path({os.path.join(ROOT, 'train.py')!r}, run_name='__main__')\n"
    )
    cfg = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=3))
    lock = tmp_path / "runs" / "tiny" / ".lock"
    main = _train_main()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    first = subprocess.Popen(
        [sys.executable, str(launcher), "--config", cfg, "--no-test"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert lock.exists(), "the first run never took the lock"
        assert cli.run(main, ["--config", cfg, "--no-test"]) == 2  # while the first one trains
        _one_error(capsys.readouterr().err, f"in use by another run (pid {first.pid} on this machine)")
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    rows = history.read_csv(str(tmp_path / "runs" / "tiny" / "log.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------
# unwritable output: refused before any training; save errors are one line
# ----------------------------------------------------------------------------------------------
def test_unwritable_output_dir_fails_before_training(tmp_path, tiny, monkeypatch, capsys):
    (tmp_path / "afile").write_text("in the way\n")
    built = []
    monkeypatch.setattr(engine, "build_training", lambda *a, **k: built.append(1))
    main = _train_main()
    cases = [
        (str(tmp_path / "afile"), "Not a directory"),  # output_dir under a regular file
        (str(tmp_path / "afile" / "deeper"), "Not a directory"),
    ]
    for out, reason in cases:
        cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, output_dir=out))
        assert cli.run(main, ["--config", cfg_path]) == 2
        _one_error(capsys.readouterr().err, "cannot write the run directory", reason)
    # the run directory itself is a file in the way
    os.makedirs(tmp_path / "runs")
    (tmp_path / "runs" / "tiny").write_text("a file\n")
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    assert cli.run(main, ["--config", cfg_path]) == 2
    _one_error(capsys.readouterr().err, "cannot write the run directory", "exists")
    # a read-only mount (root ignores chmod, so the probe's write fails by mock)
    (tmp_path / "runs" / "tiny").unlink()

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    assert cli.run(main, ["--config", cfg_path]) == 2
    _one_error(capsys.readouterr().err, "cannot write the run directory", "Read-only file system")
    assert built == []


def test_a_failing_save_is_one_line_and_leaves_the_previous_epoch(tmp_path, tiny, monkeypatch, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=3))
    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):  # the disk fills up in the middle of epoch 2's first save
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            f.write(b"PK\x03\x04 half")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", save)
    assert cli.run(_train_main(), ["--config", cfg_path, "--no-test"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: cannot write ")
    assert "best.pt: No space left on device" in err and "Traceback" not in err  # (epoch 2 improved)
    out = tmp_path / "runs" / "tiny"
    monkeypatch.undo()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == []  # no temp file, lock released
    assert "error: cannot write" in (out / "train.log").read_text()


def test_a_failure_between_best_and_last_loses_no_best(tmp_path, tiny, monkeypatch):
    cfg = _cfg(tmp_path, epochs=2)
    real_save = torch.save
    saves = []

    def save(obj, f, *a, **k):  # epoch 2 improves: its second save fails (the disk fills up)
        saves.append(obj["epoch"])
        if saves.count(2) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", save)
    with pytest.raises(ckpt.SaveError):
        engine.fit(cfg, progress=False)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    res = engine.fit(cfg, resume=True, progress=False)  # replays epoch 2
    folder = C.run_dir(cfg)
    last = torch.load(os.path.join(folder, "last.pt"), weights_only=True)
    best = torch.load(os.path.join(folder, "best.pt"), weights_only=True)
    assert res["best_epoch"] == last["best_epoch"] == best["epoch"] == 2


def test_overwrite_keeps_the_previous_run_until_the_new_one_builds(tmp_path, tiny, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=1))
    main = _train_main()
    assert cli.run(main, ["--config", cfg_path, "--no-test"]) == 0
    out = tmp_path / "runs" / "tiny"
    before = {
        n: (out / n).read_bytes() for n in ("best.pt", "last.pt", "log.csv", "config.yaml", "train.log")
    }
    capsys.readouterr()
    # a typo in model_args is only found when the model is built
    argv = ["--config", cfg_path, "--no-test", "--overwrite", "--opts", "model_args={widht: 4}"]
    assert cli.run(main, argv) == 2
    _one_error(capsys.readouterr().err, "widht")
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not (out / ".lock").exists()


def test_overwrite_deletes_every_file_of_the_previous_run_and_only_those(tmp_path):
    # Guards RUN_FILES: a test report or predictions of the replaced run left beside the new
    # run's checkpoints would describe weights that are gone; a file of the user's is kept
    cfg = _cfg(tmp_path)
    folder = C.run_dir(cfg)
    os.makedirs(folder)
    previous = ["last.pt", "best.pt", "log.csv", "curves.png", "config.yaml", "train.log"]
    previous += ["test_report.json", "test_report.png", "predictions.json"]
    for name in [*previous, "notes.txt"]:
        open(os.path.join(folder, name), "w").close()
    run = rundir.RunDir(cfg)
    run.claim(cfg, resume=False, overwrite=True)
    try:
        assert set(previous) <= set(os.listdir(folder))  # nothing deleted before commit()
        (note,) = run.commit(cfg)
    finally:
        run.close()
    assert sorted(os.listdir(folder)) == ["config.yaml", "notes.txt", "train.log"]
    assert note.startswith("--overwrite: deleted ") and all(n in note for n in previous)


def test_lines_logged_before_commit_open_train_log_and_other_ranks_write_nothing(tmp_path):
    # Guards RunDir's log buffer: the lines of the start (removed temp files, pretrained weights)
    # are logged before commit() and belong in train.log, first; a non-owner rank (torchrun's
    # others) writes neither config.yaml nor train.log, whose lines rank 0 writes once
    cfg = _cfg(tmp_path)
    folder = C.run_dir(cfg)
    other = rundir.RunDir(cfg, owner=False)
    other.log("from rank 1")
    assert other.commit(cfg) == [] and not os.path.exists(folder)
    other.close()
    run = rundir.RunDir(cfg)
    run.claim(cfg, resume=False, overwrite=False)
    try:
        run.log("before commit")
        assert not os.path.exists(os.path.join(folder, "train.log"))
        run.commit(cfg)
        run.log("after commit")
    finally:
        run.close()
    assert open(os.path.join(folder, "train.log")).read() == "before commit\nafter commit\n"
    assert sorted(os.listdir(folder)) == ["config.yaml", "train.log"]


def test_a_refused_claim_takes_nothing_and_resume_with_overwrite_is_refused(tmp_path):
    # Guards claim(): --resume with --overwrite is refused by the engine too (not only by the
    # command line's parser), and a refused claim releases its lock
    cfg = _cfg(tmp_path)
    folder = C.run_dir(cfg)
    with pytest.raises(C.ConfigError, match="--resume and --overwrite exclude each other"):
        rundir.RunDir(cfg).claim(cfg, resume=True, overwrite=True)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "log.csv"), "w").close()
    for resume in (False, True):  # a run without --resume, or a --resume without last.pt
        with pytest.raises(C.ConfigError, match="already holds a run|nothing to resume"):
            rundir.RunDir(cfg).claim(cfg, resume=resume, overwrite=False)
        assert sorted(os.listdir(folder)) == ["log.csv"]


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ckpt.atomic_save({"epoch": 1}, str(tmp_path / "a.pt"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.pt").st_mode & 0o777 == 0o640  # mkstemp alone gave 0o600


def test_a_folder_with_best_pt_only_holds_a_run(tmp_path, tiny, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, epochs=1))
    main = _train_main()
    assert cli.run(main, ["--config", cfg_path, "--no-test"]) == 0
    out = tmp_path / "runs" / "tiny"
    for n in ("last.pt", "log.csv"):  # (deleted to save space: best.pt is what is kept)
        (out / n).unlink()
    best = (out / "best.pt").read_bytes()
    capsys.readouterr()
    assert cli.run(main, ["--config", cfg_path, "--no-test"]) == 2
    _one_error(capsys.readouterr().err, "already holds a run (best.pt)")
    assert (out / "best.pt").read_bytes() == best


def test_temp_files_of_a_killed_save_are_removed_on_the_next_start(tmp_path, tiny, capsys):
    cfg = _cfg(tmp_path, epochs=1)
    engine.fit(cfg, progress=False)
    folder = C.run_dir(cfg)
    for name in (".last.pt.abc123.tmp", ".log.csv.x9.tmp"):
        open(os.path.join(folder, name), "wb").close()  # 0 bytes, as a SIGKILL mid-save leaves
    keep = os.path.join(folder, ".keepme")
    open(keep, "w").close()
    engine.fit(dict(cfg, epochs=2), resume=True, progress=False)
    assert sorted(n for n in os.listdir(folder) if n.startswith(".")) == [".keepme"]
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# command-line overrides; --resume extending epochs
# ----------------------------------------------------------------------------------------------
def test_opts_and_flags_override_the_file_and_are_validated(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    p = cli.parser("t")
    cli.add_training_flags(p)
    args = p.parse_args(
        [
            "--config",
            cfg_path,
            "--opts",
            "lr=1e-3",
            "epochs=7",
            "model_args={width: 4}",
            "--epochs",
            "9",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "elsewhere"),
        ]
    )
    cfg = cli.config_from_args(args)
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 9 and cfg["seed"] == 5  # a flag wins over --opts
    assert cfg["model_args"] == {"width": 4} and cfg["device"] == "cpu"
    assert C.run_dir(cfg) == os.path.join(str(tmp_path / "elsewhere"), "tiny")
    for opts, message in [
        (["bach_size=4"], "unknown key 'bach_size' (did you mean 'batch_size'?)"),
        (["epochs=many"], "'epochs' must be an integer, got 'many'"),
        (["epochs"], "--opts expects KEY=VALUE pairs, got 'epochs'"),
        (["device=tpu"], "'device' must be cpu, cuda or cuda:N"),
        (["device=cuda:x"], "'device' must be cpu, cuda or cuda:N, got 'cuda:x'"),
        (["device=cuda:-1"], "'device' must be cpu, cuda or cuda:N"),
        (["lr=1e-3", "lr=2e-3"], "--opts sets 'lr' twice"),
        (["threads=0"], "'threads' must be >= 1 or null"),
    ]:
        with pytest.raises(C.ConfigError, match=".*") as e:
            cli.config_from_args(p.parse_args(["--config", cfg_path, "--opts", *opts]))
        assert message in str(e.value), (opts, str(e.value))
        assert "command-line" in str(e.value) or "--opts" in str(e.value)


def test_a_flag_of_zero_still_overrides_the_config(tmp_path):
    # --seed 0 is a value, not "not given": a truthiness check kept the file's (or --opts') seed
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path, seed=5))
    p = cli.parser("t")
    cli.add_training_flags(p)
    assert cli.config_from_args(p.parse_args(["--config", cfg_path, "--seed", "0"]))["seed"] == 0


def test_one_dash_config_with_an_equals_sign_is_the_config(tmp_path):
    # the original README's -config=FILE form is rewritten like -config FILE
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    assert cli.parser("t").parse_args(["-config=" + cfg_path]).config == cfg_path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, tiny, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", **tiny_cfg(tmp_path))
    assert cli.run(_train_main(), ["--config", cfg_path, "--device", "cuda"]) == 2
    _one_error(capsys.readouterr().err, "device 'cuda' requested but no CUDA device is available")


def test_opts_repeat_and_merge_model_args_into_the_files(tmp_path):
    cfg_path = write_config(
        tmp_path / "c.yaml", **dict(tiny_cfg(tmp_path), model_args={"width": 4, "depth": 2})
    )
    p = cli.parser("t")
    cli.add_training_flags(p)
    args = p.parse_args(["--config", cfg_path, "--opts", "lr=1e-3", "--opts", "model_args={width: 8}"])
    cfg = cli.config_from_args(args)
    assert cfg["lr"] == 1e-3  # the first --opts is kept
    assert cfg["model_args"] == {"width": 8, "depth": 2}  # the file's other model_args too


def test_resume_refuses_other_workers_with_augment_and_an_unvalidated_end(tmp_path, tiny):
    # with augment the random draws follow the DataLoader workers' seeds: another workers count
    # would not continue the run as it would have gone (measured: another loss after resume)
    cfg = _cfg(tmp_path, epochs=3, augment=True, eval_every=2)

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, progress=False, on_epoch_end=crash)
    with pytest.raises(C.ConfigError, match="in workers"):
        engine.fit(dict(cfg, workers=1), resume=True, progress=False)
    # epoch 1 was not validated (eval_every 2): ending the run there would leave no best.pt of it
    with pytest.raises(C.ConfigError, match="epoch 1, which was not validated"):
        engine.fit(dict(cfg, epochs=1), resume=True, progress=False)
    res = engine.fit(cfg, resume=True, progress=False)
    assert [r["epoch"] for r in res["history"]] == [1, 2, 3]
    # without augment the workers may change
    plain = _cfg(tmp_path, epochs=2, task_name="plain")
    engine.fit(dict(plain, epochs=1), progress=False)
    assert engine.fit(dict(plain, workers=1), resume=True, progress=False)["history"][-1]["epoch"] == 2


def test_resume_that_changes_the_planned_epochs_says_so(tmp_path, tiny):
    # trained with --epochs 2, interrupted, resumed with a plain --resume: the file's epochs (1
    # here) shortened the run and its schedule without a word
    cfg = _cfg(tmp_path, epochs=2)

    def crash(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, progress=False, on_epoch_end=crash)
    log = os.path.join(C.run_dir(cfg), "train.log")
    with open(log) as f:
        assert "planned for" not in f.read()
    res = engine.fit(dict(cfg, epochs=1), resume=True, progress=False)
    assert res["history"][-1]["epoch"] == 1
    with open(log) as f:
        assert "note: the run was planned for 2 epochs and now ends after 1" in f.read()


def test_resume_of_a_run_grouped_otherwise_is_one_error(tmp_path, monkeypatch):
    # a last.pt saved while the scan's A_logs and dt bias were weight-decayed has other groups
    from svm_kernels.ss2d.module import CrossSelectiveScan

    cfg = _cfg(
        tmp_path,
        model="svmamba_cifar",
        img_size=8,
        epochs=2,
        model_args=dict(dims=[8], depths=[1], patch_size=2),
    )
    monkeypatch.setattr(CrossSelectiveScan, "NO_WEIGHT_DECAY", ())
    engine.fit(dict(cfg, epochs=1), progress=False)
    monkeypatch.undo()
    with pytest.raises(C.ConfigError, match="does not fit this code's parameter groups"):
        engine.fit(cfg, resume=True, progress=False)


def test_a_non_finite_loss_elsewhere_is_named_so(tmp_path, tiny, monkeypatch):
    # under DDP the check is summed over processes; the printing one may have a finite loss
    monkeypatch.setattr(engine.dist_utils, "all_reduce_sum", lambda t, info: torch.ones_like(t))
    with pytest.raises(engine.NonFiniteLossError, match="non-finite loss on another process at epoch 1"):
        engine.fit(_cfg(tmp_path, epochs=1), progress=False)


def test_resume_may_extend_epochs_and_refuses_other_changes(tmp_path, tiny):
    cfg = _cfg(tmp_path, epochs=2, warmup_epochs=1)
    engine.fit(cfg, progress=False)
    last = os.path.join(C.run_dir(cfg), "last.pt")
    done_lr = torch.load(last, weights_only=True)["history"][-1]["lr"]
    saved = os.path.join(C.run_dir(cfg), "config.yaml")
    for change, key in [({"lr": 5e-3}, "lr"), ({"seed": 1}, "seed"), ({"epochs": 1}, "below the 2 epochs")]:
        with pytest.raises(C.ConfigError, match=key):
            engine.fit(dict(cfg, **change), resume=True, progress=False)
        assert C.load_config(saved) == cfg  # a refused resume leaves the run's config as it was
    res = engine.fit(dict(cfg, epochs=4, workers=0, threads=1), resume=True, progress=False)
    assert [r["epoch"] for r in res["history"]] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in res["history"]]
    assert lrs[1] == pytest.approx(done_lr)
    # the cosine now ends at epoch 4: the lr rises again after the finished run, then decays to min_lr
    steps = 1437 // 64  # the last incomplete batch is dropped
    total, warmup = 4 * steps, steps

    def cosine_at(step):
        t = step - warmup
        return (
            cfg["min_lr"] + (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * t / (total - warmup))) / 2
        )

    assert lrs[2] == pytest.approx(cosine_at(3 * steps), rel=1e-6) and lrs[2] > lrs[1]
    assert lrs[3] == pytest.approx(cfg["min_lr"], rel=1e-6)
    assert torch.load(last, weights_only=True)["config"]["epochs"] == 4


# ----------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------
def test_thread_count_precedence(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.thread_count({"threads": None}) == runtime.DEFAULT_CPU_THREADS == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.thread_count({"threads": None}) == 2
    assert runtime.thread_count({"threads": 3}) == 3  # the config (or --opts threads=N) wins
    n = torch.get_num_threads()
    try:
        assert runtime.set_threads({"threads": 2}) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)


def test_thread_count_ignores_an_omp_num_threads_of_zero(monkeypatch):
    # OMP_NUM_THREADS=0 (or junk) is no count: taken as is, torch.set_num_threads(0) raised
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for value in ("0", "two", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert runtime.thread_count({"threads": None}) == runtime.DEFAULT_CPU_THREADS, value


def test_retain_freed_memory_asks_glibc_for_what_every_version_accepts(monkeypatch):
    # a larger mmap threshold than 32 MiB is refused by glibc before 2.35 (the call returns 0)
    calls = []

    class Libc:
        @staticmethod
        def mallopt(param, value):
            calls.append((param, value))
            return int(value <= 32 << 20 or param != -3)  # as an older glibc answers

    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: Libc())
    assert runtime.retain_freed_memory() is True
    assert calls == [(-3, 32 << 20), (-1, 1 << 30)]


def test_retain_freed_memory_where_glibc_runs(monkeypatch):
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert runtime.retain_freed_memory() is glibc  # twice is fine: the same settings again
    assert runtime.retain_freed_memory() is glibc
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.retain_freed_memory() is False
    # the scripts apply it before the run, after the thread count
    for script in ("train.py", "test.py", "predict.py"):
        with open(os.path.join(ROOT, script), encoding="utf-8") as f:
            text = f.read()
        assert text.index("runtime.set_threads(cfg)") < text.index("runtime.retain_freed_memory()")


def test_lock_without_hard_links_still_excludes(tmp_path, monkeypatch):
    def no_links(*a):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(rundir.os, "link", no_links)
    first = rundir.RunLock(str(tmp_path)).acquire()
    with pytest.raises(C.ConfigError, match="in use by another run"):
        rundir.RunLock(str(tmp_path)).acquire()  # same pid, alive: refused
    first.release()
    assert not (tmp_path / ".lock").exists()
    assert sorted(os.listdir(tmp_path)) == []  # no temporary file left either


def _write_lock(folder, *fields):
    with open(os.path.join(folder, ".lock"), "w") as f:
        f.write(" ".join(map(str, fields)) + "\n")


@pytest.mark.skipif(not rundir.process_start(os.getpid()), reason="no process start times on this system")
def test_a_lock_whose_pid_was_handed_out_again_is_reclaimed(tmp_path):
    # A restarted container gives a new process the pid of the one that left the lock (here:
    # our own pid, alive, with another start time): the lock is stale.
    import socket

    host, start = socket.gethostname(), rundir.process_start(os.getpid())
    _write_lock(tmp_path, os.getpid(), host, int(start) + 1)
    lock = rundir.RunLock(str(tmp_path)).acquire()
    with open(tmp_path / ".lock") as f:
        assert f.read().split() == [str(os.getpid()), host, start]
    lock.release()
    assert not (tmp_path / ".lock").exists()
    # the same start time is the same process: refused, and so is a lock without a start time
    for fields in ((os.getpid(), host, start), (os.getpid(), host)):
        _write_lock(tmp_path, *fields)
        with pytest.raises(C.ConfigError, match="in use by another run"):
            rundir.RunLock(str(tmp_path)).acquire()
    os.unlink(tmp_path / ".lock")


def test_a_lock_of_another_users_live_process_refuses(tmp_path, monkeypatch):
    # Guards _pid_alive's PermissionError: signalling another user's process is refused, but the
    # process exists; taking it for dead reclaimed the lock of a run still training
    import socket

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(rundir.os, "kill", not_permitted)
    _write_lock(tmp_path, 4242, socket.gethostname())
    with pytest.raises(C.ConfigError, match=r"in use by another run \(pid 4242 on this machine\)"):
        rundir.RunLock(str(tmp_path)).acquire()
    assert (tmp_path / ".lock").read_text().split() == ["4242", socket.gethostname()]


def test_a_lock_of_another_host_is_never_reclaimed(tmp_path):
    # Guards the host check: a pid of another machine (dead here) says nothing about that run
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, gone.pid, "another-host", 1)
    with pytest.raises(C.ConfigError, match=rf"in use by another run \(pid {gone.pid} on another-host\)"):
        rundir.RunLock(str(tmp_path)).acquire()
    assert (tmp_path / ".lock").read_text().split() == [str(gone.pid), "another-host", "1"]


def test_a_garbled_lock_is_reclaimed(tmp_path):
    # Guards the unreadable-holder case: a lock file without a pid (cut short, edited) names no
    # run; it was refused as held by "pid None", for ever
    (tmp_path / ".lock").write_text("not a lock\n")
    lock = rundir.RunLock(str(tmp_path)).acquire()
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    lock.release()


def test_release_leaves_a_lock_another_run_took_over(tmp_path):
    # Guards release's identity check: a run whose lock was reclaimed as stale deleted the new
    # owner's lock, letting a third run in beside it
    lock = rundir.RunLock(str(tmp_path)).acquire()
    _write_lock(tmp_path, 12345, "another-host", 1)
    lock.release()
    assert (tmp_path / ".lock").read_text().split() == ["12345", "another-host", "1"]


def test_only_hidden_temp_files_of_saves_are_removed(tmp_path):
    # Guards the leading-dot rule: a user's own `notes.tmp` in the run directory is not a save's
    (tmp_path / "notes.tmp").write_text("mine\n")
    (tmp_path / ".last.pt.k3j.tmp").write_bytes(b"")
    assert rundir.remove_temp_files(str(tmp_path)) == [".last.pt.k3j.tmp"]
    assert os.listdir(tmp_path) == ["notes.tmp"]


def test_process_start_names_one_process():
    start = rundir.process_start(os.getpid())
    if not start:
        pytest.skip("no process start times on this system")
    assert start.isdigit() and rundir.process_start(os.getpid()) == start
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.05)
        assert rundir.process_start(child.pid) not in ("", None)
    finally:
        child.kill()
        child.wait()
    assert rundir.process_start(child.pid) == ""  # gone


def test_process_start_is_the_start_time_not_a_field_that_changes():
    # Guards the field read from /proc/<pid>/stat (the 22nd, starttime): its neighbours (vsize,
    # rss) change while the process runs, and a live run's lock would then be reclaimed as stale
    start = rundir.process_start(os.getpid())
    if not start:
        pytest.skip("no process start times on this system")
    grown = bytearray(64 << 20)  # 64 MiB more (zero-filled, so touched): vsize and rss grow
    assert rundir.process_start(os.getpid()) == start
    del grown
    with open("/proc/uptime") as f:
        uptime_ticks = float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")
    assert 0 < int(start) <= uptime_ticks  # in clock ticks since boot
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.05)
        assert int(start) <= int(rundir.process_start(child.pid)) <= uptime_ticks + 1000
    finally:
        child.kill()
        child.wait()


def test_a_run_refused_before_it_starts_leaves_no_directory_it_made(tmp_path, tiny):
    # a model_args typo is found once the run directory is claimed: the empty folder stayed
    cfg = _cfg(tmp_path, model_args={"widht": 4})
    folder = C.run_dir(cfg)
    with pytest.raises(C.ConfigError, match="widht"):
        engine.fit(cfg, progress=False)
    assert not os.path.exists(folder) and os.path.isdir(os.path.dirname(folder))
    os.makedirs(folder)
    with pytest.raises(C.ConfigError, match="widht"):  # a folder that was there stays
        engine.fit(cfg, progress=False)
    assert os.listdir(folder) == []

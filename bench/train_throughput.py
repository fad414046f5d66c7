"""Training throughput (images/s) of a config's model, side by side across source trees.

    python bench/train_throughput.py --config configs/digits_svmamba.yaml
    python bench/train_throughput.py --config configs/digits_svmamba.yaml --src /path/to/old/tree . --rounds 3
    python bench/train_throughput.py --config configs/digits_svmamba.yaml --compile false true
    python bench/train_throughput.py --config configs/cifar10_svmamba.yaml --device cuda --compile false true --fullgraph
    python bench/train_throughput.py --scan 64,32,8,8 --src /path/to/old/tree .   # one scan, fwd+bwd

Each (tree, compile) variant runs in its own subprocess with that tree first on PYTHONPATH, so an
older checkout of the package can be compared with this one in one run; the variants alternate
round by round so that machine load drifts hit them alike. A step is what ``train_one_epoch``
does: forward, label-smoothed cross-entropy, the finiteness check, backward, the step of the
tree's own optimizer (``svm_models.training.optim.build_optimizer``: AdamW with its parameter
groups), on synthetic images of the config's shape, under bf16 autocast on CUDA when the config's
``amp`` is on (``training_step``; the GPU gate's ``model`` phase runs it too). Only the steps after ``--warmup`` are timed
(the first steps pay for allocations and, compiled, for compilation, which is reported
separately). Set OMP_NUM_THREADS yourself: the subprocesses inherit it.

Every round reports images/s of wall time and of the worker's CPU time (``time.process_time``);
on a machine shared with other jobs the CPU time of a one-thread run is the steadier measure
(waiting for a core does not count, a slower core does). The summary gives, per variant, the
median over rounds of its ratio to the first variant of the same round, with the spread
(lowest-highest), for both clocks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scan_shape(text: str) -> tuple[int, int, int, int]:
    """B,D,H,W as four positive ints, or a ValueError."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--scan takes B,D,H,W (four positive ints), got {text!r}")
    return shape


def check_args(p: argparse.ArgumentParser, args) -> None:
    """What the workers would otherwise meet one by one, as one usage error. A tree without
    svm_models would not fail: its worker would import the installed package, and the
    comparison would time another tree under its name."""
    for src in args.src:
        if not (Path(src) / "svm_models" / "__init__.py").is_file():
            p.error(f"--src {src}: no svm_models package there")
    if not (ROOT / args.config).is_file():  # (the workers run in the repository root)
        p.error(f"--config {args.config}: no such file (relative paths from {ROOT})")
    for flag, value, low in (
        ("--steps", args.steps, 1),
        ("--rounds", args.rounds, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value < low:
            p.error(f"{flag} must be >= {low}, got {value}")
    if args.scan:
        try:
            scan_shape(args.scan)
        except ValueError as e:
            p.error(str(e))


def scan_worker(args) -> dict:
    """Forward + backward of one PyTorch-backend low-rank scan (N = 1, R = 2) of shape (B, D, H, W)."""
    import torch

    from svm_kernels import cross_selective_scan_lowrank

    batch, D, H, W = scan_shape(args.scan)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(True)

    inputs = dict(
        u=rnd(batch, D, H, W),
        dt_low=rnd(batch, 4, 2, H, W),
        dt_weight=rnd(4, D, 2),
        A=(-torch.rand(4, D, 1, generator=g) - 0.5).requires_grad_(True),
        B=rnd(batch, 4, 1, H, W),
        C=rnd(batch, 4, 1, H, W),
        D=rnd(4, D),
        dt_bias=rnd(4, D),
    )
    grad_out = torch.randn(batch, D, H, W, generator=g)

    def step():
        for t in inputs.values():  # (accumulating into .grad would add work the first step had not)
            t.grad = None
        cross_selective_scan_lowrank(**inputs, backend="torch").backward(grad_out)

    for _ in range(args.warmup):
        step()
    return _timed(step, args.steps, batch, first_step_s=0.0)


def training_step(
    cfg: dict,
    device: str = "cpu",
    compile_model: bool = False,
    fullgraph: bool = False,
    backend: str = "inductor",
):
    """(step, batch): one training step of the config's model on synthetic images, as
    ``train_one_epoch`` does it (forward under the config's autocast, label-smoothed
    cross-entropy, the finiteness check, backward, the tree's own optimizer), on ``device``."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = _model(cfg).to(device)
    img = cfg.get("img_size") or 32
    opt = _optimizer(model, cfg)
    net = torch.compile(model, fullgraph=fullgraph, backend=backend) if compile_model else model
    batch = cfg.get("batch_size", 32)
    images = torch.randn(batch, 3, img, img, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)
    amp = bool(cfg.get("amp")) and torch.device(device).type == "cuda"  # as engine.autocast
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.1)
        if not torch.isfinite(loss).item():
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch


def _sync(device: str):
    import torch

    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def read_config(path: str, memory_efficient: str = "config", channels_last: str = "config") -> dict:
    """The config with the command line's overrides (``config`` keeps the file's value)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for key, value in (("memory_efficient", memory_efficient), ("channels_last", channels_last)):
        if value != "config":
            cfg[key] = value == "true"
    return cfg


def measure(step, batch: int, steps: int, warmup: int, device: str = "cpu") -> dict:
    """Images/s of ``steps`` steps after ``warmup`` (at least 1: the first step, timed apart,
    pays for allocations and, compiled, for compilation)."""
    sync = _sync(device)
    t0 = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    sync()
    return _timed(step, steps, batch, first_step_s, sync)


def worker(args) -> dict:
    cfg = read_config(args.config, args.memory_efficient, args.channels_last)
    _host_setup_as_train_py()
    step, batch = training_step(cfg, args.device, args.compile == "true", args.fullgraph)
    return measure(step, batch, args.steps, args.warmup, args.device)


def _timed(step, steps: int, batch: int, first_step_s: float, sync=lambda: None) -> dict:
    """Images/s of ``steps`` calls of ``step`` on wall and on this process's CPU clock."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images_per_s": steps * batch / elapsed,
        "cpu_images_per_s": steps * batch / cpu,
        "first_step_s": first_step_s,
        "ms": 1e3 * elapsed / steps,
    }


def _host_setup_as_train_py() -> None:
    """What the tree's train.py does to the process before training, where the tree has it
    (``runtime.retain_freed_memory``; the thread count comes from OMP_NUM_THREADS here)."""
    try:
        from svm_models.training.runtime import retain_freed_memory
    except Exception:  # an older tree, or no training stack here
        return
    retain_freed_memory()


def _model(cfg: dict):
    """The model as the tree's train.py builds it (``engine.build_model`` on the validated config:
    model_args, T, memory_efficient, channels_last...). A tree whose schema rejects the config's
    keys (one older than them) gets ``create_model`` with model_args and T, as its train.py did;
    so does an environment without the training stack's imports (torchvision: the GPU image),
    with the config's memory_efficient and channels_last applied as the engine does."""
    import svm_models

    try:
        from svm_models.training import config as C
        from svm_models.training import engine
    except Exception:  # ImportError, or a torchvision built for another torch failing to load
        C = engine = None
    if engine is not None:
        try:
            return engine.build_model(C.validate(dict(cfg)), 10)
        except C.ConfigError:
            pass
    model_args = dict(cfg.get("model_args") or {})
    if cfg.get("T") is not None:
        model_args["T"] = cfg["T"]
    img = cfg.get("img_size") or 32
    model = svm_models.create_model(cfg["model"], num_classes=10, img_size=img, **model_args)
    if engine is None:
        from svm_models.spike_layers import apply_memory_options

        apply_memory_options(model, cfg.get("memory_efficient"), bool(cfg.get("channels_last")))
    return model


def _optimizer(model, cfg: dict):
    """The tree's own training optimizer (plain AdamW for older trees without ``build_optimizer``
    and where the training stack cannot be imported)."""
    import torch

    args = {"lr": float(cfg.get("lr", 1e-3)), "weight_decay": float(cfg.get("weight_decay", 0.05))}
    try:
        from svm_models.training.optim import build_optimizer
    except Exception:  # as in _model: the training stack cannot be imported here
        return torch.optim.AdamW(model.parameters(), **args)
    return build_optimizer(model, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/digits_svmamba.yaml")
    p.add_argument("--src", nargs="+", default=[str(ROOT)], help="source trees to compare (first = baseline)")
    p.add_argument("--compile", nargs="+", default=["false"], choices=["false", "true"])
    p.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    p.add_argument(
        "--device", default="cpu", help="cpu or cuda (bf16 autocast there when the config's amp is on)"
    )
    for key, what in (
        ("memory-efficient", "the spiking models' memory-lean training path"),
        ("channels-last", "channels_last weights and activations"),
    ):
        p.add_argument(
            f"--{key}",
            default="config",
            choices=["config", "true", "false"],
            help=f"{what}: as the config says (default), on or off (trees that know the key)",
        )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scan", help="B,D,H,W: time one scan (forward + backward) instead of training")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.compile = args.compile[0]
        print(json.dumps(scan_worker(args) if args.scan else worker(args)))
        return 0
    check_args(p, args)

    variants = [(src, c) for src in args.src for c in args.compile]
    results: dict[tuple[str, str], list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for src, comp in variants:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
            cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--compile", comp]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--memory-efficient", args.memory_efficient, "--channels-last", args.channels_last]
            cmd += ["--fullgraph"] if args.fullgraph else []
            cmd += ["--device", args.device]
            cmd += ["--scan", args.scan] if args.scan else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(out.stdout + out.stderr, file=sys.stderr)
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[(src, comp)].append(res)
            print(
                f"round {r + 1}: src={src} compile={comp}: {res['images_per_s']:.1f} img/s, "
                f"{res['cpu_images_per_s']:.1f} img/s of CPU time (first step {res['first_step_s']:.1f}s)",
                flush=True,
            )
    what = f"one scan of shape {args.scan}, forward + backward (samples/s)" if args.scan else args.config
    print(
        f"\n{what}, {args.steps} timed steps, {args.rounds} rounds, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    for v in variants:
        parts = [f"  src={v[0]} compile={v[1]}:"]
        for key, clock in (("images_per_s", "wall"), ("cpu_images_per_s", "CPU")):
            rates = [x[key] for x in results[v]]
            ratios = [x[key] / b[key] for x, b in zip(results[v], results[variants[0]])]
            parts.append(
                f"{clock}: median {statistics.median(rates):.1f} (best {max(rates):.1f}) img/s, "
                f"{statistics.median(ratios):.2f}x the first ({min(ratios):.2f}-{max(ratios):.2f});"
            )
        print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

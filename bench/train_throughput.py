"""Training throughput (images/s) of a config's model, side by side across source trees.

    python bench/train_throughput.py --config configs/digits_svmamba.yaml
    python bench/train_throughput.py --config configs/digits_svmamba.yaml --src /path/to/old/tree . --rounds 3
    python bench/train_throughput.py --config configs/digits_svmamba.yaml --compile false true
    python bench/train_throughput.py --scan 64,32,8,8 --src /path/to/old/tree .   # one scan, fwd+bwd

Each (tree, compile) variant runs in its own subprocess with that tree first on PYTHONPATH, so an
older checkout of the package can be compared with this one in one run; the variants alternate
round by round so that machine load drifts hit them alike. A step is what ``train_one_epoch``
does: forward, label-smoothed cross-entropy, the finiteness check, backward, AdamW step, on
synthetic images of the config's shape. Only the steps after ``--warmup`` are timed (the first
steps pay for allocations and, compiled, for compilation, which is reported separately).
Set OMP_NUM_THREADS yourself: the subprocesses inherit it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _read_config(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def scan_worker(args) -> dict:
    """Forward + backward of one PyTorch-backend low-rank scan (N = 1, R = 2) of shape (B, D, H, W)."""
    import torch

    from svm_kernels import cross_selective_scan_lowrank

    batch, D, H, W = (int(v) for v in args.scan.split(","))
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
        cross_selective_scan_lowrank(**inputs, backend="torch").backward(grad_out)

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    return {
        "images_per_s": args.steps * batch / elapsed,
        "first_step_s": 0.0,
        "ms": 1e3 * elapsed / args.steps,
    }


def worker(args) -> dict:
    import torch
    import torch.nn.functional as F

    import svm_models

    cfg = _read_config(args.config)
    torch.manual_seed(0)
    model_args = dict(cfg.get("model_args") or {})
    if cfg.get("T") is not None:
        model_args["T"] = cfg["T"]
    img = cfg.get("img_size") or 32
    model = svm_models.create_model(cfg["model"], num_classes=10, img_size=img, **model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.get("lr", 1e-3)), weight_decay=0.05)
    net = torch.compile(model, fullgraph=args.fullgraph) if args.compile == "true" else model
    batch = cfg.get("batch_size", 32)
    images = torch.randn(batch, 3, img, img)
    targets = torch.randint(0, 10, (batch,))
    model.train()

    def step():
        logits = net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.1)
        if not torch.isfinite(loss).item():
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    return {"images_per_s": args.steps * batch / elapsed, "first_step_s": first_step_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/digits_svmamba.yaml")
    p.add_argument("--src", nargs="+", default=[str(ROOT)], help="source trees to compare (first = baseline)")
    p.add_argument("--compile", nargs="+", default=["false"], choices=["false", "true"])
    p.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scan", help="B,D,H,W: time one scan (forward + backward) instead of training")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.compile = args.compile[0]
        print(json.dumps(scan_worker(args) if args.scan else worker(args)))
        return 0

    variants = [(src, c) for src in args.src for c in args.compile]
    results: dict[tuple[str, str], list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for src, comp in variants:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
            cmd = [sys.executable, __file__, "--worker", "--config", args.config, "--compile", comp]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--fullgraph"] if args.fullgraph else []
            cmd += ["--scan", args.scan] if args.scan else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(out.stdout + out.stderr, file=sys.stderr)
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[(src, comp)].append(res)
            print(
                f"round {r + 1}: src={src} compile={comp}: {res['images_per_s']:.1f} img/s "
                f"(first step {res['first_step_s']:.1f}s)",
                flush=True,
            )
    base = max(x["images_per_s"] for x in results[variants[0]])
    what = f"one scan of shape {args.scan}, forward + backward (samples/s)" if args.scan else args.config
    print(
        f"\n{what}, {args.steps} timed steps, best of {args.rounds} rounds, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    for v in variants:
        best = max(x["images_per_s"] for x in results[v])
        print(f"  src={v[0]} compile={v[1]}: {best:.1f} img/s  ({best / base:.2f}x the first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

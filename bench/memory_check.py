"""Memory-lean training, side by side: saved bytes per image and training speed, old vs new.

    OMP_NUM_THREADS=1 python bench/memory_check.py bytes   # svmamba_cifar + qkformer_cifar, 32 px, T 4
    OMP_NUM_THREADS=1 python bench/memory_check.py speed   # the digits main job's model, steps/s

``bytes``: one training step per setting (memory_efficient False = the plain path, True = the
lean one), fp32 and bf16 autocast, saved-for-backward bytes per image
(:func:`svm_models.memory.profile_training_memory`), with the part the LIFs and the scan save
shown apart. ``speed``: the model of configs/digits_svmamba.yaml on batches of its size, both
settings from the same weights, timed in interleaved rounds of a fixed number of AdamW steps;
prints the per-round and median ratio lean / plain (> 1 = the lean path is slower).
Both run on any device (``--device cuda``; speed rows then synchronise).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
import yaml

import svm_models
from svm_models.memory import compare_memory_efficient, profile_training_memory
from svm_models.spike_layers import set_memory_efficient
from svm_models.training import config as C
from svm_models.training import engine

OTHERS = ("MultiStepLIF", "CrossScanSSM")  # saved by the LIF / scan ops themselves


def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def saved_bytes(args) -> None:
    print(
        f"saved for backward, MiB per image (batch {args.batch}, {args.img_size} px, T {args.T}, {args.device})"
    )
    print("| model | precision | plain | lean | lean / plain | of which LIF + scan (plain / lean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        torch.manual_seed(0)
        model = svm_models.create_model(name, num_classes=10, img_size=args.img_size, T=args.T).to(
            args.device
        )
        images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
        for precision in args.precisions:
            r = compare_memory_efficient(model, images, precision)
            old, new = r[False], r[True]
            others = [
                sum(v for k, v in x.by_module.items() if k in OTHERS) / x.batch_size for x in (old, new)
            ]
            print(
                f"| {name} | {precision} | {mib(old.saved_bytes_per_image)} | {mib(new.saved_bytes_per_image)} "
                f"| {new.saved_bytes / old.saved_bytes:.3f} | {mib(others[0])} / {mib(others[1])} |"
            )
            if args.recompute_scan and name.startswith("svmamba"):
                torch.manual_seed(0)
                rs = svm_models.create_model(
                    name, num_classes=10, img_size=args.img_size, T=args.T, recompute_scan=True
                ).to(args.device)
                r = profile_training_memory(rs, images, precision)
                rest = sum(v for k, v in r.by_module.items() if k in OTHERS) / r.batch_size
                print(
                    f"| {name} + recompute_scan | {precision} | {mib(old.saved_bytes_per_image)} | "
                    f"{mib(r.saved_bytes_per_image)} | {r.saved_bytes / old.saved_bytes:.3f} | "
                    f"{mib(others[0])} / {mib(rest)} |"
                )


def _steps(model, opt, batches, device) -> float:
    t0 = time.perf_counter()
    for images, targets in batches:
        loss = F.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def speed(args) -> None:
    cfg = C.load_config(args.config)
    torch.manual_seed(0)
    for item in args.model_arg:
        key, value = item.split("=", 1)
        cfg["model_args"][key] = yaml.safe_load(value)
    lean = engine.build_model(cfg, 10).to(args.device)
    plain = set_memory_efficient(copy.deepcopy(lean), False)
    for m in plain.modules():  # the plain path recomputes nothing
        if hasattr(m, "recompute_scan"):
            m.recompute_scan = False
    set_memory_efficient(lean, True)
    size, bs = engine.img_size_of(cfg), cfg["batch_size"]
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(bs, 3, size, size, generator=gen), torch.randint(0, 10, (bs,), generator=gen))
        for _ in range(args.steps)
    ]
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    runs = {}
    for key, model in (("plain", plain), ("lean", lean)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        _steps(model, opt, batches[:2], args.device)  # warm-up
        runs[key] = (model, opt)
    ratios, times = [], {"plain": [], "lean": []}
    print(
        f"{cfg['model']} {cfg['model_args']}, {size} px, batch {bs}, T {cfg['T']}: {args.steps} steps per round"
    )
    for r in range(args.rounds):
        order = ("plain", "lean") if r % 2 == 0 else ("lean", "plain")
        t = {key: _steps(*runs[key], batches, args.device) for key in order}
        ratios.append(t["lean"] / t["plain"])
        for key in t:
            times[key].append(t[key])
        if args.verbose:
            print(
                f"round {r}: plain {t['plain']:.3f} s, lean {t['lean']:.3f} s, lean / plain {ratios[-1]:.3f}"
            )
    med = {key: statistics.median(v) for key, v in times.items()}
    print(
        f"{args.rounds} rounds: median plain {med['plain']:.3f} s, lean {med['lean']:.3f} s; "
        f"ratio of medians {med['lean'] / med['plain']:.3f}, median of ratios {statistics.median(ratios):.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("bytes", "speed"))
    p.add_argument("--models", nargs="+", default=["svmamba_cifar", "qkformer_cifar"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--config", default="configs/digits_svmamba.yaml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="print every round")
    p.add_argument(
        "--recompute-scan", action="store_true", help="bytes: add SVMamba rows with recompute_scan=True"
    )
    p.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=VALUE", help="speed: model override"
    )
    args = p.parse_args()
    saved_bytes(args) if args.what == "bytes" else speed(args)


if __name__ == "__main__":
    main()

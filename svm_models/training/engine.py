"""The training engine behind train.py: model/data building, the epoch loop, evaluation.

Reproducibility: every epoch reseeds (Python, NumPy, torch, the sampler) from ``seed + epoch``,
so the randomness of epoch e does not depend on how the run got there, and ``--resume`` from
``last.pt`` continues exactly as if the run had never stopped (bit for bit on the CPU).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import data as D
from . import distributed as dist_utils
from .checkpoint import atomic_save, load_file, load_weights
from .config import ConfigError, pretrained_path, run_dir
from .history import plot_curves, write_csv
from .optim import build_optimizer, build_scheduler

CHECKPOINT_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/inf loss (or weights); nothing was saved for the failing epoch."""


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def img_size_of(cfg: dict[str, Any]) -> int:
    return cfg["img_size"] or D.dataset_info(cfg["dataset"]).default_img_size


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``svm_models.create_model(model, num_classes, img_size, T=..., **model_args)``."""
    import svm_models

    if cfg["model"] not in svm_models.list_models():
        raise ConfigError(
            f"unknown model {cfg['model']!r}; registered models: {', '.join(svm_models.list_models())}"
        )
    args = dict(cfg["model_args"])
    if cfg["T"] is not None:
        args["T"] = cfg["T"]
    in_chans = D.dataset_info(cfg["dataset"]).in_chans
    if in_chans != 3:  # event data: 2 polarity channels (models default to 3)
        args.setdefault("in_chans", in_chans)
    try:
        return svm_models.create_model(
            cfg["model"], num_classes=num_classes, img_size=img_size_of(cfg), **args
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build model {cfg['model']!r} with these settings: {e}") from None


def build_split(cfg: dict[str, Any], split: str, augment: bool | None = None) -> Dataset:
    if augment is None:
        augment = cfg["augment"]
    return D.build_dataset(
        cfg["dataset"],
        split,
        root=cfg["root_path"],
        img_size=img_size_of(cfg),
        augment=augment and split == "train",
        T=cfg["T"],
    )


def per_process_batch(cfg: dict[str, Any], info: dist_utils.DistInfo) -> int:
    b = cfg["batch_size"]
    if b % info.world_size:
        raise ConfigError(
            f"'batch_size' ({b}) must be divisible by the number of processes ({info.world_size})"
        )
    return b // info.world_size


def train_loader(ds: Dataset, cfg: dict[str, Any], info: dist_utils.DistInfo) -> DataLoader:
    """Shuffled by a DistributedSampler (also for one process): the order is a function of
    (seed, epoch) only. The last incomplete batch is dropped when there are at least two full ones."""
    batch = per_process_batch(cfg, info)
    shard = math.ceil(len(ds) / info.world_size)
    sampler = DistributedSampler(
        ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg["seed"], drop_last=False
    )
    return DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg["workers"],
        pin_memory=info.device.type == "cuda",
        drop_last=shard >= 2 * batch,
        persistent_workers=False,
    )


def eval_loader(ds: Dataset, cfg: dict[str, Any], info: dist_utils.DistInfo) -> DataLoader:
    """Each process takes every world_size-th image (no padding, so the metrics are exact)."""
    if info.distributed:
        ds = Subset(ds, range(info.rank, len(ds), info.world_size))
    return DataLoader(
        ds,
        batch_size=per_process_batch(cfg, info),
        shuffle=False,
        num_workers=cfg["workers"],
        pin_memory=info.device.type == "cuda",
    )


def autocast(cfg: dict[str, Any], device: torch.device):
    if cfg["amp"] and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _all_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in unwrap(model).state_dict().values() if t.is_floating_point())


def batch_mixing(cfg: dict[str, Any], num_classes: int, epoch: int):
    """MixUp and/or CutMix on whole batches (soft targets), until ``mixup_off_epoch``; None if off."""
    if cfg["mixup_off_epoch"] is not None and epoch >= cfg["mixup_off_epoch"]:
        return None
    from torchvision.transforms import v2

    ops = []
    if cfg["mixup"] > 0:
        ops.append(v2.MixUp(alpha=cfg["mixup"], num_classes=num_classes))
    if cfg["cutmix"] > 0:
        ops.append(v2.CutMix(alpha=cfg["cutmix"], num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


# ----------------------------------------------------------------------------------------------
# one epoch / evaluation
# ----------------------------------------------------------------------------------------------
def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    cfg,
    info,
    epoch,
    num_classes,
    ema: AveragedModel | None = None,
    progress: bool = True,
) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    mixup = batch_mixing(cfg, num_classes, epoch)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = seen = 0
    t0 = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg['epochs']}",
        disable=not (progress and info.is_main),
        leave=True,
        dynamic_ncols=True,
        unit="batch",
    )
    for step, (images, targets) in enumerate(bar):
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        hard = targets
        if mixup is not None:
            images, targets = mixup(images, targets)
            hard = targets.argmax(dim=1)
        with autocast(cfg, info.device):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg["label_smoothing"])
        bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=info.device)
        if dist_utils.all_reduce_sum(bad, info).item() > 0:
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; training stopped, "
                "no checkpoint was written for this epoch (try a lower lr, clip_grad, or amp: false)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        n = images.shape[0]
        loss_sum += loss.detach().double().cpu() * n
        correct += (logits.argmax(dim=1) == hard).sum().item()
        seen += n
        if info.is_main:
            rate = seen * info.world_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                loss=f"{loss.item():.4f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{rate:.0f}",
                refresh=False,
            )
    bar.close()
    elapsed = time.perf_counter() - t0
    totals = torch.tensor([loss_sum.item(), correct, seen], dtype=torch.float64)
    totals = dist_utils.all_reduce_sum(totals, info)
    n_all = max(totals[2].item(), 1.0)
    return {
        "train_loss": totals[0].item() / n_all,
        "train_acc": 100.0 * totals[1].item() / n_all,
        "epoch_time_s": elapsed,
        "images_per_s": totals[2].item() / max(elapsed, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, cfg: dict[str, Any], info: dist_utils.DistInfo, num_classes: int
) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 accuracy in percent, over all processes."""
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1, top5, n
    for images, targets in loader:
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        with autocast(cfg, info.device):
            logits = model(images)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        sums[1] += hit[:, 0].sum().item()
        sums[2] += hit.any(dim=1).sum().item()
        sums[3] += targets.numel()
    sums = dist_utils.all_reduce_sum(sums, info)
    n = max(sums[3].item(), 1.0)
    return {
        "val_loss": sums[0].item() / n,
        "val_top1": 100.0 * sums[1].item() / n,
        "val_top5": 100.0 * sums[2].item() / n,
        "n": int(sums[3].item()),
    }


# ----------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------
def _log(info: dist_utils.DistInfo, msg: str) -> None:
    if info.is_main:
        from tqdm import tqdm

        tqdm.write(msg)


def fit(
    cfg: dict[str, Any],
    info: dist_utils.DistInfo | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` to completion (or continue from last.pt with ``resume``).

    Writes ``last.pt`` (every epoch), ``best.pt`` (when the validation top-1 improves),
    ``log.csv`` and ``curves.png`` under ``output_dir/task_name``. Returns a summary dict with
    the best accuracy, the history and the path of best.pt. ``on_epoch_end(epoch)`` is called
    after each epoch's files are written (tests use it to simulate a crash).
    """
    info = info or dist_utils.DistInfo()
    out = run_dir(cfg)
    last_path, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pt")
    if resume and not os.path.isfile(last_path):
        raise ConfigError(f"--resume: nothing to resume, {last_path} not found")

    seed_everything(cfg["seed"])
    train_ds = build_split(cfg, "train")
    val_ds = build_split(cfg, "val")
    classes = list(getattr(train_ds, "classes", []))
    num_classes = len(classes) if classes else D.num_classes(cfg["dataset"], cfg["root_path"])

    model = build_model(cfg, num_classes)
    if not resume:
        start = pretrained_path(cfg)
        if start:
            skipped, missing = load_weights(model, start, strict=False, what="pretrained weights")
            _log(
                info,
                f"loaded pretrained weights from {start} ({len(skipped)} skipped, {len(missing)} left as initialised)",
            )
    model.to(info.device)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
        if cfg["ema"] > 0
        else None
    )
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )

    loader = train_loader(train_ds, cfg, info)
    val_loader = eval_loader(val_ds, cfg, info)
    if len(loader) == 0:
        raise ConfigError(f"the training split is empty ({len(train_ds)} images)")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))

    start_epoch, best_acc, best_epoch, history, train_time = 0, -1.0, 0, [], 0.0
    if resume:
        ck = load_file(last_path, "checkpoint to resume")
        if not isinstance(ck, dict) or "optimizer" not in ck or "epoch" not in ck:
            raise ConfigError(f"{last_path} is not a training checkpoint")
        changed = [
            k
            for k in ("model", "dataset", "img_size", "model_args", "T", "batch_size", "epochs")
            if ck.get("config", {}).get(k) != cfg[k]
        ]
        if changed:
            raise ConfigError(
                f"--resume: the config differs from the one in {last_path} in {', '.join(changed)}"
            )
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ema is not None:
            if ck.get("ema") is None:
                raise ConfigError(f"--resume: {last_path} has no EMA weights but the config enables ema")
            ema.load_state_dict(ck["ema"])
        start_epoch, best_acc = int(ck["epoch"]), float(ck["best_acc"])
        best_epoch, history = int(ck.get("best_epoch", 0)), list(ck.get("history", []))
        train_time = float(ck.get("train_time_s", 0.0))
        _log(info, f"resuming from {last_path} after epoch {start_epoch} (best top-1 {best_acc:.2f}%)")

    n_params = sum(p.numel() for p in model.parameters())
    _log(
        info,
        f"{cfg['task_name']}: {cfg['model']} ({n_params / 1e6:.3f}M params) on {cfg['dataset']} "
        f"[{len(train_ds)} train / {len(val_ds)} val images, {num_classes} classes], "
        f"{info.world_size} process(es) on {info.device.type}, {len(loader)} steps/epoch",
    )

    for epoch in range(start_epoch, cfg["epochs"]):
        seed_everything(cfg["seed"] + 1000 * epoch + info.rank)
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            net, loader, optimizer, scheduler, cfg, info, epoch, num_classes, ema, progress
        )
        train_time += stats["epoch_time_s"]
        eval_model = ema.module if ema is not None else model
        dist_utils.broadcast_module(eval_model, info)  # every process evaluates rank 0's weights
        val = evaluate(eval_model, val_loader, cfg, info, num_classes)
        if not _all_finite(eval_model) or not _all_finite(model):
            raise NonFiniteLossError(
                f"the weights became non-finite during epoch {epoch + 1}; training stopped, "
                "no checkpoint was written for this epoch"
            )
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            **stats,
            **{k: v for k, v in val.items() if k != "n"},
        }
        history.append(row)
        improved = val["val_top1"] > best_acc
        if improved:
            best_acc, best_epoch = val["val_top1"], epoch + 1
        if info.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch + 1,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "config": dict(cfg),
                "history": history,
                "classes": classes,
                "num_classes": num_classes,
                "train_time_s": train_time,
                "version": CHECKPOINT_VERSION,
            }
            atomic_save(state, last_path)
            if improved:
                # best.pt holds the weights that were evaluated (the EMA ones when ema is on).
                atomic_save(dict(state, model=eval_model.state_dict()), best_path)
            write_csv(history, os.path.join(out, "log.csv"))
            plot_curves(
                history, os.path.join(out, "curves.png"), title=f"{cfg['task_name']} ({cfg['model']})"
            )
        _log(
            info,
            f"epoch {epoch + 1}/{cfg['epochs']}: train loss {stats['train_loss']:.4f} "
            f"acc {stats['train_acc']:.2f}% | val loss {val['val_loss']:.4f} top-1 {val['val_top1']:.2f}% "
            f"top-5 {val['val_top5']:.2f}% | {stats['images_per_s']:.0f} img/s, {stats['epoch_time_s']:.1f}s"
            + (" *best*" if improved else ""),
        )
        dist_utils.barrier(info)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    return {
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "history": history,
        "best_path": best_path,
        "last_path": last_path,
        "train_time_s": train_time,
        "num_classes": num_classes,
        "classes": classes,
        "model": model,
    }

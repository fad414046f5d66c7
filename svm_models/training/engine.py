"""The training engine behind train.py: model/data building, the epoch loop, evaluation.

Reproducibility: every epoch reseeds (Python, NumPy, torch, the sampler) from ``seed + epoch``,
so the randomness of epoch e does not depend on how the run got there, and ``--resume`` from
``last.pt`` continues exactly as if the run had never stopped (bit for bit on the CPU).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import data as D
from ..spike_layers import apply_memory_options
from . import compiling
from . import distributed as dist_utils
from .checkpoint import atomic_save, load_file, load_weights
from .config import SCHEMA, ConfigError, pretrained_path
from .history import plot_curves, write_csv
from .optim import build_optimizer, build_scheduler, stretch_schedule
from .rundir import RunDir

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
        model = svm_models.create_model(
            cfg["model"], num_classes=num_classes, img_size=img_size_of(cfg), **args
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build model {cfg['model']!r} with these settings: {e}") from None
    return apply_memory_options(model, cfg.get("memory_efficient"), bool(cfg.get("channels_last")))


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
        collate_fn=D.collate_skipping_unreadable,
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
        collate_fn=D.collate_skipping_unreadable,
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
    unreadable = D.unreadable_log(loader.dataset)
    first_step_s = 0.0
    for step, (images, targets) in enumerate(bar):
        if unreadable is not None:
            unreadable.poll()
        empty = targets.numel() == 0  # every image of the batch was unreadable (see data.images)
        if info.distributed and unreadable is not None:
            # every process skips the step together: DDP's backward and the loss check below are
            # collectives, which a process skipping alone would leave unmatched
            empty = dist_utils.all_reduce_sum(torch.tensor(float(empty)), info).item() > 0
        if empty:
            continue
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
            # (every process stops; the one printing may have had a finite loss itself)
            where = f"({loss.item()})" if bad.item() else "on another process"
            raise NonFiniteLossError(
                f"non-finite loss {where} at epoch {epoch + 1}, step {step + 1}; training stopped, "
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
        if step == 0:  # with compile: true, the first step also compiles the model
            first_step_s = time.perf_counter() - t0
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
        "first_step_s": first_step_s,
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
        if targets.numel() == 0:  # every image of the batch was unreadable (see data.images)
            continue
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
# the whole run, as named steps
# ----------------------------------------------------------------------------------------------
# Keys a --resume may change: where and how fast it runs, and `epochs` (extending the schedule;
# see optim.stretch_schedule). Any other difference from the checkpoint's config is refused.
RESUME_MAY_CHANGE = (
    "epochs",
    "workers",
    "device",
    "threads",
    "root_path",
    "output_dir",
    "pretrained",
    "checkpoint",
    "compile",
    "eval_every",
    "memory_efficient",  # the same results, only less memory
)


@dataclass
class Training:
    """What the epochs of one run work on."""

    model: nn.Module
    net: nn.Module  # the model, DDP-wrapped under torchrun
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    classes: list[str]
    first_epoch: int = 0  # of this process: 0, or where a --resume continues

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Progress:
    """What a checkpoint carries from one epoch to the next."""

    epoch: int = 0  # epochs done
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0
    planned_epochs: int | None = None  # on --resume: the epochs the checkpoint's run was planned for


def _log(info: dist_utils.DistInfo, msg: str, run: RunDir | None = None) -> None:
    if info.is_main:
        from tqdm import tqdm

        tqdm.write(msg)
        if run is not None:
            run.log(msg)


def open_run_dir(cfg: dict[str, Any], info: dist_utils.DistInfo, resume: bool, overwrite: bool) -> RunDir:
    """Rank 0 claims the run directory (see :mod:`.rundir`); every rank gets its verdict."""
    run, error = RunDir(cfg, owner=info.is_main), None
    if info.is_main:
        try:
            for note in run.claim(cfg, resume, overwrite):
                _log(info, note, run)
        except ConfigError as e:
            error = str(e)
    error = dist_utils.broadcast_object(error, info)
    if error is not None:
        raise ConfigError(error)
    return run


def build_training(cfg: dict[str, Any], info: dist_utils.DistInfo, resume: bool, run: RunDir) -> Training:
    """Data, model (pretrained weights on a fresh start), EMA, DDP wrapper, optimizer, schedule."""
    train_ds, val_ds = build_split(cfg, "train"), build_split(cfg, "val")
    classes = list(getattr(train_ds, "classes", []))
    num_classes = len(classes) if classes else D.num_classes(cfg["dataset"], cfg["root_path"])
    model = build_model(cfg, num_classes)
    start = None if resume else pretrained_path(cfg)
    if start:
        skipped, missing = load_weights(model, start, strict=False, what="pretrained weights")
        _log(
            info,
            f"loaded pretrained weights from {start} ({len(skipped)} skipped, {len(missing)} left as initialised)",
            run,
        )
    model.to(info.device)
    ema = None
    if cfg["ema"] > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema"]), use_buffers=True)
    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    net = compiling.maybe_compile(net, cfg)
    loader = train_loader(train_ds, cfg, info)
    if len(loader) == 0:
        raise ConfigError(f"the training split is empty ({len(train_ds)} images)")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    val_loader = eval_loader(val_ds, cfg, info)
    return Training(model, net, ema, optimizer, scheduler, loader, val_loader, num_classes, classes)


def restore(t: Training, cfg: dict[str, Any], path: str) -> Progress:
    """Load last.pt into ``t``; the config may differ only in :data:`RESUME_MAY_CHANGE` (workers
    not with augment), and may not end the run at an epoch that was not validated."""
    ck = load_file(path, "checkpoint to resume")
    if not isinstance(ck, dict) or "optimizer" not in ck or "epoch" not in ck:
        raise ConfigError(f"{path} is not a training checkpoint")
    stored = ck.get("config", {})
    # with augment, the augmentations' random draws come from the DataLoader workers' seeds: a
    # run resumed with another number of workers would not continue as it would have
    may_change = [k for k in RESUME_MAY_CHANGE if not (k == "workers" and cfg["augment"])]
    changed = [k for k in SCHEMA if k not in may_change and stored.get(k, SCHEMA[k].default) != cfg[k]]
    if changed:
        raise ConfigError(f"--resume: the config differs from the one in {path} in {', '.join(changed)}")
    done, history = int(ck["epoch"]), list(ck.get("history", []))
    if cfg["epochs"] < done:
        raise ConfigError(f"--resume: epochs ({cfg['epochs']}) is below the {done} epochs {path} has done")
    if cfg["epochs"] == done and history and "val_top1" not in history[-1]:
        raise ConfigError(
            f"--resume: epochs ({done}) would end the run at epoch {done}, which was not validated "
            f"(eval_every {stored.get('eval_every', cfg['eval_every'])}); give more epochs"
        )
    t.model.load_state_dict(ck["model"])
    try:
        t.optimizer.load_state_dict(ck["optimizer"])
    except ValueError as e:  # parameter groups of other sizes: saved by code that grouped otherwise
        raise ConfigError(
            f"--resume: the optimizer state in {path} does not fit this code's parameter groups ({e}); "
            "it was saved by a version that grouped the weight decay differently: start the run again"
        ) from None
    t.scheduler.load_state_dict(ck["scheduler"])
    if cfg["epochs"] != stored.get("epochs", cfg["epochs"]):
        stretch_schedule(t.scheduler, cfg, len(t.loader))
    if t.ema is not None:
        if ck.get("ema") is None:
            raise ConfigError(f"--resume: {path} has no EMA weights but the config enables ema")
        t.ema.load_state_dict(ck["ema"])
    return Progress(
        int(ck["epoch"]),
        float(ck["best_acc"]),
        int(ck.get("best_epoch", 0)),
        history,
        float(ck.get("train_time_s", 0.0)),
        stored.get("epochs"),
    )


def check_unreadable(loader: DataLoader, split: str, seen: dict[str, str], info, run) -> int:
    """Warn once per unreadable file of ``loader``'s dataset; refuse a split where more than
    ``MAX_UNREADABLE_FRACTION`` was unreadable (counted over all processes, so that every process
    stops together). Returns the count of this epoch, over all processes."""
    log = D.unreadable_log(loader.dataset)
    if log is None:
        return 0
    found = dict(log.drain())
    for path, reason in found.items():
        if path not in seen:
            _log(info, f"warning: skipped unreadable image {path} ({reason})", run)
    seen.update(found)
    counts = torch.tensor([len(found), len(loader.sampler)], dtype=torch.float64)
    bad, total = (int(v) for v in dist_utils.all_reduce_sum(counts, info).tolist())
    D.check_unreadable_fraction(sorted(found), total, split, count=bad)
    return bad


def run_epoch(
    t: Training, cfg, info, epoch: int, progress: bool, seen: dict[str, str], run
) -> dict[str, Any]:
    """Train one epoch, then (every ``eval_every`` epochs and after the last) evaluate rank 0's
    weights on every process; the epoch's log row (without val_* keys when not evaluated)."""
    seed_everything(cfg["seed"] + 1000 * epoch + info.rank)
    t.loader.sampler.set_epoch(epoch)
    stats = train_one_epoch(
        t.net, t.loader, t.optimizer, t.scheduler, cfg, info, epoch, t.num_classes, t.ema, progress
    )
    if cfg["compile"] and epoch == t.first_epoch:
        _log(
            info,
            f"torch.compile: the first training step took {stats['first_step_s']:.1f}s (compilation)",
            run,
        )
    skipped = check_unreadable(t.loader, "train", seen, info, run)
    val = {}
    if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
        dist_utils.broadcast_module(t.eval_model, info)  # every process evaluates rank 0's weights
        val = evaluate(t.eval_model, t.val_loader, cfg, info, t.num_classes)
        skipped += check_unreadable(t.val_loader, "val", seen, info, run)
    if skipped:
        _log(info, f"epoch {epoch + 1}: {skipped} unreadable image(s) skipped", run)
    if not _all_finite(t.eval_model) or not _all_finite(t.model):
        raise NonFiniteLossError(
            f"the weights became non-finite during epoch {epoch + 1}; training stopped, "
            "no checkpoint was written for this epoch"
        )
    lr = t.optimizer.param_groups[0]["lr"]
    return {"epoch": epoch + 1, "lr": lr, **stats, **{k: v for k, v in val.items() if k != "n"}}


def save_epoch(run: RunDir, t: Training, p: Progress, cfg: dict[str, Any], improved: bool) -> None:
    """last.pt, best.pt (on improvement: the evaluated weights, EMA ones when ema is on), log, curves."""
    state = {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "epoch": p.epoch,
        "best_acc": p.best_acc,
        "best_epoch": p.best_epoch,
        "config": dict(cfg),
        "history": p.history,
        "classes": t.classes,
        "num_classes": t.num_classes,
        "train_time_s": p.train_time,
        "version": CHECKPOINT_VERSION,
    }
    # best.pt first: a crash between the two saves replays the epoch from the previous last.pt
    # and writes best.pt again (the other order left a last.pt counting a best.pt never written)
    if improved:
        atomic_save(dict(state, model=t.eval_model.state_dict()), run.file("best.pt"))
    atomic_save(state, run.file("last.pt"))
    write_csv(p.history, run.file("log.csv"))
    if improved or p.epoch == cfg["epochs"]:  # rendering costs more than the csv: not every epoch
        plot_curves(p.history, run.file("curves.png"), title=f"{cfg['task_name']} ({cfg['model']})")


def epoch_line(row: dict[str, Any], cfg: dict[str, Any], improved: bool) -> str:
    val = (
        f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%"
        if "val_top1" in row
        else "not validated (eval_every)"
    )
    return (
        f"epoch {row['epoch']}/{cfg['epochs']}: train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2f}% | {val} | {row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f}s"
        + (" *best*" if improved else "")
    )


def announce(t: Training, p: Progress, cfg: dict[str, Any], info, resume: bool, run: RunDir) -> None:
    if resume:
        last = run.file("last.pt")
        _log(info, f"resuming from {last} after epoch {p.epoch} (best top-1 {p.best_acc:.2f}%)", run)
        if p.planned_epochs is not None and p.planned_epochs != cfg["epochs"]:
            # (the file's epochs, when the first run had --epochs: a plain --resume changes the length)
            _log(
                info,
                f"note: the run was planned for {p.planned_epochs} epochs and now ends after {cfg['epochs']}; "
                f"the learning rate follows the cosine of {cfg['epochs']} epochs from here",
                run,
            )
    n_params = sum(x.numel() for x in t.model.parameters())
    _log(
        info,
        f"{cfg['task_name']}: {cfg['model']} ({n_params / 1e6:.3f}M params) on {cfg['dataset']} "
        f"[{len(t.loader.dataset)} train / {len(getattr(t.val_loader.dataset, 'dataset', t.val_loader.dataset))} val images, {t.num_classes} classes], "
        f"{info.world_size} process(es) on {info.device} ({torch.get_num_threads()} CPU thread(s) each), "
        f"{len(t.loader)} steps/epoch",
        run,
    )


def fit(
    cfg: dict[str, Any],
    info: dist_utils.DistInfo | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` to completion (or continue from last.pt with ``resume``).

    Claims ``output_dir/task_name`` first (:mod:`.rundir`: refused if it holds a run, unless
    ``resume`` or ``overwrite``); once the data and model are built (and the checkpoint accepted,
    on ``resume``), writes ``config.yaml`` and ``train.log`` (``overwrite`` deletes the previous
    run's files only then), then ``last.pt`` (every epoch), ``best.pt`` (when the validation
    top-1 improves), ``log.csv`` and ``curves.png``.
    Returns a summary dict with the best accuracy, the history and the path of best.pt.
    ``on_epoch_end(epoch)`` is called after each epoch's files are written (tests use it to
    simulate a crash).
    """
    info = info or dist_utils.DistInfo()
    run = open_run_dir(cfg, info, resume, overwrite)
    try:
        seed_everything(cfg["seed"])
        t = build_training(cfg, info, resume, run)
        p = restore(t, cfg, run.file("last.pt")) if resume else Progress()
        for note in run.commit(cfg):  # only now: --overwrite's deletion, config.yaml, train.log
            _log(info, note, run)
        t.first_epoch = p.epoch
        announce(t, p, cfg, info, resume, run)
        unreadable: dict[str, str] = {}
        for epoch in range(p.epoch, cfg["epochs"]):
            row = run_epoch(t, cfg, info, epoch, progress, unreadable, run)
            p.history.append(row)
            p.epoch, p.train_time = epoch + 1, p.train_time + row["epoch_time_s"]
            improved = row.get("val_top1", -1.0) > p.best_acc
            if improved:
                p.best_acc, p.best_epoch = row["val_top1"], epoch + 1
            if info.is_main:
                save_epoch(run, t, p, cfg, improved)
            _log(info, epoch_line(row, cfg, improved), run)
            dist_utils.barrier(info)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    except (ConfigError, D.DataError, NonFiniteLossError) as e:
        run.log(f"error: {e}")
        raise
    finally:
        run.close()
    return summary(run, t, p)


def summary(run: RunDir, t: Training, p: Progress) -> dict[str, Any]:
    return {
        "best_acc": p.best_acc,
        "best_epoch": p.best_epoch,
        "history": p.history,
        "best_path": run.file("best.pt"),
        "last_path": run.file("last.pt"),
        "train_time_s": p.train_time,
        "num_classes": t.num_classes,
        "classes": t.classes,
        "model": t.model,
    }

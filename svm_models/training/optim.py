"""AdamW with the usual decay grouping, and a per-iteration linear-warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def param_groups(model: nn.Module, weight_decay: float, scan_decay: bool = False) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and undecayed biases / 1-D parameters (norms, D skips) plus
    anything a model lists in ``no_weight_decay()`` (timm's convention) or, unless ``scan_decay``,
    a module in its ``NO_WEIGHT_DECAY`` (the scan's A_logs, Ds and dt bias: Mamba's convention).

    ``scan_decay=True`` is VMamba's classification recipe: its optimiser reads no such marks, so
    the 2-D A_logs (4D, N) and dt_projs_bias (4, D) are decayed like weights (Ds, 1-D, is not)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    for prefix, module in model.named_modules():
        marked = () if scan_decay else getattr(module, "NO_WEIGHT_DECAY", ())
        skip.update(f"{prefix}.{n}" if prefix else n for n in marked)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# Devices with a fused (one kernel per step for all parameters) AdamW in every supported torch.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; the fused implementation where the parameters' device has
    one (the same update; on the CPU the per-parameter loop of small ops costs more than the math)."""
    groups = param_groups(model, cfg["weight_decay"], bool(cfg.get("scan_weight_decay")))
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = True if devices and devices <= set(FUSED_ADAMW_DEVICES) else None
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], steps_per_epoch: int
) -> LRScheduler:
    """Stepped once per iteration: linear from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then a
    cosine from ``lr`` down to ``min_lr`` at the last iteration."""
    total, warmup = _schedule_steps(cfg, steps_per_epoch)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=cfg["min_lr"])
    if warmup == 0:
        return cosine
    linear = LinearLR(
        optimizer, start_factor=cfg["warmup_lr"] / cfg["lr"], end_factor=1.0, total_iters=warmup
    )
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def _schedule_steps(cfg: dict[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """(total iterations, warmup iterations) of a run."""
    total = max(1, cfg["epochs"] * steps_per_epoch)
    return total, min(round(cfg["warmup_epochs"] * steps_per_epoch), total - 1)


def stretch_schedule(scheduler: LRScheduler, cfg: dict[str, Any], steps_per_epoch: int) -> None:
    """After loading a resumed scheduler whose run had fewer ``epochs``: the remaining iterations
    follow the cosine of this config's length, as if the run had been planned for it from the
    start (so the learning rate rises again when a finished run is extended)."""
    total, warmup = _schedule_steps(cfg, steps_per_epoch)
    cosine = scheduler._schedulers[-1] if isinstance(scheduler, SequentialLR) else scheduler
    cosine.T_max = max(1, total - warmup)
    if isinstance(scheduler, SequentialLR) and scheduler.last_epoch < warmup:
        return  # still warming up: the cosine starts later, from the peak, with the new length
    t = cosine.last_epoch
    lrs = [
        cosine.eta_min + (base - cosine.eta_min) * (1 + math.cos(math.pi * t / cosine.T_max)) / 2
        for base in cosine.base_lrs
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    cosine._last_lr = scheduler._last_lr = lrs

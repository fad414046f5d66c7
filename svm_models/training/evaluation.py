"""Test-time evaluation (test.py, and the end of train.py): top-1/top-5 on the test split, then the
energy accounting report (params, MACs, SOPs, energy per image, per-layer firing rates), printed
as a table and written as JSON and PNG next to the checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import compiling
from . import distributed as dist_utils
from .checkpoint import atomic_write_text, extract_state_dict, load_file, load_state, write_error
from .config import ConfigError, require_file, run_dir
from .engine import build_model, build_split, check_unreadable, eval_loader, evaluate, img_size_of

ACCOUNTING_IMAGES = 512  # test images the accounting pass averages the firing rates over (at most)
# The reports give the papers' convention and this hardware model (memory traffic included).
ACCOUNTING_PRESET = "hw_45nm_fp32"


def default_checkpoint(cfg: dict[str, Any]) -> str:
    return os.path.join(run_dir(cfg), "best.pt")


# What a checkpoint of train.py must agree on with the config that evaluates it: the weights
# may load under another dataset (its normalisation, its classes), img_size, T or model_args and
# then give silently wrong accuracy.
MUST_MATCH = ("model", "dataset", "img_size", "T", "model_args")


def config_mismatch(cfg: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """The :data:`MUST_MATCH` keys where ``cfg`` differs from a checkpoint's stored config (an
    empty or absent stored config -- a bare weights file -- has nothing to compare)."""
    if not isinstance(stored, dict) or "model" not in stored:
        return []
    differ = []
    for k in MUST_MATCH:
        mine, theirs = cfg[k], stored.get(k)
        if k == "img_size":  # null means the dataset's own size
            mine, theirs = img_size_of(cfg), img_size_of({**cfg, **stored})
        elif k == "model_args":
            theirs = theirs or {}
        if mine != theirs:
            differ.append(f"{k} {mine!r} (checkpoint: {theirs!r})")
    return differ


def load_trained_model(
    cfg: dict[str, Any],
    checkpoint: str | None = None,
    device: torch.device = torch.device("cpu"),
    allow_mismatch: bool = False,
):
    """Build the config's model and load trained weights (strictly).

    Weights: ``checkpoint`` if given, else the config's ``checkpoint`` (unless ``pretrained:
    true``, where it names the weights training started from), else
    ``output_dir/task_name/best.pt``. Returns (model in eval mode, path, metadata dict).
    The metadata holds ``classes`` / ``num_classes`` when the file is a checkpoint of train.py.
    A checkpoint of train.py whose config differs in :data:`MUST_MATCH` is refused unless
    ``allow_mismatch``.
    """
    trained = None if cfg["pretrained"] is True else cfg["checkpoint"]
    path = checkpoint or trained or default_checkpoint(cfg)
    require_file(
        path,
        "checkpoint"
        if (checkpoint or trained)
        else "checkpoint (the config names no trained weights, so the run's best.pt; train first)",
    )
    obj = load_file(path, "checkpoint")
    state = extract_state_dict(obj, path)
    meta = obj if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) else {}
    differ = config_mismatch(cfg, meta.get("config"))
    if differ and not allow_mismatch:
        raise ConfigError(
            f"the config does not match checkpoint {path}: {'; '.join(differ)}; "
            "fix the config or pass --allow-mismatch"
        )
    num_classes = meta.get("num_classes")
    if num_classes is None:  # a bare state_dict: the dataset decides, or the classifier's shape
        from .. import data as D

        try:
            num_classes = D.num_classes(cfg["dataset"], cfg["root_path"])
        except D.DataError:
            heads = [v for k, v in state.items() if k.endswith("head.weight")]
            if not heads:
                raise
            num_classes = heads[-1].shape[0]
    model = build_model(cfg, int(num_classes))
    load_state(model, state, strict=True, source=f"checkpoint {path}")
    return model.to(device).eval(), path, meta


def accounting_report(model: nn.Module, loader, cfg: dict[str, Any]):
    """``svm_models.accounting.profile`` over up to ACCOUNTING_IMAGES test images."""
    from .. import accounting

    return accounting.profile(
        model, _first_images(loader, ACCOUNTING_IMAGES), name=cfg["model"], preset=ACCOUNTING_PRESET
    )


def _first_images(loader, n: int):
    """The loader's (images, labels) batches up to n images, the last one cut to fit (a batch
    of unreadable images is empty: skipped)."""
    for x, y in loader:
        if n <= 0:
            return
        if y.numel():
            yield x[:n], y[:n]
            n -= len(y)


def console(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """print, and hand the line to ``log`` too (train.py's train.log)."""

    def say(line: str) -> None:
        print(line, flush=True)
        if log is not None:
            log(line)

    return say


def run_test(
    cfg: dict[str, Any],
    model: nn.Module,
    checkpoint_path: str,
    info: dist_utils.DistInfo | None = None,
    out_dir: str | None = None,
    num_classes: int | None = None,
    prefix: str = "test",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 on the test split and the accounting report (firing rates over up to
    ACCOUNTING_IMAGES test images).

    Writes ``<out_dir>/<prefix>_report.json`` (accuracy + accounting) and
    ``<out_dir>/<prefix>_report.png``; prints the accuracy and the report table. Returns the dict
    that went into the JSON.
    """
    info = info or dist_utils.DistInfo(device=next(model.parameters()).device)
    out_dir = out_dir or run_dir(cfg)
    try:  # before the evaluation, not after it: a folder that cannot be made is one error line
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise write_error(out_dir, e, "the report folder") from None
    ds = build_split(cfg, "test", augment=False)
    labels = len(getattr(ds, "classes", None) or [])
    num_classes = num_classes or getattr(model, "num_classes", None) or labels
    if labels and num_classes and labels > num_classes:  # (--allow-mismatch let another dataset in)
        raise ConfigError(
            f"the model predicts {num_classes} classes but the {cfg['dataset']} test split has {labels}: "
            "evaluate it on the dataset it was trained for"
        )
    loader = eval_loader(ds, cfg, info)
    acc = evaluate(compiling.maybe_compile(model, cfg), loader, cfg, info, num_classes)
    # unreadable test images: each named, and more than MAX_UNREADABLE_FRACTION refused, as in training
    skipped = check_unreadable(loader, "test", {}, info, None)
    result: dict[str, Any] = {
        "task_name": cfg["task_name"],
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "checkpoint": checkpoint_path,
        "test_images": acc["n"],
        "unreadable_skipped": skipped,
        "top1": round(acc["val_top1"], 4),
        "top5": round(acc["val_top5"], 4),
        "loss": round(acc["val_loss"], 6),
    }
    say = console(log)
    say(
        f"{cfg['task_name']}: {cfg['model']} on {cfg['dataset']} test split ({acc['n']} images): "
        f"top-1 {acc['val_top1']:.2f}%  top-5 {acc['val_top5']:.2f}%"
    )

    report = accounting_report(model, loader, cfg)
    say(report.to_markdown())
    result["accounting"] = json.loads(report.to_json())
    json_path = os.path.join(out_dir, f"{prefix}_report.json")
    png_path = os.path.join(out_dir, f"{prefix}_report.png")
    atomic_write_text(json.dumps(result, indent=2) + "\n", json_path)
    report.plot(png_path)
    say(f"wrote {json_path} and {png_path}")
    result["json_path"], result["png_path"] = json_path, png_path
    return result

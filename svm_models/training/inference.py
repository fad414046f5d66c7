"""predict.py's work: top-k classes for every image file in a folder.

Class names come from a class2index JSON (``{"0": ["n01532829", "house_finch"], ...}``, as the
original project's Mini-ImageNet file), else from the names stored in the checkpoint by
train.py, else from the dataset's own metadata. A file PIL cannot read is reported and skipped;
the others are still predicted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import ConfigError, require_dir, require_file


def read_class_index(path: str, num_classes: int | None = None) -> list[str]:
    """Class names from a class2index JSON, indexed by class number.

    Each value is ``[wnid, name]`` (shown as ``name (wnid)``), a one-element list, or a string.
    """
    require_file(path, "class index json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read class index json {path}: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f'class index json {path}: expected a mapping like {{"0": ["n01532829", "house_finch"], ...}}'
        )
    names: dict[int, str] = {}
    for k, v in raw.items():
        try:
            idx = int(k)
        except ValueError:
            raise ConfigError(f"class index json {path}: key {k!r} is not a class number") from None
        if isinstance(v, str):
            names[idx] = v
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v):
            names[idx] = f"{v[1]} ({v[0]})"
        elif isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            names[idx] = v[0]
        else:
            raise ConfigError(f"class index json {path}: entry {k!r} must be [id, name] or a name, got {v!r}")
    n = num_classes if num_classes is not None else max(names) + 1
    missing = [i for i in range(n) if i not in names]
    if missing:
        raise ConfigError(
            f"class index json {path}: no name for class(es) {missing[:5]} (the model has {n} classes)"
        )
    return [names[i] for i in range(n)]


def class_names(
    cfg: dict[str, Any], meta: dict[str, Any], num_classes: int, class_index_json: str | None = None
) -> list[str]:
    if class_index_json:
        return read_class_index(class_index_json, num_classes)
    stored = meta.get("classes")
    if stored and len(stored) == num_classes:
        return [str(c) for c in stored]
    from .. import data as D

    try:
        names = D.dataset_classes(cfg["dataset"], cfg["root_path"])
        if len(names) == num_classes:
            return names
    except D.DataError:
        pass
    return [str(i) for i in range(num_classes)]


def list_files(folder: str) -> list[str]:
    """The files directly in ``folder`` (not recursive), sorted by name; hidden files are left out."""
    require_dir(folder, "image folder")
    return sorted(
        os.path.join(folder, e.name) for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
    )


def _open(path: str):
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode fully now, so a truncated file fails here
        return im.convert("RGB")


@torch.no_grad()
def predict_files(
    model: nn.Module,
    files: Sequence[str],
    transform,
    classes: Sequence[str],
    topk: int = 5,
    batch_size: int = 32,
    device: torch.device = torch.device("cpu"),
) -> tuple[list[dict], list[dict]]:
    """Returns (predictions, skipped). Each prediction is
    ``{"file", "top": [{"rank", "class_index", "class", "prob"}, ...]}``; each skipped entry is
    ``{"file", "error"}``."""
    model.eval()
    k = max(1, min(topk, len(classes)))
    preds, skipped = [], []
    tensors: list[tuple[str, torch.Tensor]] = []
    for path in files:
        try:
            tensors.append((path, transform(_open(path))))
        except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), ...
            skipped.append(
                {"file": path, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            )
    for i in range(0, len(tensors), batch_size):
        chunk = tensors[i : i + batch_size]
        x = torch.stack([t for _, t in chunk]).to(device)
        probs = model(x).float().softmax(dim=1).cpu()
        p, idx = probs.topk(k, dim=1)
        for (path, _), pr, ix in zip(chunk, p.tolist(), idx.tolist()):
            preds.append(
                {
                    "file": path,
                    "top": [
                        {"rank": r + 1, "class_index": c, "class": classes[c], "prob": round(q, 6)}
                        for r, (q, c) in enumerate(zip(pr, ix))
                    ],
                }
            )
    return preds, skipped


def format_table(preds: list[dict]) -> str:
    """A plain-text table: one line per image and rank."""
    rows = [("file", "rank", "class", "prob")]
    for p in preds:
        for t in p["top"]:
            rows.append(
                (
                    os.path.basename(p["file"]) if t["rank"] == 1 else "",
                    str(t["rank"]),
                    f"{t['class_index']}: {t['class']}",
                    f"{t['prob']:.4f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

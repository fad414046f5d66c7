"""predict.py's work: top-k classes for every image file in a folder.

Class names come from a class2index JSON (``{"0": ["n01532829", "house_finch"], ...}``, as the
original project's Mini-ImageNet file), else from the names stored in the checkpoint by
train.py, else from the dataset's own metadata. A file PIL cannot read is reported and skipped;
the others are still predicted.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import data as D
from .config import ConfigError, require_dir, require_file


def read_class_index(path: str, num_classes: int | None = None) -> list[tuple[str | None, str]]:
    """(wnid or None, shown name) per class number of a class2index JSON.

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
    names: dict[int, tuple[str | None, str]] = {}
    for k, v in raw.items():
        try:
            idx = int(k)
        except ValueError:
            raise ConfigError(f"class index json {path}: key {k!r} is not a class number") from None
        if isinstance(v, str):
            names[idx] = (None, v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v):
            names[idx] = (v[0], f"{v[1]} ({v[0]})")
        elif isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            names[idx] = (None, v[0])
        else:
            raise ConfigError(f"class index json {path}: entry {k!r} must be [id, name] or a name, got {v!r}")
    n = num_classes if num_classes is not None else max(names) + 1
    missing = [i for i in range(n) if i not in names]
    if missing:
        raise ConfigError(
            f"class index json {path}: no name for class(es) {missing[:5]} (the model has {n} classes)"
        )
    extra = sorted(i for i in names if not 0 <= i < n)
    if extra:
        raise ConfigError(
            f"class index json {path}: {len(names)} names for a model of {n} classes "
            f"(no class {', '.join(map(str, extra[:5]))}); is it the file of another dataset?"
        )
    return [names[i] for i in range(n)]


def class_names(
    cfg: dict[str, Any], meta: dict[str, Any], num_classes: int, class_index_json: str | None = None
) -> list[str]:
    stored = meta.get("classes")
    if class_index_json:
        entries = read_class_index(class_index_json, num_classes)
        if stored and len(stored) == num_classes:
            # the checkpoint knows its classes (folder names, e.g. wnids): a file naming the same
            # ones must put them in the same order (ids of its own, e.g. "d0" for digits' "0", relabel);
            # an entry that is only a name ("n01532829", ["n01532829"]) is its own id
            known = {str(c) for c in stored}
            ids = [wnid if wnid is not None else shown for wnid, shown in entries]
            wrong = [i for i, k in enumerate(ids) if k in known and k != str(stored[i])]
            if wrong:
                i = wrong[0]
                raise ConfigError(
                    f"class index json {class_index_json}: class {i} is {ids[i]!r} there but "
                    f"{stored[i]!r} in the checkpoint ({len(wrong)} of {num_classes} differ); "
                    "is it the file of another dataset or class order?"
                )
        return [shown for _, shown in entries]
    if stored and len(stored) == num_classes:
        return [str(c) for c in stored]
    try:
        names = D.dataset_classes(cfg["dataset"], cfg["root_path"])
        if len(names) == num_classes:
            return names
    except D.DataError:
        pass
    return [str(i) for i in range(num_classes)]


def _not_a_file(path: str) -> str | None:
    """Why ``path`` cannot be read as a file (following symlinks), or None if it can."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return f"dangling symlink to {os.readlink(path)}"
        return f"cannot stat: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "a directory (folders are not searched)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def list_files(folder: str) -> tuple[list[str], list[dict]]:
    """The entries directly in ``folder`` (not recursive; hidden ones left out), sorted by name:
    (readable files, skipped entries ``{"file", "error"}`` such as directories, symlink loops,
    dangling symlinks)."""
    require_dir(folder, "image folder")
    try:
        names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    except OSError as e:
        raise ConfigError(f"cannot list image folder {folder}: {e.strerror}") from None
    files, skipped = [], []
    for name in names:
        path = os.path.join(folder, name)
        reason = _not_a_file(path)
        if reason is None:
            files.append(path)
        else:
            skipped.append({"file": path, "error": reason})
    return files, skipped


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
    for i in range(0, len(files), batch_size):  # decoded a batch at a time: memory of one batch
        chunk: list[tuple[str, torch.Tensor]] = []
        for path in files[i : i + batch_size]:
            try:
                chunk.append((path, transform(D.open_rgb(path))))
            except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), ...
                skipped.append({"file": path, "error": D.describe_error(e, path)})
        if not chunk:
            continue
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

"""Checkpoints: atomic writes, safe loads (``weights_only=True``), flexible weight files.

A training checkpoint is a dict ``{model, optimizer, scheduler, epoch, best_acc, config, ...}``.
Weight files given as ``pretrained`` / ``checkpoint`` may also be a bare state_dict or a dict
holding it under ``model`` or ``state_dict``; a ``module.`` prefix (DDP) is stripped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import textwrap
import zipfile
from collections.abc import Callable
from typing import IO, Any

import torch
from torch import nn

from .config import ConfigError


class SaveError(ConfigError):
    """A file of the run could not be written (disk full, read-only, a file in the way).

    Shown as one ``error:`` line, exit status 2; the previous version of the file is intact."""


def write_error(path: str, e: OSError, what: str = "") -> SaveError:
    reason = e.strerror or str(e) or type(e).__name__
    return SaveError(f"cannot write {what + ' ' if what else ''}{path}: {reason}")


def _umask() -> int:
    mask = os.umask(0o022)  # (the only way to read it: set and restore)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write: Callable[[IO], None], binary: bool) -> None:
    """Write through ``write(f)`` to a temporary file in the same folder, fsync, then rename.

    A crash at any point leaves either the old file or the new one, never a torn file (a kill
    can leave the temporary ``.<name>.*.tmp``, which the next run start deletes). An OSError
    becomes a :class:`SaveError`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        if os.path.exists(folder) and not os.path.isdir(folder):  # (makedirs: "File exists")
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_binary(path: str, write: Callable[[IO], None]) -> None:
    """Call ``write(f)`` on a binary file that atomically becomes ``path`` (e.g. ``savefig``)."""
    _atomic_write(path, write, binary=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _load_failure(path: str, e: Exception) -> str:
    """Why torch.load failed, as one readable clause (no ANSI colours, no cut sentence)."""
    text = " ".join(_ANSI.sub("", str(e)).split())
    # Safe loading words every failure as a weights_only refusal, a text file's too: only a zip
    # archive (torch.save) or a pickle (protocol 2+, the legacy format) can hold such objects.
    if isinstance(e, pickle_errors()) and "weights_only" in text.lower() and _pickled(path):
        found = re.search(
            r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+|Unsupported operand \S+)", text
        )
        detail = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects beyond tensors{detail}, which safe loading (weights_only) refuses; "
            "re-save the state_dict alone if you trust the file"
        )
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    first = text.split(". ")[0]  # torch's messages continue with a paragraph of advice
    if not zipfile.is_zipfile(path):
        detail = textwrap.shorten(first, 100, placeholder=" ...")  # (at a word)
        return f"not a PyTorch checkpoint, or a truncated one ({type(e).__name__}: {detail})"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _pickled(path: str) -> bool:
    """Whether the file is a zip archive or starts as a pickle of protocol 2 or later does."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def pickle_errors() -> tuple[type[Exception], ...]:
    import pickle

    return (pickle.UnpicklingError,)


def load_file(path: str, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        if os.path.getsize(path) == 0:
            raise EOFError
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals, empty file
        raise ConfigError(f"cannot load {what} {path}: {_load_failure(path, e)}") from None


def extract_state_dict(obj: Any, path: str = "") -> dict[str, torch.Tensor]:
    """The model weights in a loaded file: a bare state_dict, or under ``model`` / ``state_dict``."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{path or 'checkpoint'} holds no state_dict (expected a dict of tensors, "
            "or a dict with a 'model' or 'state_dict' entry)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_weights(
    model: nn.Module, path: str, strict: bool = True, what: str = "checkpoint"
) -> tuple[list[str], list[str]]:
    """Load the weights in ``path`` into ``model``.

    ``strict=True`` (evaluation): every key must match in name and shape, else ConfigError.
    ``strict=False`` (pretrained start): tensors whose shape differs (e.g. a classifier head for
    another number of classes) and keys the model lacks are skipped. Returns (skipped, missing).
    """
    return load_state(model, extract_state_dict(load_file(path, what), path), strict, f"{what} {path}")


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> tuple[list[str], list[str]]:
    """:func:`load_weights` for a state_dict already in memory (``source`` names it in errors)."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    if strict:
        problems = []
        if mismatched:
            k = mismatched[0]
            problems.append(
                f"{len(mismatched)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)}"
            )
        if missing:
            problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        if problems:
            raise ConfigError(f"{source} does not fit the model: {'; '.join(problems)}")
        model.load_state_dict(state)
        return [], []
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise ConfigError(f"{source} shares no weights with the model")
    model.load_state_dict(keep, strict=False)
    return sorted(mismatched + unexpected), missing

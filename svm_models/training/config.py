"""YAML experiment configs: a small schema (key -> type, default), validated on load.

Every problem is a :class:`ConfigError` with a one-line message; the scripts print it as
``error: <message>`` and exit with status 2. Paths in a config are relative to the current
directory.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import yaml

from ..base import MIN_IMG_SIZE
from ..data import DATASETS


class ConfigError(Exception):
    """A bad config or a missing file a config names (shown as one line, exit status 2)."""


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    nullable: bool = False
    doc: str = ""


_NUM = (int, float)

# The original project's keys come first, then the ones this package adds.
SCHEMA: dict[str, Key] = {
    "task_name": Key((str,), required=True, doc="experiment name; outputs go to output_dir/task_name/"),
    "model": Key((str,), required=True, doc="a registered model name (svm_models.list_models())"),
    "dataset": Key((str,), required=True, doc=" | ".join(DATASETS)),
    "root_path": Key((str,), "data", doc="folder holding the datasets (see svm_models.data)"),
    "img_size": Key((int,), None, nullable=True, doc="input resolution; null = the dataset's own"),
    "batch_size": Key((int,), 64, doc="global batch size (split over the processes of a torchrun job)"),
    "lr": Key(_NUM, 1e-3, doc="peak learning rate (AdamW)"),
    "pretrained": Key((bool, str), False, doc="true: start from `checkpoint`; a path: start from it"),
    "checkpoint": Key(
        (str,),
        None,
        nullable=True,
        doc="weights file (with pretrained: true, training's start); test/predict take "
        "output_dir/task_name/best.pt without it or with pretrained: true",
    ),
    "epochs": Key((int,), 100),
    "T": Key((int,), None, nullable=True, doc="timesteps of a spiking model (model override T)"),
    "weight_decay": Key(_NUM, 0.05, doc="AdamW decay; never applied to biases and 1-D parameters"),
    "warmup_epochs": Key(_NUM, 0, doc="linear warmup length, then cosine decay"),
    "warmup_lr": Key(_NUM, 1e-6, doc="learning rate at the first warmup step"),
    "min_lr": Key(_NUM, 1e-5, doc="learning rate at the end of the cosine decay"),
    "label_smoothing": Key(_NUM, 0.1),
    "mixup": Key(_NUM, 0.0, doc="mixup alpha; 0 = off"),
    "cutmix": Key(_NUM, 0.0, doc="cutmix alpha; 0 = off (with mixup too, each batch picks one)"),
    "mixup_off_epoch": Key(
        (int,), None, nullable=True, doc="epoch from which mixup/cutmix stop (null: never)"
    ),
    "augment": Key((bool,), True, doc="the dataset's training augmentation (see svm_models.data)"),
    "ema": Key(_NUM, 0.0, doc="EMA decay of the weights, e.g. 0.999; 0 = off"),
    "clip_grad": Key(_NUM, None, nullable=True, doc="max gradient norm; null = no clipping"),
    "seed": Key((int,), 0),
    "amp": Key((bool,), True, doc="bf16 autocast on CUDA (ignored on the CPU)"),
    "workers": Key((int,), 4, doc="DataLoader worker processes"),
    "output_dir": Key((str,), "runs"),
    "model_args": Key((dict,), None, nullable=True, doc="overrides passed to create_model"),
    "scan_weight_decay": Key(
        (bool,),
        False,
        doc="decay the scan's A_logs and dt_projs_bias like weights (VMamba's classification recipe, "
        "whose optimiser decays every parameter of 2 or more dimensions not named .bias); false: "
        "Mamba's convention, which leaves them and Ds undecayed",
    ),
    "compile": Key(
        (bool,), False, doc="torch.compile the model (one graph) for training and testing; off by default"
    ),
    "eval_every": Key((int,), 1, doc="validate every N epochs (and always after the last one)"),
    "memory_efficient": Key(
        (bool,),
        None,
        nullable=True,
        doc="spiking models: save spikes as bits for the backward, recompute BN inputs (same "
        "results, less memory); null = the model's default (true); ignored by ANNs",
    ),
    "channels_last": Key(
        (bool,),
        False,
        doc="keep the model's conv weights, hence its activations, channels_last (the same results up "
        "to fp32 rounding; on the CPU the small convolutions run ~1.5x faster)",
    ),
    # where and how fast the scripts run (never change the result of a run on resume)
    "device": Key((str,), None, nullable=True, doc="cpu, cuda or cuda:N; null = cuda when available"),
    "threads": Key(
        (int,), None, nullable=True, doc="CPU threads; null = OMP_NUM_THREADS if set, else 1 (see README)"
    ),
}

DATASET_NAMES = tuple(DATASETS)


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}
    if types == _NUM:
        return "a number"
    return " or ".join(names[t] for t in types)


def _coerce(key: str, spec: Key, value: Any) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"'{key}' must be {_type_name(spec.types)}, got null")
    # bool is a subclass of int: `epochs: true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in spec.types:
        raise ConfigError(f"'{key}' must be {_type_name(spec.types)}, got {value!r}")
    if isinstance(value, spec.types):
        return float(value) if spec.types == _NUM else value
    # PyYAML reads `1e-3` (no dot) as a string; accept a string that is a plain number.
    if spec.types == _NUM and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    raise ConfigError(f"'{key}' must be {_type_name(spec.types)}, got {shown}")


def _check_ranges(c: dict[str, Any]) -> None:
    def need(cond: bool, msg: str):
        if not cond:
            raise ConfigError(msg)

    for k in (
        "lr",
        "weight_decay",
        "warmup_epochs",
        "warmup_lr",
        "min_lr",
        "label_smoothing",
        "mixup",
        "cutmix",
        "ema",
    ):
        need(math.isfinite(c[k]), f"'{k}' must be finite, got {c[k]}")
    need(
        c["task_name"].strip() != "" and "/" not in c["task_name"] and "\\" not in c["task_name"],
        f"'task_name' must be a non-empty name without slashes, got {c['task_name']!r}",
    )
    need(
        c["dataset"] in DATASET_NAMES,
        f"'dataset' must be one of {', '.join(DATASET_NAMES)}, got {c['dataset']!r}",
    )
    need(
        c["img_size"] is None or c["img_size"] >= MIN_IMG_SIZE,
        f"'img_size' must be >= {MIN_IMG_SIZE}, got {c['img_size']}",
    )
    need(c["batch_size"] >= 1, f"'batch_size' must be >= 1, got {c['batch_size']}")
    need(c["epochs"] >= 1, f"'epochs' must be >= 1, got {c['epochs']}")
    need(c["lr"] > 0, f"'lr' must be > 0, got {c['lr']}")
    need(c["weight_decay"] >= 0, f"'weight_decay' must be >= 0, got {c['weight_decay']}")
    need(
        0 <= c["warmup_epochs"] < c["epochs"],
        f"'warmup_epochs' must be >= 0 and below epochs ({c['epochs']}), got {c['warmup_epochs']} "
        "(a shorter run: --opts warmup_epochs=0, or fewer)",
    )
    need(0 < c["warmup_lr"] <= c["lr"], f"'warmup_lr' must be > 0 and <= lr, got {c['warmup_lr']}")
    need(0 <= c["min_lr"] <= c["lr"], f"'min_lr' must be >= 0 and <= lr, got {c['min_lr']}")
    need(0 <= c["label_smoothing"] < 1, f"'label_smoothing' must be in [0, 1), got {c['label_smoothing']}")
    need(c["mixup"] >= 0, f"'mixup' must be >= 0, got {c['mixup']}")
    need(c["cutmix"] >= 0, f"'cutmix' must be >= 0, got {c['cutmix']}")
    need(0 <= c["ema"] < 1, f"'ema' must be in [0, 1) (0 = off), got {c['ema']}")
    need(
        c["clip_grad"] is None or (math.isfinite(c["clip_grad"]) and c["clip_grad"] > 0),
        f"'clip_grad' must be > 0 or null, got {c['clip_grad']}",
    )
    need(c["T"] is None or c["T"] >= 1, f"'T' must be >= 1, got {c['T']}")
    need(
        not (DATASETS[c["dataset"]].is_event and c["T"] is None),
        f"'{c['dataset']}' is event-camera data: set the top-level 'T' (the number of frames each "
        "recording is integrated into, which is also the model's T)",
    )
    need(c["workers"] >= 0, f"'workers' must be >= 0, got {c['workers']}")
    need(c["eval_every"] >= 1, f"'eval_every' must be >= 1, got {c['eval_every']}")
    need(c["threads"] is None or c["threads"] >= 1, f"'threads' must be >= 1 or null, got {c['threads']}")
    need(
        c["device"] is None or re.fullmatch(r"cpu|cuda(:[0-9]+)?", c["device"]) is not None,
        f"'device' must be cpu, cuda or cuda:N, got {c['device']!r}",
    )
    for k in c["model_args"]:
        need(isinstance(k, str), f"'model_args' keys must be strings, got {k!r}")
    need(
        "num_classes" not in c["model_args"] and "img_size" not in c["model_args"],
        "'model_args' must not set num_classes or img_size (they come from dataset and img_size)",
    )
    need(
        not ("T" in c["model_args"] and c["T"] is not None),
        "set T either as the top-level key 'T' or in 'model_args', not both",
    )
    need(
        not ("memory_efficient" in c["model_args"] and c["memory_efficient"] is not None),
        "set memory_efficient either as a top-level key or in 'model_args', not both",
    )


def validate(raw: Any, source: str = "config") -> dict[str, Any]:
    """Check a parsed config against :data:`SCHEMA`; returns a full dict with defaults filled."""
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {got}")
    unknown = [k for k in raw if k not in SCHEMA]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), SCHEMA, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(SCHEMA)}"
        raise ConfigError(f"{source}: unknown key '{k}'{hint}")
    missing = [k for k, s in SCHEMA.items() if s.required and k not in raw]
    if missing:
        raise ConfigError(f"{source}: missing required key(s): {', '.join(missing)}")
    out = {}
    try:
        for k, spec in SCHEMA.items():
            out[k] = _coerce(k, spec, raw[k]) if k in raw else spec.default
        out["model_args"] = dict(out["model_args"] or {})
        _check_ranges(out)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "model_args={dims: [8, 16]}"]`` -> ``{"epochs": 3, ...}``; values are YAML."""
    out = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opts expects KEY=VALUE pairs, got {text!r}")
        if key.strip() in out:  # as in the file: a key given twice is an error, not "the last wins"
            raise ConfigError(f"--opts sets {key.strip()!r} twice")
        try:
            out[key.strip()] = _yaml(value)
        except yaml.YAMLError:
            raise ConfigError(f"--opts {key.strip()}: {value!r} is not a valid YAML value") from None
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last one
    silently: ``lr`` set twice would train with the second without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:  # (this mapping's own keys: a merged one may be overridden)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # (yaml refuses it itself)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml(text_or_file) -> Any:
    return yaml.load(text_or_file, Loader=_UniqueKeyLoader)  # a SafeLoader


def load_config(path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config file, apply ``overrides`` (command-line keys), validate the result.

    An override of an unknown key or of the wrong type is reported like the same mistake in the
    file, with " (command line)" after the path."""
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"config path is not a file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = _yaml(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if overrides:
        if not isinstance(raw, dict):
            return validate(raw, path)
        return validate(apply_overrides(raw, overrides), f"{path} (with command-line overrides)")
    return validate(raw, path)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's keys with ``overrides`` in place; a ``model_args`` mapping is merged key by key
    into the file's (``model_args={dims: [32, 64]}`` changes the widths and keeps the file's
    depths and thresholds: replaced whole, it would quietly build another model)."""
    out = {**raw, **overrides}
    file_args, new_args = raw.get("model_args"), overrides.get("model_args")
    if isinstance(file_args, dict) and isinstance(new_args, dict):
        out["model_args"] = {**file_args, **new_args}
    return out


def run_dir(cfg: dict[str, Any]) -> str:
    """``output_dir/task_name``: where checkpoints, logs and reports go."""
    return os.path.join(cfg["output_dir"], cfg["task_name"])


def require_file(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise ConfigError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} is not a file: {path}")
    return path


def require_dir(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise ConfigError(f"{what} not found: {path}")
    if not os.path.isdir(path):
        raise ConfigError(f"{what} is not a folder: {path}")
    return path


def pretrained_path(cfg: dict[str, Any]) -> str | None:
    """The weights train.py starts from: ``pretrained: <path>``, or `checkpoint` with ``pretrained: true``."""
    p = cfg["pretrained"]
    if p is False:
        return None
    if p is True:
        if not cfg["checkpoint"]:
            raise ConfigError("'pretrained: true' needs 'checkpoint' (the weights to start from)")
        return require_file(cfg["checkpoint"], "pretrained weights ('checkpoint')")
    return require_file(p, "pretrained weights ('pretrained')")

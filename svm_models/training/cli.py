"""What train.py / test.py / predict.py share: the arguments, the config overrides, the error convention.

User-fixable problems (a bad config, a missing file or dataset, an unwritable output folder) print
``error: <one line>`` on stderr and exit with status 2, without a traceback; a non-finite loss
exits with status 1. Under torchrun, an error every rank finds before the processes join their
group (a bad config) is printed by rank 0 only, and every rank exits with the same status; one
found later, possibly by some ranks only (a data error in one rank's shard), is printed by each
rank that found it, after ``rank N:`` but on rank 0, and the others stop at their next collective
with one line saying so; config errors found later (a model_args typo, a refused resume) are the
same on every rank and printed by rank 0 only.

Arguments are never abbreviated (``allow_abbrev=False``): ``-c`` is not ``-config``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..data import DataError
from .config import ConfigError, load_config, parse_overrides
from .distributed import env_rank, fail_together, group_started, peer_failed
from .engine import NonFiniteLossError


class _Parser(argparse.ArgumentParser):
    """No abbreviations at all. The original README's one-dash ``-config`` is rewritten to
    ``--config`` before parsing: registered as a one-dash option, Python 3.11's argparse would
    still take ``-c`` or ``-conf`` for it, even with ``allow_abbrev=False``."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        args = [
            "--config" + a[len("-config") :] if a == "-config" or a.startswith("-config=") else a
            for a in args
        ]
        return super().parse_known_args(args, namespace)


def parser(description: str) -> argparse.ArgumentParser:
    """``--config`` (and the original README's ``-config``), ``--opts``, ``--device``, ``--output-dir``."""
    p = _Parser(description=description, allow_abbrev=False)
    p.add_argument(
        "--config", required=True, metavar="YAML", help="experiment config file (-config works too)"
    )
    p.add_argument(
        "--opts",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --opts lr=1e-3 'model_args={dims: [32, 64]}' (values are YAML; "
        "checked like the file; model_args merges into the file's, key by key; may be repeated)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (config key 'device'; default: cuda if available)")
    p.add_argument("--output-dir", help="folder of the runs (config key 'output_dir')")
    return p


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """train.py's shortcuts for the keys one changes most (same as ``--opts epochs=N seed=S``)."""
    p.add_argument("--epochs", type=int, help="config key 'epochs' (with --resume: extend a finished run)")
    p.add_argument("--seed", type=int, help="config key 'seed'")


# flag attribute -> config key; a flag given on the command line wins over --opts
_FLAG_KEYS = {"device": "device", "output_dir": "output_dir", "epochs": "epochs", "seed": "seed"}


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config file with ``--opts`` and the flags applied, validated by the schema."""
    overrides = parse_overrides(args.opts)
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn the known failures into one line and an exit status."""

    def fail(message: str, status: int, everywhere: bool = True) -> int:
        rank = env_rank()
        if rank == 0:  # an error every rank finds alike: one report is enough
            print(message, file=sys.stderr, flush=True)
        elif not everywhere and group_started():  # one that this rank may have found alone
            print(f"rank {rank}: {message}", file=sys.stderr, flush=True)
        fail_together(status)
        return status

    try:
        return main(argv) or 0
    except ConfigError as e:  # (the config, the run directory's verdict, a model: the same on every rank)
        return fail(f"error: {e}", 2)
    except DataError as e:  # (a file of this rank's shard, maybe of no other's)
        return fail(f"error: {e}", 2, everywhere=False)
    except NonFiniteLossError as e:
        return fail(f"error: {e}", 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except RuntimeError as e:
        if not (group_started() and peer_failed(e)):
            raise
        # another rank exited (and printed why); this one only met the broken collective
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return fail(
            f"error: another process of the run stopped, so this one did ({first})", 2, everywhere=False
        )

"""What train.py / test.py / predict.py share: the --config argument and the error convention.

User-fixable problems (a bad config, a missing file or dataset) print ``error: <one line>`` on
stderr and exit with status 2, without a traceback; a non-finite loss exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..data import DataError
from .config import ConfigError
from .engine import NonFiniteLossError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    # The original README writes `-config` with one dash; both spellings work.
    p.add_argument("--config", "-config", required=True, metavar="YAML", help="experiment config file")
    return p


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn the known failures into one line and an exit status."""
    try:
        return main(argv) or 0
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130

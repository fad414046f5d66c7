"""The run directory ``output_dir/task_name``: claimed before any training, never silently replaced.

Rules (the README's "Run directories"):

* it must be writable: checked by writing a probe file before the data or model are built;
* a directory that holds a run (``last.pt``, ``best.pt`` or ``log.csv``) is refused unless
  ``--resume`` continues it or ``--overwrite`` replaces it;
* a lock file (``.lock``, holding ``pid hostname start``) keeps two runs out of one directory; a
  lock whose process is dead on this host is stale and reclaimed, and so is one whose pid now
  belongs to another process (``start``: the process's start time, where the system tells it:
  a restarted container hands out the same small pids again);
* temporary files a killed save left behind (``.<name>.*.tmp``) are deleted;
* nothing of a previous run changes until the new run has built its data and model (and, on
  ``--resume``, accepted the checkpoint): then (:meth:`RunDir.commit`) ``--overwrite`` deletes
  the previous run's files, the resolved config is saved as ``config.yaml`` and the console
  lines, those before it included, are appended to ``train.log``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from typing import Any

import yaml

from .checkpoint import atomic_write_text, write_error
from .config import ConfigError, run_dir

RUN_MARKERS = ("last.pt", "best.pt", "log.csv")  # a directory holding one of these holds a run
RUN_FILES = (
    "last.pt",
    "best.pt",
    "log.csv",
    "curves.png",
    "config.yaml",
    "train.log",
    "test_report.json",
    "test_report.png",
    "predictions.json",
)
LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"
LOG_NAME = "train.log"


def ensure_writable(folder: str) -> None:
    """Create ``folder`` and write (then delete) a probe file in it; ConfigError if either fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_error(folder, e, "the run directory") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux's /proc), "" where unknown: with
    the pid it names one process, even after the pid is handed out again."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else ""  # field 22 of stat, the 20th after the name


def _holder_alive(pid: int, start: str) -> bool:
    """Whether the process that wrote a lock on this host still runs (a lock without a start
    time, or on a system without one, is judged by its pid alone)."""
    if not _pid_alive(pid):
        return False
    now = process_start(pid)
    return not (start and now and now != start)


class RunLock:
    """An exclusive lock file; created complete (written to a temp file, then hard-linked)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self.identity = (os.getpid(), socket.gethostname(), process_start(os.getpid()))
        self.owner = " ".join(map(str, self.identity)).rstrip()
        self.held = False

    def _try_create(self) -> bool:
        folder = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            os.link(tmp, self.path)  # atomic: fails if the lock exists
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return True
        finally:
            os.unlink(tmp)

    def _holder(self) -> tuple[int | None, str, str]:
        """(pid, host, start) of the lock's writer; start "" where it did not know it."""
        try:
            with open(self.path) as f:
                pid, host, start = [*f.read().split(), "", ""][:3]
            return int(pid), host, start
        except (OSError, ValueError):
            return None, "", ""

    def acquire(self) -> RunLock:
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            pid, host, start = self._holder()
            if pid is not None and (host != socket.gethostname() or _holder_alive(pid, start)):
                where = "this machine" if host == socket.gethostname() else host
                raise ConfigError(
                    f"{os.path.dirname(self.path)} is in use by another run (pid {pid} on {where}); wait for it, "
                    f"choose another task_name/--output-dir, or delete {self.path} if that run is gone"
                )
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                os.unlink(self.path)
            time.sleep(0.01)
        raise ConfigError(f"could not take the lock {self.path} (another run keeps taking it)")

    def release(self) -> None:
        if self.held and self._holder() == self.identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False


def append_log(folder: str, line: str) -> None:
    """Append a console line to the train.log of the run in ``folder`` after the run itself
    closed it (its summary, its test report); a failing write never stops the script."""
    with contextlib.suppress(OSError), open(os.path.join(folder, LOG_NAME), "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")


def remove_temp_files(folder: str) -> list[str]:
    """Delete the ``.<name>.<random>.tmp`` files of saves that were killed; returns their names."""
    removed = []
    for e in os.scandir(folder):
        if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
                removed.append(e.name)
    return sorted(removed)


class RunDir:
    """A claimed run directory (rank 0), or a stand-in that only knows the paths (other ranks)."""

    def __init__(self, cfg: dict[str, Any], owner: bool = True):
        self.path = run_dir(cfg)
        self.owner = owner
        self.lock = RunLock(self.path)
        self._log = None
        self._pending: list[str] = []  # console lines before commit()
        self._doomed: list[str] = []  # the previous run's files that --overwrite deletes at commit()
        self.committed = False
        self._created = False  # claim() made the directory: a run refused before commit() removes it

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def claim(self, cfg: dict[str, Any], resume: bool, overwrite: bool) -> list[str]:
        """Check the rules of the module docstring and take the lock (nothing of a previous run
        is changed: :meth:`commit` does that); returns messages worth showing."""
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        self._created = not os.path.isdir(self.path)
        ensure_writable(self.path)
        try:
            self.lock.acquire()
        except OSError as e:
            raise write_error(self.lock.path, e, "the lock file") from None
        try:
            notes = []
            removed = remove_temp_files(self.path)
            if removed:
                notes.append(
                    f"removed {len(removed)} temporary file(s) of an interrupted save: {', '.join(removed)}"
                )
            held = [n for n in RUN_MARKERS if os.path.exists(self.file(n))]
            if resume and not os.path.isfile(self.file("last.pt")):
                raise ConfigError(f"--resume: nothing to resume, {self.file('last.pt')} not found")
            if held and not resume:
                if not overwrite:
                    raise ConfigError(
                        f"{self.path} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                        "--overwrite to replace it, or choose another task_name/--output-dir"
                    )
                self._doomed = [n for n in RUN_FILES if os.path.isfile(self.file(n))]
            return notes
        except OSError as e:
            self.close()
            raise write_error(self.path, e, "the run directory") from None
        except BaseException:
            self.close()
            raise

    def commit(self, cfg: dict[str, Any]) -> list[str]:
        """The run starts for good (its data and model are built): ``--overwrite`` deletes the
        previous run's files, ``config.yaml`` is written, ``train.log`` opened; returns messages."""
        if not self.owner or self.committed:
            return []
        notes = []
        try:
            if self._doomed:
                for n in self._doomed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.file(n))
                notes.append(
                    f"--overwrite: deleted {', '.join(self._doomed)} of the previous run in {self.path}"
                )
            atomic_write_text(yaml.safe_dump(dict(cfg), sort_keys=False), self.file(CONFIG_NAME))
            self._log = open(self.file(LOG_NAME), "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise write_error(self.path, e, "the run directory") from None
        pending, self._pending = self._pending, []
        for line in pending:  # the lines logged before the run started for good
            self.log(line)
        self.committed = True
        return notes

    def log(self, line: str) -> None:
        """Append one console line to train.log (a failing log never stops the run)."""
        if self.owner and not self.committed and self._log is None:
            self._pending.append(line)
        elif self._log is not None:
            try:
                self._log.write(line.rstrip("\n") + "\n")
                self._log.flush()
            except OSError:
                self._log = None

    def close(self) -> None:
        self._pending = []  # a run that failed before commit() leaves the directory as it was
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
        self.lock.release()
        if self._created and not self.committed:
            with contextlib.suppress(OSError):  # (only while empty: rmdir refuses otherwise)
                os.rmdir(self.path)

"""``--dist loadgroup`` that keeps working under pytest 9.

pytest-xdist (3.8) groups the tests marked ``xdist_group`` by renaming them on the workers
(``item._nodeid``), an attribute pytest 9 no longer reads: the groups were silently split, so
a session fixture shared by a group (the gate's smoke run, the compile check, the trained
digits run) was built once per worker that drew one of its tests.

Here each worker writes the groups it collected to a folder the controller chose, and the
controller's scheduler reads them when it assigns work: every test of a group goes to one
worker, the other tests are spread one by one, as loadgroup intends.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MARK = "xdist_group"
_INPUT_KEY = "svm_xdist_groups_dir"


def group_of(item) -> str | None:
    """The item's group name, as pytest-xdist reads it from the mark."""
    names = sorted(
        {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers(MARK)}
    )
    return "_".join(names) or None


def configure_node(config, node) -> None:
    """Controller: give each worker the folder for its groups (created once per run)."""
    folder = getattr(config, "_svm_groups_dir", None)
    if folder is None:
        folder = config._svm_groups_dir = tempfile.mkdtemp(prefix="xdist-groups-")
    node.workerinput[_INPUT_KEY] = folder


def cleanup(config) -> None:
    """Controller: remove the folder at the end of the run."""
    folder = getattr(config, "_svm_groups_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def record_groups(config, items) -> None:
    """Worker: write {nodeid: group} of the grouped items it collected."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or _INPUT_KEY not in workerinput:
        return
    groups = {item.nodeid: g for item in items if (g := group_of(item))}
    path = Path(workerinput[_INPUT_KEY]) / f"{workerinput['workerid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)  # complete before the worker reports its collection


def make_scheduler(config, log):
    """Controller: loadgroup's scheduler, with the groups the workers recorded."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    folder = Path(config._svm_groups_dir) if getattr(config, "_svm_groups_dir", None) else None

    class RecordedGroupScheduling(LoadGroupScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # every worker has collected by the first scheduling call
                self._groups = {}
                for f in sorted(folder.glob("*.json")) if folder else ():
                    self._groups.update(json.loads(f.read_text()))
            group = self._groups.get(nodeid)
            return group if group is not None else super()._split_scope(nodeid)

    return RecordedGroupScheduling(config, log)

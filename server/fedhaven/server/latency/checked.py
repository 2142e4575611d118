"""The run configs whose model and held-out test set `fl-server run` has checked on this coordinator, by fingerprint.

Checking a run's model (built, then Opacus' `ModuleValidator`) and test set
before submitting it imports torch and Opacus: seconds of every `fl-server
run`, most of its start. The ServerApp checks both again in every run anyway
(it builds the model and loads the test set before its first round, from the
coordinator's warm fork server), so `fl-server run` remembers what passed and
skips the repeat when nothing it depends on changed: the model and data
settings, whether DP is on, the installed fedhaven (version and the files of its
model and data code), torch, torchvision, Opacus, NumPy, scikit-learn and Pillow,
and every file and folder of a file-based test set (path, size, modification
time; symbolic links followed, as the readers do). Anything else, including an
unreadable or edited record, means checking again. Only passes are remembered; a
failed check is always run and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import fedhaven.shared as shared_pkg
from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.schema import RunConfig

CHECKED_FILE = "checked-runs.json"
#: Fingerprints kept (newest last); older ones are checked again when they come back.
KEEP = 64
_VERSIONED = ("fedhaven", "torch", "torchvision", "opacus", "numpy", "scikit-learn", "pillow")


def fingerprint(run: RunConfig, *, sites: int = 0) -> str:
    """Everything the model, test-set and memory check of `run` for `sites` registered sites depends on, hashed."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    root = run.data.folder("test")
    files = _stamp(root) if root is not None else []
    code = _stamp(Path(shared_pkg.__file__).parent, suffix=".py")  # the model and data code itself (an editable
    # install, or a release whose version was not bumped, still changes it)
    what = {"model": to_dict(run.model), "data": to_dict(run.data), "dp": run.dp.enabled, "versions": versions,
            "code": code, "test_root": str(root) if root is not None else None, "files": files,
            "memory": [run.memory_mb, run.secagg.enabled, run.strategy.fraction_fit, run.min_sites, sites]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _stamp(root: Path, *, suffix: str = "") -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file (ending in `suffix`) and folder under `root`, sorted,
    following symbolic links as the data readers do (each real folder once); a missing root stamps as empty."""
    out = []
    seen: set[tuple[int, int]] = set()
    try:
        for dirpath, dirs, names in os.walk(root, followlinks=True):
            here = Path(dirpath)
            try:
                st = here.stat()
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen:  # a link back up the tree: walked already
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            out.append((str(here.relative_to(root)) + "/", 0, st.st_mtime_ns))
            for name in names:
                if not name.endswith(suffix):
                    continue
                try:
                    fst = (here / name).stat()
                except OSError:
                    continue
                out.append((str((here / name).relative_to(root)), fst.st_size, fst.st_mtime_ns))
    except OSError:
        return []
    return sorted(out)


class CheckedRuns:
    """The record, in the coordinator's state directory (the operator's account only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> list[str]:
        try:
            seen = json.loads(self.path.read_text()).get("passed", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [s for s in seen if isinstance(s, str)] if isinstance(seen, list) else []

    def passed(self, key: str) -> bool:
        return key in self._read()

    def remember(self, key: str) -> None:
        """Add `key` (atomically: a killed command leaves the old record or the new one)."""
        seen = [s for s in self._read() if s != key][-(KEEP - 1):] + [key]
        try:
            write_atomic(self.path, json.dumps({"passed": seen}).encode())
        except OSError:  # a record that cannot be written only means checking again next time
            pass

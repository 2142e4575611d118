"""The run configs whose model and held-out test set `fl-server run` has checked on this coordinator, by fingerprint.

Checking a run's model (built, then Opacus' `ModuleValidator`) and test set
before submitting it imports torch and Opacus: seconds of every `fl-server
run`, most of its start. The ServerApp checks both again in every run anyway
(it builds the model and loads the test set before its first round, from the
coordinator's warm fork server), so `fl-server run` remembers what passed and
skips the repeat when nothing it depends on changed: the model and data
settings, whether DP is on, the installed fedhaven, torch, Opacus, NumPy and
scikit-learn, and every file of a file-based test set (path, size, modification
time). Anything else, including an unreadable or edited record, means checking
again. Only passes are remembered; a failed check is always run and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from fedhaven.shared.config import to_dict
from fedhaven.shared.schema import BUNDLED_MNIST, RunConfig

CHECKED_FILE = "checked-runs.json"
#: Fingerprints kept (newest last); older ones are checked again when they come back.
KEEP = 64
_VERSIONED = ("fedhaven", "torch", "opacus", "numpy", "scikit-learn")


def fingerprint(run: RunConfig) -> str:
    """Everything the model and test-set check of `run` depends on, hashed."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    data = run.data
    root = _test_root(run)
    files = _stamp(root) if root is not None else []
    what = {"model": to_dict(run.model), "data": to_dict(data), "dp": run.dp.enabled, "versions": versions,
            "test_root": str(root) if root is not None else None, "files": files}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _test_root(run: RunConfig) -> Path | None:
    """The folder the test split is read from (None: the data ships inside an installed package)."""
    data = run.data
    if data.source == "digits":
        return None
    if data.source == "mnist":
        return Path(data.path) if data.path else BUNDLED_MNIST
    if data.source == "idx":
        return Path(data.path or "")
    return Path(data.test_path) if data.test_path else None


def _stamp(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under `root`, sorted; a missing root is its own stamp."""
    out = []
    try:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
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
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"passed": seen}))
            os.replace(tmp, self.path)
        except OSError:  # a record that cannot be written only means checking again next time
            tmp.unlink(missing_ok=True)

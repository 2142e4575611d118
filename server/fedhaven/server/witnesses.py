"""The coordinator's witness of each site's ledger, kept across runs and restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedhaven.shared.files import write_atomic
from fedhaven.shared.witness import Witness


class SiteWitnesses:
    """The coordinator's witness of each site's ledger: the last update it received from each site.

    Kept per site name with the node it came from, in memory or (deployment) in a JSON file
    under the coordinator's state directory, so it survives runs and restarts. Each task to a
    node carries the witness back; the site refuses when its ledger lacks that entry, or holds
    a different one at that seq (the entry's own hash, `hash`, covers its contents: a rewritten
    entry is caught). A file written before `hash` was kept reads with an empty one.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._mem: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return dict(self._mem)
        return dict(json.loads(self.path.read_text()).get("sites", {}))

    def for_node(self, node_id: int) -> Witness | None:
        """The witness to send with a task to `node_id`, or None when no update from it was ever received."""
        mine = [(v["time"], name, v) for name, v in self._load().items() if v.get("node_id") == node_id]
        if not mine:
            return None
        _, name, v = max(mine, key=lambda t: t[0])
        return Witness(site=name, seq=int(v["seq"]), prev_hash=str(v.get("prev_hash", "")),
                       hash=str(v.get("hash", "")))

    def site_of(self, node_id: int) -> str | None:
        w = self.for_node(node_id)
        return w.site if w is not None else None

    def record(self, *, node_id: int, witness: Witness) -> None:
        """Remember the newest update received from a site (atomically, across concurrent runs)."""
        entry = {"seq": witness.seq, "prev_hash": witness.prev_hash, "hash": witness.hash, "node_id": node_id,
                 "time": time.time()}
        if self.path is None:
            self._mem[witness.site] = entry
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            sites = self._load()
            sites[witness.site] = entry
            write_atomic(self.path, json.dumps({"sites": sites}, indent=1, sort_keys=True).encode())

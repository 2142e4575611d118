"""The ledger's anchor: its entry count and head hash, kept outside the state directory, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ANCHOR_FORMAT = "fedhaven-ledger-anchor/1"


@dataclass(frozen=True)
class Anchor:
    """What the ledger looked like after its last append: `entries` entries, the newest hashing to `head`."""

    entries: int
    head: str
    site: str
    ledger: str
    time: float


def default_anchor_path(state_dir: Path) -> Path:
    """Beside the state directory, not in it: `state/` -> `state.ledger-anchor.json`."""
    state_dir = Path(state_dir)
    return state_dir.parent / f"{state_dir.name}.ledger-anchor.json"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchor(path: Path) -> Anchor | None:
    """The anchor at `path`, None when there is none; LedgerError when it is unreadable."""
    from fedhaven.client.ledger import LedgerError

    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.pop("format", None) != ANCHOR_FORMAT:
            raise ValueError(f"not a {ANCHOR_FORMAT} file")
        return Anchor(entries=int(data["entries"]), head=str(data["head"]), site=str(data["site"]),
                      ledger=str(data["ledger"]), time=float(data["time"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"the ledger's anchor {path} is unreadable ({exc}): restore it from a backup, or "
                          f"re-anchor the ledger with `fl-client ledger reset --keep-budget --reason '...'`") from None


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Replace the anchor atomically (temporary file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": ANCHOR_FORMAT, **asdict(anchor)}, fh, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def anchor_location_warnings(*, anchor: Path, state_dir: Path) -> list[str]:
    """What weakens the anchor without stopping it: inside the state directory, it is lost or restored with it."""
    try:
        inside = anchor.resolve().is_relative_to(state_dir.resolve())
    except OSError:
        inside = False
    if inside:
        return [f"ledger_anchor: {anchor} is inside state_dir {state_dir}: losing or restoring that folder would "
                f"take the anchor with it. Put it elsewhere (ledger_anchor in site.toml)"]
    return []


def anchor_location_problems(*, anchor: Path) -> list[str]:
    """Why the anchor cannot serve here: its folder is not writable."""
    out = []
    folder = anchor.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        out.append(f"ledger_anchor: cannot write {anchor} ({folder} is not writable for this user): set ledger_anchor "
                   f"in site.toml to a writable file outside state_dir")
    return out

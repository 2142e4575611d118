"""The coordinator's witness of a site's ledger: what it saw last, sent back with every task (plain Python)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Metric keys of a training reply: the ledger entry this update is recorded as (its seq, and the hash it links
#: to). Clear-text metadata, also under SecAgg+ (Flower's mod masks arrays only).
LEDGER_SEQ = "ledger_seq"
LEDGER_PREV_HASH = "ledger_prev_hash"

#: Keys of the task config carrying the witness back to the site. Not under the task's "fedhaven." prefix:
#: the witness is per site, the task is the same for every site.
WITNESS_SITE = "fedhaven-witness.site"
WITNESS_SEQ = "fedhaven-witness.seq"
WITNESS_PREV_HASH = "fedhaven-witness.prev_hash"


@dataclass(frozen=True)
class Witness:
    """A site's update the coordinator received: ledger entry `seq` of `site`, linking to `prev_hash`.

    The site's ledger must contain that entry: a ledger restored from an older backup
    (anchor included) or replaced by a fresh one does not, and the site refuses to train.
    """

    site: str
    seq: int
    prev_hash: str

    def key(self) -> str:
        """How a reset entry names the witness it accepted as lost: `SEQ:PREV_HASH`."""
        return f"{self.seq}:{self.prev_hash}"

    def to_config(self) -> dict[str, Any]:
        return {WITNESS_SITE: self.site, WITNESS_SEQ: self.seq, WITNESS_PREV_HASH: self.prev_hash}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Witness | None:
        """The witness a task config carries, or None (a site the coordinator never heard from)."""
        try:
            return cls(site=str(config[WITNESS_SITE]), seq=int(config[WITNESS_SEQ]),
                       prev_hash=str(config[WITNESS_PREV_HASH]))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Witness | None:
        """The witness a training reply establishes, or None when the reply carries no ledger position."""
        try:
            return cls(site=str(metrics["site"]), seq=int(metrics[LEDGER_SEQ]),
                       prev_hash=str(metrics[LEDGER_PREV_HASH]))
        except (KeyError, TypeError, ValueError):
            return None

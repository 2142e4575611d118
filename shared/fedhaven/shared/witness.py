"""The coordinator's witness of a site's ledger: what it saw last, sent back with every task (plain Python)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Metric keys of a training reply: the ledger entry this update is recorded as (its seq, the hash it links to,
#: and its own full hash). Clear-text metadata, also under SecAgg+ (Flower's mod masks arrays only).
LEDGER_SEQ = "ledger_seq"
LEDGER_PREV_HASH = "ledger_prev_hash"
#: The entry's own hash: it covers everything the entry records (noise, sample rate, steps, epsilon, the SHA-256
#: of the bytes sent), so a witness holding it catches any later rewrite of that entry or of one before it. It is
#: added to the reply after the entry is appended; the entry's `update_sha256` covers the content without it.
LEDGER_HASH = "ledger_hash"

#: Keys of the task config carrying the witness back to the site. Not under the task's "fedhaven." prefix:
#: the witness is per site, the task is the same for every site.
WITNESS_SITE = "fedhaven-witness.site"
WITNESS_SEQ = "fedhaven-witness.seq"
WITNESS_PREV_HASH = "fedhaven-witness.prev_hash"
WITNESS_HASH = "fedhaven-witness.hash"


@dataclass(frozen=True)
class Witness:
    """A site's update the coordinator received: ledger entry `seq` of `site`, hashing to `hash`.

    The site's ledger must hold exactly that entry: a ledger restored from an older backup
    (anchor included), replaced by a fresh one, or with that entry (or one before it)
    rewritten and re-hashed does not, and the site refuses to train. `hash` is empty only
    in a witness of a site or coordinator older than this field: then only `prev_hash`
    (the hash the entry links to) is compared, which does not cover the entry's own contents.
    """

    site: str
    seq: int
    prev_hash: str = ""
    hash: str = ""

    def key(self) -> str:
        """How a refusal names the witness and a reset entry records it as lost: `SEQ:HASH` (the entry's own hash;
        `SEQ:PREV_HASH` for a witness without one)."""
        return f"{self.seq}:{self.hash or self.prev_hash}"

    def legacy_key(self) -> str:
        """`SEQ:PREV_HASH`: how a reset entry written before witnesses held the entry's hash named this witness."""
        return f"{self.seq}:{self.prev_hash}"

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {WITNESS_SITE: self.site, WITNESS_SEQ: self.seq, WITNESS_PREV_HASH: self.prev_hash}
        if self.hash:
            out[WITNESS_HASH] = self.hash
        return out

    @classmethod
    def _read(cls, values: Mapping[str, Any], *, site: str, seq: str, prev_hash: str, hash_: str) -> Witness | None:
        try:
            witness = cls(site=str(values[site]), seq=int(values[seq]), prev_hash=str(values.get(prev_hash, "")),
                          hash=str(values.get(hash_, "")))
        except (KeyError, TypeError, ValueError):
            return None
        return witness if (witness.hash or witness.prev_hash) else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Witness | None:
        """The witness a task config carries, or None (a site the coordinator never heard from)."""
        return cls._read(config, site=WITNESS_SITE, seq=WITNESS_SEQ, prev_hash=WITNESS_PREV_HASH, hash_=WITNESS_HASH)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Witness | None:
        """The witness a training reply establishes, or None when the reply carries no ledger position."""
        return cls._read(metrics, site="site", seq=LEDGER_SEQ, prev_hash=LEDGER_PREV_HASH, hash_=LEDGER_HASH)

"""A site's SecAgg+ public keys bound to its identity: what it signs, and the records that carry the proof.

Flower's SecAgg+ binds a site's two public keys to nothing: the coordinator
forwards whatever keys it likes as "neighbours". A deployed fedhaven site signs
its keys with its own site key (the key its SuperNode authenticates with), for
this run, round and node; the coordinator relays each proof to the site's
neighbours, who check it against the consortium roster they pinned themselves.
The coordinator can drop a proof (the round is refused) but cannot make one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedhaven.shared.signing import digest, payload

#: A site's setup reply carries its proof here: {"site": name, "key": OpenSSH public key, "signature": bytes}.
PROOF_RECORD = "fedhaven.secagg-proof"
#: The share-keys message carries the neighbours' proofs here: str(node id) -> [name, key, signature] (bytes).
NEIGHBOURS_RECORD = "fedhaven.secagg-neighbours"

_DOMAIN = "fedhaven secagg+ public keys v1"


def keys_payload(*, run_id: int, round_id: str, node_id: int, pk1: bytes, pk2: bytes, group: str = "") -> bytes:
    """What a site signs: its two SecAgg+ public keys, for one run, round (Flower's group id) and node, and in a
    re-mask round the digest of the group's member list (`fedhaven.shared.remask`)."""
    if group:
        return payload(_DOMAIN, run_id, round_id, node_id, digest(pk1), digest(pk2), group)
    return payload(_DOMAIN, run_id, round_id, node_id, digest(pk1), digest(pk2))


@dataclass(frozen=True)
class KeyProof:
    """A site's signature over its SecAgg+ public keys, with its name and the public key to check it with."""

    site: str
    key: bytes
    signature: bytes

    def to_record(self) -> dict[str, Any]:
        return {"site": self.site, "key": self.key, "signature": self.signature}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> KeyProof | None:
        """The proof in a setup reply's record, or None when it is absent or malformed."""
        site, key, sig = record.get("site"), record.get("key"), record.get("signature")
        if isinstance(site, str) and isinstance(key, bytes) and isinstance(sig, bytes):
            return cls(site, key, sig)
        return None

    def to_list(self) -> list[bytes]:
        return [self.site.encode(), self.key, self.signature]

    @classmethod
    def from_list(cls, value: object) -> KeyProof | None:
        """A relayed proof (`to_list`), or None when malformed."""
        if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, bytes) for v in value):
            try:
                return cls(value[0].decode(), value[1], value[2])
            except UnicodeDecodeError:
                return None
        return None

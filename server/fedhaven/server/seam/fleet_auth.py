"""Flower's SuperNode authentication on the Fleet HTTP routes, as the public door checks it before reading a body.

Flower 1.42's SuperNode (`flwr/supernode/node_auth_http_interceptor.py`) sends,
on every Fleet call, its public key (base64 of the PEM), the current time (ISO
8601) and its ECDSA signature of that time, as three headers. The SuperLink
(`flwr/superlink/routers/fleet/node_auth.py`) checks them only after the whole
body is read and parsed, because it also compares the body's node id with the
key's. Everything but that last comparison needs headers only: the key must be
registered (and not revoked), the time inside Flower's window, the signature
valid. `signed_caller` makes exactly those checks (Flower still makes all of
them, then the node id one, on every request it is handed).
"""

from __future__ import annotations

import binascii
import datetime
from base64 import b64decode
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_HEADER, TIMESTAMP_TOLERANCE
from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER

#: The three headers, as the door reads them from an ASGI scope (lower-case bytes).
KEY_HEADER = FLEET_HTTP_PUBLIC_KEY_HEADER.encode()
SIGNATURE_HEADER = FLEET_HTTP_SIGNATURE_HEADER.encode()
TIME_HEADER = TIMESTAMP_HEADER.encode()
#: Flower's window for the signed time: (-drift, tolerance + drift) seconds of age.
OLDEST, NEWEST = TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE, -SYSTEM_TIME_TOLERANCE
#: Header values larger than any Flower sends (a P-384 PEM in base64 is ~290 characters): refused unparsed.
MAX_KEY, MAX_SIGNATURE, MAX_TIME = 2048, 512, 64


@dataclass(frozen=True)
class Claim:
    """What the headers claim: a public key (PEM bytes, as registered), a signed time, its signature."""

    public_key: bytes
    timestamp: str
    signature: bytes
    age: float  # seconds since the signed time


def claim_of(headers: Iterable[tuple[bytes, bytes]], *, now: datetime.datetime | None = None) -> Claim | str:
    """The headers' claim (ASGI header pairs, names lower-case) if well-formed and inside Flower's time window,
    else the reason it is refused. Each of the three headers must appear exactly once."""
    found: dict[bytes, list[bytes]] = {KEY_HEADER: [], SIGNATURE_HEADER: [], TIME_HEADER: []}
    for name, value in headers:
        if name in found:
            found[name].append(value)
    if any(len(v) != 1 for v in found.values()):
        return "no SuperNode authentication headers" if not any(found.values()) else "malformed authentication headers"
    raw = (found[KEY_HEADER][0], found[SIGNATURE_HEADER][0], found[TIME_HEADER][0])
    key_b64, sig_b64, stamp = raw
    if len(key_b64) > MAX_KEY or len(sig_b64) > MAX_SIGNATURE or len(stamp) > MAX_TIME:
        return "authentication headers too long"
    try:
        key = b64decode(key_b64, validate=True)
        signature = b64decode(sig_b64, validate=True)
        text = stamp.decode("ascii")
        signed_at = datetime.datetime.fromisoformat(text)
        age = ((now or datetime.datetime.now(datetime.UTC)) - signed_at).total_seconds()
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        return "malformed authentication headers"
    if not NEWEST < age < OLDEST:
        return "stale or future timestamp"
    return Claim(key, text, signature, age)


def signature_holds(claim: Claim) -> bool:
    """Flower's own check of the signature over the signed time, with the claimed key."""
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    try:
        return bool(verify_signature(bytes_to_public_key(claim.public_key), claim.timestamp.encode("ascii"),
                                     claim.signature))
    except Exception:  # noqa: BLE001 - any key or signature Flower cannot check (not EC, not PEM) is not valid
        return False


def auth_enabled(app: Any) -> bool:
    """Whether Flower's app was started with `--enable-supernode-auth` (set by `create_app`)."""
    state = getattr(app, "state", None)
    return bool(getattr(state, "enable_supernode_auth", False))


def registered_keys(app: Any) -> dict[bytes, int]:
    """Every registered, unrevoked node's public key -> node id, read from Flower's link state in one query."""
    from flwr.supercore.constant import NodeStatus

    factory = getattr(getattr(app, "state", None), "linkstate_factory", None)
    if factory is None:
        return {}
    nodes = factory.state().get_node_info(statuses=[NodeStatus.REGISTERED, NodeStatus.ONLINE, NodeStatus.OFFLINE])
    return {bytes(n.public_key): int(n.node_id) for n in nodes if n.public_key}

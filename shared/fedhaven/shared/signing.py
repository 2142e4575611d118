"""Signatures with a site's own key (the EC key of `fl-client keygen`): sign what it sends, check what others sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhaven.shared.crypto import CredentialError, fingerprint


def payload(*parts: bytes | str | int) -> bytes:
    """The bytes a signature covers: each part length-prefixed, so no two different lists give the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out += len(raw).to_bytes(8, "big") + raw
    return bytes(out)


class SigningKey:
    """A site's private key, loaded once: signs with ECDSA over SHA-384 (the key's own curve is P-384)."""

    def __init__(self, path: Path) -> None:
        try:
            key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CredentialError(f"{path}: cannot read the site's private key ({exc}); "
                                  f"generate one with `fl-client keygen`") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CredentialError(f"{path}: site keys are elliptic-curve keys; generate one with `fl-client keygen`")
        self._key = key
        self.public_openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                            serialization.PublicFormat.OpenSSH)
        self.fingerprint = fingerprint(self.public_openssh)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA384()))


def verify(*, public_openssh: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` over `data` was made with the private key of `public_openssh` (an EC OpenSSH key)."""
    try:
        key = serialization.load_ssh_public_key(public_openssh)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def digest(data: bytes) -> str:
    """SHA-256 of `data`, hex."""
    return hashlib.sha256(data).hexdigest()

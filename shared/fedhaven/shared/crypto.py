"""Credentials for a deployment: a private CA, the coordinator's TLS certificate, site key pairs (cryptography only)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhaven.shared.files import write_atomic


class CredentialError(ValueError):
    """A key or certificate that is missing, unreadable, too open, or does not fit."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedhaven"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class KeyCert:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def make_ca(*, common_name: str = "fedhaven coordinator CA", days: int = 3650) -> KeyCert:
    """A self-signed CA that signs only the coordinator's certificate (path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return KeyCert(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


def make_server_cert(*, ca: KeyCert, dns_names: Sequence[str], ips: Sequence[str], days: int = 825) -> KeyCert:
    """The coordinator's TLS certificate; always valid for 127.0.0.1 and localhost too.

    The SuperLink's own executor dials 127.0.0.1: without that IP in the
    certificate, runs stay pending forever.
    """
    names = list(dict.fromkeys(["localhost", *dns_names]))
    addrs = list(dict.fromkeys(["127.0.0.1", *ips]))
    try:
        ip_objs = [ipaddress.ip_address(a) for a in addrs]
    except ValueError as exc:
        raise CredentialError(f"not an IP address: {exc}") from None
    key = ec.generate_private_key(ec.SECP384R1())
    san = x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names), *(x509.IPAddress(i) for i in ip_objs)])
    cert = (x509.CertificateBuilder().subject_name(_name(names[-1] if dns_names else "localhost"))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=days))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA384()))
    return KeyCert(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


def cert_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `cert_pem` was signed by the CA in `ca_pem`."""
    cert, ca = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def make_site_keypair() -> tuple[bytes, bytes]:
    """(private, public) SuperNode authentication keys: EC P-384 in OpenSSH format, as Flower expects."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def check_site_public_key(data: bytes) -> str:
    """Validate an OpenSSH EC public key a site sent; return its SHA-256 fingerprint."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"not an OpenSSH public key ({exc}); generate one with `fl-client keygen`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialError("site keys must be elliptic-curve (ecdsa) keys; generate one with `fl-client keygen`")
    return fingerprint(data)


def fingerprint(public_openssh: bytes) -> str:
    """`SHA256:<hex>` of an OpenSSH public key's blob, short enough to read out on the phone."""
    import base64
    import hashlib

    parts = public_openssh.split()
    blob = base64.b64decode(parts[1]) if len(parts) > 1 else public_openssh
    return "SHA256:" + hashlib.sha256(blob).hexdigest()[:32]


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (0600) from the first byte, never printed."""
    write_atomic(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def private_key_problems(path: Path) -> list[str]:
    """Why a private key file is unusable or unsafe (missing, unreadable, readable by others)."""
    if not path.exists():
        return [f"{path}: private key not found"]
    mode = path.stat().st_mode & 0o777
    out = []
    if mode & 0o077:
        out.append(f"{path}: private key is readable by others (mode {mode:o}); run chmod 600 {path}")
    try:
        serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        out.append(f"{path}: not an unencrypted OpenSSH private key ({exc})")
    return out


"""Ledger entries signed with the site key (the EC key of `fl-client keygen`, site.toml `private_key`).

Each entry a site with a key writes carries `signer` (its key's fingerprint, hashed with
the entry) and `signature` (ECDSA over the entry's hash, not hashed). The first entry
signed with a key also records the key itself (`signer_key`, OpenSSH, hashed): it is in
force from there on, and every later entry must be signed with it until an `init` or
`reset` names another. A signature covers the entry's hash, and the hash its link to the
entry before: the newest valid signature vouches for the whole chain up to it.

What it stops: someone who can write the ledger and its anchor but cannot read the site
key (a restore from an old backup, another account with write access, an edit of the
disk) can no longer rewrite an entry and re-hash the chain unnoticed. What it does not:
whoever can read the site key can sign anything; a key is checked against what the site
holds (site.key, or site.pub beside it), or the public key an auditor passes (e.g. the
one the coordinator registered for the site).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.shared.crypto import CredentialError, check_site_public_key, fingerprint
from fedhaven.shared.signing import SigningKey, payload, verify

if TYPE_CHECKING:
    from fedhaven.client.ledger import LedgerEntry

#: What an entry's signature covers: this tag and the entry's hash (which covers everything else in it).
ENTRY_TAG = "fedhaven-ledger-entry/1"
RESET = "fl-client ledger reset --reason '...'"
NEW_KEY = "fl-client ledger reset --keep-budget --reason 'new site key'"
SIGN_NOW = "fl-client ledger reset --keep-budget --reason 'sign the ledger from here'"


class LedgerSigner:
    """The site key, loaded once: signs entry hashes."""

    def __init__(self, path: Path) -> None:
        self._key = SigningKey(path)
        self.public_openssh = self._key.public_openssh.decode()
        self.fingerprint = self._key.fingerprint

    def sign(self, entry_hash: str) -> str:
        return base64.b64encode(self._key.sign(payload(ENTRY_TAG, entry_hash))).decode()


@functools.lru_cache(maxsize=8)
def _signer_at(path: str, stamp: int) -> LedgerSigner:
    return LedgerSigner(Path(path))


def load_signer(path: Path) -> LedgerSigner:
    """The site key at `path` (read again when the file changes); CredentialError names why it cannot serve."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read the site's private key ({exc})") from None
    return _signer_at(str(path), stamp)


def signature_valid(*, public_openssh: str, entry_hash: str, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return verify(public_openssh=public_openssh.encode(), data=payload(ENTRY_TAG, entry_hash), signature=raw)


@dataclass(frozen=True)
class SiteKey:
    """The site's public key as found for a check: the OpenSSH line (None: none found), where it came from, and
    what is wrong with what was found (a site.pub that is not site.key's)."""

    public_openssh: str | None
    source: str
    problems: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.public_openssh.encode()) if self.public_openssh else None


def site_key(*, private: Path | None = None, public: Path | None = None) -> SiteKey:
    """The site's public key: from `public` when given (an auditor's copy), else derived from the private key,
    else site.pub beside it (an account that may not read the private key). A site.pub that is not the private
    key's is named."""
    if public is not None:
        try:
            text = public.read_text().strip()
        except (OSError, ValueError) as exc:
            return SiteKey(None, str(public), (f"{public}: cannot read the public key ({exc})",))
        try:
            check_site_public_key(text.encode())
        except CredentialError as exc:
            return SiteKey(None, str(public), (f"{public}: {exc}",))
        return SiteKey(" ".join(text.split()[:2]), str(public))
    if private is None:
        return SiteKey(None, "")
    beside = private.with_suffix(".pub")
    try:
        derived = load_signer(private).public_openssh
    except CredentialError:
        if beside.exists():
            return site_key(public=beside)
        return SiteKey(None, str(private))
    if beside.exists():
        try:
            listed = beside.read_text().split()
        except (OSError, ValueError):
            listed = []
        if listed[:2] != derived.split()[:2]:
            return SiteKey(derived, str(private), (f"{beside} is not the public half of {private}: replace it with "
                                                   f"the public key `fl-client keygen` wrote with that key",))
    return SiteKey(derived, str(private))


@dataclass(frozen=True)
class InForce:
    """The key entries must be signed with from entry `seq` on."""

    seq: int
    fingerprint: str
    public_openssh: str


def key_in_force(entries: Sequence[LedgerEntry]) -> InForce | None:
    """The key the newest entries must be signed with (the last one an entry named), None while none is named."""
    for e in reversed(entries):
        if e.signer_key:
            return InForce(e.seq, e.signer or "", e.signer_key)
    return None


@dataclass
class SignatureScan:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _where(i: int, e: LedgerEntry) -> str:
    return f"entry {i + 1} (seq {e.seq}, run {e.run_id}, round {e.server_round})"


def scan(entries: Sequence[LedgerEntry], *, site: SiteKey | None = None, every_signature: bool = True,
         require_signed: bool = False) -> SignatureScan:
    """Every signature problem of `entries`, by entry, and what the signatures vouch for.

    `every_signature`: check each signature (verify); otherwise the newest only, which vouches for
    the chain before it (the per-task check). `site`: the site's own key, which the newest entries
    must be signed with. `require_signed`: a ledger with no signed entry at all fails when the site
    has a key (`ledger verify`: offline, it cannot be told apart from one stripped of its signatures).
    """
    out = SignatureScan()
    rule: InForce | None = None
    first_signed: int | None = None
    changes: list[str] = []
    damaged = f"Restore the ledger and its anchor from a backup, or record the damage with `{RESET}`"
    for i, e in enumerate(entries):
        where = _where(i, e)
        if e.signer_key:
            named = _fingerprint(e.signer_key)
            if not e.signer or not e.signature:
                out.problems.append(f"{where}: records a signing key but is not signed: it was edited. {damaged}")
                continue
            if named is None or named != e.signer:
                out.problems.append(f"{where}: names signing key {e.signer} but records a different or unreadable "
                                    f"key: it was edited. {damaged}")
                continue
            if rule is not None and rule.fingerprint != named:
                changes.append(f"seq {e.seq}: {rule.fingerprint} -> {named}")
            if rule is not None and rule.fingerprint != named and e.kind not in ("init", "reset"):
                out.problems.append(f"{where}: an entry of kind {e.kind} that changes the signing key from "
                                    f"{rule.fingerprint} to {named}: only `fl-client ledger init` or `reset` may "
                                    f"name a new key. {damaged}")
            rule = InForce(e.seq, named, e.signer_key)
        if not e.signer and not e.signature:
            if rule is not None:
                out.problems.append(f"{where}: not signed, but this ledger is signed since seq {rule.seq} (key "
                                    f"{rule.fingerprint}): it was added or rewritten by someone without the site key. "
                                    f"{damaged}")
            continue
        if rule is None:
            out.problems.append(f"{where}: signed by {e.signer}, but no entry names that key: it was edited. {damaged}")
            continue
        if first_signed is None:
            first_signed = i
        if e.signer != rule.fingerprint:
            out.problems.append(f"{where}: signed by key {e.signer}, but the key in force since seq {rule.seq} is "
                                f"{rule.fingerprint}. {damaged}")
            continue
        if (every_signature or i == len(entries) - 1) and not signature_valid(
                public_openssh=rule.public_openssh, entry_hash=e.hash, signature=e.signature or ""):
            out.problems.append(f"{where}: its signature (key {rule.fingerprint}) does not match its contents: it "
                                f"was edited and re-hashed, or added, by someone without the site key. {damaged}")
    site_fp = site.fingerprint if site is not None else None
    if site is not None:
        out.problems.extend(site.problems)
    if rule is not None and site_fp is not None and rule.fingerprint != site_fp:
        out.problems.append(f"this ledger's newest entries are signed with key {rule.fingerprint} (named at seq "
                            f"{rule.seq}), but this site's key ({site.source if site else ''}) is {site_fp}: they were "
                            f"signed by someone else, or the site key was replaced. If the site key was replaced "
                            f"(`fl-client keygen --force`), record it with `{NEW_KEY}`; otherwise restore the "
                            f"ledger and its anchor from a backup, or record the damage with `{RESET}`")
    if first_signed is None:
        if site_fp is not None and entries:
            text = (f"none of its {len(entries)} entries is signed, but this site has a key ({site_fp}, "
                    f"{site.source if site else ''}) and signs every entry it writes: the ledger was written before "
                    f"ledger signing and not since (the next entry it writes is signed; to sign it now, "
                    f"`{SIGN_NOW}`), or someone rewrote it without signatures: compare it with a backup")
            (out.problems if require_signed else out.notes).append(text)
        else:
            out.notes.append("unsigned: no entry is signed (a simulated site, or a site without a key); only the "
                             "hash chain, the anchor and the coordinator's witness protect it")
        return out
    if first_signed > 0:
        out.notes.append(f"entries seq 0-{entries[first_signed - 1].seq} are unsigned (written before ledger signing): "
                         f"still hash-chained and recomputed, and vouched for by the signatures after them")
    assert rule is not None
    checked = "every signature checked" if every_signature else "the newest signature checked"
    against = (f"against this site's key ({site.source})" if site_fp is not None and site is not None else
               "against the key the ledger itself names only: pass --config site.toml or --public-key site.pub "
               "(e.g. the key the coordinator registered) to check it is this site's")
    out.notes.append(f"signed from seq {entries[first_signed].seq} with key {rule.fingerprint}: {checked}, {against}")
    out.notes += [f"signing key changed at {c}" for c in changes]
    return out


def _fingerprint(public_openssh: str) -> str | None:
    try:
        return check_site_public_key(public_openssh.encode())
    except CredentialError:
        return None

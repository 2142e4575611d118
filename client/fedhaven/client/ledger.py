"""The site's privacy ledger: append-only, hash-chained JSONL of every update that left the site, anchored twice.

Anchors: (1) the head hash and entry count, rewritten atomically after every append
in a file outside the state directory (`anchor.py`); (2) the coordinator's witness of
the last update it received (its seq and full hash), checked at every task. Together
they catch a deleted, truncated, replaced, rolled-back or rewritten ledger. A site with
a key signs every entry it writes (`ledger_signing.py`), so a rewrite is caught offline
too. A fresh budget is only ever an entry of the chain (`init` for a new site, `reset`
with a reason), never a missing file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedhaven.client import ledger_signing
from fedhaven.client.anchor import Anchor, default_anchor_path, fsync_dir, read_anchor, write_anchor
from fedhaven.client.ledger_signing import LedgerSigner, SiteKey
from fedhaven.shared.accounting import PrivacyHistory
from fedhaven.shared.witness import Witness

GENESIS = "0" * 64
LEDGER_FILE = "privacy-ledger.jsonl"
#: Fields added after the first ledgers were written: hashed only when they differ from these defaults,
#: so entries written before they existed still verify.
_EXTENSIONS = {"kind": "update", "reason": None, "acknowledged": None, "fresh_budget": None, "witness": None,
               "signer": None, "signer_key": None}
#: Fields the hash does not cover: the hash itself, and the signature over it.
_UNHASHED = ("hash", "signature")
#: Entry kinds that spend budget: a training update, and a statistic the site's policy chose to share (a noisy class
#: histogram: one Gaussian release, recorded as noise multiplier, sample rate 1 and one step).
STATISTIC = "statistic"
SPENDS = ("update", STATISTIC)
NEW_SITE = "fl-client ledger init"
RESET = "fl-client ledger reset --reason '...'"


#: Seconds a task waits for the ledger lock another task holds (a round's stage times out after 600 s by default).
LOCK_WAIT_S = 600.0


class LedgerError(RuntimeError):
    """The ledger cannot be read, written or does not verify; the message names the entry and the fix."""


class LedgerBusy(LedgerError):
    """The ledger's lock stayed held past the wait: the message names the process holding it."""


@dataclass(frozen=True)
class LedgerEntry:
    """One entry: an update that left the site (kind "update"), or the operator's `init` / `reset`."""

    seq: int
    prev_hash: str
    time: float
    site: str
    run_id: int = 0
    server_round: int = 0
    model: str = ""
    update_sha256: str = ""  # SHA-256 of the message content sent (masked under SecAgg+)
    weights_sha256: str = ""  # SHA-256 of the trained weights before masking
    update_l2_norm: float = 0.0
    num_examples: int = 0
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0
    delta: float = 0.0
    accountant: str = "rdp"
    epsilon_before: float | None = None  # None: infinite (a round trained without noise)
    epsilon_after: float | None = None
    cumulative_epsilon: float | None = None
    kind: str = "update"  # "init" (a new site), "update", "statistic" (shared by policy), "reset" (with a reason)
    reason: str | None = None
    acknowledged: str | None = None  # init/reset: the problems the operator accepted, word for word
    fresh_budget: bool | None = None  # reset: whether the budget starts again from zero after it
    witness: str | None = None  # reset: a coordinator witness (SEQ:HASH) accepted as lost
    signer: str | None = None  # the fingerprint of the site key that signed it (None: unsigned)
    signer_key: str | None = None  # the first entry signed with a key: that public key (OpenSSH), in force from here
    hash: str = ""
    signature: str | None = None  # ECDSA (base64) over the hash, with the site key (`ledger_signing`)

    def body(self) -> dict[str, Any]:
        """Everything the hash covers: all fields but the hash and signature (later fields only when set)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _UNHASHED
                and not (f.name in _EXTENSIONS and getattr(self, f.name) == _EXTENSIONS[f.name])}

    def computed_hash(self) -> str:
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def starts_budget(self) -> bool:
        """Whether the site's budget counts from zero after this entry."""
        return self.kind == "init" or (self.kind == "reset" and bool(self.fresh_budget))


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `Ledger.verify`: entries checked and every problem found, by entry."""

    entries: int
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()  # what the signatures vouch for (or that there are none): not problems

    @property
    def ok(self) -> bool:
        return not self.problems


def _record(entry: LedgerEntry) -> dict[str, Any]:
    """An entry as its ledger line holds it: the signing fields only when it is signed."""
    return {k: v for k, v in asdict(entry).items() if not (k in _SIGNING and v is None)}


_SIGNING = ("signer", "signer_key", "signature")


def budget_history(entries: list[LedgerEntry]) -> PrivacyHistory:
    """The accountant's history of the site's current budget: every update since the last init or fresh reset."""
    h = PrivacyHistory()
    for e in entries:
        if e.starts_budget:
            h = PrivacyHistory()
        elif e.kind in SPENDS and e.steps > 0:  # noise 0 (DP off) makes epsilon infinite, as it should
            h = h.add(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
    return h


class Ledger:
    """The ledger file of one site, with its anchor file (by default beside the state directory).

    `signing_key`: the site key (site.toml `private_key`), which signs every entry this object
    appends and which the newest entries must be signed with; None for a site without one
    (simulated sites), whose entries are unsigned.
    """

    def __init__(self, path: Path, *, anchor: Path | None = None, signing_key: Path | None = None) -> None:
        self.path = Path(path)
        self.anchor_path = Path(anchor) if anchor is not None else default_anchor_path(self.path.parent)
        self.signing_key = Path(signing_key) if signing_key is not None else None

    @classmethod
    def in_dir(cls, state_dir: str | Path, *, anchor: str | Path | None = None,
               signing_key: str | Path | None = None) -> Ledger:
        return cls(Path(state_dir) / LEDGER_FILE, anchor=Path(anchor) if anchor is not None else None,
                   signing_key=Path(signing_key) if signing_key is not None else None)

    def site_key(self) -> SiteKey | None:
        """The site's public key, from its signing key (or site.pub beside it); None for a site without one."""
        return ledger_signing.site_key(private=self.signing_key) if self.signing_key is not None else None

    def _signer(self) -> LedgerSigner | None:
        if self.signing_key is None:
            return None
        try:
            return ledger_signing.load_signer(self.signing_key)
        except ValueError as exc:  # CredentialError
            raise LedgerError(f"cannot sign the ledger's next entry: {exc}") from None

    # --- reading -------------------------------------------------------------------------------------------
    def _raw(self) -> Iterator[tuple[int, str]]:
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield lineno, line

    def entries(self) -> list[LedgerEntry]:
        out = []
        names = {f.name for f in fields(LedgerEntry)}
        for lineno, line in self._raw():
            try:
                data = json.loads(line)
                out.append(LedgerEntry(**{k: v for k, v in data.items() if k in names}))
            except (ValueError, TypeError) as exc:
                raise LedgerError(f"{self.path}:{lineno}: unreadable ledger line ({exc})") from None
        return out

    def history(self) -> PrivacyHistory:
        """The current budget's history, rebuilt from the entries (all runs since the last init/fresh reset)."""
        return budget_history(self.entries())

    def head(self) -> str:
        entries = self.entries()
        return entries[-1].hash if entries else GENESIS

    # --- checking ------------------------------------------------------------------------------------------
    def check(self, *, witness: Witness | None = None, for_append: bool = False) -> list[str]:
        """Cheap checks for every round: hashes and links, the anchor, the coordinator's witness, the newest signature.

        Every problem names what happened and what the operator can do; an empty list means the
        ledger is the one the site last wrote (or extends it) and contains what the coordinator saw.
        `for_append`: also whether this site can sign the entry it is about to write.
        """
        return self._check(witness=witness, for_append=for_append)[0]

    def _check(self, *, witness: Witness | None = None, for_append: bool = False, every_signature: bool = False,
               site: SiteKey | None = None, require_signed: bool = False) -> tuple[list[str], list[str]]:
        """(problems, notes) of `check`; `every_signature` checks each entry's signature (verify), against `site`
        (default: this site's own key)."""
        try:
            anchor = read_anchor(self.anchor_path)
        except LedgerError as exc:
            return [str(exc)], []
        if not self.path.exists():
            if anchor is None:
                return [f"no privacy ledger at {self.path} and no anchor at {self.anchor_path}: this site was never "
                        f"initialised, or both were deleted. A new site runs `{NEW_SITE}`; a site that trained before "
                        f"must restore both from a backup, or record the loss with `{RESET}`"], []
            return [f"the privacy ledger {self.path} is missing, but its anchor {self.anchor_path} says it held "
                    f"{anchor.entries} entries (head {anchor.head[:16]}): it was deleted or moved. Restore it from a "
                    f"backup, or record the loss and start again with `{RESET}`"], []
        try:
            entries = self.entries()
        except LedgerError as exc:
            return [f"{exc}: restore the ledger from a backup, or record the damage with `{RESET}`"], []
        problems = self.chain_problems(entries)
        problems += self._anchor_problems(entries, anchor)
        if witness is not None:
            problems += self._witness_problems(entries, witness)
        signatures = ledger_signing.scan(entries, site=site if site is not None else self.site_key(),
                                         every_signature=every_signature, require_signed=require_signed)
        problems += signatures.problems
        if for_append:
            problems += self._signing_problems(entries)
        return problems, signatures.notes

    def _signing_problems(self, entries: list[LedgerEntry]) -> list[str]:
        """Why this site cannot sign its next entry: its key is unreadable, or the ledger is signed and it has none."""
        if self.signing_key is not None:
            try:
                self._signer()
            except LedgerError as exc:
                return [f"{exc}: restore the site key (site.toml private_key), readable by the site's account"]
            return []
        rule = ledger_signing.key_in_force(entries)
        if rule is None:
            return []
        return [f"this ledger is signed with key {rule.fingerprint} since seq {rule.seq}, but this site has no key to "
                f"sign its next entry with: restore the site key (site.toml private_key)"]

    @staticmethod
    def chain_problems(entries: list[LedgerEntry]) -> list[str]:
        """Every entry whose hash does not match its contents, or that does not link to the one before."""
        problems = []
        prev_hash = GENESIS
        for i, e in enumerate(entries):
            where = f"entry {i + 1} (seq {e.seq}, run {e.run_id}, round {e.server_round})"
            if e.computed_hash() != e.hash:
                problems.append(f"{where}: contents do not match its hash: it was edited")
            if e.seq != i:
                kind = "reordered" if any(x.seq == i for x in entries[i + 1:]) else "deleted or inserted"
                problems.append(f"{where}: expected seq {i}: entries were {kind} before it")
            elif e.prev_hash != prev_hash:
                problems.append(f"{where}: does not link to the entry before it: an entry before it was "
                                f"edited, deleted or reordered")
            prev_hash = e.hash
        return problems

    def _anchor_problems(self, entries: list[LedgerEntry], anchor: Anchor | None) -> list[str]:
        if anchor is None:
            if not entries:
                return [f"the privacy ledger {self.path} is empty and has no anchor: this site was never "
                        f"initialised. A new site runs `{NEW_SITE}`"]
            return [f"the ledger's anchor {self.anchor_path} is missing, so removed newest entries could not be "
                    f"seen: restore it from a backup, or re-anchor the ledger as it is with "
                    f"`fl-client ledger reset --keep-budget --reason '...'`"]
        n = anchor.entries
        if len(entries) < n:
            return [f"the ledger was truncated: it holds {len(entries)} entries but its anchor {self.anchor_path} "
                    f"says {n} (head {anchor.head[:16]}): the newest {n - len(entries)} were removed. Restore it "
                    f"from a backup, or record the loss with `{RESET}`"]
        if n > 0 and entries[n - 1].hash != anchor.head:
            return [f"the ledger was replaced or rolled back: its entry seq {n - 1} is not the head "
                    f"{anchor.head[:16]} its anchor {self.anchor_path} recorded. Restore the ledger from a backup, "
                    f"or record the loss with `{RESET}`"]
        return []

    @staticmethod
    def _witness_problems(entries: list[LedgerEntry], witness: Witness) -> list[str]:
        """The coordinator's witness names an entry by seq and its full hash: this ledger must hold exactly it.

        A witness without a hash (an older site or coordinator) is compared by the hash it links to only.
        """
        accepted = {witness.key()} | ({witness.legacy_key()} if witness.prev_hash else set())
        if any(e.witness in accepted for e in entries):
            return []  # the operator recorded this witness as lost with a reset
        held = entries[witness.seq] if witness.seq < len(entries) else None
        if held is not None and (held.hash == witness.hash if witness.hash else held.prev_hash == witness.prev_hash):
            return []
        fix = (f"Restore the newest ledger and anchor; or record the loss and start again with `{RESET} "
               f"--accept-witness {witness.key()}`")
        if witness.hash:
            seen = f"ledger entry seq {witness.seq} (hash {witness.hash[:16]})"
        else:
            seen = f"ledger entry seq {witness.seq} (linking to {witness.prev_hash[:16]})"
        if held is None:
            return [f"the coordinator received this site's update recorded as {seen}, and this ledger "
                    f"({len(entries)} entries) does not contain it: ledger and anchor were restored from an older "
                    f"copy or replaced. {fix}"]
        return [f"the coordinator received this site's update recorded as {seen}, and this ledger "
                f"({len(entries)} entries) holds a different entry seq {witness.seq} (hash {held.hash[:16]}): that "
                f"entry, or one before it, was rewritten after the update was sent, or ledger and anchor were "
                f"restored from an older copy or replaced. {fix}"]

    def verify(self, *, recompute: bool = True, witness: Witness | None = None, site: SiteKey | None = None,
               require_signed: bool = False) -> VerifyReport:
        """`check` plus every signature checked and every entry's epsilon recomputed from the history before it.

        An edited, deleted, inserted or reordered entry is named; so is an entry
        whose recorded epsilon does not follow from the recorded noise, sample
        rates and steps (even if someone re-hashed the whole chain), a ledger
        shorter than, or different from, its anchor, and (for a signed ledger) an
        entry whose signature does not match, or that is not signed, or signed with
        a key other than the site's. `site`: the site's public key to check against
        (default: this ledger's signing key's). `require_signed`: a ledger with no
        signed entry fails when the site has a key (see `ledger_signing.scan`).
        """
        problems, notes = self._check(witness=witness, every_signature=True, site=site, require_signed=require_signed)
        try:
            entries = self.entries()
        except LedgerError:
            return VerifyReport(entries=0, problems=tuple(problems))
        if recompute:
            problems += self._epsilon_problems(entries)
        return VerifyReport(entries=len(entries), problems=tuple(problems), notes=tuple(notes))

    @staticmethod
    def _epsilon_problems(entries: list[LedgerEntry]) -> list[str]:
        from fedhaven.shared.accounting import epsilon

        out = []
        for i, e in enumerate(entries):
            if e.kind not in SPENDS:
                continue
            history = budget_history(entries[: i + 1])
            got = epsilon(history=history, delta=e.delta,
                          accountant=e.accountant)  # type: ignore[arg-type]  # as read; Opacus refuses others
            want = math.inf if e.epsilon_after is None else e.epsilon_after
            if not (got == want or math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)):
                out.append(f"entry {i + 1} (seq {e.seq}): records epsilon {want:.6g}, but the noise, sample rates "
                           f"and steps up to it give {got:.6g}")
        return out

    # --- writing -------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, *, timeout: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold the site's ledger lock (fcntl.flock, across threads and processes) for check, train and append.

        The lock file is the site account's alone (0600, in its 0700 state directory), and names the process
        holding it. Waiting is bounded: after `timeout` seconds LedgerBusy names the holder.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # a lock file left readable by others (older fedhaven) is taken back
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                        raise LedgerBusy(f"the privacy ledger {self.path} stayed locked for {timeout:.0f} s by process "
                                         f"{holder} (another task of this site, or another program): try again when "
                                         f"it ends") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _append(self, entries: list[LedgerEntry], **values: Any) -> LedgerEntry:
        prev = entries[-1] if entries else None
        signer = self._signer()
        rule = ledger_signing.key_in_force(entries)
        if signer is not None:
            values["signer"] = signer.fingerprint
            if rule is None or rule.fingerprint != signer.fingerprint:
                if rule is not None and values.get("kind", "update") in SPENDS:
                    raise LedgerError(f"this ledger is signed with key {rule.fingerprint} since seq {rule.seq}, not "
                                      f"with this site's key {signer.fingerprint}: if the site key was replaced, "
                                      f"record it with `{ledger_signing.NEW_KEY}`")
                values["signer_key"] = signer.public_openssh  # from here on, entries are signed with this key
        elif rule is not None:
            raise LedgerError(self._signing_problems(entries)[0])
        entry = LedgerEntry(seq=prev.seq + 1 if prev else 0, prev_hash=prev.hash if prev else GENESIS,
                            time=time.time(), **values)
        entry = replace(entry, hash=entry.computed_hash())
        if signer is not None:
            entry = replace(entry, signature=signer.sign(entry.hash))
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(_record(entry), sort_keys=True, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            fsync_dir(self.path.parent)
        write_anchor(self.anchor_path, Anchor(entries=entry.seq + 1, head=entry.hash, site=entry.site,
                                              ledger=str(self.path.resolve()), time=entry.time))
        return entry

    def append(self, **values: object) -> LedgerEntry:
        """Chain an update entry to the last one, sign it (a site with a key), write it durably (fsync), then the
        anchor; before anything is sent. Its hash is final when this returns.

        Call it under `locked()` after `check(for_append=True)` passed: it does not re-verify.
        """
        return self._append(self.entries(), **values)

    def init(self, *, site: str, reason: str = "new site") -> LedgerEntry:
        """Start the ledger of a new site: refused when a ledger or an anchor already exists."""
        with self.locked():
            if self.path.exists() and self.path.stat().st_size > 0:
                raise LedgerError(f"{self.path} already exists: this site has a ledger. To start a fresh budget, "
                                  f"record it with `{RESET}`")
            if self.anchor_path.exists():
                raise LedgerError(f"{self.anchor_path} exists: this site had a ledger, which is missing now. Restore "
                                  f"it from a backup, or record the loss with `{RESET}`")
            return self._append([], site=site, kind="init", reason=reason)

    def reset(self, *, site: str, reason: str, fresh_budget: bool = True,
              accept_witness: Witness | None = None) -> LedgerEntry:
        """Append a reset entry naming every problem it accepts; a fresh budget after it unless `fresh_budget` is False.

        A ledger whose chain is damaged (edited, unreadable) is moved aside, never deleted, and the
        reset starts a new chain that names it.
        """
        if not reason.strip():
            raise LedgerError("a reset needs a --reason: it is kept in the ledger for auditors")
        with self.locked():
            problems = self.check(witness=accept_witness)
            if accept_witness is not None:
                problems += [f"coordinator witness {accept_witness.key()} accepted as lost"]
            try:
                entries = self.entries()
                damaged = bool(self.chain_problems(entries))
            except LedgerError:
                entries, damaged = [], True
            if damaged and self.path.exists():
                aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.path, aside)
                fsync_dir(self.path.parent)
                problems.append(f"the damaged ledger was moved to {aside}")
                entries = []
            return self._append(entries, site=site, kind="reset", reason=reason.strip(),
                                acknowledged="; ".join(problems) or None, fresh_budget=fresh_budget,
                                witness=accept_witness.key() if accept_witness is not None else None)

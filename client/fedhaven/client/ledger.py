"""The site's privacy ledger: append-only, hash-chained JSONL of every update that left the site."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fedhaven.shared.accounting import PrivacyHistory

GENESIS = "0" * 64
LEDGER_FILE = "privacy-ledger.jsonl"


class LedgerError(RuntimeError):
    """The ledger cannot be read or does not verify; the message names the entry."""


@dataclass(frozen=True)
class LedgerEntry:
    """One update that left the site, with what it cost in privacy."""

    seq: int
    prev_hash: str
    time: float
    site: str
    run_id: int
    server_round: int
    model: str
    update_sha256: str  # SHA-256 of the message content sent (masked under SecAgg+)
    weights_sha256: str  # SHA-256 of the trained weights before masking
    update_l2_norm: float
    num_examples: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon_before: float | None  # None: infinite (a round trained without DP)
    epsilon_after: float | None
    cumulative_epsilon: float | None
    hash: str = ""

    def body(self) -> dict:
        """Everything the hash covers: all fields but the hash itself."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hash"}

    def computed_hash(self) -> str:
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `Ledger.verify`: entries checked and every problem found, by entry."""

    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    """The ledger file of one site's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> Ledger:
        return cls(Path(state_dir) / LEDGER_FILE)

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
        """The accountant's history, rebuilt from every entry (all runs, in order)."""
        h = PrivacyHistory()
        for e in self.entries():
            if e.steps > 0:  # a round without noise (DP off) makes epsilon infinite, as it should
                h = h.add(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
        return h

    def head(self) -> str:
        entries = self.entries()
        return entries[-1].hash if entries else GENESIS

    def append(self, **values: object) -> LedgerEntry:
        """Chain a new entry to the last one and write it durably (fsync) before anything is sent."""
        entries = self.entries()
        prev = entries[-1] if entries else None
        entry = LedgerEntry(seq=prev.seq + 1 if prev else 0, prev_hash=prev.hash if prev else GENESIS,
                            time=time.time(), **values)  # type: ignore[arg-type]
        entry = LedgerEntry(**{**asdict(entry), "hash": entry.computed_hash()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(asdict(entry), sort_keys=True, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def verify(self, *, recompute: bool = True) -> VerifyReport:
        """Check every hash and link, and recompute every entry's epsilon from the history before it.

        An edited, deleted, inserted or reordered entry is named; so is an entry
        whose recorded epsilon does not follow from the recorded noise, sample
        rates and steps (even if someone re-hashed the whole chain).
        """
        problems = []
        try:
            entries = self.entries()
        except LedgerError as exc:
            return VerifyReport(entries=0, problems=(str(exc),))
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
        if recompute:
            problems += self._epsilon_problems(entries)
        return VerifyReport(entries=len(entries), problems=tuple(problems))

    @staticmethod
    def _epsilon_problems(entries: list[LedgerEntry]) -> list[str]:
        from fedhaven.shared.accounting import epsilon

        out = []
        history = PrivacyHistory()
        for i, e in enumerate(entries):
            if e.steps > 0:
                history = history.add(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
            got = epsilon(history=history, delta=e.delta, accountant=e.accountant)  # type: ignore[arg-type]
            want = math.inf if e.epsilon_after is None else e.epsilon_after
            if not (got == want or math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)):
                out.append(f"entry {i + 1} (seq {e.seq}): records epsilon {want:.6g}, but the noise, sample rates "
                           f"and steps up to it give {got:.6g}")
        return out

"""The privacy ledger: hash chain, tamper detection by entry, accountant rebuilt from it."""

from __future__ import annotations

import json

import pytest

from fedhaven.client.ledger import GENESIS, Ledger, LedgerError
from fedhaven.shared.accounting import PrivacyHistory, epsilon


def _append(ledger: Ledger, n: int, run_id: int = 7) -> None:
    hist = ledger.history()
    for r in range(1, n + 1):
        before = epsilon(history=hist, delta=1e-5)
        hist = hist.add(noise_multiplier=1.2, sample_rate=0.05, steps=20)
        after = epsilon(history=hist, delta=1e-5)
        ledger.append(site="hospital-a", run_id=run_id, server_round=r, model="lenet", update_sha256="ab" * 32,
                      weights_sha256="cd" * 32, update_l2_norm=3.5, num_examples=400, noise_multiplier=1.2, sample_rate=0.05, steps=20,
                      delta=1e-5, accountant="rdp", epsilon_before=before, epsilon_after=after,
                      cumulative_epsilon=after)


def _lines(ledger: Ledger) -> list[dict]:
    return [json.loads(x) for x in ledger.path.read_text().splitlines()]


def _write(ledger: Ledger, lines: list[dict]) -> None:
    ledger.path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def test_chain_and_history_across_runs(tmp_path):
    ledger = Ledger.in_dir(tmp_path)
    assert ledger.head() == GENESIS and ledger.history() == PrivacyHistory()
    _append(ledger, 2, run_id=1)
    _append(Ledger.in_dir(tmp_path), 2, run_id=2)  # a restart: a new object on the same file
    entries = ledger.entries()
    assert [e.seq for e in entries] == [0, 1, 2, 3]
    assert entries[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    assert ledger.verify().ok and ledger.verify().entries == 4
    assert ledger.history().total_steps == 80
    assert entries[-1].cumulative_epsilon == pytest.approx(epsilon(history=ledger.history(), delta=1e-5))
    assert ledger.head() == entries[-1].hash


@pytest.mark.parametrize(("tamper", "expect"), [
    (lambda ls: ls[1].update({"epsilon_after": 0.01}), "entry 2 (seq 1, run 7, round 2): contents do not match"),
    (lambda ls: ls.pop(1), "entry 2 (seq 2, run 7, round 3): expected seq 1: entries were deleted"),
    (lambda ls: ls.insert(1, ls.pop(2)), "entries were reordered"),
    (lambda ls: ls.pop(), None),  # dropping the newest entry is only visible against an outside copy of the head
])
def test_tampering_is_named(tmp_path, tamper, expect):
    ledger = Ledger.in_dir(tmp_path)
    _append(ledger, 4)
    head = ledger.head()
    lines = _lines(ledger)
    tamper(lines)
    _write(ledger, lines)
    report = ledger.verify()
    if expect is None:
        assert report.ok and ledger.head() != head
    else:
        assert not report.ok
        assert any(expect in p for p in report.problems), report.problems


def test_recomputed_hash_still_breaks_the_link(tmp_path):
    ledger = Ledger.in_dir(tmp_path)
    _append(ledger, 3)
    entries = ledger.entries()
    from dataclasses import asdict, replace

    forged = replace(entries[0], steps=1)
    forged = replace(forged, hash=forged.computed_hash())  # a careful forger re-hashes the edited entry
    lines = _lines(ledger)
    lines[0] = asdict(forged)
    _write(ledger, lines)
    problems = ledger.verify().problems
    assert any("entry 2" in p and "does not link" in p for p in problems)


def test_unreadable_line(tmp_path):
    ledger = Ledger.in_dir(tmp_path)
    _append(ledger, 1)
    with ledger.path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(LedgerError, match=":2: unreadable"):
        ledger.entries()
    assert not ledger.verify().ok


def test_a_consistently_rehashed_forgery_is_caught_by_recomputing_epsilon(tmp_path):
    from dataclasses import asdict, replace

    ledger = Ledger.in_dir(tmp_path)
    _append(ledger, 3)
    forged, prev = [], "0" * 64
    for e in ledger.entries():  # lower every recorded epsilon and rebuild a valid chain
        e = replace(e, prev_hash=prev, epsilon_after=e.epsilon_after / 2)
        e = replace(e, hash=e.computed_hash())
        forged.append(asdict(e))
        prev = e.hash
    _write(ledger, forged)
    problems = ledger.verify().problems
    assert len(problems) == 3 and all("but the noise, sample rates and steps up to it give" in p for p in problems)
    assert ledger.verify(recompute=False).ok

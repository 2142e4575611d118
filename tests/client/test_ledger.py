"""The privacy ledger: hash chain, tamper detection by entry, anchor and witness, explicit init/reset, the lock."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from fedhaven.client.anchor import read_anchor
from fedhaven.client.ledger import GENESIS, Ledger, LedgerEntry, LedgerError
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.witness import Witness


def _append(ledger: Ledger, n: int, run_id: int = 7) -> None:
    hist = ledger.history()
    for r in range(1, n + 1):
        before = epsilon(history=hist, delta=1e-5)
        hist = hist.add(noise_multiplier=1.2, sample_rate=0.05, steps=20)
        after = epsilon(history=hist, delta=1e-5)
        ledger.append(site="hospital-a", run_id=run_id, server_round=r, model="lenet", update_sha256="ab" * 32,
                      weights_sha256="cd" * 32, update_l2_norm=3.5, num_examples=400, noise_multiplier=1.2,
                      sample_rate=0.05, steps=20, delta=1e-5, accountant="rdp", epsilon_before=before,
                      epsilon_after=after, cumulative_epsilon=after)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    led = Ledger.in_dir(tmp_path / "state")
    led.init(site="hospital-a")
    return led


def _lines(ledger: Ledger) -> list[dict]:
    return [json.loads(x) for x in ledger.path.read_text().splitlines()]


def _write(ledger: Ledger, lines: list[dict]) -> None:
    ledger.path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def _witness(ledger: Ledger) -> Witness:
    """What the coordinator holds after receiving the newest update."""
    last = ledger.entries()[-1]
    return Witness(site="hospital-a", seq=last.seq, prev_hash=last.prev_hash)


def test_chain_anchor_and_history_across_runs(tmp_path):
    ledger = Ledger.in_dir(tmp_path / "state")
    assert ledger.head() == GENESIS and ledger.history() == PrivacyHistory()
    assert any("never initialised" in p for p in ledger.check())  # no ledger, no anchor: refuse, never "fresh"
    ledger.init(site="hospital-a")
    assert ledger.anchor_path == tmp_path / "state.ledger-anchor.json"  # outside the state directory
    _append(ledger, 2, run_id=1)
    _append(Ledger.in_dir(tmp_path / "state"), 2, run_id=2)  # a restart: a new object on the same files
    entries = ledger.entries()
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4] and entries[0].kind == "init"
    assert entries[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    assert ledger.verify().ok and ledger.verify().entries == 5
    assert ledger.history().total_steps == 80
    assert entries[-1].cumulative_epsilon == pytest.approx(epsilon(history=ledger.history(), delta=1e-5))
    anchor = read_anchor(ledger.anchor_path)
    assert (anchor.entries, anchor.head) == (5, ledger.head())


@pytest.mark.parametrize(("tamper", "expect"), [
    (lambda ls: ls[2].update({"epsilon_after": 0.01}), "entry 3 (seq 2, run 7, round 2): contents do not match"),
    (lambda ls: ls.pop(2), "entry 3 (seq 3, run 7, round 3): expected seq 2: entries were deleted"),
    (lambda ls: ls.insert(2, ls.pop(3)), "entries were reordered"),
    (lambda ls: ls.pop(), "truncated: it holds 4 entries but its anchor"),  # newest entry dropped
    (lambda ls: ls.clear(), "truncated: it holds 0 entries"),  # emptied
])
def test_tampering_is_named(ledger, tamper, expect):
    _append(ledger, 4)
    lines = _lines(ledger)
    tamper(lines)
    _write(ledger, lines)
    report = ledger.verify()
    assert not report.ok
    assert any(expect in p for p in report.problems), report.problems
    assert ledger.check()  # the cheap per-round check sees it too


def test_a_deleted_ledger_is_not_a_fresh_budget(ledger):
    _append(ledger, 2)
    ledger.path.unlink()
    problems = ledger.check()
    assert len(problems) == 1 and "is missing, but its anchor" in problems[0] and "held 3 entries" in problems[0]
    assert "fl-client ledger reset" in problems[0]
    with pytest.raises(LedgerError, match="had a ledger, which is missing"):
        ledger.init(site="hospital-a")  # a lost file never becomes a new site by accident
    ledger.anchor_path.unlink()  # both gone (e.g. the disk): still refused, the operator must act
    assert "never initialised" in ledger.check()[0]


def test_a_replaced_ledger_of_the_same_length_is_caught(ledger, tmp_path):
    _append(ledger, 2)
    other = Ledger.in_dir(tmp_path / "other")
    other.init(site="hospital-a")
    _append(other, 2)
    shutil.copy(other.path, ledger.path)  # a valid chain, but not this site's
    assert any("replaced or rolled back" in p for p in ledger.check())


def test_a_consistent_rollback_of_ledger_and_anchor_is_caught_by_the_witness(ledger, tmp_path):
    _append(ledger, 1)
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(ledger.path, backup / "ledger")
    shutil.copy(ledger.anchor_path, backup / "anchor")
    _append(ledger, 2)
    seen = _witness(ledger)  # the coordinator received the newest update
    assert ledger.check(witness=seen) == []
    shutil.copy(backup / "ledger", ledger.path)  # a full restore of an older backup
    shutil.copy(backup / "anchor", ledger.anchor_path)
    assert ledger.check() == []  # locally consistent: only the coordinator's witness can tell
    problems = ledger.check(witness=seen)
    assert len(problems) == 1 and "does not contain it" in problems[0]
    assert f"--accept-witness {seen.key()}" in problems[0]
    # the operator records the loss: appended, with the witness, and the chain verifies again
    entry = ledger.reset(site="hospital-a", reason="restored from Monday's backup", accept_witness=seen)
    assert entry.kind == "reset" and entry.witness == seen.key() and "accepted as lost" in entry.acknowledged
    assert ledger.check(witness=seen) == [] and ledger.verify().ok
    assert ledger.history() == PrivacyHistory()  # a fresh budget, recorded in the chain


def test_a_crash_between_append_and_anchor_is_not_a_rollback(ledger):
    _append(ledger, 1)
    stale = ledger.anchor_path.read_text()
    _append(ledger, 1)
    ledger.anchor_path.write_text(stale)  # the anchor one entry behind: the ledger extends it
    assert ledger.check() == []


def test_a_missing_anchor_is_named_and_re_anchoring_keeps_the_budget(ledger):
    _append(ledger, 2)
    spent = ledger.history()
    ledger.anchor_path.unlink()
    assert any("anchor" in p and "is missing" in p for p in ledger.check())
    entry = ledger.reset(site="hospital-a", reason="anchor disk replaced", fresh_budget=False)
    assert entry.fresh_budget is False and "is missing" in entry.acknowledged
    assert ledger.check() == [] and ledger.verify().ok and ledger.history() == spent


def test_reset_of_a_damaged_chain_moves_it_aside(ledger):
    _append(ledger, 2)
    lines = _lines(ledger)
    lines[1]["steps"] = 1
    _write(ledger, lines)
    ledger.reset(site="hospital-a", reason="someone edited the ledger")
    aside = list(ledger.path.parent.glob("privacy-ledger.jsonl.damaged-*"))
    assert len(aside) == 1 and len(aside[0].read_text().splitlines()) == 3  # kept, never deleted
    entries = ledger.entries()
    assert [e.kind for e in entries] == ["reset"] and str(aside[0]) in entries[0].acknowledged
    assert ledger.verify().ok


def test_init_and_reset_are_explicit(ledger):
    with pytest.raises(LedgerError, match="already exists"):
        ledger.init(site="hospital-a")
    with pytest.raises(LedgerError, match="needs a --reason"):
        ledger.reset(site="hospital-a", reason=" ")


def test_entries_written_before_the_new_fields_still_verify(tmp_path):
    """Entries without `kind` (older fedhaven) hash as they were written."""
    ledger = Ledger.in_dir(tmp_path / "state")
    ledger.init(site="a")
    _append(ledger, 1)
    old = {k: v for k, v in _lines(ledger)[1].items()
           if k not in ("kind", "reason", "acknowledged", "fresh_budget", "witness")}
    assert LedgerEntry(**old).computed_hash() == old["hash"]


def test_recomputed_hash_still_breaks_the_link(ledger):
    _append(ledger, 3)
    entries = ledger.entries()
    forged = replace(entries[1], steps=1)
    forged = replace(forged, hash=forged.computed_hash())  # a careful forger re-hashes the edited entry
    lines = _lines(ledger)
    lines[1] = asdict(forged)
    _write(ledger, lines)
    problems = ledger.verify().problems
    assert any("entry 3" in p and "does not link" in p for p in problems)


def test_unreadable_line(ledger):
    _append(ledger, 1)
    with ledger.path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(LedgerError, match=":3: unreadable"):
        ledger.entries()
    assert not ledger.verify().ok


def test_a_consistently_rehashed_forgery_is_caught_by_recomputing_epsilon(ledger):
    from fedhaven.client.anchor import Anchor, write_anchor

    _append(ledger, 3)
    forged, prev = [], GENESIS
    for e in ledger.entries():  # lower every recorded epsilon, rebuild a valid chain and its anchor
        if e.kind == "update":
            e = replace(e, epsilon_after=e.epsilon_after / 2)
        e = replace(e, prev_hash=prev)
        e = replace(e, hash=e.computed_hash())
        forged.append(asdict(e))
        prev = e.hash
    _write(ledger, forged)
    write_anchor(ledger.anchor_path, Anchor(entries=4, head=prev, site="hospital-a", ledger="x", time=0.0))
    problems = ledger.verify().problems
    assert len(problems) == 3 and all("but the noise, sample rates and steps up to it give" in p for p in problems)
    assert ledger.verify(recompute=False).ok


def test_the_lock_holds_across_processes(ledger):
    """A second process cannot take the site's ledger lock while the first holds it."""
    lock = ledger.path.with_name(ledger.path.name + ".lock")
    code = (f"from fedhaven.client.ledger import Ledger\nimport sys\nl = Ledger.in_dir({str(ledger.path.parent)!r})\n"
            f"with l.locked():\n    print('held', flush=True)\n    sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with open(lock, "a") as fh:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the holder is done
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


HOLDER = """
import sys, time
from fedhaven.client.ledger import Ledger
with Ledger.in_dir(sys.argv[1]).locked():
    print("held", flush=True)
    time.sleep(30)
"""


def test_a_held_lock_is_waited_for_a_bounded_time_and_its_holder_named(tmp_path):
    import subprocess
    import sys

    from fedhaven.client.ledger import LedgerBusy

    ledger = Ledger.in_dir(tmp_path / "state")
    ledger.init(site="hospital-a")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "state")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = __import__("time").monotonic()
        with pytest.raises(LedgerBusy, match=f"locked for 1 s by process {holder.pid}"), ledger.locked(timeout=1.0):
            pass
        assert __import__("time").monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    with ledger.locked(timeout=5.0):  # free again once the holder is gone
        pass


def test_the_lock_and_state_are_the_site_accounts_alone(tmp_path):
    """Another local account can neither open the lock file nor enter the state directory (umask 077, 0700)."""
    import os
    import stat

    ledger = Ledger.in_dir(tmp_path / "state")
    lock = ledger.path.with_name(ledger.path.name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    lock.chmod(0o644)  # as an older fedhaven left it
    with ledger.locked():
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
        assert lock.read_text().strip() == str(os.getpid())
    fresh = Ledger.in_dir(tmp_path / "fresh" / "state")
    with fresh.locked():
        pass
    assert stat.S_IMODE(os.stat(fresh.path.parent).st_mode) & 0o077 == 0


def test_fl_client_runs_with_umask_077(tmp_path, monkeypatch):
    import os

    from fedhaven.client.cli import main

    seen = []
    monkeypatch.setattr("fedhaven.shared.cli.run_command", lambda **kw: seen.append(os.umask(0o077)) or 0)
    old = os.umask(0o022)
    try:
        assert main(["check"]) == 0
    finally:
        os.umask(old)
    assert seen == [0o077]


def test_another_account_cannot_hold_the_lock(tmp_path):
    """In a folder other accounts may traverse (0755), uid nobody tries to take the site's ledger lock: the state
    directory (0700) and the lock file (0600) keep it out, so it cannot stall the site."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another account")
    root = Path(tempfile.mkdtemp(prefix="fedhaven-lock-"))
    try:
        root.chmod(0o755)
        ledger = Ledger.in_dir(root / "state")
        with ledger.locked():
            pass
        lock = ledger.path.with_name(ledger.path.name + ".lock")
        probe = ("import fcntl, sys\ntry:\n"
                 "    f = open(sys.argv[1])  # read access is enough for flock\n"
                 "    fcntl.flock(f, fcntl.LOCK_EX)\n"
                 "    print('held')\nexcept PermissionError:\n    print('denied')\n")
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I",
                              "-c", probe, str(lock)], capture_output=True, text=True, timeout=60)
        assert res.stdout.strip() == "denied", res.stdout + res.stderr
    finally:
        shutil.rmtree(root)


# --- the witness commits to the entry's contents; entries signed with the site key (issue #22, finding 4) -----------

def _key(folder: Path) -> Path:
    """A site key as `fl-client keygen` writes it: site.key (0600) and site.pub beside it."""
    from fedhaven.shared.crypto import make_site_keypair, write_private, write_public

    private, public = make_site_keypair()
    write_private(folder / "site.key", private)
    write_public(folder / "site.pub", public)
    return folder / "site.key"


@pytest.fixture
def signed(tmp_path) -> Ledger:
    """A deployed site's ledger: started and written with its site key."""
    led = Ledger.in_dir(tmp_path / "state", signing_key=_key(tmp_path))
    led.init(site="hospital-a")
    return led


def _append_noise(ledger: Ledger, n: int, noise: float = 1.0) -> None:
    hist = ledger.history()
    for r in range(1, n + 1):
        before = epsilon(history=hist, delta=1e-5)
        hist = hist.add(noise_multiplier=noise, sample_rate=0.05, steps=200)
        after = epsilon(history=hist, delta=1e-5)
        ledger.append(site="hospital-a", run_id=7, server_round=r, model="lenet", update_sha256="ab" * 32,
                      weights_sha256="cd" * 32, update_l2_norm=3.5, num_examples=400, noise_multiplier=noise,
                      sample_rate=0.05, steps=200, delta=1e-5, accountant="rdp", epsilon_before=before,
                      epsilon_after=after, cumulative_epsilon=after)


def _full_witness(ledger: Ledger) -> Witness:
    """What the coordinator holds after receiving the newest update: its seq and its own hash."""
    last = ledger.entries()[-1]
    return Witness(site="hospital-a", seq=last.seq, prev_hash=last.prev_hash, hash=last.hash)


def _rewrite(ledger: Ledger, index: int, *, noise: float = 50.0, keep_signature: bool = True) -> tuple[float, float]:
    """The finding: raise entry `index`'s noise, recompute every epsilon after it so each follows from the
    recorded history, re-hash the chain from there and rewrite the anchor. Returns (spent before, spent after)."""
    from fedhaven.client.anchor import Anchor, write_anchor
    from fedhaven.client.ledger import budget_history

    entries = ledger.entries()
    spent = epsilon(history=ledger.history(), delta=1e-5)
    out, prev = entries[:index], entries[index - 1].hash
    for i, e in enumerate(entries[index:], start=index):
        if i == index:
            e = replace(e, noise_multiplier=noise)
        e = replace(e, prev_hash=prev)
        if e.kind == "update":
            after = epsilon(history=budget_history([*out, e]), delta=1e-5)
            e = replace(e, epsilon_before=epsilon(history=budget_history(out), delta=1e-5), epsilon_after=after,
                        cumulative_epsilon=after)
        e = replace(e, hash=e.computed_hash())
        if not keep_signature:
            e = replace(e, signer=None, signer_key=None, signature=None)
            e = replace(e, hash=e.computed_hash())
        out.append(e)
        prev = e.hash
    _write(ledger, [{k: v for k, v in asdict(e).items() if v is not None or k not in ("signer", "signer_key",
                                                                                        "signature")} for e in out])
    write_anchor(ledger.anchor_path, Anchor(entries=len(out), head=prev, site="hospital-a", ledger="x", time=0.0))
    return spent, epsilon(history=ledger.history(), delta=1e-5)


def test_a_signed_ledger_names_its_key_and_verifies(signed, tmp_path):
    from fedhaven.shared.crypto import fingerprint

    _append_noise(signed, 2)
    entries = signed.entries()
    fp = fingerprint((tmp_path / "site.pub").read_bytes())
    assert entries[0].kind == "init" and entries[0].signer == fp and entries[0].signer_key  # the key, named once
    assert all(e.signer == fp and e.signature for e in entries) and not any(e.signer_key for e in entries[1:])
    report = signed.verify(require_signed=True)
    assert report.ok and any(f"signed from seq 0 with key {fp}: every signature checked, against this site's key"
                             in n for n in report.notes), report.notes
    assert signed.check(witness=_full_witness(signed)) == []


def test_an_unsigned_ledger_says_so_and_verifies(ledger):
    """A simulated site (no key): unsigned, and verify says so rather than failing."""
    _append(ledger, 1)
    report = ledger.verify(require_signed=True)
    assert report.ok and any(n.startswith("unsigned:") for n in report.notes)
    assert not any(e.signer or e.signature for e in ledger.entries())
    assert "signature" not in ledger.path.read_text()  # unsigned lines hold no signing fields


def test_a_rewritten_newest_entry_is_caught_by_its_signature_and_by_the_witness(signed):
    """The finding: the newest entry's noise 1.0 -> 50, epsilon recomputed, re-hashed, anchor rewritten."""
    _append_noise(signed, 3)
    seen = _full_witness(signed)  # the coordinator received the newest update
    spent, forged = _rewrite(signed, index=3)
    assert forged < spent  # what the forgery was for: less epsilon spent on paper
    report = signed.verify()
    assert not report.ok
    assert [p for p in report.problems if "entry 4 (seq 3" in p and "its signature" in p and "does not match" in p]
    assert not any("but the noise" in p for p in report.problems)  # every recorded epsilon follows: only keys tell
    assert any("its signature" in p for p in signed.check())  # the per-task check: the newest signature
    problems = Ledger(signed.path, anchor=signed.anchor_path).check(witness=seen)  # no key at hand: the witness
    assert len(problems) == 2 and "holds a different entry seq 3" in problems[0] and "rewritten" in problems[0]
    assert f"--accept-witness {seen.key()}" in problems[0] and seen.key() == f"3:{seen.hash}"


def test_a_rewritten_older_entry_is_caught_by_its_signature_and_by_the_witness(signed):
    _append_noise(signed, 3)
    seen = _full_witness(signed)
    _rewrite(signed, index=1)  # the first update, and everything after it re-hashed
    problems = signed.verify().problems
    assert all(any(f"(seq {s}," in p and "its signature" in p for p in problems) for s in (1, 2, 3)), problems
    assert any("holds a different entry seq 3" in p for p in signed.check(witness=seen))


def test_a_rewrite_without_signatures_is_caught(signed):
    """The forger drops the signatures of the entries it rewrote, or of the whole ledger."""
    _append_noise(signed, 3)
    seen = _full_witness(signed)
    _rewrite(signed, index=3, keep_signature=False)
    assert any("entry 4 (seq 3" in p and "not signed, but this ledger is signed since seq 0" in p
               for p in signed.verify().problems)
    _rewrite(signed, index=1, keep_signature=False)
    lines = _lines(signed)
    init = {k: v for k, v in lines[0].items() if k not in ("signer", "signer_key", "signature")}
    init["hash"] = LedgerEntry(**init).computed_hash()
    _write(signed, [init, *lines[1:]])
    _rewrite(signed, index=1, keep_signature=False)  # relink everything to the unsigned init
    assert not any(e.signature for e in signed.entries())
    report = signed.verify(require_signed=True)  # offline, with the site key: a keyed site signs every entry
    assert any("none of its 4 entries is signed, but this site has a key" in p for p in report.problems)
    assert any("holds a different entry seq 3" in p for p in signed.check(witness=seen))


def test_an_entry_appended_without_the_key_is_refused_and_caught(signed):
    _append_noise(signed, 1)
    keyless = Ledger(signed.path, anchor=signed.anchor_path)
    assert any("no key to sign its next entry" in p for p in keyless.check(for_append=True))
    with pytest.raises(LedgerError, match="no key to sign its next entry"):
        _append_noise(keyless, 1)
    assert len(signed.entries()) == 2


def test_a_ledger_written_before_signing_is_signed_from_its_next_entry(ledger, tmp_path):
    """Migration: entries written before ledger signing stay as they are (unsigned, hash-chained); the first entry
    written with the key names it, and every entry after it must be signed."""
    _append(ledger, 2)
    keyed = Ledger(ledger.path, anchor=ledger.anchor_path, signing_key=_key(tmp_path))
    assert keyed.check(for_append=True) == []  # the site trains on: its next entry is signed
    report = keyed.verify(require_signed=True)  # offline, it cannot tell this from a ledger stripped of signatures
    assert any("none of its 3 entries is signed" in p and "ledger reset --keep-budget" in p for p in report.problems)
    assert keyed.verify().ok  # `fl-client check` (and each task): the site starts, and signs its next entry
    _append_noise(keyed, 1)
    entries = keyed.entries()
    assert entries[3].signer_key and entries[3].signature and not entries[2].signature
    report = keyed.verify(require_signed=True)
    assert report.ok and any("entries seq 0-2 are unsigned (written before ledger signing)" in n for n in report.notes)


def test_a_replaced_site_key_is_recorded_by_a_reset(signed, tmp_path):
    _append_noise(signed, 1)
    new = tmp_path / "new"
    new.mkdir()
    rotated = Ledger(signed.path, anchor=signed.anchor_path, signing_key=_key(new))
    problems = rotated.check(for_append=True)
    assert any("but this site's key" in p and "ledger reset --keep-budget --reason 'new site key'" in p
               for p in problems)
    with pytest.raises(LedgerError, match="not with this site's key"):
        _append_noise(rotated, 1)
    spent = rotated.history()
    entry = rotated.reset(site="hospital-a", reason="site key replaced, ticket 7", fresh_budget=False)
    assert entry.signer_key and "but this site's key" in entry.acknowledged
    _append_noise(rotated, 1)
    report = rotated.verify(require_signed=True)
    assert report.ok and any("signing key changed at seq 2" in n for n in report.notes), report
    assert rotated.history().total_steps == spent.total_steps + 200
    assert not signed.verify().ok  # the old key no longer signs the newest entries


def test_a_public_key_that_is_not_the_sites_is_named(signed, tmp_path):
    from fedhaven.client.ledger_signing import site_key

    _append_noise(signed, 1)
    other = tmp_path / "other"
    other.mkdir()
    _key(other)
    report = signed.verify(site=site_key(public=other / "site.pub"))  # an auditor's copy of another key
    assert any("signed with key" in p and "but this site's key" in p for p in report.problems)
    assert signed.verify(site=site_key(public=tmp_path / "site.pub")).ok
    (tmp_path / "site.pub").write_bytes((other / "site.pub").read_bytes())  # site.pub no longer site.key's
    assert any("is not the public half of" in p for p in signed.verify().problems)


def test_a_witness_without_an_entry_hash_still_works(ledger, tmp_path):
    """From a coordinator older than `ledger_hash`: compared by the hash the entry links to; a reset that accepted
    it as lost, before or after this change, is honoured."""
    _append(ledger, 2)
    old = _witness(ledger)
    assert old.hash == "" and old.key() == old.legacy_key() and ledger.check(witness=old) == []
    ledger.path.write_text("".join(ledger.path.read_text().splitlines(keepends=True)[:2]))
    ledger.anchor_path.unlink()
    ledger.reset(site="hospital-a", reason="restored", accept_witness=old)
    assert ledger.check(witness=old) == []
    # the same entry, as a new coordinator names it: accepted by the reset that named its link
    assert ledger.check(witness=replace(old, hash="9" * 64)) == []

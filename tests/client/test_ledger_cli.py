"""`fl-client ledger` and `fl-client check` on a site's real files: a lost or rolled-back ledger fails, named."""

from __future__ import annotations

import shutil

import pytest

from fedhaven.client.cli import main
from fedhaven.client.site_config import load_site_config
from fedhaven.shared.accounting import PrivacyHistory, epsilon


@pytest.fixture
def site(tmp_path, digits_site):
    return digits_site(tmp_path)


def _spend(path, rounds: int) -> None:
    """Append `rounds` updates as the site's ClientApp does (under the lock, after the check)."""
    ledger = load_site_config(path / "site.toml").ledger()
    for r in range(rounds):
        with ledger.locked():
            assert ledger.check() == []
            hist = ledger.history().add(noise_multiplier=0.8, sample_rate=0.2, steps=50)
            eps = epsilon(history=hist, delta=1e-5)
            ledger.append(site="hospital-a", run_id=1, server_round=r + 1, model="lenet", update_sha256="a" * 64,
                          weights_sha256="b" * 64, update_l2_norm=1.0, num_examples=120, noise_multiplier=0.8,
                          sample_rate=0.2, steps=50, delta=1e-5, accountant="rdp", epsilon_before=0.0,
                          epsilon_after=eps, cumulative_epsilon=eps)


def _run(capfd, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out + err


def test_a_new_site_is_initialised_explicitly_and_checks(site, capfd):
    cfg = str(site / "site.toml")
    code, text = _run(capfd, "check", "--config", cfg)
    assert code == 2 and "never initialised" in text and "fl-client ledger init" in text
    code, text = _run(capfd, "ledger", "init", "--config", cfg)
    assert code == 0 and "started for site hospital-a" in text
    code, text = _run(capfd, "ledger", "init", "--config", cfg)
    assert code == 1 and "already exists" in text
    _spend(site, 3)
    code, text = _run(capfd, "check", "--config", cfg)
    assert code == 0 and "check passed" in text and "4 entries" in text
    spent = epsilon(history=PrivacyHistory().add(noise_multiplier=0.8, sample_rate=0.2, steps=150), delta=1e-5)
    assert f"epsilon {spent:.3f} spent of 50" in text


@pytest.mark.parametrize(("damage", "named"), [
    ("delete", "is missing, but its anchor"),
    ("truncate", "the ledger was truncated: it holds 3 entries but its anchor"),
    ("rollback", "the ledger was truncated: it holds 2 entries"),
    ("replace", "replaced or rolled back"),
])
def test_verify_and_check_fail_on_a_lost_or_rolled_back_ledger(site, capfd, damage, named):
    cfg = str(site / "site.toml")
    assert main(["ledger", "init", "--config", cfg]) == 0
    _spend(site, 1)
    ledger = load_site_config(site / "site.toml").ledger()
    old = ledger.path.read_bytes()
    _spend(site, 2)
    if damage == "delete":
        ledger.path.unlink()
    elif damage == "truncate":
        ledger.path.write_text("".join(ledger.path.read_text().splitlines(keepends=True)[:-1]))
    elif damage == "rollback":
        ledger.path.write_bytes(old)  # an older copy of the file
    else:  # another valid chain of the same length
        from fedhaven.client.ledger import Ledger

        other = Ledger.in_dir(site / "other")
        other.init(site="hospital-a")
        for e in ledger.entries()[1:]:
            other.append(**{k: v for k, v in vars(e).items()
                            if k not in ("seq", "prev_hash", "time", "hash", "signer", "signer_key", "signature")})
        shutil.copy(other.path, ledger.path)
    capfd.readouterr()
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 1 and named in text and "does NOT verify" in text
    code, text = _run(capfd, "check", "--config", cfg)
    assert code == 2 and named in text and "check passed" not in text


def test_reset_appends_a_logged_entry_and_verify_passes_again(site, capfd):
    cfg = str(site / "site.toml")
    assert main(["ledger", "init", "--config", cfg]) == 0
    _spend(site, 2)
    ledger = load_site_config(site / "site.toml").ledger()
    ledger.path.unlink()
    code, text = _run(capfd, "ledger", "reset", "--config", cfg)
    assert code == 1 and "needs a --reason" in text
    code, text = _run(capfd, "ledger", "reset", "--config", cfg, "--reason", "disk failure, ticket 42")
    assert code == 0 and "FRESH BUDGET" in text and "is missing, but its anchor" in text
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 0 and "verified: 1 entries" in text
    code, text = _run(capfd, "ledger", "show", "--config", cfg)
    assert code == 0 and "reset" in text and "disk failure, ticket 42" in text


def test_show_and_verify_take_a_state_directory_or_a_ledger_file(site, capfd):
    """A simulated site has no site.toml: its ledger is verified from its folder or file."""
    assert main(["ledger", "init", "--config", str(site / "site.toml")]) == 0
    _spend(site, 2)
    state = site / "state"
    for where in (["--state-dir", str(state)], ["--ledger", str(state / "privacy-ledger.jsonl")]):
        code, text = _run(capfd, "ledger", "verify", *where)
        assert code == 0 and "verified: 3 entries" in text and "at delta 1e-05" in text
        code, text = _run(capfd, "ledger", "show", *where)
        assert code == 0 and "2 updates left this site" in text
    (site / "state.ledger-anchor.json").unlink()
    code, text = _run(capfd, "ledger", "verify", "--state-dir", str(state))
    assert code == 1 and "anchor" in text and "is missing" in text


def test_check_names_a_state_dir_that_cannot_be_created(tmp_path):
    """`fl-client check` used to pass here and `fl-client start` then died with a NotADirectoryError traceback."""
    from fedhaven.client.cli.check import state_dir_problems

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file, not a folder" in state_dir_problems(blocker / "state")[0]
    assert state_dir_problems(tmp_path / "new" / "state") == []
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root may write anywhere
        assert "does not let this account create it" in state_dir_problems(locked / "state")[0]




def test_verify_catches_a_rewritten_newest_entry_by_its_signature(site, capfd, rewrite_newest):
    cfg = str(site / "site.toml")
    assert main(["ledger", "init", "--config", cfg]) == 0
    _spend(site, 3)
    ledger = load_site_config(site / "site.toml").ledger()
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 0 and "signed from seq 0 with key SHA256:" in text and "against this site's key" in text
    spent = epsilon(history=ledger.history(), delta=1e-5)
    rewrite_newest(ledger, noise=50.0)
    assert epsilon(history=ledger.history(), delta=1e-5) < spent
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 1 and "entry 4 (seq 3, run 1, round 3): its signature" in text and "does NOT verify" in text
    code, text = _run(capfd, "ledger", "verify", "--state-dir", str(site / "state"))  # no site.toml: still caught
    assert code == 1 and "its signature" in text
    code, text = _run(capfd, "ledger", "verify", "--state-dir", str(site / "state"), "--public-key",
                      str(site / "site.pub"))  # an auditor, with the key the coordinator registered
    assert code == 1 and "its signature" in text
    code, text = _run(capfd, "check", "--config", cfg)
    assert code == 2 and "its signature" in text


def test_a_witness_names_the_entry_hash_and_reset_accepts_it(site, capfd):
    """A full restore of an older backup: the coordinator's witness (SEQ:HASH of the entry it received) names the
    entry the ledger lost; `reset --accept-witness SEQ:HASH` records it, after which that witness passes."""
    from fedhaven.shared.witness import Witness

    cfg = str(site / "site.toml")
    assert main(["ledger", "init", "--config", cfg]) == 0
    _spend(site, 1)
    ledger = load_site_config(site / "site.toml").ledger()
    backup = ledger.path.read_bytes(), ledger.anchor_path.read_bytes()
    _spend(site, 1)
    newest = ledger.entries()[-1]
    seen = Witness(site="hospital-a", seq=newest.seq, prev_hash=newest.prev_hash, hash=newest.hash)
    ledger.path.write_bytes(backup[0])
    ledger.anchor_path.write_bytes(backup[1])
    problems = ledger.check(witness=seen)
    assert len(problems) == 1 and f"--accept-witness 2:{newest.hash}" in problems[0]
    code, text = _run(capfd, "ledger", "reset", "--config", cfg, "--reason", "restored from backup, ticket 42",
                      "--accept-witness", f"2:{newest.hash}")
    assert code == 0 and "accepted as lost" in text
    assert ledger.check(witness=seen) == [] and ledger.entries()[-1].witness == seen.key()
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 0 and "verified: 3 entries" in text


def test_a_ledger_written_before_signing_is_named_and_signed_from_a_reset(site, capfd):
    """Migration: a deployed site's ledger from before ledger signing. Its site starts and trains (the next entry is
    signed); `ledger verify` names it unsigned with the fix, since offline it could also be a stripped ledger."""
    from fedhaven.client.ledger import Ledger

    cfg = str(site / "site.toml")
    old = Ledger.in_dir(site / "state")  # as fedhaven before signing wrote it: no key
    old.init(site="hospital-a")
    ledger = load_site_config(site / "site.toml").ledger()
    for r in range(2):
        Ledger(ledger.path, anchor=ledger.anchor_path).append(
            site="hospital-a", run_id=1, server_round=r + 1, model="lenet", update_sha256="a" * 64,
            weights_sha256="b" * 64, update_l2_norm=1.0, num_examples=120, noise_multiplier=0.8, sample_rate=0.2,
            steps=50, delta=1e-5, accountant="rdp", epsilon_before=0.0,
            epsilon_after=epsilon(history=PrivacyHistory().add(noise_multiplier=0.8, sample_rate=0.2,
                                                               steps=50 * (r + 1)), delta=1e-5))
    code, text = _run(capfd, "check", "--config", cfg)
    assert code == 0 and "check passed" in text
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 1 and "none of its 3 entries is signed, but this site has a key" in text
    assert "ledger reset --keep-budget" in text
    code, text = _run(capfd, "ledger", "reset", "--config", cfg, "--keep-budget", "--reason",
                      "sign the ledger from here")
    assert code == 0 and "budget kept" in text
    code, text = _run(capfd, "ledger", "verify", "--config", cfg)
    assert code == 0 and "entries seq 0-2 are unsigned (written before ledger signing)" in text
    assert "signed from seq 3 with key" in text
    _spend(site, 1)  # the site's ClientApp, as ever
    assert _run(capfd, "ledger", "verify", "--config", cfg)[0] == 0

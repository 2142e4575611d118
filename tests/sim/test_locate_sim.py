"""fl-sim end to end on digits under SecAgg+: a NaN site among enough sites is located inside the masked sum by
re-masked subgroup sums, named, left out, and the run completes; among three sites the run stops saying why."""

from __future__ import annotations

import json

import pytest

from fedhaven.sim import cli

pytestmark = [pytest.mark.slow, pytest.mark.locate]
TINY = ["train.local_epochs=2", "train.lr=0.2", "train.batch_size=64", "dp.target_epsilon=8.0"]


def _lines(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_site_among_eight_is_located_named_and_left_out(tmp_path, capfd):
    code = cli.main(["run", "digits", *TINY, "sites=8", "min_sites=5", 'attack.kind="nan"', "attack.sites=[2]",
                     "--rounds", "2", "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 0, err
    lines = _lines(tmp_path)
    assert [x["status"] for x in lines] == ["initial", "ok", "ok"]
    first, second = lines[1], lines[2]
    assert first["located"] == ["site-02"] and 1 <= first["locate_groups"] <= 8 and first["locate_time_s"] > 0
    assert "located site-02" in first["locate_note"]
    assert "site-02: its update broke the round's sum" in err  # the operator's output names it
    assert (first["sites_ok"], first["sites_rejected"]) == (7, 1)  # counted as a site whose update was rejected
    # the round completed from the honest sites' re-masked sum: finite, within the bound honest sites keep
    assert 0 < first["update_norm"] <= first["update_bound"] and first["loss"] == first["loss"]
    # no extra spend: each site trained once in round 1 and re-masked in however many groups it was asked to join;
    # its epsilon depends only on its sample rate (the sites hold 168 or 169 examples: two values)
    eps = first["epsilons"]
    assert len(eps) == 8 and len({round(v, 9) for v in eps.values()}) <= 2
    # left out of round 2: it never trains again in this run
    assert second["located"] == [] and second["epsilons"]["site-02"] == eps["site-02"]
    assert all(second["epsilons"][s] > eps[s] for s in eps if s != "site-02")
    privacy = (tmp_path / "privacy.md").read_text()
    assert "Searches for a bad site inside a masked sum" in privacy and "site\\-02" in privacy


def test_a_resumed_simulation_never_asks_the_located_site_again(tmp_path, capfd):
    """Located in round 1, then the run is cut after round 1 and resumed: the simulated sites come back on new nodes,
    and the located one is left out from the resumed run's first round (named by partition before it answers)."""
    from fedhaven.client.ledger import Ledger

    code = cli.main(["run", "digits", *TINY, "sites=8", "min_sites=5", 'attack.kind="nan"', "attack.sites=[2]",
                     "--rounds", "3", "--run-dir", str(tmp_path)])
    assert code == 0, capfd.readouterr().err
    # what a crash during round 2 leaves: round 1's checkpoint and record, nothing after
    for name in ("model.pt", "model.json", "privacy.json", "privacy.md", "checkpoints/round-002.pt",
                 "checkpoints/round-003.pt"):
        (tmp_path / name).unlink()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(x for x in lines if json.loads(x)["round"] < 2) + "\n")
    bad = Ledger.in_dir(tmp_path / "sites" / "site-02")
    assert [s[0] for s in _spends(bad)] == [1]
    assert cli.main(["run", "--resume", str(tmp_path)]) == 0, capfd.readouterr().err
    after = [x for x in _lines(tmp_path) if x["status"] == "ok" and x["round"] >= 2]
    assert [x["round"] for x in after] == [2, 3] and all(x["located"] == [] for x in after)
    assert [s[0] for s in _spends(Ledger.in_dir(tmp_path / "sites" / "site-02"))] == [1]  # never trained again


def test_three_sites_cannot_hide_an_honest_update_so_the_run_stops_with_the_reason(tmp_path, capfd):
    code = cli.main(["run", "digits", *TINY, 'attack.kind="nan"', "attack.sites=[0]", "robust.max_rejected=1",
                     "--rounds", "1", "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1 and "FAILED: 1 rounds in a row were rejected" in err
    assert "the bad site could not be located" in err and "isolating fewer than 3 honest sites" in err
    (rejected,) = [x for x in _lines(tmp_path) if x["status"] == "rejected"]
    assert rejected["located"] == [] and rejected["locate_groups"] == 0


def _spends(ledger) -> list[tuple]:
    """What each update in a site's ledger says it spent: (round, noise multiplier, sample rate, steps, delta,
    epsilon before, epsilon after, cumulative epsilon)."""
    return [(e.server_round, e.noise_multiplier, e.sample_rate, e.steps, e.delta, e.epsilon_before, e.epsilon_after,
             e.cumulative_epsilon) for e in ledger.entries() if e.kind != "init"]


def test_honest_sites_spend_exactly_what_they_spend_in_the_clean_run(tmp_path, capfd):
    """10 digits sites under SecAgg+ with default defences, site-03 at `nan`, against the same run without it: every
    honest site's ledger verifies and holds, entry for entry, the same spending as in the clean run (round, noise,
    sample rate, steps, delta and the epsilons it recorded, compared exactly), so its epsilon recomputed from the
    ledger, and the one the privacy report states, equal the clean run's: locating cost no privacy."""
    from fedhaven.client.ledger import Ledger
    from fedhaven.shared.accounting import epsilon

    common = ["run", "digits", *TINY, "sites=10", "min_sites=5", "--rounds", "2"]
    runs = {"clean": tmp_path / "clean", "nan": tmp_path / "nan"}
    assert cli.main([*common, "--run-dir", str(runs["clean"])]) == 0, capfd.readouterr().err
    code = cli.main([*common, 'attack.kind="nan"', "attack.sites=[3]", "--run-dir", str(runs["nan"])])
    assert code == 0, capfd.readouterr().err
    attacked = _lines(runs["nan"])
    assert [x["located"] for x in attacked if x["status"] == "ok"] == [["site-03"], []]
    privacy = {k: json.loads((d / "privacy.json").read_text())["sites"] for k, d in runs.items()}
    honest = [f"site-{i:02d}" for i in range(10) if i != 3]
    for name in honest:
        ledgers = {k: Ledger.in_dir(d / "sites" / name) for k, d in runs.items()}
        assert all(ledger.verify().ok for ledger in ledgers.values()), name
        spends = {k: _spends(ledger) for k, ledger in ledgers.items()}
        assert [s[0] for s in spends["nan"]] == [1, 2], (name, spends["nan"])  # one update per round, no other
        assert spends["nan"] == spends["clean"], name
        fresh = {k: epsilon(history=ledger.history(), delta=1e-5) for k, ledger in ledgers.items()}
        assert fresh["nan"] == fresh["clean"] and privacy["nan"][name]["epsilon"] == privacy["clean"][name]["epsilon"]
        assert privacy["nan"][name]["epsilon"] == pytest.approx(fresh["nan"], rel=1e-9)  # the report states it
    # the attacker trained once and was never asked again
    assert [s[0] for s in _spends(Ledger.in_dir(runs["nan"] / "sites" / "site-03"))] == [1]


def test_two_nan_sites_cancel_in_secagg_and_the_run_completes(tmp_path, capfd):
    """Two attackers among 10 with the harness: every update attack but NaN is clipped by SecAgg+ and bounded, and
    two NaN updates cancel (each quantises to -2**31, and 2 x 2**31 is 0 modulo SecAgg+'s 2**32: both then count as
    a site at the clipping range's low end on every coordinate, within what the guard accepts). So no sum is
    rejected, nothing is searched for, nobody is named, and the run completes with the damage bounded."""
    code = cli.main(["run", "digits", *TINY, "sites=10", "min_sites=5", 'attack.kind="nan"', "attack.sites=[2,7]",
                     "--rounds", "2", "--run-dir", str(tmp_path)])
    assert code == 0, capfd.readouterr().err
    rounds = [x for x in _lines(tmp_path) if x["status"] != "initial"]
    assert [x["status"] for x in rounds] == ["ok", "ok"]
    assert all(x["located"] == [] and x["locate_groups"] == 0 for x in rounds)
    assert all(0 < x["update_norm"] <= x["update_bound"] for x in rounds)


def test_more_bad_sites_than_searched_for_stop_the_run_saying_so(tmp_path, capfd):
    """Three NaN sites among 10 (an odd number: their sum does not cancel) with `robust.locate_max_bad = 1`: the
    search finds no single site that explains the failing groups, names nobody, and the run stops saying why."""
    code = cli.main(["run", "digits", *TINY, "sites=10", "min_sites=5", 'attack.kind="nan"', "attack.sites=[2,5,7]",
                     "robust.max_rejected=1", "--rounds", "2", "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1 and "FAILED: 1 rounds in a row were rejected" in err
    assert "the bad site could not be located" in err and "more than 1 site(s) sent a bad update" in err
    assert "robust.locate_max_bad = 1" in err
    (rejected,) = [x for x in _lines(tmp_path) if x["status"] == "rejected"]
    assert rejected["located"] == [] and rejected["locate_groups"] >= 1
    assert not (tmp_path / "model.pt").exists()

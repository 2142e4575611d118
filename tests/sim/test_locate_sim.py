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


def test_three_sites_cannot_hide_an_honest_update_so_the_run_stops_with_the_reason(tmp_path, capfd):
    code = cli.main(["run", "digits", *TINY, 'attack.kind="nan"', "attack.sites=[0]", "robust.max_rejected=1",
                     "--rounds", "1", "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1 and "FAILED: 1 rounds in a row were rejected" in err
    assert "the bad site could not be located" in err and "isolating fewer than 3 honest sites" in err
    (rejected,) = [x for x in _lines(tmp_path) if x["status"] == "rejected"]
    assert rejected["located"] == [] and rejected["locate_groups"] == 0

"""The robustness benchmark's plan and table: every cell planned, a stopped run never counted as within target."""

from __future__ import annotations

from fedhaven.sim.bench import robustness
from fedhaven.sim.experiment import load_experiment


def _row(secagg, defended, attack, n, acc, stopped=None, rejected=0):
    return {"secagg": secagg, "defended": defended, "attack": attack, "attackers": n, "accuracy": acc,
            "stopped": stopped, "rounds_rejected": rejected}


def test_every_cell_is_planned_and_its_overrides_load():
    cells = robustness.cells()
    assert len(cells) == 4 * (1 + 2 * len(robustness.KINDS)) == 44
    for cell in cells:
        exp = load_experiment(source="mnist", overrides=robustness.overrides(cell, rounds=5))
        assert (exp.rounds, exp.secagg.enabled, exp.robust.enabled) == (5, cell["secagg"], cell["defended"])
        assert exp.attack.kind == cell["attack"] and (cell["attack"] == "none" or
                                                      exp.attack.sites == tuple(range(cell["attackers"])))


def test_the_target_needs_every_defended_single_attacker_cell_within_two_points():
    rows = []
    for secagg in (True, False):
        rows += [_row(secagg, True, "none", 0, 0.93), _row(secagg, False, "none", 0, 0.935)]
        rows += [_row(secagg, True, "scale:1000", 1, 0.92), _row(secagg, True, "signflip", 1, 0.925),
                 _row(secagg, False, "scale:1000", 1, 0.10)]
    res = {"rounds": 5, "sites": 10, "runs_per_cell": 1, "rows": rows}
    assert robustness.target_met(res) == ("largest drop 1.00 points", True)
    rows[2] = _row(True, True, "scale:1000", 1, 0.90)
    assert robustness.target_met(res)[1] is False
    rows[2] = _row(True, True, "scale:1000", 1, None, stopped="3 rounds in a row were rejected", rejected=3)
    assert robustness.target_met(res)[1] is False
    text = "\n".join(robustness.section(res))
    assert "| scale:1000 | 1 | **stopped** (3 rejected) | 10.00% (-83.5) | 92.00% (-1.0) | 10.00% (-83.5) |" in text
    assert "| clean | 0 | 93.00% | 93.50% | 93.00% | 93.50% |" in text and "**not met**" in text

"""The operator's round lines: a round aggregated without a site says which and why."""

import logging

from fedhaven.server.progress import absent_lines, print_round, round_line


def _rec(**kw):
    rec = {"round": 1, "status": "ok", "accuracy": 0.5, "loss": 1.0, "epsilon_max": 1.0, "sites_ok": 2,
           "sites_failed": 1, "round_time_s": 3.0, "attempt": 1, "failures": ()}
    rec.update(kw)
    return rec


def test_a_round_without_a_site_names_it_and_why(caplog):
    why = "site hospital-a refuses to train until its operator acts"
    logger = logging.getLogger("test-progress")
    with caplog.at_level(logging.INFO, logger="test-progress"):
        print_round(logger, _rec(failures=(why, why)), planned=3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("round   1/3  test accuracy") and "sites 2/3" in lines[0]
    assert lines[1:] == [f"round   1/3  not counted: {why}"]  # a failure Flower recorded twice is shown once
    assert caplog.records[1].levelno == logging.WARNING


def test_a_full_or_failed_round_adds_no_absent_lines():
    assert absent_lines(_rec(sites_failed=0)) == []
    failed = _rec(status="failed", failures=("site x crashed",))
    assert absent_lines(failed) == [] and "site x crashed" in round_line(failed)[1]

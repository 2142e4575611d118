"""metrics.jsonl read back: what a crash or a hand edit leaves behind is skipped, never fatal to `fl-server status`."""

from __future__ import annotations

import json
from dataclasses import asdict

from fedhaven.server.cli.status import last_failures
from fedhaven.server.records import RoundRecord, read_rounds


def _line(rnd: int, status: str, failures: tuple[str, ...] = ()) -> str:
    rec = RoundRecord(round=rnd, status=status, attempt=0, loss=None, accuracy=None, epsilon_max=None,
                      epsilon_mean=None, sites_ok=0, sites_failed=len(failures), round_time_s=1.0, fit_time_s=1.0,
                      eval_time_s=0.0, secure_aggregation=True, failures=failures)
    return json.dumps(asdict(rec))


def test_a_torn_and_an_incomplete_line_are_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        _line(1, "failed", ("site-a refused", "site-a refused", "site-b timed out")),
        json.dumps({"round": 2, "status": "failed"}),  # incomplete: no record
        _line(3, "ok"),
        '{"round": 4, "sta',  # torn by a crash
    ]))
    assert [r.round for r in read_rounds(tmp_path)] == [1, 3]
    assert last_failures(tmp_path) == ["site-a refused", "site-b timed out"]


def test_no_metrics_no_failures(tmp_path):
    assert last_failures(tmp_path) == [] and read_rounds(tmp_path) == []

"""`fl-server run`'s quiet default and `--json`: the run in a few lines, its final result as one JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from fedhaven.server.cli.run import result_document, result_lines, run_headline
from fedhaven.server.latency.grid import describe_nodes
from fedhaven.server.progress import ProgressBar
from fedhaven.server.records import RoundRecord
from fedhaven.shared.exitcodes import print_json
from fedhaven.shared.schema import DPConfig, RunConfig


def _rec(n, status="ok", **kw):
    base = dict(round=n, status=status, attempt=1, loss=1.0 / (n + 1), accuracy=0.2 * n, epsilon_max=0.5 * n,
                epsilon_mean=0.4 * n, sites_ok=3, sites_failed=0, round_time_s=2.0, fit_time_s=1.0,
                eval_time_s=0.5, secure_aggregation=True, epsilons={"hospital-a": 0.5 * n})
    base.update(kw)
    return RoundRecord(**base)


def test_json_result_of_a_finished_run_parses_and_holds_its_numbers(tmp_path, capsys):
    recs = [_rec(0, status="initial"), _rec(1), _rec(2, status="failed", accuracy=None, loss=None), _rec(2),
            _rec(3, epsilon_max=math.inf, epsilons={"hospital-a": math.inf})]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in recs))
    (tmp_path / "privacy.json").write_text(json.dumps({"private": False, "epsilon_max": None, "stopped": None,
                                                       "sites": {"hospital-a": {"epsilon": None}}}))
    (tmp_path / "model.pt").write_bytes(b"x")
    print_json(result_document(run_id=42, run_dir=tmp_path, status="completed"))
    doc = json.loads(capsys.readouterr().out)  # strict JSON: no Infinity anywhere
    assert doc["ok"] is True and doc["run_id"] == 42 and doc["status"] == "completed"
    assert doc["rounds_trained"] == 3 and doc["final_accuracy"] == 0.6000000000000001
    assert doc["private"] is False and doc["epsilon_max"] is None and doc["epsilon_per_site"] == {"hospital-a": None}
    assert doc["files"]["model.pt"] == str(tmp_path / "model.pt") and "metrics.csv" not in doc["files"]
    lines = result_lines(tmp_path)
    assert lines[0] == "test accuracy  60.00% after 3 round(s)" and "NOT PRIVATE" in lines[1]


def test_a_run_that_trained_nothing_is_not_ok(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(asdict(_rec(0, status="initial"))) + "\n")
    doc = result_document(run_id=1, run_dir=tmp_path, status="completed")
    assert doc["ok"] is False and doc["rounds_trained"] == 0 and doc["final_accuracy"] is None


def test_the_headline_lists_only_what_differs_from_the_defaults():
    lines = run_headline(RunConfig(rounds=7, dp=DPConfig(target_epsilon=2.0)))
    assert lines[0].startswith("run: 7 rounds") and "epsilon <= 2 per site" in lines[0]
    assert lines[1:] == ["not default: rounds=7 dp.target_epsilon=2.0"]
    assert run_headline(RunConfig()) == [run_headline(RunConfig())[0]]  # nothing else when nothing was changed


class _Node:
    def __init__(self, node_id, name="", status="online"):
        self.node_id, self.name, self.status, self.last_activated_at = node_id, name, status, ""


class _Grid:
    def get_nodes(self):
        return [_Node(12576729868872432448), _Node(2, name="hospital-b"), _Node(3, status="offline")]


def test_waits_name_sites_never_node_ids():
    text = describe_nodes(_Grid(), {12576729868872432448, 2, 3, 99},
                          name_of=lambda n: {3: "hospital-c"}.get(n))
    assert "hospital-b (online)" in text and "hospital-c (offline)" in text
    assert "1 site(s) not named yet" in text and "1 site(s) no longer connected" in text
    assert "12576729868872432448" not in text and "node" not in text


def test_the_progress_bar_is_drawn_only_on_a_terminal():
    class Tty:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert ProgressBar(planned=4, stream=Tty(False)).bar(asdict(_rec(1))) == ""
    bar = ProgressBar(planned=4, stream=Tty(True)).bar(asdict(_rec(1)))
    assert bar.startswith("  [#####...............]") and "left" in bar

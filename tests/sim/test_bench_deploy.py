"""The deploy benchmark's pure part: timestamped events -> per-round and per-message breakdown, ratios, Markdown."""

from __future__ import annotations

import pytest

from fedhaven.sim.bench.deploy import reanalyse, strip_raw
from fedhaven.sim.bench.deploy_breakdown import (
    SECAGG_STAGES,
    analyse_run,
    message_parts,
    parse_site_lines,
    ratios,
    round_ends,
    waves,
)
from fedhaven.sim.bench.deploy_report import section, target_rows

# Two sites, two rounds of one stage each. Round 1: site b's reply reaches the SuperLink last (113.0).
ENDS = {0: 100.0, 1: 120.0, 2: 135.0}
MESSAGES = [  # as the watcher saw them; Flower's message API sends no group id
    {"message_id": "m1a", "group": "", "node": 1, "created": 100.5, "delivered": 102.0, "reply_id": None,
     "reply_claimed": 112.5},
    {"message_id": "m1b", "group": "", "node": 2, "created": 100.5, "delivered": 103.0, "reply_id": "r1b",
     "reply_claimed": 113.5},
    {"message_id": "m2a", "group": "", "node": 1, "created": 121.0, "delivered": 121.5, "reply_id": None,
     "reply_claimed": 130.0},
    {"message_id": "m2b", "group": "", "node": 2, "created": 121.0, "delivered": 124.0, "reply_id": None,
     "reply_claimed": 131.0},
]
OBJECTS = {"r1a": [110.0, 112.0], "r1b": [111.5, 114.0], "r2a": [128.0, 130.5], "r2b": [129.0, 131.5]}
LINES = {
    "site-a": [(101.0, "INFO :      Starting Flower SuperExec"), (102.1, "INFO :      [RUN 7]"),
               (102.1, "INFO :      Receiving: train message (ID: m1a)"), (102.5, "INFO :      Received successfully"),
               (110.0, "INFO :      Sending: train message (ID: r1a)"), (111.0, "INFO :      Sent successfully"),
               (121.6, "INFO :      Receiving: train message (ID: m2a)"), (128.0, "Sending: train message (ID: r2a)"),
               (129.0, "INFO :      Sent successfully")],
    # fedhaven: SuperNode lines forwarded by fl-client, and the site executor's own line per task
    "hospital-b": [(103.1, "supernode | INFO :      Receiving: train message (ID: m1b)"),
                   (110.0, "site hospital-b: task 1 (train) ok in 6.00 s (pull 0.50, app 5.00, push 0.40)"),
                   (111.5, "supernode | INFO :      Sending: train message (ID: r1b)"),
                   (113.0, "supernode | INFO :      Sent successfully"),
                   (124.1, "supernode | INFO :      Receiving: train message (ID: m2b)"),
                   (129.0, "supernode | INFO :      Sending: train message (ID: r2b)"),
                   (130.0, "supernode | INFO :      Sent successfully")],
}
CLIENTS = [{"kind": "client", "message_id": "m1a", "proc_start": 103.0, "enter": 105.0, "exit": 109.0,
            "train_s": 3.5, "stage": "train"}]


def handled() -> list[dict]:
    return [h for site, lines in LINES.items() for h in parse_site_lines(site, lines)]


def test_site_lines_parse_flower_and_fedhaven_output():
    hs = {h["message_id"]: h for h in handled()}
    assert set(hs) == {"m1a", "m2a", "m1b", "m2b"}
    a, b = hs["m1a"], hs["m1b"]
    assert (a["receiving"], a["received"], a["reply_id"], a["sending"], a["sent"], a["task"]) == (
        102.1, 102.5, "r1a", 110.0, 111.0, None)
    assert (b["site"], b["receiving"], b["reply_id"], b["sent"]) == ("hospital-b", 103.1, "r1b", 113.0)
    assert b["task"] == {"end": 110.0, "seconds": 6.0, "verdict": "ok", "pull": 0.5, "app": 5.0, "push": 0.4}
    assert hs["m2b"]["task"] is None  # an executor line is never borrowed from another message


def test_message_parts_telescope_for_a_flower_process_and_a_fedhaven_task():
    hs = {h["message_id"]: h for h in handled()}
    flower = message_parts(hs["m1a"], CLIENTS[0])
    assert flower == pytest.approx({"to_start": 0.9, "startup": 2.0, "app": 4.0, "back": 2.0, "total": 8.9,
                                    "train": 3.5, "download": 0.4, "upload": 1.0})
    fed = message_parts(hs["m1b"], None)  # task started at 110 - 6 = 104; pull 0.5, app 5
    assert fed == pytest.approx({"to_start": 0.9, "startup": 0.5, "app": 5.0, "back": 3.5, "total": 9.9,
                                 "train": None, "download": None, "upload": 1.5})
    for p in (flower, fed):
        assert p["to_start"] + p["startup"] + p["app"] + p["back"] == pytest.approx(p["total"])
    unknown = message_parts({"receiving": 1.0, "sent": None}, None)
    assert unknown["total"] is None and unknown["app"] is None


def test_waves_start_a_new_stage_when_a_node_repeats():
    msgs = [{"message_id": f"{s}{n}", "node": n, "created": 10 * s + n} for s in range(4) for n in (1, 2, 3)]
    assert [[m["message_id"] for m in w] for w in waves(msgs)] == [["01", "02", "03"], ["11", "12", "13"],
                                                                   ["21", "22", "23"], ["31", "32", "33"]]
    assert len(waves(msgs[:2] + msgs[3:4])) == 2  # node 1 again: a second stage, even if node 3 never came


def test_round_breakdown_along_the_last_reply():
    out = analyse_run(ends=ENDS, messages=MESSAGES, handled=handled(), objects=OBJECTS, clients=CLIENTS,
                      train_per_site={1: 3.0, 2: 4.0}, stage_names=("train",))
    r1, r2 = out["rounds"]
    assert (r1["round"], r1["wall_s"], r2["wall_s"]) == (1, 20.0, 15.0)
    st = r1["stages"][0]
    # b's reply reached the SuperLink last: idle 103.0-100.5, handling 113.0-103.0, server pull 114.0-113.0
    assert (st["name"], st["messages"]) == ("train", 2)
    assert st["span"] == pytest.approx(13.5)
    assert (st["idle_cp"], st["handling_cp"], st["pull_lag_cp"]) == pytest.approx((2.5, 10.0, 1.0))
    assert st["idle_mean"] == pytest.approx(2.0) and st["idle_max"] == pytest.approx(2.5)
    for row in out["rounds"]:
        for s in row["stages"]:
            assert s["idle_cp"] + s["handling_cp"] + s["pull_lag_cp"] == pytest.approx(s["span"])
        assert row["between_s"] + row["server_wait_s"] == pytest.approx(row["wall_s"])
    assert r1["between_s"] == pytest.approx(6.5)
    # round 2: the reply id of m2b is known only from the site's "Sending" line; its object went at 131.5
    assert r2["stages"][0]["span"] == pytest.approx(131.5 - 121.0)
    s = out["summary"]  # round 1 is the warm-up
    assert s["warmup_rounds"] == [20.0] and s["steady_rounds"] == 1 and s["round_mean_s"] == 15.0
    assert s["round_sd_s"] is None and s["train_per_site_s"] == 4.0 and s["messages_per_round"] == 2
    assert s["idle_share"] == pytest.approx(r2["idle_cp_s"] / 15.0)


def test_secagg_rounds_name_their_four_stages_and_other_counts_are_numbered():
    msgs = [{"message_id": f"s{s}n{n}", "group": "1", "node": n, "created": 1.0 + s + n / 10,
             "delivered": 1.5 + s + n / 10, "reply_claimed": 1.9 + s + n / 10, "reply_id": None}
            for s in range(4) for n in (1, 2)]
    out = analyse_run(ends={0: 0.0, 1: 10.0}, messages=msgs, handled=[], objects={}, clients=[], train_per_site={},
                      stage_names=SECAGG_STAGES, warmup=0)
    stages = out["rounds"][0]["stages"]
    assert [s["name"] for s in stages] == list(SECAGG_STAGES)
    assert stages[0]["span"] == pytest.approx(2.1 - 1.1)  # no reply object seen: the reply claim ends the stage
    assert stages[0]["handling_cp"] is None  # no site lines: not made up
    out = analyse_run(ends={0: 0.0, 1: 10.0}, messages=msgs[:6], handled=[], objects={}, clients=[],
                      train_per_site={}, stage_names=SECAGG_STAGES, warmup=0)
    assert [s["name"] for s in out["rounds"][0]["stages"]] == ["stage 1", "stage 2", "stage 3"]


def test_round_ends_read_flower_records_and_fedhaven_metrics():
    flower = [{"kind": "round", "round": 0, "t": 5.0}, {"kind": "wait", "start": 5.1, "end": 9.0},
              {"kind": "round", "round": 1, "t": 9.5}]
    fedhaven = [{"round": 0, "status": "initial", "time": 1.0}, {"round": 1, "status": "failed", "time": 4.0},
                {"round": 1, "status": "ok", "time": 7.0}]
    assert round_ends(flower) == {0: 5.0, 1: 9.5}
    assert round_ends(fedhaven) == {0: 1.0, 1: 7.0}  # a failed attempt does not end the round


def summary(mean: float) -> dict:
    per_message = {k: 0.5 for k in ("idle", "to_start", "startup", "app", "back", "total", "download", "upload")}
    spans = {n: 1.0 for n in SECAGG_STAGES}
    return {"summary": {"round_mean_s": mean, "round_sd_s": 0.1, "round_min_s": mean - 0.1, "round_max_s": mean + 0.1,
                        "warmup_rounds": [mean * 2], "stages_per_round": 4, "idle_cp_s": 3.0, "handling_cp_s": 1.0,
                        "pull_lag_cp_s": 0.5, "between_s": 0.2, "train_per_site_s": 0.3, "messages_per_round": 12,
                        "per_message": per_message, "stage_span_s": spans, "stage_app_s": spans,
                        "idle_share": 3.0 / mean},
            "label": "x", "final_accuracy": 0.9}


def results() -> dict:
    systems = {"flower": summary(6.0), "flower-secagg": summary(25.0), "fedhaven-dp-secagg": summary(10.0),
               "fedhaven": {**summary(7.0), "label": "fedhaven", "failed_attempts": 2},
               "fedhaven-dp": {"label": "fedhaven, DP", "error": "RuntimeError: boom"}}
    return {"setup": {"sites": 3, "data": "digits", "examples_per_site": [449, 449, 449], "model": "LeNet",
                      "local_epochs": 3.0, "batch_size": 64, "lr": 0.2, "rounds": 4, "cores": 2,
                      "fedhaven_under_test": {"commit": "abc1234", "dirty": True}, "flwr": "1.42.0"},
            "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0], "systems": systems,
            "ratios": ratios({k: v for k, v in systems.items() if "error" not in v})}


def test_ratios_against_the_issue_targets():
    r = {(x["numerator"], x["denominator"]): x for x in results()["ratios"]}
    assert r[("fedhaven-dp-secagg", "flower-secagg")]["ratio"] == pytest.approx(0.4)
    assert r[("fedhaven-dp-secagg", "flower-secagg")]["met"] is True
    assert r[("fedhaven", "flower")]["ratio"] == pytest.approx(7 / 6) and r[("fedhaven", "flower")]["met"] is False
    assert r[("fedhaven-dp", "flower")]["ratio"] is None  # failed: no ratio, no verdict
    assert r[("fedhaven-dp", "flower")]["met"] is None


def test_report_section_and_target_rows():
    res = results()
    rows = target_rows(res)
    assert [(m, v) for _, m, v in rows] == [("0.40x", "**met**"), ("1.17x", "**not met**")]
    text = "\n".join(section(res))
    assert "| fedhaven, DP | failed: RuntimeError: boom |" in text
    assert "| 90.0% | n/a |" in text  # no load figures: said, not invented
    assert "**25.00**" in text and "setup | share keys | collect masked vectors | unmask" in text
    assert "load average" in text.lower() and "[1.0, 1.0, 1.0]" in text
    assert "commit `abc1234`, with uncommitted changes; Flower 1.42.0" in text  # which code was measured
    assert "Failed round attempts (retried; their time is inside the round): fedhaven: 2." in text
    assert "3.00 s of 25.00 s (12%)" in text  # the SuperNode's idle sleep, named with its share
    assert target_rows(None)[0][2] == "not measured" and section(None) == ["not run in this mode"]


def test_strip_raw_keeps_summaries_and_drops_events():
    res = {"systems": {"flower": {"raw": {"messages": [1]}, "rounds": [{"round": 1, "messages": [1], "wall_s": 2.0}],
                                  "summary": {"round_mean_s": 2.0}}, "fedhaven": {"error": "x"}}}
    out = strip_raw(res)
    assert out["systems"]["flower"] == {"rounds": [{"round": 1, "wall_s": 2.0}], "summary": {"round_mean_s": 2.0}}
    assert out["systems"]["fedhaven"] == {"error": "x"} and "raw" in res["systems"]["flower"]


def test_reanalyse_recomputes_the_breakdown_from_raw_events():
    records = [{"kind": "round", "round": r, "t": t} for r, t in ENDS.items()] + CLIENTS
    raw = {"setup": {}, "systems": {"flower": {"load_start": [1, 1, 1], "raw": {
        "run_id": 7, "submitted": 99.0, "finished": 136.0, "status": "finished:completed", "details": "",
        "messages": MESSAGES, "objects": OBJECTS, "records": records,
        "site_lines": {k: [list(x) for x in v] for k, v in LINES.items()}}}}}  # JSON turns tuples into lists
    out = reanalyse(raw)["systems"]["flower"]
    assert [r["wall_s"] for r in out["rounds"]] == [20.0, 15.0]
    assert out["rounds"][0]["stages"][0]["span"] == pytest.approx(13.5)
    assert out["load_start"] == [1, 1, 1] and out["wall_s"] == 37.0

"""Pure part of the deploy benchmark: timestamped events in, per-round and per-message breakdowns and ratios out.

Inputs (all wall-clock seconds, one clock: one machine):
- messages: each instruction message the SuperLink stored, as the watcher saw it (`created` by the
  ServerApp, `delivered` when a SuperNode claimed it, `reply_claimed` when the ServerApp claimed the reply);
- objects: when each message object was stored and deleted (a reply's object is deleted once the ServerApp
  has pulled all of it);
- site lines: each SuperNode's output lines with the time the harness read them ("Receiving: ... (ID: x)",
  "Sent successfully"; for fedhaven also the site executor's "task N (...) ok in S s (pull a, app b, push c)");
- client records: what the plain Flower ClientApps recorded (process start, handler entry/exit, training);
- round ends: when the ServerApp finished each round (round 0: the initial evaluation).

A stage is one wave of messages, one per site (a SecAgg+ round has four). Along the reply that reached the
SuperLink last, a stage's span splits exactly into: SuperNode idle (push -> claimed: Flower's SuperNode
polls every 3 s when idle), site handling (claimed -> reply sent) and server pull lag (reply sent -> pulled:
Flower's grid pulls every 3 s). What a round spends outside its stages is the coordinator's own work
(aggregation, unmasking, evaluation, checkpoints).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

RECEIVING = re.compile(r"Receiving: (\S+) message \(ID: (\w+)\)")
SENDING = re.compile(r"Sending: (\S+) message \(ID: (\w+)\)")
RECEIVED, SENT = "Received successfully", "Sent successfully"
EXECUTOR = re.compile(r"site (\S+): task (\d+) \((\S+)\) (\S+) in ([0-9.]+) s \(([^)]*)\)")
SECAGG_STAGES = ("setup", "share keys", "collect masked vectors", "unmask")
#: (numerator, denominator, target ratio or None, what it compares)
COMPARISONS = (("fedhaven-dp-secagg", "flower-secagg", 0.5, "fedhaven DP + SecAgg+ round / Flower SecAgg+ round"),
               ("fedhaven", "flower", 1.0, "fedhaven round (no SecAgg+, no DP) / plain Flower round"),
               ("fedhaven-dp", "flower", None, "fedhaven DP round (no SecAgg+) / plain Flower round"),
               ("fedhaven-dp-secagg-latency-off", "flower-secagg", None,
                "fedhaven DP + SecAgg+ round, latency shims off / Flower SecAgg+ round"),
               ("fedhaven-latency-off", "flower", None,
                "fedhaven round (no SecAgg+, no DP), latency shims off / plain Flower round"),
               ("fedhaven-dp-secagg", "fedhaven-dp-secagg-latency-off", None,
                "fedhaven DP + SecAgg+ round: latency shims on / off"))


def parse_site_lines(site: str, lines: Iterable[tuple[float, str]]) -> list[dict[str, Any]]:
    """One record per message a SuperNode handled: when it was received, sent, and the executor's task timing."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for t, text in lines:
        if m := RECEIVING.search(text):
            cur = {"site": site, "message_id": m[2], "type": m[1], "receiving": t, "received": None,
                   "reply_id": None, "sending": None, "sent": None, "task": None}
            out.append(cur)
        elif cur is None:
            continue
        elif RECEIVED in text and cur["received"] is None:
            cur["received"] = t
        elif (m := SENDING.search(text)) and cur["reply_id"] is None:
            cur["reply_id"], cur["sending"] = m[2], t
        elif SENT in text and cur["sent"] is None:
            cur["sent"] = t
        elif (m := EXECUTOR.search(text)) and cur["task"] is None:
            parts = {}
            for item in m[6].split(","):
                key, _, val = item.strip().partition(" ")
                try:
                    parts[key] = float(val)
                except ValueError:
                    continue
            cur["task"] = {"end": t, "seconds": float(m[5]), "verdict": m[4], **parts}
    return out


def waves(messages: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split one round's messages (sorted by creation) into stages: a new stage starts when a node repeats."""
    out: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    for m in sorted(messages, key=lambda m: m["created"]):
        if any(x["node"] == m["node"] for x in cur):
            out.append(cur)
            cur = []
        cur.append(m)
    if cur:
        out.append(cur)
    return out


def message_parts(handled: dict[str, Any], client: dict[str, Any] | None) -> dict[str, float | None]:
    """A site's handling of one message, telescoped: to start + start-up + app + back = total.

    Also the two transfers inside it, which overlap those parts: `download` (the SuperNode pulling the
    message from the SuperLink: "Receiving" -> "Received successfully") and `upload` (the reply from
    the moment the SuperNode sees it to "Sent successfully", including its waits for the reply's parts).
    """
    rec, sent = handled["receiving"], handled["sent"]
    start = enter = leave = None
    if client is not None:  # a Flower ClientApp process: its own start, handler entry and exit
        start, enter, leave = client["proc_start"], client["enter"], client["exit"]
    elif handled.get("task"):  # fedhaven's site executor: task total and its pull / app / push
        task = handled["task"]
        start = task["end"] - task["seconds"]
        enter = start + task.get("pull", 0.0)
        leave = enter + task.get("app", 0.0)

    def d(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {"to_start": d(rec, start), "startup": d(start, enter), "app": d(enter, leave), "back": d(leave, sent),
            "total": d(rec, sent), "train": client.get("train_s") if client else None,
            "download": d(rec, handled.get("received")), "upload": d(handled.get("sending"), sent)}


def stage_breakdown(wave: Sequence[dict[str, Any]], handled: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One stage: its span (first push -> the ServerApp holds every reply), split along the last reply sent."""
    start = min(m["created"] for m in wave)
    got = [m.get("reply_received") or m.get("reply_claimed") for m in wave]
    end = max(got) if None not in got else None  # type: ignore[type-var]  # no None in got there
    sent = {m["message_id"]: handled.get(m["message_id"], {}).get("sent") for m in wave}
    last = max(wave, key=lambda m: sent[m["message_id"]] or m.get("reply_received") or 0.0)
    t_sent, t_claim = sent[last["message_id"]], last.get("delivered")
    idle = [m["delivered"] - m["created"] for m in wave if m.get("delivered") is not None]
    return {"start": start, "span": None if end is None else end - start, "messages": len(wave),
            "idle_cp": None if t_claim is None else t_claim - start,
            "handling_cp": None if t_claim is None or t_sent is None else t_sent - t_claim,
            "pull_lag_cp": None if end is None or t_sent is None else end - t_sent,
            "idle_mean": _mean(idle), "idle_max": max(idle) if idle else None}


def round_ends(records: Iterable[dict[str, Any]]) -> dict[int, float]:
    """{round: wall time it ended}, from Flower timing records (kind "round") or fedhaven metrics.jsonl lines."""
    out: dict[int, float] = {}
    for r in records:
        if r.get("kind") == "round":
            out[int(r["round"])] = float(r["t"])
        elif r.get("status") in ("ok", "initial"):
            out[int(r["round"])] = float(r["time"])
    return out


def analyse_run(*, ends: dict[int, float], messages: Sequence[dict[str, Any]], handled: Sequence[dict[str, Any]],
                objects: dict[str, Sequence[float | None]], clients: Sequence[dict[str, Any]],
                train_per_site: dict[int, float], stage_names: Sequence[str], warmup: int = 1) -> dict[str, Any]:
    """Per-round rows and the steady-state summary (rounds after `warmup`) of one system's run.

    `objects` maps object ids to [first stored, deleted]: a reply's message object is deleted when
    the ServerApp has pulled all of it, which ends that reply's wait.
    """
    by_id = {h["message_id"]: h for h in handled}
    messages = [dict(m) for m in messages]
    for m in messages:
        rid = m.get("reply_id") or by_id.get(m["message_id"], {}).get("reply_id")
        m["reply_received"] = objects.get(rid, (None, None))[1] if rid else None
    client_by_id = {c["message_id"]: c for c in clients if c.get("kind") == "client"}
    rows = []
    for rnd in sorted(r for r in ends if r > 0 and r - 1 in ends):
        # Flower's message API sends no group id: a message belongs to the round in which it was created
        msgs = [m for m in messages if ends[rnd - 1] < m["created"] <= ends[rnd]]
        ws = waves(msgs)
        names = list(stage_names) if len(ws) == len(stage_names) else [f"stage {i + 1}" for i in range(len(ws))]
        stages = [{"name": name, **stage_breakdown(w, by_id)} for w, name in zip(ws, names, strict=True)]
        stage_of = {m["message_id"]: name for w, name in zip(ws, names, strict=True) for m in w}
        wall = ends[rnd] - ends[rnd - 1]
        parts = []
        for m in msgs:
            h = by_id.get(m["message_id"])
            if h is not None:
                p: dict[str, Any] = message_parts(h, client_by_id.get(m["message_id"]))
                p["stage"] = stage_of[m["message_id"]]
                p["idle"] = None if m.get("delivered") is None else m["delivered"] - m["created"]
                parts.append(p)
        spans = [s["span"] for s in stages]
        rows.append({"round": rnd, "wall_s": wall, "stages": stages, "messages": parts,
                     "server_wait_s": sum(spans) if spans and None not in spans else None,
                     "between_s": wall - sum(spans) if spans and None not in spans else None,
                     "idle_cp_s": _sum(s["idle_cp"] for s in stages),
                     "handling_cp_s": _sum(s["handling_cp"] for s in stages),
                     "pull_lag_cp_s": _sum(s["pull_lag_cp"] for s in stages),
                     "train_per_site_s": train_per_site.get(rnd)})
    return {"rounds": rows, "summary": summarise(rows, warmup=warmup)}


def summarise(rows: Sequence[dict[str, Any]], *, warmup: int = 1) -> dict[str, Any]:
    steady = [r for r in rows if r["round"] > warmup]
    walls = [r["wall_s"] for r in steady]
    out: dict[str, Any] = {
        "warmup_rounds": [r["wall_s"] for r in rows if r["round"] <= warmup], "steady_rounds": len(steady),
        "round_mean_s": _mean(walls), "round_sd_s": statistics.stdev(walls) if len(walls) > 1 else None,
        "round_min_s": min(walls) if walls else None, "round_max_s": max(walls) if walls else None,
        "stages_per_round": _mean([len(r["stages"]) for r in steady])}
    for key in ("server_wait_s", "between_s", "idle_cp_s", "handling_cp_s", "pull_lag_cp_s", "train_per_site_s"):
        out[key] = _mean([r[key] for r in steady])
    msgs = [m for r in steady for m in r["messages"]]
    out["per_message"] = {k: _mean([m.get(k) for m in msgs]) for k in ("idle", "to_start", "startup", "app", "back",
                                                                        "total", "download", "upload")}
    out["messages_per_round"] = len(msgs) / len(steady) if steady else None
    names = list(dict.fromkeys(s["name"] for r in steady for s in r["stages"]))
    out["stage_span_s"] = {n: _mean([s["span"] for r in steady for s in r["stages"] if s["name"] == n])
                           for n in names}
    out["stage_app_s"] = {n: _mean([m["app"] for m in msgs if m["stage"] == n]) for n in names}
    out["idle_share"] = (out["idle_cp_s"] / out["round_mean_s"]
                         if out["idle_cp_s"] is not None and out["round_mean_s"] else None)
    return out


def ratios(systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """fedhaven / Flower steady-round ratios, with the issue's targets."""
    out = []
    for num, den, target, what in COMPARISONS:
        a, b = (systems.get(k, {}).get("summary", {}).get("round_mean_s") for k in (num, den))
        r = a / b if a is not None and b else None
        out.append({"what": what, "numerator": num, "denominator": den, "ratio": r, "target": target,
                    "met": None if r is None or target is None else r <= target})
    return out


def _clean(xs: Iterable[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None]


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = _clean(xs)
    return statistics.fmean(vals) if vals else None


def _sum(xs: Iterable[float | None]) -> float | None:
    vals = list(xs)
    return None if not vals or any(x is None for x in vals) else float(sum(vals))  # type: ignore[arg-type]  # no None there

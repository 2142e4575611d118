"""The "deployment" section of BENCHMARKS.md and its target rows, written from the deploy benchmark's results."""

from __future__ import annotations

from typing import Any

from fedhaven.sim.bench.deploy_breakdown import SECAGG_STAGES


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _ok(flag: bool | None) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


def _measured(res: dict[str, Any] | None) -> dict[str, Any]:
    """The systems that ran to the end (an error or no rounds leaves a system out of the tables)."""
    if not res or "systems" not in res:
        return {}
    return {k: v for k, v in res["systems"].items() if "error" not in v and v.get("summary")}


def target_rows(res: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the Targets table: the issue's two deployment ratios."""
    rows = []
    by_key = {(r["numerator"], r["denominator"]): r for r in (res or {}).get("ratios", [])}
    for num, den, label in (("fedhaven-dp-secagg", "flower-secagg", "deployed round, DP + SecAgg+, <= 0.5x Flower's "
                                                                    "SecAgg+ round (3 loopback sites)"),
                            ("fedhaven", "flower", "deployed round without SecAgg+ <= 1.0x plain Flower's")):
        r = by_key.get((num, den), {})
        rows.append((label, _f(r.get("ratio"), "{:.2f}x"), _ok(r.get("met"))))
    return rows


def section(res: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the deployment section (no heading numbers: the caller adds its own heading)."""
    if not res or "systems" not in res:
        return ["not run in this mode"]
    if "error" in res:
        return [f"failed: {res['error']}"]
    st, ok = res["setup"], _measured(res)
    per_site = sorted(set(st.get("examples_per_site") or []))
    code = st.get("fedhaven_under_test") or {}
    dirty = {True: ", with uncommitted changes", False: "", None: ""}[code.get("dirty")]
    L = [f"{st['sites']} sites on 127.0.0.1, each system deployed the way its documentation deploys it: TLS "
         "everywhere, SuperNode authentication, runtime dependency installation off, no telemetry. Same data "
         f"({st['data']}, {'/'.join(map(str, per_site)) or '?'} training images a site), model ({st['model']}), "
         f"local training ({st['local_epochs']:g} epochs, batch {st['batch_size']}, lr {st['lr']:g}, plain SGD "
         f"or DP-SGD) and {st['rounds']} rounds; the systems ran one after the other in one invocation. Round 1 "
         f"is the warm-up (processes start, imports); steady = rounds 2-{st['rounds']}. Load average (1/5/15 "
         f"min) {res.get('load_start')} at the start, {res.get('load_end')} at the end, on {st.get('cores')} "
         "cores (*load*: 1-minute load average when each system started -> ended): on a shared machine compare "
         f"ratios, not seconds. fedhaven under test: commit `{code.get('commit') or 'unknown'}`{dirty}; Flower "
         f"{st.get('flwr') or 'version unknown'}.", "",
         "| system | round 1 (s) | steady round (s) | sd | min-max | stages / round | final accuracy | load |",
         "|---|---|---|---|---|---|---|---|"]
    for name, s in res["systems"].items():
        if name not in ok:
            L.append(f"| {s.get('label', name)} | failed: {s.get('error', s.get('status'))} | | | | | | |")
            continue
        m = s["summary"]
        first = m["warmup_rounds"][0] if m["warmup_rounds"] else None
        load = (f"{s['load_start'][0]:.1f} -> {s['load_end'][0]:.1f}" if s.get("load_start") and s.get("load_end")
                else "n/a")
        L.append(f"| {s['label']} | {_f(first, '{:.1f}')} | **{_f(m['round_mean_s'])}** | {_f(m['round_sd_s'])} | "
                 f"{_f(m['round_min_s'])}-{_f(m['round_max_s'])} | {_f(m['stages_per_round'], '{:.0f}')} | "
                 f"{_f(s.get('final_accuracy'), '{:.1%}')} | {load} |")
    retried = [f"{s['label']}: {s['failed_attempts']}" for s in ok.values() if s.get("failed_attempts")]
    if retried:
        L += ["", "Failed round attempts (retried; their time is inside the round): " + "; ".join(retried) + "."]
    L += ["", "| ratio of steady rounds, measured side by side | measured | target | |", "|---|---|---|---|"]
    for r in res.get("ratios", []):
        target = "-" if r["target"] is None else f"<= {r['target']:.1f}x"
        verdict = "" if r["target"] is None else _ok(r["met"])
        L.append(f"| {r['what']} | {_f(r['ratio'], '{:.2f}x')} | {target} | {verdict} |")
    L += ["", "Where a steady round goes (mean per round, seconds). Each stage (one message to every site; a "
          "SecAgg+ round has four) is split along the reply that reached the SuperLink last: *SuperNode idle* = "
          "message pushed -> claimed by its SuperNode (Flower's SuperNode sleeps 3 s whenever it finds no "
          "message; fedhaven's coordinator holds that empty pull until the ServerApp pushes, so its sites "
          "rarely sleep), *site handling* = claimed -> reply sent to the SuperLink, *server pull* = reply sent -> "
          "the ServerApp holds every reply (Flower's grid pulls every 3 s; fedhaven's PollingGrid every poll_min to "
          "poll_max seconds, backing off). "
          "*Coordinator* is the rest of the round: aggregation, SecAgg+ unmasking, evaluation, checkpoints. "
          "Timestamps come from the SuperLink's own state (read-only) and the SuperNodes' output lines.", "",
          "| system | round | SuperNode idle | site handling | server pull | coordinator | training per site |",
          "|---|---|---|---|---|---|---|"]
    for s in ok.values():
        m = s["summary"]
        L.append(f"| {s['label']} | {_f(m['round_mean_s'])} | {_f(m['idle_cp_s'])} | {_f(m['handling_cp_s'])} | "
                 f"{_f(m['pull_lag_cp_s'])} | {_f(m['between_s'])} | {_f(m['train_per_site_s'])} |")
    L += ["", "Per message at a site (mean over the steady rounds' messages, seconds): *to start* = SuperNode "
          "received the message -> Flower's `flwr-clientapp` process started (SuperExec polls every 1 s) or "
          "fedhaven's executor took the task (polls every 0.05 s); *start-up* = Flower: interpreter, imports, "
          "app install and message pull until the handler runs; fedhaven: the executor's pull of the message "
          "(which waits for the SuperNode's download); *app* = the handler (training, DP, masking); *back* = "
          "handler done -> reply sent to the SuperLink (the SuperNode looks for replies every 0.5 s). These four "
          "add up to *site handling*. Transport inside it, overlapping those parts: *download* = the SuperNode "
          "pulling the message from the SuperLink, *upload* = the SuperNode pushing the reply to it.", "",
          "| system | messages / round | SuperNode idle | to start | start-up | app | back | site handling | "
          "download | upload |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in ok.values():
        m, pm = s["summary"], s["summary"]["per_message"]
        L.append(f"| {s['label']} | {_f(m['messages_per_round'], '{:.0f}')} | {_f(pm['idle'])} | "
                 f"{_f(pm['to_start'])} | {_f(pm['startup'])} | {_f(pm['app'])} | {_f(pm['back'])} | "
                 f"{_f(pm['total'])} | {_f(pm.get('download'))} | {_f(pm.get('upload'))} |")
    sec = {k: v for k, v in ok.items() if list(v["summary"]["stage_span_s"]) == list(SECAGG_STAGES)}
    if sec:
        L += ["", "SecAgg+ stages (mean span per round / mean app time per message, seconds):", "",
              "| system | " + " | ".join(SECAGG_STAGES) + " |", "|---|" + "---|" * len(SECAGG_STAGES)]
        for s in sec.values():
            m = s["summary"]
            L.append(f"| {s['label']} | " + " | ".join(f"{_f(m['stage_span_s'][n])} / {_f(m['stage_app_s'][n])}"
                                                       for n in SECAGG_STAGES) + " |")
    L += ["", "**Flower's floor, the SuperNode's 3 s idle sleep** (push -> claim on the critical path, "
          "summed over a round's stages): " + "; ".join(
              f"{s['label']}: {_f(s['summary']['idle_cp_s'])} s of {_f(s['summary']['round_mean_s'])} s "
              f"({_f(s['summary']['idle_share'], '{:.0%}')})" for s in ok.values()) + ". fedhaven runs Flower's "
          "own, unmodified SuperNode; what removes the wait is on the coordinator: the Fleet door "
          "(`fedhaven.server.front`) holds a site's empty pull for up to 10 s and answers it the moment the "
          "ServerApp pushes the site's next message, so a site sleeps 3 s only after a pull held that long "
          "found nothing (between runs). Flower sends a message before its arrays and a receiver that asks for "
          "them too early backs off 1 s, then 2: both of fedhaven's doors hold a pulled message until its "
          "objects are uploaded (`fedhaven.server.latency.uploads`), so neither a site nor the ServerApp waits "
          "that out. "
          "What is left of Flower's floors: the SuperNode looks for the site's reply every 0.5 s (*back*), and "
          "fetches each of a message's objects (every record and array chunk) with its own authenticated request, "
          "which the SuperLink serves from its SQL state (*download*)."]
    return L

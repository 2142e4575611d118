"""The site's side of locating a bad site: keep the update just sent until its round ends, and mask it again for a
subgroup only on the site's terms (`fedhaven.shared.remask`); never train again for it, never record new spend.

- A training task: the last round's kept update is forgotten, the new one kept after it is trained (already
  bounded, clipped and noised: what SecAgg+ masks), with its round and the hash of its trained weights.
- A re-mask round's setup carries the group's member list (and the round's): the site refuses (code SECAGG)
  unless it keeps an update of that round, is on the list, the group has at least `policy.locate_min_group`
  sites of the round, and no combination with the round's sum and the groups it joined in that round singles
  it out among fewer. It then signs its SecAgg+ keys over the list's digest, so that its neighbours (checked
  against the roster) must hold the same list.
- The re-mask round's collect stage names the ledger entry of the update: the site answers only when its newest
  ledger entry is that one, for that run and round, and recorded the kept update; the reply is the kept update,
  with no training metrics and no ledger entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType

from fedhaven.client.seam import legacy
from fedhaven.client.types import Code, SiteInfo, TaskRefused
from fedhaven.shared.remask import ENTRY_KEY, MEMBERS_KEY, ROUND_KEY, SETUP_RECORD, RemaskRequest, request_problems

KEPT_RECORD = "fedhaven.kept-update-of"  # {"run", "round", "num_examples", "weights_sha256"}
PENDING_RECORD = "fedhaven.pending-ledger"  # what `FedhavenClient.fit` trained (flower_app.PENDING_RECORD)
JOINED_RECORD = "fedhaven.remask-joined"  # {"round", "groups": JSON list of member lists, "current": request}
Next = Callable[[Message, Context], Message]


def is_remask(config: dict[str, Any] | None) -> bool:
    """Whether a FitIns config asks to re-mask the kept update (rather than train)."""
    return config is not None and ROUND_KEY in config


def _kept(ctx: Context) -> ConfigRecord | None:
    return ctx.state.config_records.get(KEPT_RECORD)


def forget(ctx: Context) -> None:
    """The round is over: drop the kept update and the groups joined."""
    legacy.forget_parameters(ctx=ctx)
    for name in (KEPT_RECORD, JOINED_RECORD):
        if name in ctx.state.config_records:
            del ctx.state.config_records[name]


def keep(ctx: Context, *, reply: Message, run_id: int, pending: ConfigRecord | None) -> None:
    """Keep the update a training reply carries, as it goes to SecAgg+ to be masked."""
    if pending is None or not reply.has_content():
        return
    legacy.keep_parameters(ctx=ctx, reply=reply)
    ctx.state.config_records[KEPT_RECORD] = ConfigRecord({
        "run": run_id, "round": int(pending["server_round"]),  # type: ignore[arg-type]  # ints this client wrote
        "num_examples": legacy.fitres_of(reply=reply).num_examples,
        "weights_sha256": str(pending["weights_sha256"])})


def current(ctx: Context) -> RemaskRequest | None:
    """The group of the SecAgg+ round in progress when it is a re-mask round (None: a training round)."""
    rec = ctx.state.config_records.get(JOINED_RECORD)
    cur = None if rec is None else rec.get("current")
    return None if not cur else RemaskRequest.from_record(json.loads(str(cur)))


def setup_problems(*, msg: Message, ctx: Context, info: SiteInfo) -> list[str]:
    """At a SecAgg+ setup: for a re-mask round, why the site refuses its group (the group is recorded as joined when
    it does not); for a training round, nothing (and no group is current)."""
    rec = ctx.state.config_records.get(JOINED_RECORD)
    raw = msg.content.config_records.get(SETUP_RECORD)
    if raw is None:
        if rec is not None:
            rec["current"] = ""
        return []
    req = RemaskRequest.from_record(raw)
    if req is None:
        return ["the re-mask request is malformed"]
    kept = _kept(ctx)
    stored = None if kept is None or kept.get("run") != msg.metadata.run_id else kept.get("round")
    joined: list[list[str]] = []
    if rec is not None and rec.get("round") == req.server_round:
        joined = json.loads(str(rec.get("groups", "[]")))
    problems = request_problems(req=req, site=info.name, joined=joined, min_group=info.policy.locate_min_group,
                                stored_round=stored if isinstance(stored, int) else None)
    if not problems:
        ctx.state.config_records[JOINED_RECORD] = ConfigRecord({
            "round": req.server_round, "groups": json.dumps([*joined, list(req.members)]),
            "current": json.dumps(req.to_record())})
    elif rec is not None:
        rec["current"] = ""  # no group of an earlier SecAgg+ round stays current
    return problems


def answer_problems(*, msg: Message, ctx: Context, info: SiteInfo, config: dict[str, Any]) -> list[str]:
    """At a re-mask round's collect stage: why the site will not send its kept update again."""
    req, kept = current(ctx), _kept(ctx)
    if not legacy.is_secagg(content=msg.content):
        return ["the request is not under SecAgg+ (the update would leave the site in the clear)"]
    if req is None:
        return ["no re-mask group was set up with this site in this SecAgg+ round"]
    out = []
    if config.get(MEMBERS_KEY) != req.digest or config.get(ROUND_KEY) != req.server_round:
        out.append("the collect request names another group or round than its setup")
    if kept is None or kept.get("run") != msg.metadata.run_id or kept.get("round") != req.server_round:
        out.append(f"this site keeps no update of round {req.server_round} of this run")
    ledger = info.ledger()
    if ledger is not None and kept is not None:
        entries = ledger.entries()
        last = entries[-1] if entries else None
        if last is None or last.hash != config.get(ENTRY_KEY):
            out.append("the named ledger entry is not this site's newest (it re-masks only the update it last "
                       "recorded)")
        elif (last.run_id, last.server_round, last.weights_sha256) != (
                msg.metadata.run_id, kept.get("round"), kept.get("weights_sha256")):
            out.append("its newest ledger entry does not record the update it keeps")
    return out


def mod(sites: Any) -> Callable[[Message, Context, Next], Message]:
    """Between SecAgg+ and the training mods: keep what a training task sends; answer a re-mask request with it."""

    def remask_mod(msg: Message, ctx: Context, call_next: Next) -> Message:
        config = legacy.fit_config(content=msg.content) if msg.metadata.message_type == MessageType.TRAIN else None
        if config is None:
            return call_next(msg, ctx)
        if not is_remask(config):
            forget(ctx)  # a new round: the last one's update is not kept past it
            reply = call_next(msg, ctx)
            keep(ctx, reply=reply, run_id=msg.metadata.run_id,
                 pending=ctx.state.config_records.get(PENDING_RECORD))
            return reply
        info = sites.info(ctx)
        problems = answer_problems(msg=msg, ctx=ctx, info=info, config=config)
        kept = _kept(ctx)
        examples = None if kept is None else kept.get("num_examples")
        answer = None if problems or not isinstance(examples, int) else legacy.kept_reply(
            ctx=ctx, msg=msg, num_examples=examples, metrics={"site": info.name})
        if answer is None:
            raise TaskRefused(Code.SECAGG, f"site {info.name} refused to re-mask its update (nothing sent): "
                              + "; ".join(problems or ["it keeps no update"]))
        return answer

    return remask_mod

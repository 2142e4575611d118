"""SecAgg+ on the site's terms: every stage's request checked against the site's policy and roster before Flower acts.

Flower's SecAgg+ client (`secaggplus_mod`) accepts whatever the coordinator
sends: a threshold of 1, neighbours whose keys the coordinator made up, a node
listed both active and dead at unmask. Each of those lets a coordinator rebuild
one site's update. This mod runs before Flower's and refuses (code SECAGG)
before anything is sent for a stage whose request breaks the site's terms:

- setup: the threshold is at least `policy.secagg_min_threshold` and more than
  half the shares; the round samples at least `policy.min_sites` sites;
- share-keys: at least `policy.secagg_min_neighbours` other sites, the threshold
  more than half of the shares actually handed out, and, with a roster, every
  neighbour's keys signed for this run, round and node by a distinct site on it;
- collect (before training): at least `policy.min_sites` sites left, so that a
  round that cannot reach the minimum costs no privacy budget;
- unmask: no node both active and dead, this site not dead, only nodes it
  shared with, and at least `policy.min_sites` active.

A deployed site signs its own public keys at setup (`fedhaven.shared.secagg_keys`). In a re-mask round (locating
a bad site, `fedhaven.client.remask`) setup also checks the group against the site's terms, the keys are signed
over the group's member list, and with a roster every neighbour must be on that list and have signed the same one.
What remains: a coordinator that tells different sites different active/dead
lists is not seen by any one site; the threshold above half the shares keeps it
from collecting both secrets of a site from honest neighbours that follow one
view each, not from every mix of views (Flower's SecAgg+ has no consistency round).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message

from fedhaven.client import remask
from fedhaven.client.roster import Roster
from fedhaven.client.seam import legacy
from fedhaven.client.types import Code, SiteInfo, TaskRefused
from fedhaven.shared.crypto import fingerprint
from fedhaven.shared.remask import RemaskRequest
from fedhaven.shared.secagg_keys import NEIGHBOURS_RECORD, PROOF_RECORD, KeyProof, keys_payload
from fedhaven.shared.signing import SigningKey, verify

Next = Callable[[Message, Context], Message]


def setup_problems(*, info: SiteInfo, req: legacy.SecAggRequest) -> list[str]:
    p, out = info.policy, []
    if req.threshold < p.secagg_min_threshold:
        out.append(f"reconstruction threshold {req.threshold} is below this site's minimum "
                   f"(policy.secagg_min_threshold = {p.secagg_min_threshold})")
    if 2 * req.threshold <= req.share_num:
        out.append(f"reconstruction threshold {req.threshold} is not more than half of the {req.share_num} shares")
    if req.threshold > req.share_num:
        out.append(f"reconstruction threshold {req.threshold} exceeds the {req.share_num} shares")
    if req.sample_num < p.min_sites:
        out.append(f"the round has {req.sample_num} site(s), fewer than this site's minimum "
                   f"(policy.min_sites = {p.min_sites})")
    return out


def share_keys_problems(*, info: SiteInfo, req: legacy.SecAggRequest, state: legacy.SecAggRound, run_id: int,
                        round_id: str, proofs: ConfigRecord | None,
                        group: RemaskRequest | None = None) -> list[str]:
    p, out = info.policy, []
    others = [n for n in req.neighbours if n[0] != state.node_id]
    if len(others) < p.secagg_min_neighbours:
        out.append(f"{len(others)} other site(s) would mask this site's update, fewer than its minimum "
                   f"(policy.secagg_min_neighbours = {p.secagg_min_neighbours})")
    if 2 * state.threshold <= len(req.neighbours):
        out.append(f"reconstruction threshold {state.threshold} is not more than half of the "
                   f"{len(req.neighbours)} shares handed out")
    if info.roster is not None:
        out += _roster_problems(info=info, roster=info.roster, others=others, run_id=run_id, round_id=round_id,
                                proofs=proofs, group=group)
    return out


def _roster_problems(*, info: SiteInfo, roster: Roster, others: list[tuple[int, bytes, bytes]], run_id: int,
                     round_id: str, proofs: ConfigRecord | None,
                     group: RemaskRequest | None = None) -> list[str]:
    out: list[str] = []
    if proofs is None:
        return [f"the coordinator forwarded no signed keys for its {len(others)} neighbour(s); with a roster "
                f"({roster.source}) this site shares masks only with sites on it"]
    names: dict[str, int] = {}
    for node, pk1, pk2 in others:
        proof = KeyProof.from_list(proofs.get(str(node)))
        if proof is None:
            out.append(f"node {node}: no signed keys")
            continue
        pinned = roster.fingerprint_of(proof.site)
        if pinned is None:
            out.append(f"node {node}: says it is {proof.site!r}, which is not on the roster")
        elif pinned != fingerprint(proof.key):
            out.append(f"node {node}: says it is {proof.site!r} but signs with key {fingerprint(proof.key)}, "
                       f"not the roster's {pinned}")
        elif not verify(public_openssh=proof.key, signature=proof.signature,
                        data=keys_payload(run_id=run_id, round_id=round_id, node_id=node, pk1=pk1, pk2=pk2,
                                          group=group.digest if group is not None else "")):
            out.append(f"node {node} ({proof.site}): the signature does not cover these keys for this run, round "
                       f"and node" + (" and this re-mask group's member list" if group is not None else ""))
        elif group is not None and proof.site not in group.members:
            out.append(f"node {node}: {proof.site!r} is not on this re-mask group's member list")
        elif proof.site == info.name or proof.site in names:
            out.append(f"node {node}: {proof.site!r} also appears as "
                       f"{'this site' if proof.site == info.name else f'node {names[proof.site]}'}")
        else:
            names[proof.site] = node
    return out


def collect_problems(*, info: SiteInfo, req: legacy.SecAggRequest) -> list[str]:
    """Before training: the round can still reach the site's minimum (else it would train, spend, and refuse to
    unmask)."""
    sites = len(set(req.sources)) + 1
    if sites < info.policy.min_sites:
        return [f"only {sites} site(s) are left in the round (this one included), fewer than this site's minimum "
                f"(policy.min_sites = {info.policy.min_sites}); nothing was trained"]
    return []


def unmask_problems(*, info: SiteInfo, req: legacy.SecAggRequest, state: legacy.SecAggRound) -> list[str]:
    active, dead, out = set(req.active), set(req.dead), []
    if active & dead:
        out.append(f"node(s) {', '.join(map(str, sorted(active & dead)))} listed both active and dead (both of "
                   f"their secrets would be handed over)")
    if state.node_id in dead:
        out.append("this site is listed dead although it is answering (its mask key would be handed over)")
    unknown = (active | dead) - state.neighbours
    if unknown:
        out.append(f"node(s) {', '.join(map(str, sorted(unknown)))} were never this site's neighbours")
    if len(active) < info.policy.min_sites:
        out.append(f"{len(active)} active site(s) would be summed, fewer than this site's minimum "
                   f"(policy.min_sites = {info.policy.min_sites})")
    return out


@functools.lru_cache(maxsize=4)
def _key_at(path: str, stamp: int) -> SigningKey:
    return SigningKey(Path(path))


def _signing_key(path: Path) -> SigningKey:
    return _key_at(str(path), path.stat().st_mtime_ns)


def with_proof(*, reply: Message, info: SiteInfo, request: Message, ctx: Context) -> Message:
    """A setup reply with the site's signature over its two public keys (a site without a key sends none)."""
    keys = legacy.setup_public_keys(reply=reply)
    if info.signing_key is None or keys is None:
        return reply
    key = _signing_key(info.signing_key)
    md = request.metadata
    group = remask.current(ctx)
    sig = key.sign(keys_payload(run_id=md.run_id, round_id=md.group_id, node_id=md.dst_node_id, pk1=keys[0],
                                pk2=keys[1], group=group.digest if group is not None else ""))
    reply.content.config_records[PROOF_RECORD] = ConfigRecord(KeyProof(info.name, key.public_openssh,
                                                                       sig).to_record())
    return reply


def check_terms(*, msg: Message, ctx: Context, info: SiteInfo) -> None:
    """Raise TaskRefused(SECAGG) when `msg`'s SecAgg+ request breaks the site's terms (every problem named)."""
    req = legacy.secagg_request(content=msg.content)
    if req is None:
        return
    problems: list[str]
    if req.malformed:
        problems = [req.malformed]
    elif req.stage == legacy.SETUP:
        problems = setup_problems(info=info, req=req) + remask.setup_problems(msg=msg, ctx=ctx, info=info)
    elif req.stage == legacy.SHARE_KEYS:
        problems = share_keys_problems(info=info, req=req, state=legacy.secagg_round(ctx=ctx),
                                       run_id=msg.metadata.run_id, round_id=msg.metadata.group_id,
                                       proofs=msg.content.config_records.get(NEIGHBOURS_RECORD),
                                       group=remask.current(ctx))
    elif req.stage == legacy.COLLECT:
        problems = collect_problems(info=info, req=req)
    elif req.stage == legacy.UNMASK:
        problems = unmask_problems(info=info, req=req, state=legacy.secagg_round(ctx=ctx))
    else:
        problems = []
    if problems:
        what = "hands over no share" if req.stage == legacy.UNMASK else "sends nothing for it"
        raise TaskRefused(Code.SECAGG, f"site {info.name} refused SecAgg+ stage {req.stage} ({what}): "
                          + "; ".join(problems))

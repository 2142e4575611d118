"""Re-masking an update already sent, for a subgroup sum: what the coordinator asks and what a site checks (no Flower).

When the guard rejects a SecAgg+ round's sum, the coordinator asks sites of the
round to mask the same update again (never to train) in subgroups, to find the
site that broke the sum (`fedhaven.server.locate`). The update was released with
DP when it was sent, so summing it again is post-processing: no new spend. What
the coordinator learns is more sums; a site joins a group only if, with the
round's full sum and the groups it joined before in that round, no combination
of those sums isolates it among fewer than its `policy.locate_min_group` sites.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedhaven.shared.signing import digest

#: Setup messages of a re-mask round carry this record: {"round", "members", "round_sites"} (names, JSON lists).
SETUP_RECORD = "fedhaven.remask"
#: The FitIns config of a re-mask round (no "fedhaven." prefix: not part of the task): the round of the update,
#: the ledger entry hash the site recorded for it, and the members' digest.
ROUND_KEY, ENTRY_KEY, MEMBERS_KEY = "remask.round", "remask.entry", "remask.members"


@dataclass(frozen=True)
class RemaskRequest:
    """A re-mask round's group as every member receives it."""

    server_round: int
    members: tuple[str, ...]  # the group, sorted
    round_sites: tuple[str, ...]  # the sites whose sum the round unmasked, sorted

    def to_record(self) -> dict[str, int | str]:
        return {"round": self.server_round, "members": json.dumps(list(self.members)),
                "round_sites": json.dumps(list(self.round_sites))}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> RemaskRequest | None:
        """The request in a setup record, or None when malformed."""
        try:
            members, sites = json.loads(str(record["members"])), json.loads(str(record["round_sites"]))
            rnd = record["round"]
        except (KeyError, ValueError):
            return None
        if not (isinstance(rnd, int) and isinstance(members, list) and isinstance(sites, list)
                and all(isinstance(m, str) for m in [*members, *sites])):
            return None
        return cls(rnd, tuple(sorted(members)), tuple(sorted(sites)))

    @property
    def digest(self) -> str:
        """What every member signs with its SecAgg+ keys: neighbours holding another list fail to verify."""
        return digest(json.dumps([self.server_round, list(self.members), list(self.round_sites)]).encode())


def isolates(rows: Sequence[Sequence[str]], site: str, *, k: int) -> bool:
    """Whether some linear combination of the group sums `rows` is non-zero on `site` and on fewer than `k` sites
    in all (`site`'s update would be known up to fewer than k-1 others').

    The combination with support within T and non-zero on `site` exists iff adding the column of `site` to the
    columns outside T raises the rank; checked for every T of k-2 other sites (covering every smaller one).
    """
    cols = sorted({s for r in rows for s in r})
    if site not in cols or k <= 1:
        return False
    m = np.array([[1.0 if c in set(r) else 0.0 for c in cols] for r in rows])
    others = [c for c in cols if c != site]
    me = cols.index(site)
    for t in itertools.combinations(others, min(max(k - 2, 0), len(others))):
        out = [cols.index(c) for c in others if c not in t]
        base = int(np.linalg.matrix_rank(m[:, out])) if out else 0
        if int(np.linalg.matrix_rank(m[:, [*out, me]])) > base:
            return True
    return False


def request_problems(*, req: RemaskRequest, site: str, joined: Sequence[Sequence[str]], min_group: int,
                     stored_round: int | None) -> list[str]:
    """Why `site` refuses to re-mask its update for `req` (every problem named); empty: it may."""
    out = []
    if stored_round is None or stored_round != req.server_round:
        out.append(f"this site keeps no update of round {req.server_round} (it keeps only its last one, until its "
                   f"round ends)")
    if site not in req.members:
        out.append("this site is not on the group's member list")
    if len(set(req.members)) != len(req.members):
        out.append("the member list names a site twice")
    if len(req.members) < min_group:
        out.append(f"the group has {len(req.members)} site(s), fewer than this site's minimum "
                   f"(policy.locate_min_group = {min_group})")
    if not set(req.members) <= set(req.round_sites):
        out.append("the group names sites that were not in the round")
    rows = [req.round_sites, *joined, req.members]
    if not out and isolates(rows, site, k=min_group):
        out.append(f"with the round's sum and the {len(joined)} group(s) this site already joined in this round, "
                   f"this group's sum would single its update out among fewer than {min_group} sites")
    return out

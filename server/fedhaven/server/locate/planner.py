"""Adaptive group testing over re-masked subgroup sums that never isolates fewer than k honest sites: pure numpy.

When the guard rejects a SecAgg+ round's sum, the coordinator asks the round's
sites to mask the same (already released) update again for subgroups, unmasks
each subgroup's sum and tests it with the guard. Every sum unmasked in the
round is a row of a 0/1 matrix over the round's sites (the full sum included);
the coordinator learns the row space. Pessimistically the bad sites' updates
are known to it (they may collude), so what it learns about the honest sites
is that row space restricted to their columns. The planner keeps, for every
set D of sites that may turn out to be bad (the located ones plus at most
`max_bad` in all, drawn from the sites not yet proven to pass), that no
vector of the restricted space is non-zero on fewer than `k` honest sites
(`isolated`); a group that would break it is never asked for. Sites it could
not locate within these limits stay hidden: `NoPlan` says why.

Guaranteed when bad sites send the same update every time (a NaN, a scaled or
noised update): a located site's update failed the guard wherever it was
summed and a group of sites all proven to pass passed without it. A site that
sends a different vector in a re-masked group than in the full round can make
groups fail or pass at will: the round's accepted sum still passed the guard,
and every honest site's privacy limit still holds for any `max_bad` bad sites,
but the site named may then be an honest one framed by it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Locator", "NoPlan", "isolated", "smallest_support"]

#: groups fully checked per step after the quick test (the first safe one, in order of preference, is asked for)
_TRIES = 60
#: groups drawn per step beyond 12 sites (below, every group is considered)
_SAMPLES = 3000


class NoPlan(RuntimeError):  # noqa: N818  (a planner outcome, named for what it says)
    """No group can be unmasked without isolating fewer than k honest sites (or the sites behave inconsistently)."""


def _rank(m: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(m)) if m.size else 0


def isolated(rows: Sequence[Iterable[int]], sites: Sequence[int], *, k: int) -> tuple[int, ...] | None:
    """Sites of `sites` that some linear combination of the group sums `rows` isolates (non-zero on them, zero on
    every other site of `sites`), when fewer than `k`; None when no combination isolates fewer than k.

    A vector of the row space restricted to `sites` has support within T iff dropping the columns of T lowers the
    rank (rank(M) > rank(M without T)); checked for every T of k-1 sites, which covers every smaller one.
    """
    cols = list(sites)
    if not cols or k <= 1:
        return None
    index = {s: i for i, s in enumerate(cols)}
    m = np.array([[1.0 if s in set(r) else 0.0 for s in cols] for r in rows]).reshape(len(rows), len(cols))
    full = _rank(m)
    if full == 0:
        return None
    for t in itertools.combinations(cols, min(k - 1, len(cols))):
        keep = [index[s] for s in cols if s not in t]
        if _rank(m[:, keep]) < full:
            return t
    return None


def smallest_support(rows: Sequence[Iterable[int]], sites: Sequence[int]) -> int:
    """The fewest sites of `sites` a non-zero combination of `rows` (restricted to `sites`) is non-zero on; 0 when
    the rows are all zero there. For tests and reports (brute force over subsets)."""
    for k in range(1, len(sites) + 1):
        if isolated(rows, sites, k=k + 1) is not None:
            return k
    return 0


@dataclass
class Locator:
    """The adaptive plan of one rejected round: `next_group()` names the next group to re-mask, `record()` its
    verdict; `located` and `honest` once `next_group()` returns None. Groups have at least `min_group` sites (the
    SecAgg+ threshold and every site's policy minimum); `k` is the fewest honest sites any combination may isolate;
    at most `max_bad` sites are located.

    The plan keeps every explanation still possible: each set of 1 to `max_bad` sites whose presence makes exactly
    the groups that failed fail. It asks for the safe group that splits those explanations most evenly, until one
    is left; then for the sum without it, which completes the round when it passes.
    """

    sites: tuple[int, ...]
    k: int
    min_group: int
    max_bad: int
    rows: list[frozenset[int]] = field(default_factory=list)  # every sum unmasked this round, the full one first
    verdicts: list[bool] = field(default_factory=list)  # passed?
    located: frozenset[int] = frozenset()
    honest: frozenset[int] | None = None  # the group whose sum completes the round
    explanations: list[frozenset[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.min_group < 2 or self.k < 2:
            raise ValueError("min_group and k must be at least 2: a group of one is that site's update")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("sites must be distinct")
        self.rows.append(frozenset(self.sites))
        self.verdicts.append(False)  # the full sum was rejected: why we are here
        self.explanations = [frozenset(c) for n in range(1, self.max_bad + 1)
                             for c in itertools.combinations(self.sites, n)]

    @property
    def suspects(self) -> frozenset[int]:
        """Sites some remaining explanation holds bad."""
        return frozenset().union(*self.explanations) if self.explanations else frozenset()

    def _quick_unsafe(self, group: frozenset[int]) -> bool:
        """A cheap necessary test: some sum it makes with one earlier sum (g, s-g, g-r, s-g-r) leaves 1 to k-1
        honest sites under some explanation."""
        full = frozenset(self.sites)
        supports = [group, full - group]
        for r in self.rows[1:]:
            supports += [group ^ r, (full - (group | r)) | (group & r)]
        return any(0 < len(sup - bad) < self.k for sup in supports for bad in self.explanations)

    def safe(self, group: frozenset[int]) -> bool:
        """Whether unmasking `group` too keeps every honest site hidden among at least k, whichever remaining
        explanation turns out true (the bad sites' own updates taken as known: they may collude)."""
        if self._quick_unsafe(group):
            return False
        rows = [*self.rows, group]
        return all(isolated(rows, [s for s in self.sites if s not in bad], k=self.k) is None
                   for bad in self.explanations)

    def _split(self, group: frozenset[int]) -> int:
        """The explanations left in the worse of the two verdicts (smaller is better)."""
        fail = sum(1 for bad in self.explanations if bad & group)
        return max(fail, len(self.explanations) - fail)

    def _options(self) -> list[frozenset[int]]:
        """Groups of at least `min_group` sites worth asking for, the most even split first (all of them for up to
        12 sites; beyond, a seeded sample of some suspects with any other sites)."""
        n = len(self.explanations)
        if len(self.sites) <= 12:
            pool: Iterable[frozenset[int]] = (frozenset(c) for size in range(self.min_group, len(self.sites))
                                              for c in itertools.combinations(self.sites, size))
        else:  # a seeded sample: part of the suspects with any of the other sites (the plan is reproducible)
            rng = np.random.default_rng(len(self.rows))
            sus = sorted(self.suspects)
            others = [s for s in self.sites if s not in self.suspects]
            picks = []
            for _ in range(_SAMPLES):
                h = rng.choice(sus, size=int(rng.integers(1, max(2, len(sus)))), replace=False)
                low = max(0, self.min_group - len(h))
                if low > len(others):
                    continue
                size = int(rng.integers(low, len(others) + 1))
                picks.append(frozenset(int(x) for x in h) | frozenset(int(x) for x in rng.choice(
                    others, size=size, replace=False)))
            pool = picks
        useful = [g for g in pool if self._split(g) < n and g not in self.rows]
        useful.sort(key=lambda g: (self._split(g), len(g)))
        return useful

    def _choose(self) -> frozenset[int] | None:
        """The first safe group in order of preference (greedy: a look-ahead was measured slower and no better)."""
        tried = 0
        for group in self._options():
            if self._quick_unsafe(group):
                continue
            tried += 1
            if tried > _TRIES:
                break
            if self.safe(group):
                return group
        return None

    def _unproven(self) -> frozenset[int]:
        """Sites of the one explanation left that no failed re-masked group contains (the full sum is no evidence
        against any one site: a site sending something else in the groups could make it point anywhere)."""
        failed = [r for r, ok in zip(self.rows[1:], self.verdicts[1:], strict=True) if not ok]
        return frozenset(s for s in self.explanations[0] if not any(s in r for r in failed))

    def _options_with(self, sites: frozenset[int]) -> list[frozenset[int]]:
        pool = [frozenset(c) for size in range(self.min_group, len(self.sites))
                for c in itertools.islice(itertools.combinations(self.sites, size), 2000)]
        return sorted((g for g in pool if sites <= g and g not in self.rows), key=len)[:_TRIES]

    def next_group(self) -> frozenset[int] | None:
        """The next group to re-mask, or None when the plan is done (`honest` passed). NoPlan when no safe group
        narrows the search further."""
        if self.honest is not None:
            return None
        if not self.explanations:
            raise NoPlan(f"no set of at most {self.max_bad} site(s) explains which re-masked groups failed: more "
                         f"than {self.max_bad} site(s) sent a bad update (robust.locate_max_bad = {self.max_bad} is "
                         f"how many are searched for), or some site sent a different update in the re-masked "
                         f"groups than in the round")
        if len(self.explanations) == 1 and self._unproven():  # evidence first: a re-masked group with it fails
            for group in self._options_with(self._unproven()):
                if self.safe(group):
                    return group
            raise NoPlan(f"no group of at least {self.min_group} sites can test the last suspect without isolating "
                         f"fewer than {self.k} honest sites")
        if len(self.explanations) == 1:  # located: the round's sum without them
            self.located = self.explanations[0]
            rest = frozenset(self.sites) - self.located
            if len(rest) < self.min_group:
                raise NoPlan(f"only {len(rest)} site(s) remain without the located one(s), fewer than a group's "
                             f"minimum of {self.min_group}")
            if not self.safe(rest):
                raise NoPlan(f"the sum without the located site(s) would isolate fewer than {self.k} honest sites")
            return rest
        chosen = self._choose()
        if chosen is not None:
            return chosen
        raise NoPlan(f"no group of at least {self.min_group} sites narrows the {len(self.suspects)} suspects down "
                     f"without isolating fewer than {self.k} honest sites ({len(self.sites)} sites in the round)")

    def record(self, group: frozenset[int], *, passed: bool) -> None:
        """The guard's verdict on `group`'s re-masked sum."""
        self.rows.append(group)
        self.verdicts.append(passed)
        if self.located and group == frozenset(self.sites) - self.located:
            if passed:
                self.honest = group
                return
            self.located = frozenset()
        self.explanations = [bad for bad in self.explanations if bool(bad & group) != passed]

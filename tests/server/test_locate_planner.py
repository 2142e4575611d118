"""The group-testing planner on its own: it finds the bad site and no combination of the sums it unmasks isolates
fewer than k honest sites (checked by a span argument of its own, not the planner's)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedhaven.server.locate.planner import Locator, NoPlan, isolated, smallest_support


def _in_row_space(rows: list[frozenset[int]], vector: np.ndarray, sites: list[int]) -> bool:
    """Whether `vector` (over `sites`) is a combination of the rows restricted to `sites`: least squares residue."""
    m = np.array([[1.0 if s in r else 0.0 for s in sites] for r in rows])
    coef, *_ = np.linalg.lstsq(m.T, vector, rcond=None)
    return bool(np.allclose(m.T @ coef, vector, atol=1e-8))


def _no_small_combination(rows: list[frozenset[int]], honest: list[int], k: int) -> None:
    """Independently of the planner: no vector non-zero on 1..k-1 honest sites (any values there) lies in the row
    space restricted to the honest sites. A vector with support T is in the space iff some combination of the unit
    vectors of T is, i.e. iff the space meets span(e_T) non-trivially: dim(space) + |T| > dim(space + span(e_T))."""
    m = np.array([[1.0 if s in r else 0.0 for s in honest] for r in rows])
    dim = np.linalg.matrix_rank(m)
    for size in range(1, k):
        for t in itertools.combinations(range(len(honest)), size):
            units = np.eye(len(honest))[list(t)]
            assert np.linalg.matrix_rank(np.vstack([m, units])) == dim + size, (
                f"sites {[honest[i] for i in t]} are isolated by the unmasked sums {[sorted(r) for r in rows]}")


def _locate(locator: Locator, bad: set[int]) -> int:
    steps = 0
    while (group := locator.next_group()) is not None:
        assert len(group) >= locator.min_group
        locator.record(group, passed=not (group & bad))
        steps += 1
    return steps


@pytest.mark.parametrize("bad", [pytest.param(b, marks=() if b in (0, 5, 9) else pytest.mark.locate)
                                 for b in range(10)])
def test_one_bad_site_among_ten_is_located_without_isolating_three(bad: int) -> None:
    locator = Locator(sites=tuple(range(10)), k=3, min_group=3, max_bad=1)
    steps = _locate(locator, {bad})
    assert locator.located == {bad}
    assert locator.honest == frozenset(range(10)) - {bad}
    assert steps <= 6  # the time a located round costs is bounded: a few re-masked rounds
    honest = [s for s in range(10) if s != bad]
    _no_small_combination(locator.rows, honest, k=3)
    assert smallest_support(locator.rows, honest) >= 3
    # the honest sites' sum (what completes the round) was unmasked itself
    assert _in_row_space(locator.rows, np.ones(9), honest)


def test_the_check_finds_an_isolating_pair_of_groups() -> None:
    """The span argument catches what a size rule alone would miss: two groups of 4 that differ in one site."""
    rows = [frozenset(range(8)), frozenset({0, 1, 2, 3}), frozenset({0, 1, 2, 4})]
    assert isolated(rows, list(range(8)), k=3) is not None
    vec = np.zeros(8)
    vec[3], vec[4] = 1.0, -1.0
    assert _in_row_space(rows, vec, list(range(8)))  # u3 - u4: two sites
    assert isolated([frozenset(range(8)), frozenset({0, 1, 2, 3})], list(range(8)), k=3) is None


def test_three_sites_cannot_be_searched_and_the_reason_says_why() -> None:
    locator = Locator(sites=(1, 2, 3), k=3, min_group=3, max_bad=1)
    with pytest.raises(NoPlan, match="isolating fewer than 3 honest sites"):
        locator.next_group()


def test_two_bad_sites_with_room_for_one_are_never_misnamed() -> None:
    """With locate.max_bad = 1, two bad sites leave no explanation (or one refuted by the final sum): NoPlan, never
    a wrong name."""
    for bad in list(itertools.combinations(range(10), 2))[::7]:
        locator = Locator(sites=tuple(range(10)), k=3, min_group=3, max_bad=1)
        with pytest.raises(NoPlan):
            _locate(locator, set(bad))
        assert locator.honest is None


def test_a_site_failing_only_the_full_round_gets_nobody_named() -> None:
    """A site that fails the full round but passes every re-masked group: nobody is named on the full sum's word
    alone (a located site must also fail in a re-masked group), so the planner stops; privacy holds throughout."""
    locator = Locator(sites=tuple(range(10)), k=3, min_group=3, max_bad=1)
    with pytest.raises(NoPlan, match="different update"):
        _locate(locator, set())
    assert not locator.located
    _no_small_combination(locator.rows, list(range(10)), k=3)


def test_framing_needs_the_framer_beside_its_victim() -> None:
    """What is not guaranteed: site 7 sends a bad vector exactly when site 2 is in the group with it (and in the
    full round), a good one otherwise. One of the two is named (had it been 2, the sum without 2 would reveal 2's
    update to a coordinator colluding with 7); the planner's promise holds for the sites it believes honest."""
    locator = Locator(sites=tuple(range(10)), k=3, min_group=3, max_bad=1)
    while (group := locator.next_group()) is not None:
        locator.record(group, passed=not {2, 7} <= group)
    assert len(locator.located) == 1 and locator.located <= {2, 7}
    _no_small_combination(locator.rows, [s for s in range(10) if s not in locator.located], k=3)


def test_small_groups_are_refused() -> None:
    with pytest.raises(ValueError):
        Locator(sites=tuple(range(10)), k=1, min_group=3, max_bad=1)


def test_beyond_twelve_sites_a_sampled_plan_still_locates_and_never_isolates() -> None:
    locator = Locator(sites=tuple(range(14)), k=3, min_group=3, max_bad=1)
    _locate(locator, {0})
    assert locator.located == {0}
    _no_small_combination(locator.rows, list(range(1, 14)), k=3)


@pytest.mark.locate
@pytest.mark.parametrize("n", [14, 20])
def test_every_position_among_many_sites_is_located_or_refused_never_misnamed(n: int) -> None:
    located = 0
    for bad in range(n):
        locator = Locator(sites=tuple(range(n)), k=3, min_group=3, max_bad=1)
        try:
            _locate(locator, {bad})
        except NoPlan:
            assert locator.honest is None
            continue
        assert locator.located == {bad}
        located += 1
        _no_small_combination(locator.rows, [s for s in range(n) if s != bad], k=3)
    assert located >= n - 1  # measured: one position in 14 and in 20 finds no plan

"""SecAgg+ on the sites' terms, deployed: each site pins the consortium roster, the coordinator relays the sites'
signed keys, and a neighbour the roster does not vouch for gets no share (real fl-server and fl-client processes)."""

from __future__ import annotations

import json

import pytest

from fedhaven.client.ledger import Ledger

pytestmark = [pytest.mark.slow, pytest.mark.trust]


def test_a_neighbour_the_roster_does_not_vouch_for_gets_no_share_and_nothing_is_unmasked(federation):
    """hospital-a's roster pins another key for hospital-b (as if the coordinator had swapped b for a site of its
    own): a refuses at share-keys, before it encrypts a share for anyone; no round aggregates."""
    a = federation.site_dirs[federation.sites[0]]
    b = federation.sites[1]
    roster = (a / "roster.toml").read_text()
    assert f'"{b}" = "SHA256:' in roster  # the loopback federation pins its own roster
    before = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs_list]
    try:
        lines = [ln if not ln.startswith(f'"{b}"') else f'"{b}" = "SHA256:{"0" * 32}"' for ln in roster.splitlines()]
        (a / "roster.toml").write_text("\n".join(lines) + "\n")
        res = federation.run(retries=0)
    finally:
        (a / "roster.toml").write_text(roster)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "refused SecAgg+ stage share_keys" in out and f"says it is '{b}' but signs with key" in out, out
    # the two others see too few sites left and refuse before training: nothing trained, nothing spent
    for other in federation.sites[1:]:
        assert f"site {other} refused SecAgg+ stage collect_masked_vectors" in out, out[-6000:]
    assert "only 2 site(s) are left in the round (this one included)" in out
    assert [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs_list] == before
    run_dir = federation.run_dir_of(res)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert not privacy["attempts_without_aggregate"] or privacy["attempts_without_aggregate"][0]["sites_trained"] == 0

"""The coordinator's client manager: a bounded wait that names the shortfall, and silent sites left out once."""

from __future__ import annotations

import time

from flwr.server.client_proxy import ClientProxy

from fedhaven.server.flower_legacy import BoundedClientManager


class _Proxy(ClientProxy):
    def get_properties(self, *a, **k): ...
    def get_parameters(self, *a, **k): ...
    def fit(self, *a, **k): ...
    def evaluate(self, *a, **k): ...
    def reconnect(self, *a, **k): ...


def _manager(n: int, **kw) -> BoundedClientManager:
    cm = BoundedClientManager(timeout=0.5, **kw)
    for i in range(n):
        cm.register(_Proxy(str(i)))
    return cm


def test_the_wait_for_min_sites_is_bounded_and_says_why():
    cm = _manager(2)
    seen = []
    cm.report, cm.report_every = (lambda waited, need, have: seen.append((need, have))), 0.1
    t0 = time.monotonic()
    assert cm.wait_for(3) is False
    assert time.monotonic() - t0 < 2
    assert "for 3 sites (min_sites), only 2 connected" in cm.shortfall
    assert seen and seen[0] == (3, 2)


def test_a_silent_site_is_left_out_while_enough_others_remain():
    cm = _manager(3, min_sites=2)
    cm.suspect([2])
    assert cm.num_available() == 2
    picked = {c.cid for c in cm.sample(2, min_num_clients=2)}
    assert picked == {"0", "1"}
    cm.suspect([1])  # now only one trusted site: everybody is asked again rather than no round at all
    assert cm.num_available() == 3 and len(cm.sample(3, min_num_clients=2)) == 3


def test_suspicion_ends_when_flower_drops_the_node_or_after_a_while():
    cm = _manager(3, min_sites=2, suspect_for=0.2)
    cm.suspect([2])
    assert cm.num_available() == 2
    time.sleep(0.25)
    assert cm.num_available() == 3
    cm.suspect([2])
    cm.unregister(cm.clients["2"])
    cm.register(_Proxy("2"))  # it came back (Flower saw it reconnect)
    assert cm.num_available() == 3

"""The loopback federation the deployment tests share survives a site port that another process took."""

from __future__ import annotations

import re
import socket

import pytest

from fedhaven.sim.loopback import LoopbackFederation

pytestmark = pytest.mark.slow


def test_a_site_whose_port_was_taken_is_started_again_on_another(observe):
    obs = observe("another process holds a site's loopback port (picked free when the site was provisioned)",
                  "the site's SuperNode fails to bind, the federation starts it again on a new port, all online")
    fed = LoopbackFederation.in_temp(prefix="fedhaven-faults-port-")
    fed.provision()
    toml = (fed.site_dirs["hospital-b"] / "site.toml").read_text()
    port = int(re.search(r"clientappio_port = (\d+)", toml).group(1))
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        fed.start()
        assert fed.port_restarts == {"hospital-b": 1}
        assert "address already in use" in fed.log("hospital-b")
        obs.observed.append("hospital-b's SuperNode could not bind; started again on another port; 3 sites online")
    finally:
        fed.stop()
        holder.close()

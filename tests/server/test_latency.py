"""The latency switch: one setting turns every coordinator shim off, leaving Flower's own timings and code paths."""

from __future__ import annotations

from dataclasses import replace

from fedhaven.server.coordinator import Coordinator, child_env
from fedhaven.server.latency import FLOWER_GRID_POLL, GRID_POLL, LATENCY_ENV, grid_poll
from fedhaven.server.provision import CoordinatorConfig, StateDir


def test_the_switch_reaches_every_shim(tmp_path, monkeypatch):
    state = StateDir(tmp_path)
    on = Coordinator(state=state, cfg=CoordinatorConfig(), insecure=True)
    off = Coordinator(state=state, cfg=replace(CoordinatorConfig(), latency=False), insecure=True)
    assert on.executor_command()[-1] == "fedhaven.server.seam.superexec" and on.door_options() == []
    assert off.executor_command()[-2:] == ["fedhaven.server.seam.superexec", "--no-fork"] and off.door_options() == [
        "--pull-hold", "0", "--settle", "0"]
    assert child_env(state)[LATENCY_ENV] == "1" and child_env(state, latency=False)[LATENCY_ENV] == "0"
    monkeypatch.setenv(LATENCY_ENV, "0")  # what a ServerApp started by the coordinator sees
    assert grid_poll() == FLOWER_GRID_POLL == (3.0, 3.0)
    monkeypatch.setenv(LATENCY_ENV, "1")
    assert grid_poll() == GRID_POLL


def test_server_toml_sets_it(tmp_path):
    from fedhaven.shared.config import parse

    assert parse(CoordinatorConfig, {"latency": False}).latency is False
    assert CoordinatorConfig().latency is True

"""`fl-server status --json` and `site list --json` against the running loopback coordinator: what a script reads."""

from __future__ import annotations

import json


def test_status_json_of_a_running_coordinator(federation):
    res = federation.cli("fl-server", "status", "--json", "--state-dir", str(federation.state))
    doc = json.loads(res.stdout)  # stdout is the one document; Flower's and our lines went to stderr
    assert res.returncode == 0 and doc["ok"] is True and doc["exit_code"] == 0, res.stdout + res.stderr
    coord = doc["coordinator"]
    assert coord["state"] == "running" and coord["tls"] is True and coord["listen"]
    assert set(coord["parts"]) == {"superlink", "executor"} and all(p["up"] for p in coord["parts"].values())
    sites = {s["name"]: s for s in doc["sites"]}
    assert set(federation.sites) <= set(sites)
    for name in federation.sites:  # registered with the SuperLink: a node id (a string: 64 bits) and its state
        assert sites[name]["node_id"] and int(sites[name]["node_id"]) > 0 and sites[name]["online"]
    assert all(set(r) >= {"run_id", "status", "sub_status", "last_failures"} for r in doc["runs"])
    listed = json.loads(federation.cli("fl-server", "site", "list", "--json", "--state-dir",
                                       str(federation.state)).stdout)
    assert {s["name"] for s in listed["sites"]} == set(sites)

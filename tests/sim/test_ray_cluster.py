"""fl-sim on an existing Ray cluster: a head and a second node on loopback, the sites placed on the second node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedhaven.shared.runtime import HARDENED_ENV

FL_SIM = Path(sys.executable).parent / "fl-sim"


@pytest.mark.slow
def test_fl_sim_runs_on_an_existing_two_node_cluster(tmp_path):
    """The head offers no CPU, so the run can only finish if Flower's actors run on the second node, which joined
    the cluster over loopback: `--ray-address` reaches a cluster fl-sim did not start."""
    from ray.cluster_utils import Cluster

    env = {**os.environ, **HARDENED_ENV}
    os.environ.update(HARDENED_ENV)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        res = subprocess.run([str(FL_SIM), "run", "digits", "--ray-address", cluster.address, "--rounds", "1",
                              "--run-dir", str(tmp_path / "run"), f"output_dir={tmp_path}"],
                             capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["rounds"] == 1 and summary["final_accuracy"] > 0.1
        assert len(cluster.list_all_nodes()) == 2
        # the sites ran in this cluster's workers (a Ray fl-sim started itself would log elsewhere)
        logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
        assert any("ClientAppActor" in f.read_text(errors="replace") for f in logs.glob("worker-*"))
    finally:
        cluster.shutdown()


def test_the_address_reaches_rays_init():
    from fedhaven.sim.experiment import load_experiment
    from fedhaven.sim.runner import ray_init_args

    exp = load_experiment(source="digits", flags={"simulation": {"ray_address": "10.0.0.5:6379"}})
    args = ray_init_args(exp)
    assert args["address"] == "10.0.0.5:6379" and "num_cpus" not in args  # a cluster's CPUs are its own
    assert "address" not in ray_init_args(load_experiment(source="digits"))

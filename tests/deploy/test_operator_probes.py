"""The Kubernetes coordinator's probes ask the operator listener's /healthz and /readyz, which no Service
publishes."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedhaven.server.cli import build_parser

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "coordinator.yaml"


def test_the_coordinators_probes_use_the_health_endpoints_on_the_operator_listener():
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["args"][0] == "start")
    parser, _ = build_parser()
    args = parser.parse_args(container["args"])
    port = int(args.operator_listen.rpartition(":")[2])
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (v["path"], v["port"]) for k, v in probes.items()} == {
        "startupProbe": ("/healthz", port), "livenessProbe": ("/healthz", port), "readinessProbe": ("/readyz", port)}
    assert not any("tcpSocket" in container.get(k, {}) for k in probes)
    published = {p.get("targetPort", p["port"]) for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port not in {named.get(p, p) for p in published}  # the console is never on a Service

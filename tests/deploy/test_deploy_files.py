"""deploy/ stays in step with the CLIs: YAML parses and has the right shape, every command parses, every path exists."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from fedhaven.client.cli import build_parser as client_parser
from fedhaven.client.site_config import load_site_config
from fedhaven.server.cli import build_parser as server_parser
from fedhaven.shared.config import load_toml, parse
from fedhaven.shared.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PARSERS = {"fl-server": server_parser, "fl-client": client_parser}
IMAGE_ENTRYPOINT = {"fedhaven-coordinator": "fl-server", "fedhaven-site": "fl-client"}


def check_command(argv: list[str]) -> None:
    """Parse a deploy file's command line with the real CLI parser; SystemExit means it would not start."""
    prog = Path(argv[0]).name
    assert prog in PARSERS, f"unknown program {argv[0]!r}"
    parser, _ = PARSERS[prog]()
    parser.parse_args(argv[1:])


def dockerfile(path: Path) -> dict[str, list[str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, list[str]] = {"COPY": []}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in ("ENTRYPOINT", "CMD"):
            out[word] = json.loads(rest)
        elif word == "COPY":
            out["COPY"].extend(rest.split()[:-1])
        elif word == "FROM":
            out["FROM"] = [rest]
    return out


@pytest.mark.parametrize("name", ["coordinator.Dockerfile", "site.Dockerfile"])
def test_dockerfiles(name):
    d = dockerfile(DEPLOY / "docker" / name)
    for src in d["COPY"]:
        assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    check_command(d["ENTRYPOINT"] + d["CMD"])
    if name.startswith("site"):
        assert "cuda" in d["FROM"][0]  # sites get a CUDA-capable base
    assert "EXPOSE 9093" not in (DEPLOY / "docker" / name).read_text()


def test_compose_file():
    path = DEPLOY / "compose" / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    assert {"provision", "coordinator", "site-a", "site-b", "site-c"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            ctx = (path.parent / svc["build"]["context"]).resolve()
            assert (ctx / svc["build"]["dockerfile"]).exists(), name
        if "command" in svc and "entrypoint" not in svc:
            check_command([IMAGE_ENTRYPOINT[svc["image"]], *svc["command"]])
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (path.parent / host).exists(), f"{name} mounts {host}, which does not exist"
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert published == ["9092:9092"]  # only the Fleet front
    for site in ("a", "b", "c"):
        cfg = load_site_config(DEPLOY / "compose" / "sites" / f"site-{site}.toml")
        assert cfg.coordinator.address == "coordinator:9092" and cfg.policy.require_secure_aggregation
    parse(RunConfig, load_toml(DEPLOY / "compose" / "run.toml"))
    script = (DEPLOY / "compose" / "provision.sh").read_text()
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("fl-server"):
            check_command(shlex.split(line.replace('"$STATE"', "/state").replace('"$site"', "site-a")))


def test_kubernetes_manifests():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "coordinator.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "PersistentVolumeClaim", "Deployment", "Service"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    for c in spec["containers"]:
        check_command(c["command"] + c["args"])
    init = spec["initContainers"][0]["args"][0]
    check_command(shlex.split(init.split("||", 1)[1].replace('"$PUBLIC_NAME"', "x").replace('"$PUBLIC_IP"', "1.2.3.4")))
    service = next(d for d in docs if d["kind"] == "Service")
    assert [p["port"] for p in service["spec"]["ports"]] == [9092]
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim


@pytest.mark.parametrize("unit", ["fedhaven-site.service", "fedhaven-coordinator.service"])
def test_systemd_units(unit):
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(DEPLOY / "systemd" / unit)
    svc = cp["Service"]
    for key in ("ExecStartPre", "ExecStart", "ExecStop"):
        if key in svc:
            check_command(shlex.split(svc[key]))
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert "FLWR_TELEMETRY_ENABLED=0" in svc["Environment"]

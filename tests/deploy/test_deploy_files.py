"""deploy/ stays in step with the CLIs and gives every party only its own secrets.

Every command line parses with the real CLI parser and every path exists; and, read from the files themselves, no
site container, pod or unit can reach the coordinator's state (CA key, server key, SuperLink database) or another
site's bundle, each site gets exactly its own key, the CA certificate and its site.toml, and the coordinator
publishes only its Fleet front."""

from __future__ import annotations

import argparse
import configparser
import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


def check_command(argv: list[str]) -> argparse.Namespace:
    """Parse a deploy file's command line with the real CLI parser; SystemExit means it would not start."""
    prog = Path(argv[0]).name
    assert prog in PARSERS, f"unknown program {argv[0]!r}"
    parser, _ = PARSERS[prog]()
    return parser.parse_args(argv[1:])


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
    exposed = re.findall(r"^EXPOSE\s+(.+)$", (DEPLOY / "docker" / name).read_text(), re.M)
    assert exposed == ([] if name.startswith("site") else ["9092"])  # the Fleet front only; a site exposes nothing


def test_compose_file():
    path = DEPLOY / "compose" / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    assert {"provision", "coordinator", "site-a", "site-b", "site-c"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            ctx = (path.parent / svc["build"]["context"]).resolve()
            assert (ctx / svc["build"]["dockerfile"]).exists(), name
        commands = service_commands(svc, compose_mounts(svc, path.parent), Path.read_text)
        assert fl_commands(commands), f"{name} runs no fedhaven command"  # and each one parses
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
    provision = [c for c in sh_commands((DEPLOY / "compose" / "provision.sh").read_text()) if c[0] == "fl-server"]
    assert [c[1] for c in provision] == ["init", "site", "site", "site"]


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


# ----- who receives which secret -----------------------------------------------------------------------------------
# Anything in the coordinator's state that is not public, and the site bundle folders inside it.
COORDINATOR_SECRET = re.compile(r"ca\.key|server\.key|superexec\.secret|superlink\.(db|sock)|\bpki/|\bsites/[\w.$-]+/|"
                                r"bundle-root")
SH_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!"}


def _sh_segments(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    segments: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            segments.append([])
        else:
            segments[-1].append(tok)
    out = []
    for seg in segments:
        while seg and seg[0] in SH_KEYWORDS:
            seg = seg[1:]
        if seg:
            out.append(seg)
    return out


def _expand(text: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: scope.get(m.group(1), m.group(0)), text)


def sh_commands(script: str) -> list[list[str]]:
    """The simple commands of a small sh script, with NAME=value variables and one level of `for` loops expanded."""
    env: dict[str, str] = {}
    out: list[list[str]] = []
    loop: tuple[str, list[str], list[str]] | None = None

    def run(line: str, scope: dict[str, str]) -> None:
        for seg in _sh_segments(_expand(line, scope)):
            if len(seg) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", seg[0]):
                name, _, value = seg[0].partition("=")
                scope[name] = value
            else:
                out.append(seg)

    for line in script.splitlines():
        if loop is not None:
            if re.match(r"\s*done\b", line):
                var, values, body = loop
                for value in values:
                    scope = {**env, var: value}
                    for b in body:
                        run(b, scope)
                loop = None
            else:
                loop[2].append(line)
            continue
        m = re.match(r"\s*for\s+(\w+)\s+in\s+(.*?)\s*;\s*do\s*$", line)
        if m:
            loop = (m.group(1), shlex.split(_expand(m.group(2), env)), [])
        else:
            run(line, env)
    return out


def fl_commands(commands: list[list[str]]) -> list[tuple[str, argparse.Namespace]]:
    """(program, parsed arguments) of every fl-server/fl-client command line; each must parse."""
    return [(Path(c[0]).name, check_command(c)) for c in commands if Path(c[0]).name in PARSERS]


def strings(obj: object) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif obj is not None:
        yield str(obj)


def names_in(text: str, names: set[str]) -> set[str]:
    return {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?!\w)", text)}


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def overlap(a: str, b: str) -> bool:
    return within(a, b) or within(b, a)


# ----- compose -----
@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or the resolved host path of a bind mount
    target: str
    read_only: bool
    bind: bool


def compose_mounts(svc: dict, base: Path) -> list[Mount]:
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            src, dst, ro, bind = v.get("source", ""), v["target"], bool(v.get("read_only")), v.get("type") == "bind"
        else:
            parts = v.split(":")
            if len(parts) == 1:
                continue  # an anonymous volume: nobody else can mount it
            src, dst = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            bind = src.startswith((".", "/", "~"))
        out.append(Mount(str((base / src).resolve()) if bind else src, dst, ro, bind))
    return out


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a container path lives on (the deepest), or None when the path is in the image."""
    return max((m for m in mounts if within(path, m.target)), key=lambda m: len(m.target), default=None)


def service_commands(svc: dict, mounts: list[Mount], read: Callable[[Path], str]) -> list[list[str]]:
    """Every command line a compose service runs: its image's program, or the commands of its shell script."""
    entry, command = svc.get("entrypoint") or [], svc.get("command") or []
    if not entry:
        return [[IMAGE_ENTRYPOINT[svc["image"]], *command]]
    args = [*entry[1:], *command]
    if Path(entry[0]).name not in ("sh", "bash"):
        return [[entry[0], *args]]
    if args[0] == "-c":
        return sh_commands(args[1])
    m = mount_of(mounts, args[0])
    assert m is not None and m.bind, f"{args[0]} is not mounted from the repository"
    return sh_commands(read(Path(m.source) / posixpath.relpath(args[0], m.target)))


@dataclass(frozen=True)
class ComposeSite:
    name: str
    service: str
    uses: dict[str, Mount]  # what the site reads or writes (site.toml, private_key, ca_cert, data, state_dir): where


def compose_problems(doc: dict, *, base: Path, read: Callable[[Path], str] = Path.read_text) -> list[str]:
    """Why a compose file gives some party a secret that is not its own (empty: it does not)."""
    services = doc["services"]
    mounts = {n: compose_mounts(s, base) for n, s in services.items()}
    commands = {n: service_commands(s, mounts[n], read) for n, s in services.items()}
    fl = {n: fl_commands(c) for n, c in commands.items()}
    problems: list[str] = []

    starts = [(n, a) for n, cs in fl.items() for prog, a in cs if prog == "fl-server" and a.command == "start"]
    if len(starts) != 1:
        return [f"expected one `fl-server start` service, found {[n for n, _ in starts]}"]
    coordinator, coord_args = starts[0]
    state_mount = mount_of(mounts[coordinator], str(coord_args.state_dir))
    if state_mount is None:
        return [f"{coordinator}: its state dir {coord_args.state_dir} is on no volume"]
    state = state_mount.source
    keepers = [n for n in services if any(m.source == state for m in mounts[n])]

    sites: list[ComposeSite] = []
    for n, cs in fl.items():
        for prog, a in cs:
            if prog != "fl-client" or a.command != "start":
                continue
            config = str(a.config)
            cm = mount_of(mounts[n], config)
            if cm is None or not cm.bind or cm.target != config:
                problems.append(f"{n}: its site.toml {config} is not a file mounted from the repository")
                continue
            raw, name = load_toml(Path(cm.source)), load_site_config(Path(cm.source)).name
            here = posixpath.dirname(config)
            wanted = {"site.toml": config, "private_key": raw["private_key"], "ca_cert": raw["coordinator"]["ca_cert"],
                      "data": raw["data"]["path"], "state_dir": raw["state_dir"]}
            uses = {}
            for what, path in wanted.items():
                path = posixpath.normpath(posixpath.join(here, path))
                m = mount_of(mounts[n], path)
                if m is None:
                    problems.append(f"{n}: {what} {path} is on no mount; the container would not find it")
                elif m.read_only != (what != "state_dir"):
                    problems.append(f"{n}: {what} is mounted {'read-only' if m.read_only else 'writable'}")
                else:
                    uses[what] = m
            for m in mounts[n]:
                if m not in uses.values():
                    problems.append(f"{n} mounts {m.source} at {m.target}, which its site.toml never uses")
            sites.append(ComposeSite(name=name, service=n, uses=uses))
    names = {s.name for s in sites}
    if not sites or len(names) != len(sites):
        problems.append(f"expected one `fl-client start` service per site, got {[s.name for s in sites]}")

    own = {s.name: {m.source for m in mounts[s.service]} for s in sites}
    for s in sites:
        if state in own[s.name]:
            problems.append(f"{s.service} mounts the coordinator's state {state!r} (CA key, server key, SuperLink "
                            f"database, every site's key)")
        for t in sites:
            if s.name < t.name:
                for src in sorted(own[s.name]):
                    if any(overlap(src, o) for o in own[t.name]):
                        problems.append(f"{s.service} and {t.service} both mount {src}")
        key, ca = s.uses.get("private_key"), s.uses.get("ca_cert")
        if key is None or ca is None:
            continue
        if key.source == ca.source:
            problems.append(f"{s.service}: its key and the CA certificate share {key.source}, which the coordinator "
                            f"side writes")
        # The site's domain: services that mount nothing but the site's own things (its key generator, itself).
        domain = [n for n in services if mounts[n] and all(any(within(m.source, o) for o in own[s.name])
                                                           for m in mounts[n])]
        for n in services:
            if n in domain:
                text = "\n".join(strings(services[n])) + "\n" + "\n".join(" ".join(c) for c in commands[n])
                for word in sorted({m.group(0) for m in COORDINATOR_SECRET.finditer(text)}):
                    problems.append(f"{n} (a {s.name} container) names the coordinator's {word!r}")
                for other in sorted(names_in(text, names - {s.name})):
                    problems.append(f"{n} (a {s.name} container) names another site, {other!r}")
                continue
            for m in mounts[n]:
                if any(overlap(m.source, o) for o in own[s.name]) and m.source != ca.source:
                    problems.append(f"{n} is not one of {s.name}'s containers but mounts {m.source}, which {s.name} "
                                    f"uses; only the CA-certificate volume may be shared with the coordinator side")
        made = [n for n in domain for prog, a in fl[n] if prog == "fl-client" and a.command == "keygen"
                and (m := mount_of(mounts[n], str(a.out))) is not None and m.source == key.source and not m.read_only]
        if not made:
            problems.append(f"no {s.name} container makes its key (fl-client keygen --out on {key.source}); whoever "
                            f"made it had it")
        copied = [n for n in keepers for c in commands[n] if c[0] == "cp" and len(c) == 3
                  and (src := mount_of(mounts[n], c[1])) is not None and src.source == state
                  and c[1].endswith("/pki/ca.pem")
                  and (dst := mount_of(mounts[n], c[2])) is not None and dst.source == ca.source]
        if not copied:
            problems.append(f"nothing copies the CA certificate (pki/ca.pem) into {ca.source}, {s.name}'s ca_cert")
        registered = [a for n in keepers for prog, a in fl[n] if prog == "fl-server" and a.command == "site"
                      and a.action == "add" and a.name == s.name and a.public_key is not None
                      and (m := mount_of(mounts[n], str(a.public_key))) is not None and m.source in own[s.name]]
        if not registered:
            problems.append(f"{s.name}'s public key is not registered from its own volume (fl-server site add "
                            f"{s.name} --public-key <its site.pub>)")

    listen = None
    for n in keepers:
        for prog, a in fl[n]:
            if prog == "fl-server" and a.command == "site" and a.action == "add" and a.public_key is None:
                problems.append(f"{n}: `fl-server site add {a.name}` without --public-key generates the site's "
                                f"private key into the coordinator's state")
            if prog == "fl-server" and a.command == "init":
                listen = a
        for c in commands[n]:
            if c[0] == "cp" and any(m is not None and m.source == state and not src.endswith("/pki/ca.pem")
                                    for src in c[1:-1] for m in [mount_of(mounts[n], src)]):
                problems.append(f"{n} copies {' '.join(c[1:-1])} out of the coordinator's state; only pki/ca.pem "
                                f"is public")
        if n != coordinator and fl[n] and not all(prog == "fl-server" for prog, _ in fl[n]):
            problems.append(f"{n} runs a site command and holds the coordinator's state")
    if listen is None:
        return [*problems, "no `fl-server init` in the services that hold the coordinator's state"]
    fleet = listen.listen.rpartition(":")[2]
    for n, svc in services.items():
        published = [str(p["target"]) if isinstance(p, dict) else str(p).split("/")[0].rpartition(":")[2]
                     for p in svc.get("ports", [])]
        if published and (n != coordinator or published != [fleet]):
            problems.append(f"{n} publishes {published}; only the coordinator's Fleet front ({fleet}) may be")
        if str(listen.superlink_port) in {str(p) for p in svc.get("expose", [])}:
            problems.append(f"{n} exposes the Runtime front ({listen.superlink_port})")
        if svc.get("network_mode") == "host":
            problems.append(f"{n} shares the host's network (every loopback port)")
    return problems


def test_compose_gives_each_site_only_its_own_bundle():
    problems = compose_problems(yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text()),
                                base=DEPLOY / "compose")
    assert problems == []


# ----- Kubernetes -----
def pod_specs(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for d in docs:
        name, spec = f"{d['kind']}/{d['metadata']['name']}", d.get("spec", {})
        if d["kind"] == "Pod":
            out[name] = spec
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            out[name] = spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            out[name] = spec["jobTemplate"]["spec"]["template"]["spec"]
    return out


def pod_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def pod_commands(spec: dict) -> list[list[str]]:
    out = []
    for c in pod_containers(spec):
        argv = [*c.get("command", []), *c.get("args", [])]
        out += sh_commands(argv[2]) if argv[:2] == ["/bin/sh", "-c"] else [argv]
    return out


def pod_refs(spec: dict) -> set[tuple[str, str]]:
    """The claims and Secrets a pod can read: volumes (projected too), envFrom and env."""
    refs = set()
    for v in spec.get("volumes", []):
        if "persistentVolumeClaim" in v:
            refs.add(("claim", v["persistentVolumeClaim"]["claimName"]))
        for src in [v, *v.get("projected", {}).get("sources", [])]:
            if "secret" in src:
                refs.add(("secret", src["secret"].get("secretName") or src["secret"].get("name")))
    for c in pod_containers(spec):
        refs |= {("secret", e["secretRef"]["name"]) for e in c.get("envFrom", []) if "secretRef" in e}
        refs |= {("secret", e["valueFrom"]["secretKeyRef"]["name"]) for e in c.get("env", [])
                 if "secretKeyRef" in e.get("valueFrom", {})}
    return refs


def k8s_problems(docs: list[dict]) -> list[str]:
    """Why the manifests give a pod the coordinator's secrets or another site's, or publish more than Fleet."""
    pods = pod_specs(docs)
    fl = {n: fl_commands(pod_commands(spec)) for n, spec in pods.items()}
    coordinators = [n for n, cs in fl.items() if any(p == "fl-server" and a.command == "start" for p, a in cs)]
    sites = [n for n, cs in fl.items() if any(p == "fl-client" and a.command == "start" for p, a in cs)]
    if len(coordinators) != 1:
        return [f"expected one pod template running `fl-server start`, found {coordinators}"]
    coordinator = coordinators[0]
    problems = []
    coord_refs = pod_refs(pods[coordinator])
    for n in pods:
        if n != coordinator:
            for kind, name in sorted(pod_refs(pods[n]) & coord_refs):
                problems.append(f"{n} mounts the coordinator's {kind} {name!r}")
        if n in sites and n in coordinators:
            problems.append(f"{n} runs a site and the coordinator")
    for n in sites:
        for kind, name in sorted(pod_refs(pods[n])):
            others = [m for m in pods if m != n and (kind, name) in pod_refs(pods[m])]
            if kind == "secret" and others:
                problems.append(f"{n}'s Secret {name!r} is also given to {others}")
    inits = [a for _, cs in fl.items() for p, a in cs if p == "fl-server" and a.command == "init"]
    if not inits:
        return [*problems, "no `fl-server init`: the Fleet port is unknown"]
    fleet, runtime = int(inits[0].listen.rpartition(":")[2]), inits[0].superlink_port
    named = {}
    for n, spec in pods.items():
        if spec.get("hostNetwork"):
            problems.append(f"{n} uses the host's network (every loopback port)")
        for c in pod_containers(spec):
            for p in c.get("ports", []):
                named[p.get("name")] = p["containerPort"]
                if n != coordinator or p["containerPort"] != fleet or "hostPort" in p:
                    problems.append(f"{n}: container port {p} is not the coordinator's Fleet front ({fleet})")
    for d in docs:
        if d["kind"] == "Service":
            for p in d["spec"]["ports"]:
                target = named.get(p.get("targetPort"), p.get("targetPort", p["port"]))
                if p["port"] != fleet or target != fleet:
                    problems.append(f"Service/{d['metadata']['name']} publishes {p}; only Fleet ({fleet}) may be "
                                    f"(never the Runtime front, {runtime})")
    return problems


def k8s_docs() -> list[dict]:
    return [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_kubernetes_coordinator_secrets_stay_in_the_coordinator_pod():
    assert k8s_problems(k8s_docs()) == []


# ----- systemd -----
def unit(name: str) -> dict[str, str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(DEPLOY / "systemd" / name)
    return dict(cp["Service"])


def unit_paths(u: dict[str, str], *keys: str) -> set[str]:
    return {p.lstrip("-+").split(":")[0] for k in keys for p in u.get(k, "").split()}


def unit_writable(u: dict[str, str]) -> set[str]:
    return unit_paths(u, "ReadWritePaths", "BindPaths") | {f"/var/lib/{d}" for d in u.get("StateDirectory", "").split()}


def systemd_problems(site: dict[str, str], coord: dict[str, str], site_toml: dict) -> list[str]:
    """Why a site unit could reach more than its bundle and its state, or the coordinator unit a site's bundle."""
    problems = []
    configs = {str(check_command(shlex.split(site[k])).config) for k in ("ExecStartPre", "ExecStart") if k in site}
    coord_state = str(check_command(shlex.split(coord["ExecStart"])).state_dir)
    if len(configs) != 1:
        return [f"the site unit's commands read different configs: {sorted(configs)}"]
    config = configs.pop()
    bundle = posixpath.dirname(config)
    got = {"site.toml": config, "site.key": site_toml["private_key"], "ca.pem": site_toml["coordinator"]["ca_cert"]}
    for want, path in got.items():
        path = posixpath.normpath(posixpath.join(bundle, path))
        if path != f"/etc/fedhaven/{want}":
            problems.append(f"the site reads its {want} from {path}, not /etc/fedhaven/{want}")
    site_state = posixpath.normpath(posixpath.join(bundle, site_toml["state_dir"]))
    anchor = site_toml.get("ledger_anchor") or f"{site_state}.ledger-anchor.json"  # the ledger's anchor file
    anchor_dir = posixpath.dirname(posixpath.normpath(posixpath.join(bundle, anchor)))
    if unit_writable(site) != {site_state, anchor_dir}:
        problems.append(f"the site unit may write {sorted(unit_writable(site))}; only its state_dir {site_state} "
                        f"and its ledger anchor's folder {anchor_dir}")
    if unit_writable(coord) != {coord_state}:
        problems.append(f"the coordinator unit may write {sorted(unit_writable(coord))}; only {coord_state}")
    if overlap(site_state, coord_state):
        problems.append(f"the site's state {site_state} and the coordinator's {coord_state} overlap")
    for name, u in (("site", site), ("coordinator", coord)):
        if u.get("User", "root") == "root" or u.get("DynamicUser") == "yes":
            problems.append(f"the {name} unit needs its own account (User=), not {u.get('User', 'root')}")
        if u.get("StateDirectoryMode") != "0700" or u.get("UMask") != "0077":
            problems.append(f"the {name} unit's state must stay its own: StateDirectoryMode=0700 and UMask=0077")
        if u.get("ProtectSystem") != "strict":
            problems.append(f"the {name} unit needs ProtectSystem=strict (it may write only its state)")
    if site.get("User") == coord.get("User"):
        problems.append(f"site and coordinator share the account {site.get('User')!r}: on one host each could read "
                        f"the other's files")
    readable = unit_paths(site, "ReadOnlyPaths", "BindReadOnlyPaths") | unit_writable(site)
    if coord_state not in unit_paths(site, "InaccessiblePaths") or any(overlap(p, coord_state) for p in readable):
        problems.append(f"the site unit can reach the coordinator's state {coord_state} (InaccessiblePaths=)")
    for path in (bundle, site_state, anchor_dir):
        if path not in unit_paths(coord, "InaccessiblePaths"):
            problems.append(f"the coordinator unit can reach a site's {path} on the same host (InaccessiblePaths=)")
    return problems


def test_systemd_site_reads_only_its_bundle_and_the_coordinator_keeps_its_state():
    site_toml = load_toml(DEPLOY / "systemd" / "site.toml")
    load_site_config(DEPLOY / "systemd" / "site.toml")  # valid as shipped
    assert systemd_problems(unit("fedhaven-site.service"), unit("fedhaven-coordinator.service"), site_toml) == []


# ----- the checks above catch what they exist for: each mutation is a way to leak a secret -----
def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())


def _provision(edit: Callable[[str], str]) -> Callable[[Path], str]:
    return lambda p: edit(p.read_text()) if p.name == "provision.sh" else p.read_text()


def _add_volume(service: str, volume: str) -> Callable[[dict], None]:
    return lambda doc: doc["services"][service]["volumes"].append(volume)


def _set_volume(service: str, index: int, volume: str) -> Callable[[dict], None]:
    return lambda doc: doc["services"][service]["volumes"].__setitem__(index, volume)


COMPOSE_LEAKS = {
    # what the compose file did before: the whole coordinator state in every site
    "coordinator state in a site": (_add_volume("site-a", "coordinator-state:/bundle-root:ro"), None,
                                    "mounts the coordinator's state"),
    "another site's key": (_add_volume("site-a", "site-b-key:/etc/fedhaven/other:ro"), None, "both mount site-b-key"),
    "all sites' data in one site": (_set_volume("site-a", 3, "./data:/data:ro"), None, "both mount"),
    "the operator holds a site key": (_add_volume("provision", "site-a-key:/exchange/site-a-key:ro"), None,
                                      "is not one of site-a's containers but mounts site-a-key"),
    "the coordinator holds a site ledger": (_add_volume("coordinator", "site-b-state:/site-b:ro"), None,
                                            "mounts site-b-state"),
    "key in the public volume": (_set_volume("site-c", 1, "site-c-public:/etc/fedhaven/key:ro"), None,
                                 "its key and the CA certificate share"),
    "keygen writes elsewhere": (_set_volume("keygen-site-b", 0, "scratch:/etc/fedhaven/key"), None,
                                "no site-b container makes its key"),
    "operator generates the keys": (None, lambda s: s.replace('--public-key "/exchange/$site/site.pub"', ""),
                                    "without --public-key"),
    "server key copied out": (None, lambda s: s.replace("done\n", 'cp "$STATE/pki/server.key" /exchange/\ndone\n'),
                              "copies /var/lib/fedhaven/pki/server.key out of the coordinator's state"),
    "Runtime front published": (lambda doc: doc["services"]["coordinator"]["ports"].append("9093:9093"), None,
                                "only the coordinator's Fleet front"),
    "a site publishes a port": (lambda doc: doc["services"]["site-a"].__setitem__("ports", ["9094:9094"]), None,
                                "site-a publishes"),
    "host network": (lambda doc: doc["services"]["coordinator"].__setitem__("network_mode", "host"), None,
                     "shares the host's network"),
}


@pytest.mark.parametrize("leak", list(COMPOSE_LEAKS))
def test_compose_check_catches(leak):
    edit_doc, edit_script, expected = COMPOSE_LEAKS[leak]
    doc = _compose()
    if edit_doc:
        edit_doc(doc)
    read = _provision(edit_script) if edit_script else Path.read_text
    problems = compose_problems(doc, base=DEPLOY / "compose", read=read)
    assert any(expected in p for p in problems), problems


def _site_pod(volumes: list[dict]) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "site-a"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "site", "command": ["fl-client"], "args": ["start", "--config", "/etc/fedhaven/site.toml"]}],
                "volumes": volumes}}}}


K8S_LEAKS = {
    "a site pod on the coordinator's claim": (
        lambda docs: docs.append(_site_pod([{"name": "s",
                                              "persistentVolumeClaim": {"claimName": "coordinator-state"}}])),
        "mounts the coordinator's claim 'coordinator-state'"),
    "two sites share a key Secret": (
        lambda docs: docs.extend([_site_pod([{"name": "k", "secret": {"secretName": "site-key"}}]),
                                  {**_site_pod([{"name": "k", "secret": {"secretName": "site-key"}}]),
                                   "metadata": {"name": "site-b"}}]),
        "Secret 'site-key' is also given to"),
    "Runtime front in the Service": (
        lambda docs: next(d for d in docs if d["kind"] == "Service")["spec"]["ports"].append({"port": 9093}),
        "publishes"),
    "host network": (
        lambda docs: pod_specs(docs)["Deployment/coordinator"].__setitem__("hostNetwork", True), "host's network"),
}


@pytest.mark.parametrize("leak", list(K8S_LEAKS))
def test_kubernetes_check_catches(leak):
    edit, expected = K8S_LEAKS[leak]
    docs = k8s_docs()
    edit(docs)
    problems = k8s_problems(docs)
    assert any(expected in p for p in problems), problems


SYSTEMD_LEAKS = {
    "site writes the coordinator's state": ("site", "ReadWritePaths", "/var/lib/fedhaven", "may write"),
    "site sees the coordinator's state": ("site", "InaccessiblePaths", "", "can reach the coordinator's state"),
    "site reads a key outside its bundle": ("toml", "private_key", "/var/lib/fedhaven/sites/hospital-a/site.key",
                                           "reads its site.key from"),
    "site and coordinator share an account": ("site", "User", "fedhaven", "share the account"),
    "coordinator state world-readable": ("coord", "StateDirectoryMode", "0755", "StateDirectoryMode=0700"),
    "coordinator without umask": ("coord", "UMask", "0022", "UMask=0077"),
    "coordinator runs as root": ("coord", "User", "root", "needs its own account"),
    "coordinator sees a site's bundle": ("coord", "InaccessiblePaths", "", "can reach a site's /etc/fedhaven"),
}


@pytest.mark.parametrize("leak", list(SYSTEMD_LEAKS))
def test_systemd_check_catches(leak):
    which, key, value, expected = SYSTEMD_LEAKS[leak]
    units = {"site": unit("fedhaven-site.service"), "coord": unit("fedhaven-coordinator.service"),
             "toml": load_toml(DEPLOY / "systemd" / "site.toml")}
    units[which][key] = value
    problems = systemd_problems(units["site"], units["coord"], units["toml"])
    assert any(expected in p for p in problems), problems

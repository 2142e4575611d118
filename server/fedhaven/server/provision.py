"""Provisioning for operators: the coordinator's state directory, its PKI, and one bundle per site."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import tomli_w

from fedhaven.server.limits import Limits
from fedhaven.shared.config import ConfigError, bounds, load_toml, parse, to_dict
from fedhaven.shared.crypto import (
    CredentialError,
    check_site_public_key,
    fingerprint,
    make_ca,
    make_server_cert,
    make_site_keypair,
    write_private,
    write_public,
)
from fedhaven.shared.files import write_atomic


@dataclass(frozen=True)
class CoordinatorConfig:
    """server.toml: where the coordinator listens and the names sites know it by."""

    public_address: str = "localhost:9092"  # what sites dial; goes into every site.toml
    listen: str = "0.0.0.0:9092"  # where the Fleet front listens
    # 127.0.0.1 only: where Flower's ServerApp executor reaches the Runtime API (the SuperLink itself listens
    # on a Unix socket in the state directory)
    superlink_port: int = field(default=9093, metadata=bounds(ge=1, le=65535))
    names: tuple[str, ...] = ("localhost",)
    ips: tuple[str, ...] = ()
    # fedhaven's speed shims over Flower's waits (fedhaven.server.latency); false: Flower's own timings, same results
    latency: bool = True
    # [coordinator.limits]: the Fleet door's bounds (body sizes, connections, deadlines, each site's request rate);
    # see docs/limits.md and fedhaven.server.limits.Limits
    limits: Limits = field(default_factory=Limits)

    def problems(self) -> list[str]:
        out = []
        for key in ("public_address", "listen"):
            host, _, port = getattr(self, key).rpartition(":")
            if not host or not port.isdigit():
                out.append(f"{key}: expected host:port, got {getattr(self, key)!r}")
        if self.listen.endswith(f":{self.superlink_port}"):
            out.append("superlink_port: must differ from the front's port")
        return out


SiteStatus = Literal["pending", "registered", "revoked"]


@dataclass(frozen=True)
class SiteRecord:
    """One site in the registry: its key's fingerprint and whether the SuperLink knows it."""

    name: str
    fingerprint: str
    status: SiteStatus = "pending"
    node_id: int | None = None
    added: float = field(default_factory=time.time)
    revoked: float | None = None


class StateDir:
    """The coordinator's state directory (keep it backed up; it holds the CA key)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_key(self) -> Path:
        return self.root / "pki" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "pki" / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "pki" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "pki" / "server.pem"

    @property
    def sites_dir(self) -> Path:
        return self.root / "sites"

    @property
    def registry_file(self) -> Path:
        return self.root / "sites.json"

    @property
    def config_file(self) -> Path:
        return self.root / "server.toml"

    @property
    def secret_file(self) -> Path:
        return self.root / "superexec.secret"

    @property
    def database(self) -> Path:
        return self.root / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def runtime_file(self) -> Path:
        return self.root / "coordinator.json"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    @property
    def superlink_socket(self) -> Path:
        return self.root / "run" / "superlink.sock"

    def has_pki(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.server_cert, self.server_key))

    def config(self) -> CoordinatorConfig:
        if not self.config_file.exists():
            raise ConfigError([f"{self.config_file}: not found; run `fl-server init --state-dir {self.root}` first"],
                              source=str(self.config_file))
        data = load_toml(self.config_file)
        stray = [f"[{k}]: not a table of server.toml (everything goes under [coordinator]"
                 f"{'; the door limits under [coordinator.limits]' if k == 'limits' else ''})"
                 for k in data if k != "coordinator"]
        try:
            cfg = parse(CoordinatorConfig, data.get("coordinator", {}), source=str(self.config_file))
        except ConfigError as exc:
            raise ConfigError([*stray, *exc.problems], source=str(self.config_file)) from None
        except ValueError as exc:  # limits that contradict each other (each one in range): Limits refuses them
            problems = [f"limits.{p}" for p in str(exc).removeprefix("fedhaven limits: ").split("; ")]
            raise ConfigError([*stray, *problems], source=str(self.config_file)) from None
        if stray:
            raise ConfigError(stray, source=str(self.config_file))
        return cfg

    # ----- registry -----
    def sites(self) -> dict[str, SiteRecord]:
        if not self.registry_file.exists():
            return {}
        return {k: SiteRecord(**v) for k, v in json.loads(self.registry_file.read_text()).items()}

    def save_sites(self, sites: dict[str, SiteRecord]) -> None:
        data = {k: asdict(v) for k, v in sorted(sites.items())}
        write_atomic(self.registry_file, json.dumps(data, indent=2).encode())

    def update_site(self, record: SiteRecord) -> None:
        sites = self.sites()
        sites[record.name] = record
        self.save_sites(sites)

    def site_public_key(self, name: str) -> bytes:
        return (self.sites_dir / name / "site.pub").read_bytes()


def init_state(*, state: StateDir, cfg: CoordinatorConfig, force: bool = False) -> list[Path]:
    """Create the CA, the coordinator's TLS certificate, server.toml and the SuperExec secret."""
    if state.has_pki() and not force:
        raise ConfigError([f"{state.pki} already holds a CA; re-initialising would lock every site out. "
                           f"Pass --force only to start over"], source="fl-server init")
    state.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state.root, 0o700)  # the CA key, site keys, the SuperLink's state and socket: operator only
    ca = make_ca()
    server = make_server_cert(ca=ca, dns_names=cfg.names, ips=cfg.ips)
    write_private(state.ca_key, ca.key_pem)
    write_public(state.ca_cert, ca.cert_pem)
    write_private(state.server_key, server.key_pem)
    write_public(state.server_cert, server.cert_pem)
    write_private(state.secret_file, secrets.token_bytes(32))
    table = to_dict(cfg)
    if cfg.limits == Limits():
        del table["limits"]  # defaults stay defaults (a later release's defaults apply); docs/limits.md lists them
    state.config_file.write_text(tomli_w.dumps({"coordinator": table}))
    state.sites_dir.mkdir(parents=True, exist_ok=True)
    state.runs.mkdir(parents=True, exist_ok=True)
    if not state.registry_file.exists():
        state.save_sites({})
    return [state.ca_cert, state.server_cert, state.config_file]


def site_toml(*, name: str, coordinator: CoordinatorConfig, with_key: bool) -> str:
    """A site.toml template for `name`: everything filled in but the path to its data."""
    return f"""# fedhaven site configuration for {name}. Check it with: fl-client check --config site.toml
name = "{name}"
state_dir = "state"          # this site's privacy ledger lives here: back it up, never edit it
private_key = "site.key"     # {'generated by the operator: keep it 0600' if with_key else 'from `fl-client keygen`'}
device = "auto"              # auto (CUDA if present), cpu or cuda
# cpu_threads = 4            # CPU threads training may use; 0 (default): every core. Set it on a shared host
memory_mb = 2048             # the training process stays under this: images and features are read in batches
clientappio_port = 9094      # loopback TLS port between the SuperNode and the site's executor: must be free
# roster = "roster.toml"     # the consortium's sites and key fingerprints, agreed among the sites out of band:
#                            # SecAgg+ masks are shared only with sites on it (without it: whom the coordinator says)

[coordinator]
address = "{coordinator.public_address}"
ca_cert = "ca.pem"

[data]
source = "imagefolder"       # or "idx" (MNIST-format files)
path = "/path/to/training/images"   # <class>/<image> folders
image_size = 224             # images are resized to image_size x image_size (the coordinator's run must match)
channels = 3                 # 3 (RGB) or 1 (grey)

[policy]                     # the coordinator cannot override these
max_epsilon = 8.0            # privacy budget across all runs, at delta below
delta = 1e-5
min_noise_multiplier = 0.5
require_dp = true
require_secure_aggregation = true
allowed_models = ["scatternet", "lenet"]   # fedhaven's own models: the default (scatternet) and the CNN
"""


def add_site(*, state: StateDir, name: str, public_key: bytes | None = None) -> tuple[SiteRecord, Path]:
    """Create the bundle for a new site; generate its key pair unless the site sent its public key."""
    problems = []
    if not name or any(c in name for c in "/\\ \t\"'") or name.startswith("."):
        problems.append(f"site name {name!r}: use letters, digits, '-' or '_'")
    existing = state.sites().get(name)
    if existing is not None and existing.status != "revoked":
        problems.append(f"site {name!r} already exists ({existing.status}); revoke it first to replace its key")
    if not state.has_pki():
        problems.append(f"{state.pki}: no PKI; run `fl-server init --state-dir {state.root}` first")
    if problems:
        raise ConfigError(problems, source="fl-server site add")
    bundle = state.sites_dir / name
    bundle.mkdir(parents=True, exist_ok=True)
    if public_key is None:
        private, public_key = make_site_keypair()
        write_private(bundle / "site.key", private)
    try:
        fp = check_site_public_key(public_key)
    except CredentialError as exc:
        raise ConfigError([str(exc)], source="fl-server site add") from None
    taken = [r.name for r in state.sites().values() if r.fingerprint == fp and r.status != "revoked"]
    if taken:
        raise ConfigError([f"this public key already belongs to site {taken[0]!r}"], source="fl-server site add")
    write_public(bundle / "site.pub", public_key)
    write_public(bundle / "ca.pem", state.ca_cert.read_bytes())
    (bundle / "site.toml").write_text(site_toml(name=name, coordinator=state.config(),
                                                with_key=(bundle / "site.key").exists()))
    record = SiteRecord(name=name, fingerprint=fingerprint(public_key))
    state.update_site(record)
    return record, bundle


def revoke_site(*, state: StateDir, name: str) -> SiteRecord:
    """Mark a site revoked (the SuperLink forgets its key at the next sync) and delete any key we generated."""
    record = state.sites().get(name)
    if record is None:
        raise ConfigError([f"no site named {name!r}; `fl-server site list` shows them"], source="fl-server site revoke")
    (state.sites_dir / name / "site.key").unlink(missing_ok=True)
    record = replace(record, status="revoked", revoked=time.time())
    state.update_site(record)
    return record

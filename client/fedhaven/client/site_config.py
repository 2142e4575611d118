"""A site's own configuration file (site.toml): coordinator, credentials, local data, and the site policy."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from fedhaven.client.ledger import Ledger
from fedhaven.shared.config import ConfigError, bounds, load_toml, parse
from fedhaven.shared.schema import DEFAULT_MEMORY_MB, SIMULATION_POLICY, DataConfig, SitePolicy

__all__ = ["SIMULATION_POLICY", "CoordinatorLink", "SiteConfig", "SitePolicy", "load_site_config"]


@dataclass(frozen=True)
class CoordinatorLink:
    """Where the coordinator is and how to trust it."""

    address: str = "localhost:9092"
    ca_cert: str | None = None
    insecure: bool = False

    def problems(self) -> list[str]:
        host, _, port = self.address.rpartition(":")
        out = []
        if not host or not port.isdigit():
            out.append(f"address: expected host:port, got {self.address!r}")
        if not self.insecure and not self.ca_cert:
            out.append("ca_cert: the coordinator's CA certificate (ca.pem from the operator) is required for TLS; "
                       "plain HTTP needs insecure = true")
        return out


@dataclass(frozen=True)
class SiteConfig:
    """Everything `fl-client` needs; relative paths are relative to the file."""

    name: str
    state_dir: str = "state"
    # the ledger's anchor file; default: beside state_dir (<state_dir>.ledger-anchor.json)
    ledger_anchor: str | None = None
    private_key: str | None = "site.key"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads training may use (torch and OpenMP); 0: every core. Set it when the machine is shared
    # (several sites or other services on one host): oversubscribed OpenMP threads spin against each other.
    cpu_threads: int = field(default=0, metadata=bounds(ge=0, le=4096))
    # MB the training process stays under: images and features are read a batch at a time, and each DP-SGD step
    # is processed in parts that fit (the step and its privacy are those of the whole batch)
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata=bounds(ge=256))
    clientappio_port: int = field(default=9094, metadata=bounds(ge=1, le=65535))
    # the consortium roster this site pins (roster.toml: names and key fingerprints, agreed out of band): SecAgg+
    # masks are shared only with neighbours whose keys are signed by a site on it. None: whoever the coordinator says
    roster: str | None = None
    coordinator: CoordinatorLink = field(default_factory=CoordinatorLink)
    data: DataConfig = field(default_factory=DataConfig)
    policy: SitePolicy = field(default_factory=SitePolicy)

    unknown_hints = {"attack": "the attack harness is simulation-only (fl-sim experiments); a deployed site never "
                               "attacks: remove [attack]"}

    def ledger(self) -> Ledger:
        """This site's privacy ledger with its anchor (paths as resolved), signed with the site key when it exists."""
        key = Path(self.private_key) if self.private_key and Path(self.private_key).exists() else None
        return Ledger.in_dir(self.state_dir, anchor=self.ledger_anchor, signing_key=key)

    def problems(self) -> list[str]:
        out = []
        if not self.name or any(c in self.name for c in "/\\ \t\n\"'"):
            out.append(f"name: a site name without spaces, quotes or slashes, got {self.name!r}")
        if not self.coordinator.insecure and not self.private_key:
            out.append("private_key: SuperNode authentication needs the site's private key (fl-client keygen)")
        return out

    def resolved(self, base: Path) -> SiteConfig:
        """The same config with every path made absolute against `base` (the file's folder)."""

        def abs_(p: str | None) -> str | None:
            return None if p is None else str((base / Path(p).expanduser()).resolve())

        return replace(
            self,
            state_dir=abs_(self.state_dir) or "",
            ledger_anchor=abs_(self.ledger_anchor),
            private_key=abs_(self.private_key),
            roster=abs_(self.roster),
            coordinator=replace(self.coordinator, ca_cert=abs_(self.coordinator.ca_cert)),
            data=replace(self.data, path=abs_(self.data.path), test_path=abs_(self.data.test_path)),
        )


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate site.toml (every problem listed at once); paths come back absolute."""
    p = Path(path).expanduser().resolve()
    try:
        cfg = parse(SiteConfig, load_toml(p), source=str(p))
    except ConfigError:
        raise
    return cfg.resolved(p.parent)

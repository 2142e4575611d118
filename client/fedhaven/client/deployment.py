"""The deployed ClientApp: a SuperNode started by `fl-client` points it at the site's own site.toml."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.client.flower_app import make_client_app
from fedhaven.client.roster import Roster, load_roster
from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.client.types import SiteInfo

if TYPE_CHECKING:
    from flwr.app import Context

    from fedhaven.shared.data import ImageData

#: The node-config key `fl-client start` sets on its SuperNode.
SITE_CONFIG_KEY = "site-config"


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _config(path: str) -> SiteConfig:
    """site.toml, read again whenever the file changes: a long-lived executor must apply an edited policy."""
    return _config_at(path, _stamp(Path(path)))


@functools.lru_cache(maxsize=8)
def _config_at(path: str, stamp: tuple[int, int, int]) -> SiteConfig:
    return load_site_config(path)


def data_fingerprint(cfg: SiteConfig) -> str:
    """A digest of the site's data files' names, sizes and modification times: it changes when the data does."""
    root = cfg.data.path
    h = hashlib.sha256(f"{cfg.data.source}|{cfg.data.image_size}|{cfg.data.channels}".encode())
    if root:
        base = Path(root)
        entries = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for p in entries:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(base) if base.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SiteConfigProvider:
    """Reads the site from the file named in the SuperNode's node config; the coordinator cannot change it."""

    def _path(self, context: Context) -> str:
        path = context.node_config.get(SITE_CONFIG_KEY)
        if not path:
            raise RuntimeError(f"this SuperNode was started without --node-config '{SITE_CONFIG_KEY}=...'; "
                               f"start sites with `fl-client start --config site.toml`")
        return str(path)

    def key(self, context: Context) -> str:
        """Names the site as it is now: a new key (and a freshly loaded site) when site.toml or the data change."""
        path = self._path(context)
        return f"site-config:{path}:{_stamp(Path(path))}:{data_fingerprint(_config(path))}"

    def info(self, context: Context) -> SiteInfo:
        cfg = _config(self._path(context))
        return site_info(cfg)

    def data(self, context: Context) -> ImageData:
        from fedhaven.shared.sources import load_data  # torch: only the stage that trains pays for it

        cfg = _config(self._path(context))
        return load_data(cfg=cfg.data, split="train", cache_dir=site_info(cfg).cache())


def site_info(cfg: SiteConfig, *, roster: bool = True) -> SiteInfo:
    """What the training path knows of a site, from its site.toml (the same file `fl-client check` reads);
    `roster=False`: without reading its roster (`check` reports a roster's problems itself)."""
    key = Path(cfg.private_key) if cfg.private_key and Path(cfg.private_key).exists() else None
    return SiteInfo(name=cfg.name, policy=cfg.policy, state_dir=Path(cfg.state_dir), device=cfg.device,
                    ledger_anchor=Path(cfg.ledger_anchor) if cfg.ledger_anchor else None, memory_mb=cfg.memory_mb,
                    signing_key=key, roster=_roster(cfg.roster) if cfg.roster and roster else None)


def _roster(path: str) -> Roster:
    """roster.toml, read again whenever the file changes."""
    return _roster_at(path, _stamp(Path(path)))


@functools.lru_cache(maxsize=4)
def _roster_at(path: str, stamp: tuple[int, int, int]) -> Roster:
    return load_roster(path)


app = make_client_app(sites=SiteConfigProvider())

"""The deployed ClientApp: a SuperNode started by `fl-client` points it at the site's own site.toml."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.client.flower_app import make_client_app
from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.client.types import SiteInfo

if TYPE_CHECKING:
    from fedhaven.shared.data import ImageData

#: The node-config key `fl-client start` sets on its SuperNode.
SITE_CONFIG_KEY = "site-config"


@functools.lru_cache(maxsize=8)
def _config(path: str) -> SiteConfig:
    return load_site_config(path)


@dataclass(frozen=True)
class SiteConfigProvider:
    """Reads the site from the file named in the SuperNode's node config; the coordinator cannot change it."""

    def _path(self, context) -> str:  # noqa: ANN001 - Flower Context
        path = context.node_config.get(SITE_CONFIG_KEY)
        if not path:
            raise RuntimeError(f"this SuperNode was started without --node-config '{SITE_CONFIG_KEY}=...'; "
                               f"start sites with `fl-client start --config site.toml`")
        return str(path)

    def key(self, context) -> str:  # noqa: ANN001
        return f"site-config:{self._path(context)}"

    def info(self, context) -> SiteInfo:  # noqa: ANN001
        cfg = _config(self._path(context))
        return SiteInfo(name=cfg.name, policy=cfg.policy, state_dir=Path(cfg.state_dir), device=cfg.device)

    def data(self, context) -> ImageData:  # noqa: ANN001
        from fedhaven.shared.data import load_data  # torch: only the stage that trains pays for it

        return load_data(cfg=_config(self._path(context)).data, split="train")


app = make_client_app(sites=SiteConfigProvider())

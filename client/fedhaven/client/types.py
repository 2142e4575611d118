"""Light types shared by the site's modules (no torch import: Flower's short SecAgg+ stages load only these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.client.site_config import SIMULATION_POLICY, SitePolicy
from fedhaven.shared.accounting import PrivacyHistory
from fedhaven.shared.refusal import Code, TaskRefused
from fedhaven.shared.schema import DEFAULT_MEMORY_MB

__all__ = ["Code", "PrivacyState", "Site", "SiteInfo", "TaskRefused"]

if TYPE_CHECKING:
    from fedhaven.client.ledger import Ledger
    from fedhaven.client.roster import Roster
    from fedhaven.shared.data import ImageData


@dataclass(frozen=True)
class SiteInfo:
    """What is known about a site without reading its data: name, policy, state directory, device."""

    name: str
    policy: SitePolicy = SIMULATION_POLICY
    state_dir: Path | None = None  # None: no ledger (unit tests); history kept in Flower's context only
    device: str = "cpu"  # "auto", "cpu" or "cuda": resolved once, where training runs
    cache_dir: Path | None = None  # decoded images and a fixed front end's features (default: state_dir/feature-cache)
    ledger_anchor: Path | None = None  # None: beside state_dir
    memory_mb: int = DEFAULT_MEMORY_MB  # the training process's memory limit: sets chunk and physical batch sizes
    signing_key: Path | None = None  # the site key: signs SecAgg+ public keys and ledger entries (None: simulated)
    roster: Roster | None = None  # the consortium roster it pinned (None: neighbours are whom the coordinator says)

    def cache(self) -> Path | None:
        """Where this site caches decoded images and features (None: a private temporary folder)."""
        if self.cache_dir is not None:
            return self.cache_dir
        return self.state_dir / "feature-cache" if self.state_dir is not None else None

    def ledger(self) -> Ledger | None:
        """The site's privacy ledger, or None for a site without a state directory."""
        from fedhaven.client.ledger import Ledger

        return None if self.state_dir is None else Ledger.in_dir(self.state_dir, anchor=self.ledger_anchor,
                                                                  signing_key=self.signing_key)


@dataclass(frozen=True)
class Site:
    """A site with its local training data (never sent anywhere)."""

    info: SiteInfo
    data: ImageData

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class PrivacyState:
    """What a site remembers about privacy: the history of its current budget (all runs since init or reset)."""

    history: PrivacyHistory = PrivacyHistory()

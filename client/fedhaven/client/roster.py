"""The consortium roster a site pins itself: the names and key fingerprints of the sites it will share masks with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedhaven.shared.config import ConfigError, load_toml

_FINGERPRINT = re.compile(r"SHA256:[0-9a-f]{32}")
EXAMPLE = '[sites]\n"hospital-a" = "SHA256:0123456789abcdef0123456789abcdef"'


@dataclass(frozen=True)
class Roster:
    """Site name -> the fingerprint of its site key (`fl-client keygen` prints it), agreed out of band.

    With a roster, a site shares SecAgg+ masks only with neighbours whose public keys are
    signed by a key on it under the name it is listed with: a coordinator cannot invent a
    neighbour. Without one, the neighbours are whoever the coordinator says they are.
    """

    sites: tuple[tuple[str, str], ...]  # (name, fingerprint), as listed
    source: str = ""

    def fingerprint_of(self, name: str) -> str | None:
        return dict(self.sites).get(name)


def load_roster(path: str | Path) -> Roster:
    """Read roster.toml (a `[sites]` table of name = "SHA256:..."); every problem listed at once."""
    p = Path(path)
    data = load_toml(p)
    sites = data.get("sites")
    problems = []
    if not isinstance(sites, dict) or not sites:
        raise ConfigError([f"{p}: a roster is a [sites] table of name = \"SHA256:...\" lines, e.g.\n{EXAMPLE}"],
                          source=str(p))
    extra = sorted(set(data) - {"sites"})
    if extra:
        problems.append(f"{p}: unknown table(s) {', '.join(extra)}; a roster holds only [sites]")
    seen: dict[str, str] = {}
    for name, fp in sites.items():
        if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
            problems.append(f"{p}: sites.{name}: expected a key fingerprint \"SHA256:<32 hex>\" (as `fl-client "
                            f"keygen` and `fl-server site list` print it), got {fp!r}")
        elif fp in seen:
            problems.append(f"{p}: sites.{name} and sites.{seen[fp]} have the same key {fp}: each site has its own")
        else:
            seen[fp] = name
    if problems:
        raise ConfigError(problems, source=str(p))
    return Roster(tuple(sites.items()), str(p))

"""Experiment files: defaults, then a TOML file, then key=value overrides, then flags; parsed once, frozen."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedhaven.shared.config import deep_merge, load_toml, parse, parse_override
from fedhaven.shared.schema import ExperimentConfig

#: Experiments shipped with fedhaven, usable by name (`fl-sim run mnist`).
BUNDLED = Path(__file__).parent / "experiments"
DEFAULT_EXPERIMENT = "mnist"
#: The resolved experiment, in its run directory: what `fl-sim run --resume` continues.
EXPERIMENT_FILE = "experiment.json"


def bundled_experiments() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


def experiment_path(name_or_path: str) -> Path:
    """A bundled experiment's file by name, or the path given."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    bundled = BUNDLED / f"{name_or_path}.toml"
    if bundled.exists():
        return bundled
    from fedhaven.shared.config import ConfigError

    raise ConfigError([f"{name_or_path!r} is neither a TOML file nor a bundled experiment "
                       f"({', '.join(bundled_experiments())})"], source="experiment")


def default_name(exp: ExperimentConfig) -> str:
    """`<data>-<N>-sites-<partition>`: `mnist-10-sites-iid`, `xrays-3-sites-folders` for an ImageFolder tree
    `xrays/` (its folder's name), `digits-3-sites-dirichlet0.3`."""
    data: str = exp.data.source
    if exp.data.source in ("idx", "imagefolder") and exp.data.path:
        data = Path(exp.data.path).expanduser().resolve().name or data
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{data}-{exp.sites}-sites-{exp.partition.replace(':', '')}")
    return label.strip("-.") or "experiment"


def load_experiment(
    *, source: str = DEFAULT_EXPERIMENT, overrides: Sequence[str] = (), flags: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Resolve an experiment: defaults <- file <- `key=value` overrides <- command-line flags."""
    path = experiment_path(source)
    data = load_toml(path)
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    if flags:
        data = deep_merge(data, dict(flags))
    exp = parse(ExperimentConfig, data, source=str(path))
    if "name" not in data:  # a run's name follows its data and sites, whatever file it started from
        from dataclasses import replace

        exp = replace(exp, name=default_name(exp))
    if exp.train.recipe != "auto":
        return exp
    from fedhaven.shared.recipe import apply_recipe

    return apply_recipe(exp, given=data, sites=exp.sites)

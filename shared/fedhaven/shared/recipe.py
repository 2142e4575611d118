"""The hyperparameter rule: rounds and learning rate from (epsilon, number of sites), the batch from each site's size.

One written rule, used by `train.recipe = "auto"` (the bundled experiments and
the deployment templates), not tuned per dataset. It was chosen on MNIST with a
scattering front end (see docs/researcher.md, "How fedhaven picks hyperparameters"):

- expected batch per site: a sixth of the site (sample rate ~0.17), at most 1024
  and at least 16 (or the whole site). Each site derives it from its own size
  (`train.batch_size = "auto"`), in simulation and deployment alike: a
  coordinator never sees the sites' sizes;
- one local epoch per round, learning rate 1.0 with momentum 0.9 (per-example
  clipping norm 1.0: the noise's scale, so these do not change with the data);
- rounds grow with the privacy budget: 40 * sqrt(epsilon / 3), and with the
  square root of the number of sites over 10 (averaging N sites divides the
  noise by sqrt(N); reasoned, not measured), between 10 and 40 (80 rounds
  measured worse than 40 at epsilon 3, and every round costs time). The
  coordinator resolves these (fl-sim from its sites, fl-server run from the
  sites registered with it).

Run `python -m fedhaven.shared.recipe --epsilon 3 --sites 10 --site-size 6000`
to print what it gives.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fedhaven.shared.schema import ExperimentConfig, RunConfig

#: The run and train settings the coordinator's part of the rule decides; any of them set explicitly wins.
RULE_KEYS = ("rounds", "train.lr", "train.momentum", "train.local_epochs")

R = TypeVar("R", "RunConfig", "ExperimentConfig")


@dataclass(frozen=True)
class Recipe:
    """What the rule decides for one federation (the batch is each site's: `expected_batch`)."""

    rounds: int
    lr: float
    momentum: float
    local_epochs: float

    def as_settings(self) -> dict[str, int | float]:
        """The decided settings by their configuration keys (those of RULE_KEYS)."""
        return {"rounds": self.rounds, "train.lr": self.lr, "train.momentum": self.momentum,
                "train.local_epochs": self.local_epochs}


def expected_batch(*, site_size: int) -> int:
    """A site's expected DP-SGD batch under the rule: a sixth of its `site_size` examples, 16 to 1024."""
    if site_size < 1:
        raise ValueError(f"the rule needs site_size >= 1, got {site_size}")
    return min(site_size, max(16, min(1024, round(site_size / 6))))


def recipe(*, epsilon: float, sites: int) -> Recipe:
    """The coordinator's part of the rule for `sites` sites per round, each at `epsilon` (delta 1e-5)."""
    if epsilon <= 0 or sites < 1:
        raise ValueError(f"the rule needs epsilon > 0 and sites >= 1, got {epsilon}, {sites}")
    rounds = round(40 * math.sqrt(epsilon / 3) * math.sqrt(sites / 10))
    return Recipe(rounds=min(40, max(10, rounds)), lr=1.0, momentum=0.9, local_epochs=1.0)


def apply_recipe(run: R, *, given: Mapping[str, Any], sites: int) -> R:
    """`run` (a RunConfig or ExperimentConfig) with the rule's settings for every rule key that `given` (the merged
    settings as written) leaves out, and `train.batch_size = "auto"` (each site's own) unless it is given."""
    ruled = recipe(epsilon=run.dp.target_epsilon, sites=sites).as_settings()
    train_given = dict(given.get("train") or {})
    train: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key, value in ruled.items():
        section, _, name = key.rpartition(".")
        if section == "train":
            if name not in train_given:
                train[name] = value
        elif key not in given:
            top[key] = value
    if "batch_size" not in train_given:
        train["batch_size"] = "auto"
    return replace(run, **top, train=replace(run.train, **train))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhaven.shared.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, required=True, help="each site's target epsilon (delta 1e-5)")
    p.add_argument("--sites", type=int, required=True, help="number of sites per round")
    p.add_argument("--site-size", type=int, help="a site's training examples: prints its expected batch")
    args = p.parse_args(argv)
    for key, value in recipe(epsilon=args.epsilon, sites=args.sites).as_settings().items():
        print(f"{key} = {value}")
    if args.site_size is not None:
        print(f"train.batch_size = {expected_batch(site_size=args.site_size)}  "
              f"(\"auto\": each site derives its own from its size)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

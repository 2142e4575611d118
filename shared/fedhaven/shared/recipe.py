"""The hyperparameter rule: rounds, expected batch and learning rate from (epsilon, site size, number of sites).

One written rule, used by the bundled experiments (`train.recipe = "auto"`), not
tuned per dataset. It was chosen on MNIST with a scattering front end (see
README, "How fedhaven picks hyperparameters"):

- expected batch per site: a sixth of the site (sample rate ~0.17), at most 1024
  and at least 16 (or the whole site);
- one local epoch per round, learning rate 1.0 with momentum 0.9 (per-example
  clipping norm 1.0: the noise's scale, so these do not change with the data);
- rounds grow with the privacy budget: 40 * sqrt(epsilon / 3), and with the
  square root of the number of sites over 10 (averaging N sites divides the
  noise by sqrt(N); reasoned, not measured), between 10 and 40 (80 rounds
  measured worse than 40 at epsilon 3, and every round costs time).

Run `python -m fedhaven.shared.recipe --epsilon 3 --site-size 6000 --sites 10`
to print what it gives (e.g. for a deployed run, whose coordinator cannot see
the sites' sizes).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

#: The run and train settings the rule decides; any of them set explicitly wins over the rule.
RULE_KEYS = ("rounds", "train.batch_size", "train.lr", "train.momentum", "train.local_epochs")


@dataclass(frozen=True)
class Recipe:
    """What the rule decides for one federation."""

    rounds: int
    batch_size: int
    lr: float
    momentum: float
    local_epochs: float

    def as_settings(self) -> dict[str, int | float]:
        """The decided settings by their configuration keys (those of RULE_KEYS)."""
        return {"rounds": self.rounds, "train.batch_size": self.batch_size, "train.lr": self.lr,
                "train.momentum": self.momentum, "train.local_epochs": self.local_epochs}


def recipe(*, epsilon: float, site_size: int, sites: int) -> Recipe:
    """The rule's settings for sites of about `site_size` examples, `sites` of them, each at `epsilon` (delta 1e-5)."""
    if epsilon <= 0 or site_size < 1 or sites < 1:
        raise ValueError(f"the rule needs epsilon > 0, site_size >= 1 and sites >= 1, got {epsilon}, {site_size}, "
                         f"{sites}")
    batch = min(site_size, max(16, min(1024, round(site_size / 6))))
    rounds = round(40 * math.sqrt(epsilon / 3) * math.sqrt(sites / 10))
    return Recipe(rounds=min(40, max(10, rounds)), batch_size=batch, lr=1.0, momentum=0.9, local_epochs=1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhaven.shared.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, required=True, help="each site's target epsilon (delta 1e-5)")
    p.add_argument("--site-size", type=int, required=True, help="training examples of a typical site")
    p.add_argument("--sites", type=int, required=True, help="number of sites per round")
    args = p.parse_args(argv)
    for key, value in recipe(epsilon=args.epsilon, site_size=args.site_size, sites=args.sites).as_settings().items():
        print(f"{key} = {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

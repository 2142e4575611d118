"""The training task a coordinator asks of a site each round, as a typed object and as a flat message config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedhaven.shared.config import ConfigError, bounds, flatten, parse, to_dict, unflatten
from fedhaven.shared.schema import DPConfig, InputSpec, ModelConfig, RunConfig, TrainConfig

#: Prefix of every fedhaven key inside a Flower message config, so Flower's own keys stay apart.
KEY_PREFIX = "fedhaven."


@dataclass(frozen=True)
class TaskSpec:
    """One round's instructions: which model for which input, how to train, which DP mechanism."""

    server_round: int = field(metadata=bounds(ge=1))
    planned_rounds: int = field(metadata=bounds(ge=1))
    input: InputSpec
    classes: tuple[str, ...]
    model: ModelConfig
    train: TrainConfig
    dp: DPConfig
    proximal_mu: float = field(default=0.0, metadata=bounds(ge=0))
    central_dp: Literal["none", "fixed", "adaptive"] = "none"  # clip the update for the coordinator's DP noise
    # [robust]: the L2 bound on the site's model delta (0: none asked; the site's own policy bound still holds),
    # how the update travels (fedhaven.shared.updates.ENCODINGS) and the round's rotation seed
    update_norm: float = field(default=0.0, metadata=bounds(ge=0))
    encoding: Literal["weights", "delta", "rotated"] = "weights"
    rotation_seed: int = field(default=0, metadata=bounds(ge=0))

    def problems(self) -> list[str]:
        out = []
        if len(self.classes) != self.input.num_classes:
            out.append(f"classes: {len(self.classes)} names for {self.input.num_classes} classes")
        if self.server_round > self.planned_rounds:
            out.append(f"server_round: {self.server_round} is past the {self.planned_rounds} planned rounds")
        return out


def task_for_round(*, run: RunConfig, server_round: int, input_spec: InputSpec, classes: tuple[str, ...]) -> TaskSpec:
    """The task the coordinator sends for `server_round` of `run`."""
    return TaskSpec(
        server_round=server_round,
        planned_rounds=run.rounds,
        input=input_spec,
        classes=classes,
        model=run.model,
        train=run.train,
        dp=run.dp,
        proximal_mu=run.strategy.proximal_mu if run.strategy.name == "fedprox" else 0.0,
        central_dp=run.central_dp.clipping if run.central_dp.enabled else "none",
    )


#: Fields sent as JSON text: Flower's legacy FitIns config holds scalars only, no lists.
_JSON_KEYS = frozenset({"classes"})


def task_to_config(task: TaskSpec) -> dict[str, Any]:
    """A flat dict of scalars (Flower's legacy config format), every key prefixed."""
    flat = flatten(to_dict(task))
    return {KEY_PREFIX + k: json.dumps(v) if k in _JSON_KEYS else v for k, v in flat.items()}


def task_from_config(config: Mapping[str, Any]) -> TaskSpec:
    """Parse a message config back into a TaskSpec; Flower's own keys (without the prefix) are ignored."""
    ours: dict[str, Any] = {}
    problems = []
    for key, value in config.items():
        if not key.startswith(KEY_PREFIX):
            continue
        name = key[len(KEY_PREFIX):]
        if name in _JSON_KEYS:
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                problems.append(f"{name}: expected a JSON list, got {value!r}")
        ours[name] = value
    if problems:
        raise ConfigError(problems, source="task sent by the coordinator")
    return parse(TaskSpec, unflatten(ours), source="task sent by the coordinator")

"""SIMULATION ONLY: simulated sites that attack (`[attack]` of an fl-sim experiment), to measure robustness.

The attack acts where a real malicious site would: on the update it sends, after its own training
and bound (a malicious site skips both) and before it is encoded and masked (`nan`, `inf`, `scale:K`,
`signflip`, `gaussian:S`); or on its training data (`labelflip`). It is a ClientApp mod that only
`fl-sim` installs (`fedhaven.client.flower_app.make_client_app(update_mods=...)`): deployed sites have
no such mod, and `fl-server run` / `fl-client` refuse an `[attack]` section.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from flwr.app import Context, Message
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fedhaven.client.flower_app import site_trainer, training_task
from fedhaven.client.seam.legacy import fitins_ndarrays, fitres_of, with_fitres
from fedhaven.shared.data import ImageData
from fedhaven.shared.schema import AttackConfig, ExperimentConfig
from fedhaven.shared.updates import add, subtract
from fedhaven.sim.sites import SimulatedSites, site_name

log = logging.getLogger("fedhaven.sim")


def warning_for(exp: ExperimentConfig) -> str | None:
    """The line printed at the start and end of a simulation with attackers."""
    a = exp.attack
    if not a.enabled:
        return None
    names = ", ".join(site_name(i, exp.sites) for i in a.sites)
    return (f"WARNING: SIMULATED ATTACK (simulation only): {names} send {a.kind} updates from round {a.from_round}; "
            f"defences {'ON' if exp.robust.enabled else 'OFF (robust.enabled = false)'}")


def attacked_update(*, kind: str, parameter: float | None, new: Sequence[np.ndarray], start: Sequence[np.ndarray],
                    rng: np.random.Generator) -> list[np.ndarray]:
    """What an attacking site sends instead of its trained weights `new` (received as `start`)."""
    if kind in ("nan", "inf"):
        return [np.full_like(a, np.nan if kind == "nan" else np.inf) for a in new]
    update = subtract(new, start)
    if kind.startswith("scale:"):
        return add(start, [d * parameter for d in update])
    if kind == "signflip":
        return add(start, [-d for d in update])
    if kind.startswith("gaussian:"):
        assert parameter is not None  # gaussian:S always names S
        return add(start, [rng.normal(0.0, parameter, d.shape).astype(d.dtype) for d in update])
    raise ValueError(f"attack {kind!r} does not act on the update")


def label_flipped(data: ImageData) -> ImageData:
    """The same images with label c replaced by C-1-c."""
    return ImageData(data.images, (len(data.classes) - 1) - data.labels, data.classes)


class AttackMod:
    """The ClientApp mod of attacking simulated sites (see the module docstring); refused outside fl-sim."""

    def __init__(self, *, attack: AttackConfig, sites: SimulatedSites) -> None:
        if not isinstance(sites, SimulatedSites):
            raise TypeError("the attack harness is simulation-only: it needs fl-sim's simulated sites")
        self.attack, self.sites = attack, sites
        self.rng = np.random.default_rng(secrets.randbits(64))

    def active(self, *, site_index: int, server_round: int) -> bool:
        a = self.attack
        return a.enabled and site_index in a.sites and server_round >= a.from_round

    def __call__(self, msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        task = training_task(msg)
        if task is None or not self.active(site_index=self.sites.index(ctx), server_round=task.server_round):
            return call_next(msg, ctx)
        kind = self.attack.kind
        if kind == "labelflip":
            trainer = site_trainer(self.sites, ctx)
            honest = trainer.site
            trainer.site = replace(honest, data=label_flipped(honest.data))
            try:
                return call_next(msg, ctx)
            finally:
                trainer.site = honest
        start = fitins_ndarrays(content=msg.content)
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        res = fitres_of(reply=reply)
        sent = attacked_update(kind=kind, parameter=self.attack.parameter(), new=parameters_to_ndarrays(res.parameters),
                               start=start, rng=self.rng)
        res.parameters = ndarrays_to_parameters(sent)
        with_fitres(reply=reply, res=res)
        log.debug("simulated attack: site %d sends %s in round %d", self.sites.index(ctx), kind, task.server_round)
        return reply

"""The ClientApp: fedhaven's site logic wired into Flower (legacy NumPyClient + SecAgg+ mod). The only Flower client module."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage

from fedhaven.client.site import PrivacyState, Site, SiteTrainer, TaskRefused
from fedhaven.shared.accounting import PrivacyHistory
from fedhaven.shared.task import task_from_config

PRIVACY_RECORD = "fedhaven.privacy"


class SiteProvider(Protocol):
    """Finds the site a ClientApp instance serves: from node config in deployment, a partition in simulation."""

    def key(self, context: Context) -> str:
        """A stable identity for the site, used to keep its data and model loaded between messages."""

    def load(self, context: Context) -> Site:
        """Load the site (its data is read here, once per process)."""


_TRAINERS: dict[str, SiteTrainer] = {}
_LOCK = threading.Lock()


def _trainer(sites: SiteProvider, context: Context) -> SiteTrainer:
    key = sites.key(context)
    with _LOCK:
        trainer = _TRAINERS.get(key)
        if trainer is None:
            trainer = _TRAINERS[key] = SiteTrainer(site=sites.load(context))
        return trainer


def load_privacy(context: Context) -> PrivacyState:
    """The site's privacy state kept in Flower's per-node context between rounds of a run."""
    rec = context.state.config_records.get(PRIVACY_RECORD)
    if rec is None:
        return PrivacyState()
    history = PrivacyHistory.from_columns({k: list(rec.get(k, [])) for k in ("noise_multiplier", "sample_rate",
                                                                              "steps")})
    run_noise = rec.get("run_noise")
    return PrivacyState(history=history, run_noise=float(run_noise) if run_noise is not None else None)


def save_privacy(context: Context, state: PrivacyState) -> None:
    rec = ConfigRecord()
    if state.history.steps:
        for k, v in state.history.to_columns().items():
            rec[k] = list(v)
    if state.run_noise is not None:
        rec["run_noise"] = float(state.run_noise)
    context.state.config_records[PRIVACY_RECORD] = rec


class FedhavenClient(NumPyClient):
    """Parses the task, trains with DP on the site's data, returns weights, example count and metrics."""

    def __init__(self, *, trainer: SiteTrainer, context: Context) -> None:
        self.trainer = trainer
        self.ctx = context

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        raise TaskRefused("fedhaven sites never provide initial weights; the coordinator initialises the model")

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        task = task_from_config(config)
        outcome = self.trainer.fit(task=task, weights=parameters, privacy=load_privacy(self.ctx))
        save_privacy(self.ctx, outcome.privacy)
        return outcome.weights, outcome.num_examples, outcome.metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        raise TaskRefused("fedhaven sites do not release evaluation metrics on their private data; "
                          "the coordinator evaluates centrally on its held-out set")


def _secagg_mod(sites: SiteProvider) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    """Flower's SecAgg+ client protocol for SecAgg+ messages, plain training for the others.

    Before training it checks that the site's example count fits the
    coordinator's `max_weight`: above it SecAgg+ would silently clip this site's
    weighted update, so the site refuses before spending any privacy budget.
    """

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
            return call_next(msg, ctx)
        if msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
            state = ctx.state.config_records.get(RECORD_KEY_STATE)
            max_weight = float(state.get("max_weight", 0.0)) if state is not None else 0.0
            n = len(_trainer(sites, ctx).site.data)
            if max_weight > 0 and n > max_weight:
                raise TaskRefused(f"this site has {n} training examples but the coordinator's SecAgg+ max_weight "
                                  f"is {max_weight:g}, so its update would be clipped. The operator must set "
                                  f"secagg.max_weight to at least {n}")
        return secaggplus_mod(msg, ctx, call_next)

    return mod


def make_client_app(*, sites: SiteProvider) -> ClientApp:
    """The ClientApp for the sites `sites` provides; identical in simulation and deployment."""

    def client_fn(context: Context):  # noqa: ANN202 - Flower's Client type
        return FedhavenClient(trainer=_trainer(sites, context), context=context).to_client()

    return ClientApp(client_fn=client_fn, mods=[_secagg_mod(sites)])

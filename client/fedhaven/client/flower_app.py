"""The ClientApp: fedhaven's site logic wired into Flower (legacy NumPyClient + SecAgg+ mod). The only Flower client module.

Mods, outermost first: the ledger records what leaves the site after the reply
is final (masked, under SecAgg+); the policy refuses tasks before any data is
read; Flower's SecAgg+ mod masks the update (the update is clipped and noised
by DP-SGD before, so it is clip, then mask).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.ledger import Ledger
from fedhaven.client.policy import task_violations
from fedhaven.client.types import PrivacyState, Site, SiteInfo, TaskRefused
from fedhaven.shared.accounting import PrivacyHistory
from fedhaven.shared.task import TaskSpec, task_from_config

if TYPE_CHECKING:  # torch-backed: imported only by the stages that train
    from fedhaven.client.site import SiteTrainer
    from fedhaven.shared.data import ImageData

PRIVACY_RECORD = "fedhaven.privacy"
PENDING_RECORD = "fedhaven.pending-ledger"
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class SiteProvider(Protocol):
    """Finds the site a ClientApp serves: from node config in deployment, a partition in simulation."""

    def key(self, context: Context) -> str:
        """A stable identity for the site, used to keep its data and model loaded between messages."""

    def info(self, context: Context) -> SiteInfo:
        """Name, policy, state directory and device: cheap, reads no training data."""

    def data(self, context: Context) -> ImageData:
        """The site's training data (read once per process)."""


_TRAINERS: dict[str, SiteTrainer] = {}
_LOCK = threading.Lock()


def _trainer(sites: SiteProvider, context: Context) -> SiteTrainer:
    from fedhaven.client.site import SiteTrainer

    key = sites.key(context)
    with _LOCK:
        trainer = _TRAINERS.get(key)
        if trainer is None:
            trainer = _TRAINERS[key] = SiteTrainer(site=Site(info=sites.info(context), data=sites.data(context)))
        return trainer


def load_privacy(context: Context, info: SiteInfo | None = None) -> PrivacyState:
    """The site's privacy state: history from its ledger when it has one (all runs), else from Flower's context."""
    rec = context.state.config_records.get(PRIVACY_RECORD)
    run_noise = rec.get("run_noise") if rec is not None else None
    if info is not None and info.state_dir is not None:
        history = Ledger.in_dir(info.state_dir).history()
    elif rec is not None:
        history = PrivacyHistory.from_columns({k: list(rec.get(k, [])) for k in ("noise_multiplier", "sample_rate",
                                                                                 "steps")})
    else:
        history = PrivacyHistory()
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
        outcome = self.trainer.fit(task=task, weights=parameters,
                                   privacy=load_privacy(self.ctx, self.trainer.site.info))
        save_privacy(self.ctx, outcome.privacy)
        self.ctx.state.config_records[PENDING_RECORD] = ConfigRecord(
            {k: v for k, v in outcome.ledger.items() if not (isinstance(v, float) and math.isinf(v))})
        metrics = {**outcome.metrics, "num_examples": outcome.num_examples}
        return outcome.weights, _weight(task, outcome.num_examples), metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        raise TaskRefused("fedhaven sites do not release evaluation metrics on their private data; "
                          "the coordinator evaluates centrally on its held-out set")


def _fit_stage(msg: Message) -> tuple[bool, bool]:
    """(carries a training task, under SecAgg+) for a TRAIN message."""
    secagg = RECORD_KEY_CONFIGS in msg.content.config_records
    if not secagg:
        return True, False
    return msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS, True


def _task_of(msg: Message) -> tuple[TaskSpec | None, bool]:
    """(the task a TRAIN message carries, or None; whether it came under SecAgg+)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None, False
    has_task, secagg = _fit_stage(msg)
    if not has_task:
        return None, secagg
    return task_from_config(compat.recorddict_to_fitins(msg.content, keep_input=True).config), secagg


def _weight(task: TaskSpec, num_examples: int) -> int:
    """The aggregation weight a site reports: its example count, or 1 under central DP (every site counts once)."""
    return 1 if task.central_dp != "none" else num_examples


def _policy_mod(sites: SiteProvider) -> Mod:
    """Refuse a task that breaks the site policy, before the site's data is read for it."""

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        task, secagg = _task_of(msg)
        if task is None:
            return call_next(msg, ctx)
        info = sites.info(ctx)
        violations = task_violations(task=task, policy=info.policy, secure_aggregation=secagg,
                                     history=load_privacy(ctx, info).history)
        if violations:
            raise TaskRefused(f"site {info.name} refused the task (nothing was trained or sent): "
                              + "; ".join(violations))
        return call_next(msg, ctx)

    return mod


def _secagg_mod(sites: SiteProvider) -> Mod:
    """Flower's SecAgg+ client protocol for SecAgg+ messages, plain training for the others.

    Before training it checks that the site's example count fits the
    coordinator's `max_weight`: above it SecAgg+ would silently clip this site's
    weighted update, so the site refuses before spending any privacy budget.
    """

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
            return call_next(msg, ctx)
        task, _ = _task_of(msg)
        if task is not None:
            state = ctx.state.config_records.get(RECORD_KEY_STATE)
            max_weight = float(state.get("max_weight", 0.0)) if state is not None else 0.0
            n = _weight(task, len(_trainer(sites, ctx).site.data))
            if max_weight > 0 and n > max_weight:
                raise TaskRefused(f"this site has {n} training examples but the coordinator's SecAgg+ max_weight "
                                  f"is {max_weight:g}, so its update would be clipped. The operator must set "
                                  f"secagg.max_weight to at least {n}")
        return secaggplus_mod(msg, ctx, call_next)

    return mod


def _central_dp_mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's client-side clipping of the model update for central DP, innermost: clip, then SecAgg+ masks."""
    task, _ = _task_of(msg)
    if task is None or task.central_dp == "none":
        return call_next(msg, ctx)
    return (fixedclipping_mod if task.central_dp == "fixed" else adaptiveclipping_mod)(msg, ctx, call_next)


def content_sha256(msg: Message) -> str:
    """SHA-256 of a message's content as serialised for the wire: what the ledger calls 'the bytes sent'."""
    return hashlib.sha256(recorddict_to_proto(msg.content).SerializeToString(deterministic=True)).hexdigest()


def _ledger_mod(sites: SiteProvider) -> Mod:
    """After a training reply is final, append it to the site's ledger (fsync'd) before it is handed back to send."""

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, ctx)
        pending = ctx.state.config_records.get(PENDING_RECORD)
        if msg.metadata.message_type != MessageType.TRAIN or pending is None or not reply.has_content():
            return reply
        del ctx.state.config_records[PENDING_RECORD]
        info = sites.info(ctx)
        if info.state_dir is None:
            return reply
        ledger = Ledger.in_dir(info.state_dir)
        from fedhaven.client.policy import budget_spent

        history = ledger.history().add(noise_multiplier=float(pending["noise_multiplier"]),
                                       sample_rate=float(pending["sample_rate"]), steps=int(pending["steps"]))
        cumulative = budget_spent(policy=info.policy, history=history)
        ledger.append(site=str(pending["site"]), run_id=int(msg.metadata.run_id),
                      server_round=int(pending["server_round"]), model=str(pending["model"]),
                      update_sha256=content_sha256(reply), weights_sha256=str(pending["weights_sha256"]),
                      update_l2_norm=float(pending["update_l2_norm"]), num_examples=int(pending["num_examples"]),
                      noise_multiplier=float(pending["noise_multiplier"]), sample_rate=float(pending["sample_rate"]),
                      steps=int(pending["steps"]), delta=float(pending["delta"]), accountant=str(pending["accountant"]),
                      epsilon_before=_finite(pending.get("epsilon_before")),
                      epsilon_after=_finite(pending.get("epsilon_after")),
                      cumulative_epsilon=_finite(cumulative))
        return reply

    return mod


def _finite(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def client_fn_for(sites: SiteProvider) -> Callable[[Context], Any]:
    """Flower's `client_fn` for the sites `sites` provides."""

    def client_fn(context: Context):  # noqa: ANN202 - Flower's Client type
        return FedhavenClient(trainer=_trainer(sites, context), context=context).to_client()

    return client_fn


def make_client_app(*, sites: SiteProvider) -> ClientApp:
    """The ClientApp for the sites `sites` provides; identical in simulation and deployment."""
    return ClientApp(client_fn=client_fn_for(sites), mods=client_mods(sites))


def client_mods(sites: SiteProvider) -> list[Mod]:
    """fedhaven's mods, outermost first: ledger, policy, SecAgg+ masking, central-DP clipping."""
    return [_ledger_mod(sites), _policy_mod(sites), _secagg_mod(sites), _central_dp_mod]

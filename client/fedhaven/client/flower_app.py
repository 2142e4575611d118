"""The ClientApp: fedhaven's site logic wired into Flower (legacy NumPyClient + SecAgg+ mod).
The only Flower client module.

Mods, outermost first: a refusal raised anywhere becomes Flower's error reply with its
code (`fedhaven.shared.refusal`); the ledger mod takes the site's ledger lock, verifies the
ledger (chain, anchor, the coordinator's witness) and records what leaves the
site after the reply is final (masked, under SecAgg+); the policy refuses tasks
before any data is read; Flower's SecAgg+ mod masks the update; the encoding mod
turns the trained model into the delta [robust] asks for; central-DP clipping is
innermost (the update is clipped and noised by DP-SGD, and bounded by the site's
policy, before: clip, then mask).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.client import Client, NumPyClient
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Scalar, ndarrays_to_parameters, parameters_to_ndarrays

from fedhaven.client import remask, secagg_terms
from fedhaven.client.ledger import GENESIS, Ledger, LedgerBusy, budget_history
from fedhaven.client.policy import refusal_code, task_violations
from fedhaven.client.seam import legacy
from fedhaven.client.seam.legacy import content_sha256
from fedhaven.client.types import Code, PrivacyState, Site, SiteInfo, TaskRefused
from fedhaven.shared.accounting import NOTHING_SENT, PrivacyHistory
from fedhaven.shared.task import TaskSpec, task_from_config
from fedhaven.shared.text import without_paths
from fedhaven.shared.updates import encode
from fedhaven.shared.witness import LEDGER_HASH, LEDGER_PREV_HASH, LEDGER_SEQ, Witness

if TYPE_CHECKING:  # torch-backed: imported only by the stages that train
    from fedhaven.client.site import SiteTrainer
    from fedhaven.shared.data import ImageData

PRIVACY_RECORD = "fedhaven.privacy"
PENDING_RECORD = "fedhaven.pending-ledger"
LEDGER_HEAD_RECORD = "fedhaven.ledger-head"
log = logging.getLogger("fedhaven.client")
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class SiteProvider(Protocol):
    """Finds the site a ClientApp serves: from node config in deployment, a partition in simulation."""

    def key(self, context: Context) -> str:
        """A stable identity for the site, used to keep its data and model loaded between messages."""

    def info(self, context: Context) -> SiteInfo:
        """Name, policy, state directory and device: cheap, reads no training data."""

    def data(self, context: Context) -> ImageData:
        """The site's training data (read once per process)."""


#: Loaded sites (data, model) by the provider's key, newest last; a key changes when the site's config or data do.
_TRAINERS: OrderedDict[str, SiteTrainer] = OrderedDict()
_LOCK = threading.Lock()
_KEEP = 64  # a process keeps the sites it serves (simulated sites share workers), never every version it has seen


def site_trainer(sites: SiteProvider, context: Context) -> SiteTrainer:
    """The trainer (data and model, kept between messages) of the site `context` belongs to."""
    return _trainer(sites, context)


def _trainer(sites: SiteProvider, context: Context) -> SiteTrainer:
    from fedhaven.client.site import SiteTrainer

    key = sites.key(context)
    with _LOCK:
        trainer = _TRAINERS.get(key)
        if trainer is None:
            trainer = _TRAINERS[key] = SiteTrainer(site=Site(info=sites.info(context), data=sites.data(context)))
            while len(_TRAINERS) > _KEEP:
                _TRAINERS.popitem(last=False)
        _TRAINERS.move_to_end(key)
        return trainer


def load_privacy(context: Context, info: SiteInfo | None = None) -> PrivacyState:
    """The site's privacy state: history from its ledger when it has one (all runs), else from Flower's context."""
    ledger = info.ledger() if info is not None else None
    if ledger is not None:
        return PrivacyState(history=ledger.history())
    rec = context.state.config_records.get(PRIVACY_RECORD)
    if rec is None:
        return PrivacyState()
    # cast: Flower types a record's values as any of its value types; save_privacy wrote these number lists
    return PrivacyState(history=PrivacyHistory.from_columns(
        {k: list(cast("list[float] | list[int]", rec.get(k, [])))
         for k in ("noise_multiplier", "sample_rate", "steps")}))


def save_privacy(context: Context, state: PrivacyState) -> None:
    rec = ConfigRecord()
    if state.history.steps:
        for k, v in state.history.to_columns().items():
            rec[k] = list(v)
    context.state.config_records[PRIVACY_RECORD] = rec


class FedhavenClient(NumPyClient):
    """Parses the task, trains with DP on the site's data, returns weights, example count and metrics."""

    def __init__(self, *, trainer: SiteTrainer, context: Context) -> None:
        self.trainer = trainer
        self.ctx = context

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        raise TaskRefused(Code.UNSUPPORTED, "fedhaven sites never provide initial weights; the coordinator "
                          "initialises the model")

    def fit(self, parameters: list[np.ndarray],
            config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        task = task_from_config(config)
        outcome = self.trainer.fit(task=task, weights=parameters,
                                   privacy=load_privacy(self.ctx, self.trainer.site.info))
        if self.trainer.site.info.ledger() is None:  # with a ledger, the ledger is the only record
            save_privacy(self.ctx, outcome.privacy)
        self.ctx.state.config_records[PENDING_RECORD] = ConfigRecord(
            {k: v for k, v in outcome.ledger.items() if not (isinstance(v, float) and math.isinf(v))})
        metrics: dict[str, Scalar] = {**outcome.metrics, "num_examples": outcome.num_examples}
        head = self.ctx.state.config_records.get(LEDGER_HEAD_RECORD)
        if head is not None:  # the ledger entry this update will be: the coordinator's witness of it
            metrics[LEDGER_SEQ] = int(_number(head, "seq"))
            metrics[LEDGER_PREV_HASH] = str(head["prev_hash"])
        return outcome.weights, _weight(task, outcome.num_examples), metrics

    def evaluate(self, parameters: list[np.ndarray],
                 config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        raise TaskRefused(Code.UNSUPPORTED, "fedhaven sites do not release evaluation metrics on their private data; "
                          "the coordinator evaluates centrally on its held-out set")


def _fit_config(msg: Message) -> dict[str, Any] | None:
    """The fit config of a TRAIN message that carries a training task (the only SecAgg+ stage that does), or None.

    Recognised by its FitIns record, not by the SecAgg+ stage key: Flower's SecAgg+ mod pops that key
    before the inner mods see the message.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    return legacy.fit_config(content=msg.content)


def _task_of(msg: Message) -> tuple[TaskSpec | None, bool]:
    """(the task a TRAIN message carries, or None; whether it came under SecAgg+)."""
    config = _fit_config(msg)
    secagg = legacy.is_secagg(content=msg.content)
    return (task_from_config(config) if config is not None else None), secagg


def training_task(msg: Message) -> TaskSpec | None:
    """The training task a message carries (a TRAIN message with a task), or None."""
    return _task_of(msg)[0]


def _weight(task: TaskSpec, num_examples: int) -> int:
    """The aggregation weight a site reports: its example count, or 1 under central DP (every site counts once)."""
    return 1 if task.central_dp != "none" else num_examples


def _policy_mod(sites: SiteProvider) -> Mod:
    """Refuse a task that breaks the site policy, before the site's data is read for it."""

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        task, secagg = _task_of(msg)
        if task is None or remask.is_remask(_fit_config(msg)):  # re-masking trains nothing: the site's own checks
            return call_next(msg, ctx)
        info = sites.info(ctx)
        violations = task_violations(task=task, policy=info.policy, secure_aggregation=secagg,
                                     history=load_privacy(ctx, info).history)
        if violations:
            raise TaskRefused(refusal_code(violations), f"site {info.name} refused the task ({NOTHING_SENT}): "
                              + "; ".join(v.reason for v in violations))
        return call_next(msg, ctx)

    return mod


def _secagg_mod(sites: SiteProvider) -> Mod:
    """Flower's SecAgg+ client protocol, on the site's terms (`secagg_terms`), for SecAgg+ messages; plain training
    for the others.

    Before training it checks that the site's example count fits the
    coordinator's `max_weight`: above it SecAgg+ would silently clip this site's
    weighted update, so the site refuses before spending any privacy budget.
    """

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not legacy.is_secagg(content=msg.content):
            return call_next(msg, ctx)
        info = sites.info(ctx)
        secagg_terms.check_terms(msg=msg, ctx=ctx, info=info)  # the site's terms, before Flower's mod acts
        task, _ = _task_of(msg)
        if task is not None and not remask.is_remask(_fit_config(msg)):
            max_weight = legacy.secagg_max_weight(ctx=ctx)
            n = _weight(task, len(_trainer(sites, ctx).site.data))
            if max_weight > 0 and n > max_weight:
                raise TaskRefused(Code.MAX_WEIGHT, f"this site has {n} training examples ({NOTHING_SENT}) but the "
                                  f"coordinator's SecAgg+ "
                                  f"max_weight "
                                  f"is {max_weight:g}, so its update would be clipped. The operator must set "
                                  f"secagg.max_weight to at least {n}")
        return secagg_terms.with_proof(reply=secaggplus_mod(msg, ctx, call_next), info=info, request=msg, ctx=ctx)

    return mod


def _encoding_mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Send what the task's [robust] encoding asks: the model delta (trained minus received), or that delta
    rotated and padded (`fedhaven.shared.updates`), so that SecAgg+'s per-coordinate clip bounds its L2 norm."""
    task, _ = _task_of(msg)
    if task is None or task.encoding == "weights":
        return call_next(msg, ctx)
    start = legacy.fitins_ndarrays(content=msg.content)
    reply = call_next(msg, ctx)
    if reply.has_error():
        return reply
    res = legacy.fitres_of(reply=reply)
    sent = encode(parameters_to_ndarrays(res.parameters), start, encoding=task.encoding, seed=task.rotation_seed)
    res.parameters = ndarrays_to_parameters(sent)
    legacy.with_fitres(reply=reply, res=res)
    return reply


def _central_dp_mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's client-side clipping of the model update for central DP, innermost: clip, then SecAgg+ masks."""
    task, _ = _task_of(msg)
    if task is None or task.central_dp == "none":
        return call_next(msg, ctx)
    return (fixedclipping_mod if task.central_dp == "fixed" else adaptiveclipping_mod)(msg, ctx, call_next)


def _ledger_mod(sites: SiteProvider) -> Mod:
    """Verify the ledger, train, and append what is sent (fsync'd) before it is handed back: all under the lock.

    Per task, under the site's ledger lock (held across threads and processes from the
    budget check through the append): the chain, its anchor, the newest signature and
    the coordinator's witness are checked, the history is re-read, the inner mods check
    the budget and train, and the reply is recorded (signed with the site key, where
    the site has one) before Flower may send it; the reply then names the entry's own
    hash (`ledger_hash`), which the coordinator sends back as its witness. A ledger
    that does not verify stops the site until its operator acts.
    """

    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        config = _fit_config(msg)
        info = sites.info(ctx) if config is not None else None
        ledger = info.ledger() if info is not None else None
        if config is None or info is None or ledger is None:
            return call_next(msg, ctx)
        witness = Witness.from_config(config)
        if witness is not None and witness.site != info.name:
            log.warning("site %s: ignoring the coordinator's ledger witness for site %r", info.name, witness.site)
            witness = None
        with _ledger_lock(ledger, info.name):
            problems = ledger.check(witness=witness, for_append=True)
            if problems:
                raise TaskRefused(Code.LEDGER, f"site {info.name} refuses to train until its operator acts "
                                  f"({NOTHING_SENT}): its "
                                  f"privacy ledger does not verify: " + "; ".join(problems))
            entries = ledger.entries()
            ctx.state.config_records[LEDGER_HEAD_RECORD] = ConfigRecord(
                {"seq": len(entries), "prev_hash": entries[-1].hash if entries else GENESIS})
            try:
                reply = call_next(msg, ctx)
            finally:  # never leave a half-finished round behind for the next message
                del ctx.state.config_records[LEDGER_HEAD_RECORD]
                pending = ctx.state.config_records.get(PENDING_RECORD)
                if pending is not None:
                    del ctx.state.config_records[PENDING_RECORD]
            if pending is None or not reply.has_content():
                return reply
            from fedhaven.client.policy import budget_spent

            history = budget_history(entries).add(noise_multiplier=float(_number(pending, "noise_multiplier")),
                                                  sample_rate=float(_number(pending, "sample_rate")),
                                                  steps=int(_number(pending, "steps")))
            cumulative = budget_spent(policy=info.policy, history=history)
            entry = ledger.append(
                site=str(pending["site"]), run_id=int(msg.metadata.run_id),
                server_round=int(_number(pending, "server_round")), model=str(pending["model"]),
                update_sha256=content_sha256(msg=reply), weights_sha256=str(pending["weights_sha256"]),
                update_l2_norm=float(_number(pending, "update_l2_norm")),
                num_examples=int(_number(pending, "num_examples")),
                noise_multiplier=float(_number(pending, "noise_multiplier")),
                sample_rate=float(_number(pending, "sample_rate")), steps=int(_number(pending, "steps")),
                delta=float(_number(pending, "delta")), accountant=str(pending["accountant"]),
                epsilon_before=_finite(pending.get("epsilon_before")),
                epsilon_after=_finite(pending.get("epsilon_after")),
                cumulative_epsilon=_finite(cumulative))
            # the entry is final (appended, signed, fsync'd, anchored): its own hash goes with the reply, for the
            # coordinator's witness. `update_sha256` above covers the content without it (it cannot hold its own hash)
            legacy.set_fit_metric(reply=reply, key=LEDGER_HASH, value=entry.hash)
            if info.policy.share_class_histogram:  # opt-in by site policy: a DP class histogram, once per run
                from fedhaven.client.quality.histogram import share_in_reply

                share_in_reply(reply=reply, ledger=ledger, info=info, data=sites.data(ctx), run_id=msg.metadata.run_id)
            return reply

    return mod


def _number(record: ConfigRecord, key: str) -> int | float:
    """A number this client wrote into `record` (Flower types a record's values as any of its value types)."""
    value = record[key]
    assert isinstance(value, (int, float))
    return value


@contextlib.contextmanager
def _ledger_lock(ledger: Ledger, site: str) -> Iterator[None]:
    """The ledger's lock; one held past the wait (another task, another program) refuses this task: nothing is
    trained or sent."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ledger.locked())
        except LedgerBusy as exc:
            raise TaskRefused(Code.LEDGER, f"site {site} cannot train now ({NOTHING_SENT}): {exc}") from None
        yield


def _finite(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _refusal_mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Outermost: a refusal raised anywhere inside becomes Flower's public error reply with the refusal's code, which
    the coordinator acts on (a raised exception would reach it as free text, wrapped by Flower or Ray). The reason
    sent names no path of the site's (only the last part of each)."""
    try:
        return call_next(msg, ctx)
    except TaskRefused as exc:
        log.warning("%s", exc)  # the whole sentence stays in the site's own log
        return Message(Error(code=int(exc.code), reason=without_paths(str(exc))), reply_to=msg)


def client_fn_for(sites: SiteProvider) -> Callable[[Context], Any]:
    """Flower's `client_fn` for the sites `sites` provides."""

    def client_fn(context: Context) -> Client:
        return FedhavenClient(trainer=_trainer(sites, context), context=context).to_client()

    return client_fn


def make_client_app(*, sites: SiteProvider, update_mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp for the sites `sites` provides; identical in simulation and deployment.

    `update_mods` see each trained update after the site's bound and central-DP clipping, before it
    is encoded and masked: where `fl-sim`'s attack harness acts. Deployed sites have none.
    """
    return ClientApp(client_fn=client_fn_for(sites), mods=client_mods(sites, update_mods=update_mods))


def client_mods(sites: SiteProvider, *, update_mods: Sequence[Mod] = ()) -> list[Mod]:
    """fedhaven's mods, outermost first: refusals as coded errors, ledger, policy, SecAgg+ masking, the kept update
    (re-masked for a subgroup on request, `remask`), update encoding, central-DP clipping."""
    return [_refusal_mod, _ledger_mod(sites), _policy_mod(sites), _secagg_mod(sites), remask.mod(sites),
            _encoding_mod, *update_mods, _central_dp_mod]

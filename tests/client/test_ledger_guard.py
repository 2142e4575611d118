"""The ClientApp with a ledger: every task verifies it under the site's lock; retries and races never pass a limit."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from opacus.accountants import RDPAccountant

from fedhaven.client.ledger import Ledger
from fedhaven.client.types import Code, Site, SiteInfo, TaskRefused
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import SIMULATION_POLICY, DPConfig, ModelConfig, TrainConfig
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.training import schedule
from fedhaven.shared.weights import get_weights
from fedhaven.shared.witness import LEDGER_HASH, LEDGER_PREV_HASH, LEDGER_SEQ, Witness


def _task(server_round: int, planned: int = 2, **dp) -> TaskSpec:
    return TaskSpec(server_round=server_round, planned_rounds=planned, input=InputSpec(1, 8, 3),
                    classes=("a", "b", "c"), model=ModelConfig(name="lenet"),
                    train=TrainConfig(local_epochs=1, batch_size=32, lr=0.3), dp=DPConfig(**dp))


WEIGHTS = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0))


def _message(task: TaskSpec, witness: Witness | None = None) -> Message:
    config = {**task_to_config(task), **(witness.to_config() if witness else {})}
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(WEIGHTS), config), True)
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


@pytest.fixture
def site_app(tmp_path, synthetic_images, client_app_for):
    """(the ClientApp of a site with a ledger in tmp_path, its ledger), by policy; `init=False`: no ledger yet."""

    def make(*, policy=SIMULATION_POLICY, init=True, key=False):
        info = SiteInfo(name="hospital-a", policy=policy, state_dir=tmp_path / "state",
                        signing_key=_key(tmp_path) if key else None)
        if init:
            info.ledger().init(site="hospital-a")
        return client_app_for(Site(info=info, data=synthetic_images)), info.ledger()

    return make


def _key(folder) -> object:
    """A deployed site's key, as `fl-client keygen` writes it (once per folder)."""
    from fedhaven.shared.crypto import make_site_keypair, write_private, write_public

    if not (folder / "site.key").exists():
        private, public = make_site_keypair()
        write_private(folder / "site.key", private)
        write_public(folder / "site.pub", public)
    return folder / "site.key"


def _metrics(reply: Message) -> dict:
    assert not reply.has_error(), reply.error
    return compat.recorddict_to_fitres(reply.content, keep_input=True).metrics


def _fresh(ledger: Ledger, delta: float = 1e-5) -> float:
    acc = RDPAccountant()
    acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries() if e.kind == "update"]
    return acc.get_epsilon(delta=delta) if acc.history else 0.0


def test_an_uninitialised_site_refuses_to_train(tmp_path, synthetic_images, site_app, answer):
    app, ledger = site_app(init=False)
    with pytest.raises(TaskRefused, match="never initialised.*fl-client ledger init"):
        answer(app(_message(_task(1, target_epsilon=2.0)), _context()))
    assert not ledger.path.exists()


def test_each_reply_names_its_ledger_entry_which_the_ledger_holds(tmp_path, synthetic_images, site_app):
    app, ledger = site_app()
    init = ledger.entries()[0]
    reply = app(_message(_task(1, target_epsilon=2.0)), _context())
    m = _metrics(reply)
    entry = ledger.entries()[1]
    assert (m[LEDGER_SEQ], m[LEDGER_PREV_HASH], m[LEDGER_HASH]) == (1, init.hash, entry.hash)
    assert (entry.seq, entry.prev_hash, entry.kind) == (1, init.hash, "update")
    assert ledger.check(witness=Witness.from_metrics(m)) == [] and ledger.verify().ok
    # the entry records the bytes sent, less the one metric naming the entry's own hash (added once it was final)
    from fedhaven.client.seam.legacy import FITRES_METRICS, content_sha256

    del reply.content.config_records[FITRES_METRICS][LEDGER_HASH]
    assert entry.update_sha256 == content_sha256(msg=reply)


def test_a_rollback_of_ledger_and_anchor_is_refused_through_the_witness(tmp_path, synthetic_images, site_app, answer):
    app, ledger = site_app()
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(ledger.path, backup / "l")
    shutil.copy(ledger.anchor_path, backup / "a")
    m = _metrics(app(_message(_task(1, target_epsilon=2.0)), _context()))
    seen = Witness.from_metrics(m)  # what the coordinator keeps, and sends back with the next task
    shutil.copy(backup / "l", ledger.path)
    shutil.copy(backup / "a", ledger.anchor_path)
    with pytest.raises(TaskRefused, match="does not contain it") as err:
        answer(app(_message(_task(2, target_epsilon=2.0), witness=seen), _context()))
    assert "nothing was trained or sent" in str(err.value) and seen.key() in str(err.value)
    assert len(ledger.entries()) == 1
    # a witness naming another site is not this site's business
    other = Witness(site="hospital-b", seq=9, prev_hash="f" * 64)
    _metrics(app(_message(_task(2, target_epsilon=2.0), witness=other), _context()))


def test_retries_never_pass_the_run_target_with_auto_noise(tmp_path, synthetic_images, site_app):
    """Each round trains twice (a retried SecAgg+ round trains again): the noise rises, the target holds."""
    app, ledger = site_app()
    ctx = _context()
    eps, noise = [], []
    for rnd in (1, 1, 2, 2):
        m = _metrics(app(_message(_task(rnd, target_epsilon=2.0)), ctx))
        eps.append(m["epsilon"])
        noise.append(m["noise_multiplier"])
    assert all(e <= 2.0 for e in eps) and eps == sorted(eps)
    assert noise[1] > noise[0] and noise[3] > noise[2]  # recalibrated after each retry
    assert _fresh(ledger) == pytest.approx(eps[-1], rel=1e-9) and _fresh(ledger) <= 2.0


def test_a_retry_past_the_run_target_with_fixed_noise_is_refused_before_training(tmp_path, synthetic_images, site_app,
                                                                                  answer):
    q, steps = schedule(num_examples=len(synthetic_images), batch_size=32, local_epochs=1)
    two = epsilon(history=PrivacyHistory().add(noise_multiplier=1.0, sample_rate=q, steps=2 * steps), delta=1e-5)
    app, ledger = site_app()
    ctx = _context()
    task = _task(1, noise_multiplier=1.0, target_epsilon=two * 1.01)  # room for two rounds, not three
    _metrics(app(_message(task), ctx))
    _metrics(app(_message(task), ctx))  # a retry: fits
    with pytest.raises(TaskRefused, match="run's privacy target is reached") as err:
        answer(app(_message(replace(task, server_round=2)), ctx))
    assert "dp.target_epsilon" in str(err.value) and "refused before training" in str(err.value)
    assert sum(e.kind == "update" for e in ledger.entries()) == 2 and _fresh(ledger) <= two * 1.01


def test_retries_never_pass_the_sites_own_budget(tmp_path, synthetic_images, site_app):
    policy = replace(SIMULATION_POLICY, max_epsilon=1.5)
    app, ledger = site_app(policy=policy)
    ctx = _context()
    outcomes = []
    for rnd in (1, 1, 2):
        try:
            outcomes.append(_metrics(app(_message(_task(rnd, target_epsilon=10.0)), ctx))["epsilon"])
        except TaskRefused as exc:
            outcomes.append(str(exc))
    assert _fresh(ledger) <= 1.5
    for o in outcomes:
        assert isinstance(o, float) or "this site's own privacy budget is spent" in o


def test_two_tasks_at_once_cannot_both_pass_the_budget_check(tmp_path, synthetic_images, site_app, answer):
    """Budget for one round only; two runs ask at the same moment: the lock lets exactly one train."""
    q, steps = schedule(num_examples=len(synthetic_images), batch_size=32, local_epochs=1)
    one = epsilon(history=PrivacyHistory().add(noise_multiplier=1.0, sample_rate=q, steps=steps), delta=1e-5)
    two = epsilon(history=PrivacyHistory().add(noise_multiplier=1.0, sample_rate=q, steps=2 * steps), delta=1e-5)
    policy = replace(SIMULATION_POLICY, max_epsilon=(one + two) / 2)
    app, ledger = site_app(policy=policy)
    barrier = threading.Barrier(2)
    results: list = []

    def go() -> None:
        barrier.wait()
        try:
            results.append(_metrics(answer(app(_message(_task(1, noise_multiplier=1.0, target_epsilon=50.0)),
                                               _context()))))
        except TaskRefused as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    refused = [r for r in results if isinstance(r, TaskRefused)]
    assert len(refused) == 1 and refused[0].code == Code.SITE_BUDGET
    assert "this site's own privacy budget is spent" in str(refused[0])
    assert sum(e.kind == "update" for e in ledger.entries()) == 1 and ledger.verify().ok
    assert _fresh(ledger) <= policy.max_epsilon


def test_a_site_can_keep_its_training_metrics_to_itself(tmp_path, synthetic_images, site_app):
    app, _ = site_app(policy=replace(SIMULATION_POLICY, send_training_metrics=False))
    m = _metrics(app(_message(_task(1, target_epsilon=2.0)), _context()))
    assert "loss" not in m and "accuracy" not in m and "epsilon" in m




@pytest.mark.parametrize("keyed", [False, True], ids=["simulated-site", "site-key"])
def test_a_rewritten_newest_entry_is_refused_through_the_witness(tmp_path, synthetic_images, site_app, answer, keyed,
                                                                 rewrite_newest):
    app, ledger = site_app(key=keyed)
    task = _task(1, noise_multiplier=1.0, target_epsilon=100.0)
    seen = Witness.from_metrics(_metrics(app(_message(task), _context())))  # what the coordinator keeps
    spent = _fresh(ledger)
    rewrite_newest(ledger, noise=50.0)
    assert _fresh(ledger) < spent  # what the rewrite was for
    assert ledger.verify().ok is not keyed  # offline: only a signature tells (a simulated site has none)
    with pytest.raises(TaskRefused, match="holds a different entry seq 1") as err:
        answer(app(_message(replace(task, server_round=2), witness=seen), _context()))
    assert err.value.code == Code.LEDGER and "nothing was trained or sent" in str(err.value)
    assert f"--accept-witness {seen.key()}" in str(err.value)
    assert ("its signature" in str(err.value)) is keyed
    assert len(ledger.entries()) == 2  # nothing trained, nothing recorded


def test_a_lost_reply_and_a_retried_round_still_pass_the_witness(tmp_path, synthetic_images, site_app):
    """The coordinator holds the witness of the last reply it received; a reply lost after the entry was appended
    (or a retried round) leaves the ledger ahead of it, which is fine: the ledger still holds that entry."""
    app, ledger = site_app(key=True)
    ctx = _context()
    first = Witness.from_metrics(_metrics(app(_message(_task(1, planned=3, target_epsilon=5.0)), ctx)))
    _metrics(app(_message(_task(2, planned=3, target_epsilon=5.0), witness=first), ctx))  # this reply is lost
    retried = _metrics(app(_message(_task(2, planned=3, target_epsilon=5.0), witness=first), ctx))  # round 2 again
    seen = Witness.from_metrics(retried)
    assert (seen.seq, seen.hash) == (3, ledger.entries()[-1].hash)
    _metrics(app(_message(_task(3, planned=3, target_epsilon=5.0), witness=seen), ctx))
    assert ledger.verify(require_signed=True).ok and all(e.signature for e in ledger.entries())


def test_a_signed_ledger_without_its_key_refuses_before_training(tmp_path, synthetic_images, site_app, answer,
                                                                 client_app_for):
    app, ledger = site_app(key=True)
    _metrics(app(_message(_task(1, target_epsilon=5.0)), _context()))
    keyless = client_app_for(Site(info=SiteInfo(name="hospital-a", state_dir=tmp_path / "state"),
                                  data=synthetic_images))  # site.key gone (or unreadable)
    with pytest.raises(TaskRefused, match="no key to sign its next entry") as err:
        answer(keyless(_message(_task(2, target_epsilon=5.0)), _context()))
    assert err.value.code == Code.LEDGER and len(ledger.entries()) == 2

"""A site's opt-in DP class histogram: nothing shared by default; when shared, its privacy cost is in the ledger."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.ledger import STATISTIC, Ledger
from fedhaven.client.quality.histogram import HISTOGRAM_METRIC, release_class_histogram
from fedhaven.client.types import Site, SiteInfo
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import SIMULATION_POLICY, DPConfig, ModelConfig, SitePolicy, TrainConfig
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.weights import get_weights

WEIGHTS = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0))


def _message(server_round: int, run_id: int = 1) -> Message:
    task = TaskSpec(server_round=server_round, planned_rounds=2, input=InputSpec(1, 8, 3), classes=("a", "b", "c"),
                    model=ModelConfig(name="lenet"), train=TrainConfig(local_epochs=1, batch_size=32, lr=0.3),
                    dp=DPConfig(target_epsilon=4.0))
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(WEIGHTS), task_to_config(task)), True)
    from fedhaven.client.seam.runtime import set_task_identity

    set_task_identity(task_id=1, run_id=run_id, node_id=0)  # as Flower's runtime does for the run's messages
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _metrics(reply: Message) -> dict:
    assert not reply.has_error(), reply.error
    return compat.recorddict_to_fitres(reply.content, keep_input=True).metrics


@pytest.fixture
def site(tmp_path, synthetic_images, client_app_for):
    def make(policy):
        info = SiteInfo(name="hospital-a", policy=policy, state_dir=tmp_path / "state")
        info.ledger().init(site="hospital-a")
        return client_app_for(Site(info=info, data=synthetic_images)), info.ledger()

    return make


def test_nothing_is_shared_by_default(site):
    assert SitePolicy().share_class_histogram is False and SIMULATION_POLICY.share_class_histogram is False
    app, ledger = site(SIMULATION_POLICY)
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    assert HISTOGRAM_METRIC not in _metrics(app(_message(1), ctx))
    assert [e.kind for e in ledger.entries()] == ["init", "update"]


def test_a_shared_histogram_is_paid_for_in_the_ledger_once_per_run(site, synthetic_images):
    sigma = 5.0
    policy = replace(SIMULATION_POLICY, share_class_histogram=True, class_histogram_noise=sigma, max_epsilon=50.0)
    app, ledger = site(policy)
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    first = _metrics(app(_message(1), ctx))
    noisy = json.loads(first[HISTOGRAM_METRIC])
    true = synthetic_images.class_counts()
    assert set(noisy) == set(true) and noisy != true  # names as the site calls its classes; the counts are noised
    assert all(abs(noisy[k] - true[k]) < 6 * sigma for k in true)
    assert HISTOGRAM_METRIC not in _metrics(app(_message(2), ctx))  # once per run
    assert HISTOGRAM_METRIC in _metrics(app(_message(1, run_id=2), ctx))  # a new run: shared (and paid) again
    entries = ledger.entries()
    assert [e.kind for e in entries] == ["init", "update", STATISTIC, "update", "update", STATISTIC]
    stat = entries[2]
    assert (stat.noise_multiplier, stat.sample_rate, stat.steps, stat.num_examples) == (sigma, 1.0, 1, 0)
    # its cost is one Gaussian release at sigma, composed with training by the same accountant, and it verifies
    alone = epsilon(history=PrivacyHistory().add(noise_multiplier=sigma, sample_rate=1.0, steps=1), delta=1e-5)
    assert 0 < stat.epsilon_after - stat.epsilon_before <= alone  # RDP composes below the sum of the parts
    history = PrivacyHistory()
    for e in entries[1:2]:
        history = history.add(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
    history = history.add(noise_multiplier=sigma, sample_rate=1.0, steps=1)
    assert stat.epsilon_after == pytest.approx(epsilon(history=history, delta=policy.delta))
    assert ledger.verify().ok
    with_stats = epsilon(history=ledger.history(), delta=policy.delta)
    without = PrivacyHistory()
    for e in entries:
        if e.kind == "update":
            without = without.add(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, steps=e.steps)
    assert with_stats > epsilon(history=without, delta=policy.delta)
    assert entries[-1].cumulative_epsilon == pytest.approx(with_stats)


def test_not_shared_when_the_site_budget_cannot_pay(tmp_path):
    ledger = Ledger.in_dir(tmp_path / "state")
    ledger.init(site="s")
    cost = epsilon(history=PrivacyHistory().add(noise_multiplier=2.0, sample_rate=1.0, steps=1), delta=1e-5)
    policy = replace(SIMULATION_POLICY, share_class_histogram=True, class_histogram_noise=2.0, max_epsilon=cost * 0.9)
    with ledger.locked():
        got = release_class_histogram(ledger=ledger, policy=policy, site="s", counts={"a": 10}, run_id=1,
                                      entries=ledger.entries(), rng=np.random.default_rng(0))
    assert got is None and [e.kind for e in ledger.entries()] == ["init"]
    policy = replace(policy, max_epsilon=cost * 1.1)
    with ledger.locked():
        got = release_class_histogram(ledger=ledger, policy=policy, site="s", counts={"a": 10}, run_id=1,
                                      entries=ledger.entries(), rng=np.random.default_rng(0))
    assert got is not None and got.entry.epsilon_after == pytest.approx(cost) and ledger.verify().ok


def test_an_edited_statistic_entry_fails_verification(tmp_path):
    ledger = Ledger.in_dir(tmp_path / "state")
    ledger.init(site="s")
    policy = replace(SIMULATION_POLICY, share_class_histogram=True, class_histogram_noise=3.0)
    release_class_histogram(ledger=ledger, policy=policy, site="s", counts={"a": 10, "b": 4}, run_id=1,
                            entries=ledger.entries())
    lines = ledger.path.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["noise_multiplier"] = 300.0  # claims far more noise than was drawn: a smaller cost
    ledger.path.write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
    assert not ledger.verify().ok


def test_a_statistic_cannot_bring_in_another_signing_key(tmp_path):
    from fedhaven.client.ledger import LedgerError
    from fedhaven.shared.crypto import make_site_keypair, write_private, write_public

    keys = []
    for name in ("a", "b"):
        private, public = make_site_keypair()
        write_private(tmp_path / f"{name}.key", private)
        write_public(tmp_path / f"{name}.pub", public)
        keys.append(tmp_path / f"{name}.key")
    Ledger.in_dir(tmp_path / "state", signing_key=keys[0]).init(site="s")
    other = Ledger.in_dir(tmp_path / "state", signing_key=keys[1])
    policy = replace(SIMULATION_POLICY, share_class_histogram=True)
    with pytest.raises(LedgerError, match="signed with key"):
        release_class_histogram(ledger=other, policy=policy, site="s", counts={"a": 3}, run_id=1,
                                entries=other.entries())
    assert [e.kind for e in other.entries()] == ["init"]

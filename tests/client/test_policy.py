"""The site policy, through the deployed ClientApp: refused tasks read no data, train nothing, send nothing."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client import deployment
from fedhaven.client.ledger import Ledger
from fedhaven.client.site_config import load_site_config
from fedhaven.shared.config import parse
from fedhaven.shared.models import build_model
from fedhaven.shared.refusal import Code
from fedhaven.shared.schema import DPConfig, InputSpec, ModelConfig, SitePolicy, TrainConfig
from fedhaven.shared.sources import load_digits_data, save_idx
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.weights import get_weights

SITE_TOML = """
name = "hospital-a"
state_dir = "state"
private_key = "site.key"
[coordinator]
address = "localhost:9092"
ca_cert = "ca.pem"
[data]
source = "idx"
path = "{data}"
[policy]
max_epsilon = 4.0
min_noise_multiplier = 0.8
"""



@pytest.fixture
def site(tmp_path, monkeypatch):
    reads = []
    real = deployment.SiteConfigProvider.data

    def counting(self, context):
        reads.append(1)
        return real(self, context)

    monkeypatch.setattr(deployment.SiteConfigProvider, "data", counting)
    save_idx(load_digits_data(split="train").subset(np.arange(200)), tmp_path / "data", split="train")
    (tmp_path / "site.toml").write_text(SITE_TOML.format(data=tmp_path / "data"))
    deployment._config_at.cache_clear()
    load_site_config(tmp_path / "site.toml").ledger().init(site="hospital-a")
    return tmp_path, reads


def _task(**dp) -> TaskSpec:
    return TaskSpec(server_round=1, planned_rounds=3, input=InputSpec(1, 8, 10),
                    classes=tuple(str(i) for i in range(10)), model=ModelConfig(name="lenet"),
                    train=TrainConfig(local_epochs=1, batch_size=32, lr=0.2), dp=DPConfig(target_epsilon=3.0, **dp))


def _message(task: TaskSpec, *, secagg: bool) -> Message:
    weights = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=task.input, seed=0))
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), task_to_config(task)), True)
    if secagg:  # the SecAgg+ stage that carries the task
        from flwr.app import ConfigRecord

        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
            {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []})
    return Message(content=content, dst_node_id=5, message_type=MessageType.TRAIN)


def _context(path) -> Context:
    return Context(run_id=1, node_id=5, node_config={"site-config": str(path / "site.toml")}, state=RecordDict(),
                   run_config={})


def _refusal(path, task, *, secagg=True) -> tuple[Code, str]:
    """The site's answer as the coordinator reads it: a refusal's code and sentence (Flower's error reply)."""
    reply = deployment.app(_message(task, secagg=secagg), _context(path))
    assert reply.has_error(), "the task was not refused"
    return Code(reply.error.code), reply.error.reason


def _refused(site, task, *, secagg=True) -> str:
    path, reads = site
    code, why = _refusal(path, task, secagg=secagg)
    assert reads == [], "the site read its data for a refused task"
    assert [e.kind for e in Ledger.in_dir(path / "state").entries()] in ([], ["init"])  # nothing was recorded
    assert code == Code.POLICY and "nothing was trained or sent" in why
    return why


def test_noise_below_the_site_minimum(site):
    assert "noise multiplier 0.3 is below this site's minimum 0.8" in _refused(site, _task(noise_multiplier=0.3))


def test_secure_aggregation_off(site):
    assert "only sends updates under secure aggregation" in _refused(site, _task(), secagg=False)


def test_dp_off_and_unknown_model_are_listed_together(site):
    task = _task()
    task = replace(task, dp=replace(task.dp, enabled=False), model=ModelConfig(name="mlp"))
    why = _refused(site, task)
    assert "only trains with differential privacy" in why and "model 'mlp' is not allowed" in why


def _spend(path, *, noise=0.5, rate=0.5, steps=400) -> Ledger:
    """Record an earlier update (epsilon about 50 with the defaults) in the site's ledger."""
    ledger = load_site_config(path / "site.toml").ledger()
    eps = __import__("fedhaven.shared.accounting", fromlist=["epsilon"]).epsilon(
        history=ledger.history().add(noise_multiplier=noise, sample_rate=rate, steps=steps), delta=1e-5)
    ledger.append(site="hospital-a", run_id=0, server_round=1, model="lenet", update_sha256="0" * 64,
                  weights_sha256="0" * 64, update_l2_norm=1.0, num_examples=200, noise_multiplier=noise,
                  sample_rate=rate, steps=steps, delta=1e-5, accountant="rdp", epsilon_before=0.0,
                  epsilon_after=eps, cumulative_epsilon=eps)
    return ledger


def test_epsilon_over_budget(site):
    path, _ = site
    ledger = _spend(path)
    code, why = _refusal(path, _task())
    assert code == Code.SITE_BUDGET
    assert "this site's own privacy budget is spent" in why and "of 4 (policy.max_epsilon" in why
    assert len(ledger.entries()) == 2  # nothing new left the site


def test_the_run_target_is_named_apart_from_the_site_budget(site):
    """Spent ~1.3 with a site budget of 4: a run targeting 1 is refused for the *run's* target."""
    path, reads = site
    _spend(path, noise=1.5, rate=0.1, steps=100)
    task = _task()
    task = replace(task, dp=replace(task.dp, target_epsilon=1.0))
    code, why = _refusal(path, task)
    assert code == Code.RUN_TARGET
    assert "run's privacy target is reached" in why and "dp.target_epsilon = 1" in why
    assert "this site's own budget (policy.max_epsilon = 4) has" in why and "budget is spent" not in why
    assert reads == []


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace"])
def test_a_damaged_ledger_stops_the_site_before_it_reads_data(site, damage, tmp_path):
    path, reads = site
    ledger = _spend(path, noise=3.0, rate=0.01, steps=10)
    if damage == "delete":
        ledger.path.unlink()
    elif damage == "truncate":
        ledger.path.write_text(ledger.path.read_text().splitlines(keepends=True)[0])
    else:  # a valid chain of the same length and site name, from another state directory
        other = Ledger.in_dir(tmp_path / "other")
        other.init(site="hospital-a")
        other.append(**{k: v for k, v in vars(ledger.entries()[1]).items()
                        if k not in ("seq", "prev_hash", "time", "hash")})
        ledger.path.write_bytes(other.path.read_bytes())
    code, why = _refusal(path, _task())
    assert code == Code.LEDGER
    assert "refuses to train until its operator acts" in why and "nothing was trained or sent" in why
    assert {"delete": "is missing", "truncate": "truncated", "replace": "replaced or rolled back"}[damage] in why
    assert str(tmp_path) not in why, "a refusal sent to the coordinator names no path of the site's"
    assert reads == []


def test_a_deployed_site_keeps_its_training_metrics_unless_it_says_otherwise():
    """Loss and accuracy on private data are not covered by epsilon: a site sends them only when it opts in."""
    assert SitePolicy().send_training_metrics is False
    assert parse(SitePolicy, {}).send_training_metrics is False
    assert parse(SitePolicy, {"send_training_metrics": True}).send_training_metrics is True


def test_policy_caps_the_noise_choice_to_the_site_budget(site):
    """A task targeting more epsilon than the site allows trains within the site's budget instead."""
    from fedhaven.client.policy import plan_round
    from fedhaven.shared.accounting import PrivacyHistory, PrivacyStep, epsilon

    path, _ = site
    cfg = load_site_config(path / "site.toml")
    loose = _task()
    loose = replace(loose, dp=replace(loose.dp, target_epsilon=50.0))
    plan = plan_round(task=loose, policy=cfg.policy, history=PrivacyHistory(), num_examples=200)
    planned = epsilon(history=[PrivacyStep(plan.noise_multiplier, plan.sample_rate, plan.steps * 3)],
                      delta=cfg.policy.delta)
    assert planned <= cfg.policy.max_epsilon and planned > 0.95 * cfg.policy.max_epsilon


@pytest.mark.parametrize("run_target,max_epsilon,min_noise,spent,searches_expected", [
    (6.0, 50.0, 0.5, 0.0, 1),   # the run's target binds; the site's budget is loose (the deployed tests' sites)
    (50.0, 4.0, 0.5, 0.0, 1),   # the site's budget binds; the minimum noise already keeps the run's loose target
    (6.0, 6.5, 0.5, 2.0, None),  # both close, after earlier spending
    (0.5, 50.0, 3.0, 0.0, None),  # the site's minimum noise binds
])
def test_noise_choice_equals_the_max_over_every_limits_own_search(monkeypatch, run_target, max_epsilon, min_noise,
                                                                 spent, searches_expected):
    """`choose_noise` skips a limit's search when the noise chosen so far already keeps it: here (every noise on the
    search's grid) the result is the naive max(minimum, run's search, site's search), and the site's search is
    skipped when the run's noise binds."""
    from fedhaven.client import policy as pol
    from fedhaven.shared.accounting import PrivacyHistory, epsilon, noise_for_budget
    from fedhaven.shared.schema import SIMULATION_POLICY

    site = replace(SIMULATION_POLICY, max_epsilon=max_epsilon, min_noise_multiplier=min_noise, delta=1e-6)
    history = PrivacyHistory()
    if spent:
        z = noise_for_budget(target_epsilon=spent, delta=1e-5, sample_rate=0.2, steps=20)
        history = history.add(noise_multiplier=z, sample_rate=0.2, steps=20)
    task = _task()
    task = replace(task, planned_rounds=2,
                   dp=replace(task.dp, target_epsilon=run_target + epsilon(history=history, delta=task.dp.delta)))
    remaining = 15 * 2
    searches = []
    monkeypatch.setattr(pol, "noise_for_budget", lambda **kw: searches.append(kw) or noise_for_budget(**kw))
    chosen = pol.choose_noise(task=task, policy=site, history=history, sample_rate=0.2, steps=15)
    naive = max(min_noise,
                noise_for_budget(target_epsilon=task.dp.target_epsilon, delta=task.dp.delta, sample_rate=0.2,
                                 steps=remaining, prior=history),
                noise_for_budget(target_epsilon=max_epsilon, delta=1e-6, sample_rate=0.2, steps=remaining,
                                 prior=history))
    assert chosen == naive
    if searches_expected is not None:
        assert len(searches) == searches_expected


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_an_off_grid_minimum_noise_keeps_every_limit_and_never_exceeds_the_naive_choice(accountant):
    """A minimum noise that already keeps the run's target is kept as it is (the search would round it up to its
    grid): never more noise than the naive choice, never a limit passed. PRV is always searched."""
    from fedhaven.client import policy as pol
    from fedhaven.shared.accounting import PrivacyHistory, epsilon, noise_for_budget
    from fedhaven.shared.schema import SIMULATION_POLICY

    site = replace(SIMULATION_POLICY, max_epsilon=math.inf, min_noise_multiplier=0.9, delta=1e-5,
                   accountant=accountant)
    target = 1.001 * epsilon(history=PrivacyHistory().add(noise_multiplier=0.9, sample_rate=0.2, steps=30),
                             delta=1e-5, accountant=accountant)
    task = _task()
    task = replace(task, planned_rounds=2, dp=replace(task.dp, target_epsilon=target, accountant=accountant))
    chosen = pol.choose_noise(task=task, policy=site, history=PrivacyHistory(), sample_rate=0.2, steps=15)
    naive = max(0.9, noise_for_budget(target_epsilon=target, delta=1e-5, sample_rate=0.2, steps=30,
                                      accountant=accountant))
    spent = epsilon(history=PrivacyHistory().add(noise_multiplier=chosen, sample_rate=0.2, steps=30), delta=1e-5,
                    accountant=accountant)
    assert 0.9 <= chosen <= naive and naive - chosen < 0.005 and spent <= target
    if accountant == "prv":
        assert chosen == naive  # no shortcut for PRV


def test_the_shortcut_never_runs_prv_at_a_tiny_noise():
    """PRV at noise 0.1 over 3000 steps takes gigabytes; the shortcut is RDP-only, so a site with such a minimum
    noise gets the search (and its refusal), never a crash."""
    from fedhaven.client.policy import _keeps
    from fedhaven.shared.accounting import PrivacyHistory

    assert not _keeps(limit=3.0, delta=1e-5, accountant="prv", history=PrivacyHistory(), noise=0.1,
                      sample_rate=0.01, steps=3000)
    assert not _keeps(limit=3.0, delta=1e-5, accountant="rdp", history=PrivacyHistory(), noise=0.0,
                      sample_rate=0.01, steps=3000)

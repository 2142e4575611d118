"""fl-sim's attack harness: each kind acts only on the given sites from the given round, and only in simulation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.flower_app import site_trainer
from fedhaven.shared.config import ConfigError, parse
from fedhaven.shared.schema import InputSpec, RunConfig
from fedhaven.shared.task import task_for_round, task_to_config
from fedhaven.sim.attack import AttackMod
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.sites import SimulatedSites

START = [np.zeros((3, 2), dtype=np.float32), np.ones(4, dtype=np.float32)]
TRAINED = [np.full((3, 2), 0.5, dtype=np.float32), np.full(4, 0.75, dtype=np.float32)]  # update: +0.5, -0.25


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def _mod(kind: str, sites=(1,), from_round: int = 3) -> AttackMod:
    exp = load_experiment(source="digits", overrides=[f'attack.kind="{kind}"', f"attack.sites={list(sites)}",
                                                      f"attack.from_round={from_round}"])
    return AttackMod(attack=exp.attack, sites=SimulatedSites(exp))


def _send(mod: AttackMod, *, site: int, server_round: int, seen: list | None = None) -> list[np.ndarray]:
    exp = mod.sites.experiment
    task = task_for_round(run=exp.run_config(), server_round=server_round, input_spec=InputSpec(1, 8, 10),
                          classes=tuple(str(i) for i in range(10)))
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(START), task_to_config(task)), True)
    msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": site}, state=RecordDict(), run_config={})

    def train(m, c):  # the honest site: trains (sees its data) and replies with TRAINED
        if seen is not None:
            seen.append(site_trainer(mod.sites, c).site.data.labels.clone())
        res = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(TRAINED), num_examples=10,
                     metrics={})
        return Message(compat.fitres_to_recorddict(res, True), reply_to=m)

    reply = mod(msg, ctx, train)
    return parameters_to_ndarrays(compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["nan", "inf", "scale:1000", "signflip", "gaussian:2.0"])
def test_each_update_attack_acts_only_on_its_sites_from_its_round(kind):
    mod = _mod(kind, sites=(1,), from_round=3)
    for site, rnd in ((0, 3), (0, 5), (2, 4), (1, 1), (1, 2)):  # other sites, or before round 3: honest
        assert _same(_send(mod, site=site, server_round=rnd), TRAINED), (site, rnd)
    for rnd in (3, 4):
        sent = _send(mod, site=1, server_round=rnd)
        update = [s - t for s, t in zip(sent, START, strict=True)]
        if kind == "nan":
            assert all(np.isnan(a).all() for a in sent)
        elif kind == "inf":
            assert all(np.isinf(a).all() for a in sent)
        elif kind == "scale:1000":
            assert np.allclose(update[0], 500.0) and np.allclose(update[1], -250.0)
        elif kind == "signflip":
            assert np.allclose(update[0], -0.5) and np.allclose(update[1], 0.25)
        else:  # the update replaced by N(0, 2^2) noise
            noise = np.concatenate([u.ravel() for u in update])
            assert not np.allclose(noise, np.concatenate([(t - s).ravel() for t, s in zip(TRAINED, START)]))
            assert 0.5 < np.std(noise) < 4.0


def test_labelflip_trains_the_attacker_on_flipped_labels_from_its_round_only():
    mod = _mod("labelflip", sites=(2,), from_round=2)
    honest = SimulatedSites(mod.sites.experiment).site_data(2).labels
    seen: list[torch.Tensor] = []
    assert _same(_send(mod, site=2, server_round=1, seen=seen), TRAINED)  # before its round
    _send(mod, site=2, server_round=2, seen=seen)
    _send(mod, site=0, server_round=2, seen=seen)  # another site
    assert torch.equal(seen[0], honest)
    assert torch.equal(seen[1], 9 - honest)  # 10 classes: c -> 9 - c, during its training only
    assert not torch.equal(seen[2], 9 - SimulatedSites(mod.sites.experiment).site_data(0).labels)
    trainer_labels = site_trainer(mod.sites, Context(run_id=1, node_id=7, node_config={"partition-id": 2},
                                                     state=RecordDict(), run_config={})).site.data.labels
    assert torch.equal(trainer_labels, honest)  # its own data is given back afterwards


def test_attacks_are_refused_outside_simulation(tmp_path):
    @dataclass(frozen=True)
    class DeployedSites:  # any other SiteProvider, e.g. a deployed site's
        pass

    exp = load_experiment(source="digits", overrides=['attack.kind="nan"'])
    with pytest.raises(TypeError, match="simulation-only"):
        AttackMod(attack=exp.attack, sites=DeployedSites())
    with pytest.raises(ConfigError, match="attack: the attack harness is simulation-only"):  # fl-server run's config
        parse(RunConfig, {"attack": {"kind": "nan"}})
    from fedhaven.client.site_config import load_site_config

    (tmp_path / "site.toml").write_text('name = "a"\nprivate_key = "k"\n[coordinator]\ninsecure = true\n'
                                        '[attack]\nkind = "nan"\n')
    with pytest.raises(ConfigError, match="attack: the attack harness is simulation-only"):
        load_site_config(tmp_path / "site.toml")


def test_fl_sim_warns_of_an_attack_and_refuses_a_bad_one(capfd):
    from fedhaven.sim import cli

    assert cli.main(["check", "digits", 'attack.kind="scale:1000"', "attack.sites=[1, 2]"]) == 0
    err = capfd.readouterr().err
    assert "SIMULATED ATTACK (simulation only): site-01, site-02 send scale:1000 updates from round 1" in err
    assert cli.main(["check", "digits", 'attack.kind="scale"', "attack.sites=[5]"]) == 2
    err = capfd.readouterr().err
    assert "attack.kind: expected none, nan, inf, scale:K" in err

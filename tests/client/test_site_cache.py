"""A long-lived site process keeps its data and model loaded, and drops them the moment they change: nothing cached
survives a change of data, site config, model or privacy parameters."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client import deployment, flower_app
from fedhaven.client.ledger import Ledger
from fedhaven.client.site_config import load_site_config
from fedhaven.client.types import Code, TaskRefused
from fedhaven.shared.models import build_model
from fedhaven.shared.schema import DPConfig, InputSpec, ModelConfig, TrainConfig
from fedhaven.shared.sources import load_digits_data, save_idx
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.weights import get_weights

SITE = """
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
max_epsilon = 50.0
require_secure_aggregation = false
allowed_models = {models}
"""
SPEC = InputSpec(1, 8, 10)



def _write_site(path, models='["lenet"]') -> None:
    text = SITE.format(data=path / "data", models=models)
    (path / "site.toml").write_text(text)
    st = (path / "site.toml").stat()
    os.utime(path / "site.toml", ns=(st.st_atime_ns, time.time_ns()))  # a new mtime even within one tick


def _fit(path, rnd: int, *, model: str = "lenet", noise: float | str = 1.5, target: float = 20.0):
    cfg = ModelConfig(name=model)
    task = TaskSpec(server_round=rnd, planned_rounds=10, input=SPEC, classes=tuple(str(i) for i in range(10)),
                    model=cfg, train=TrainConfig(local_epochs=1, batch_size=32, lr=0.2),
                    dp=DPConfig(target_epsilon=target, noise_multiplier=noise))
    weights = get_weights(build_model(cfg=cfg, spec=SPEC, seed=0))
    msg = Message(content=compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), task_to_config(task)),
                                                      True), dst_node_id=5, message_type=MessageType.TRAIN)
    ctx = Context(run_id=rnd, node_id=5, node_config={"site-config": str(path / "site.toml")}, state=RecordDict(),
                  run_config={})
    reply = deployment.app(msg, ctx)
    if reply.has_error():  # a refusal: its code and sentence, as the coordinator reads them
        raise TaskRefused(Code(reply.error.code), reply.error.reason)
    return compat.recorddict_to_fitres(reply.content, keep_input=True)


def test_nothing_cached_survives_a_change(tmp_path, monkeypatch):
    loads = []
    real = deployment.SiteConfigProvider.data
    monkeypatch.setattr(deployment.SiteConfigProvider, "data", lambda self, ctx: loads.append(1) or real(self, ctx))
    digits = load_digits_data(split="train")
    save_idx(digits.subset(np.arange(200)), tmp_path / "data", split="train")
    _write_site(tmp_path)
    load_site_config(tmp_path / "site.toml").ledger().init(site="hospital-a")

    assert _fit(tmp_path, 1).num_examples == 200
    assert _fit(tmp_path, 2).num_examples == 200
    assert len(loads) == 1, "the site's data should stay loaded between messages"

    save_idx(digits.subset(np.arange(120)), tmp_path / "data", split="train")  # new data on disk
    assert _fit(tmp_path, 3).num_examples == 120 and len(loads) == 2

    _write_site(tmp_path, models='["mlp"]')  # the site's IT tightens the policy while the process runs
    with pytest.raises(TaskRefused, match="model 'lenet' is not allowed") as err:
        _fit(tmp_path, 4)
    assert err.value.code == Code.POLICY
    res = _fit(tmp_path, 5, model="mlp")  # a new model for the same data: built for it
    shapes = [w.shape for w in parameters_to_ndarrays(res.parameters)]
    assert shapes == [w.shape for w in get_weights(build_model(cfg=ModelConfig(name="mlp"), spec=SPEC, seed=0))]

    _fit(tmp_path, 6, model="mlp", noise=2.5)  # privacy parameters: each round uses what it is asked, never a memo
    entries = [e for e in Ledger.in_dir(tmp_path / "state").entries() if e.kind == "update"]
    assert [e.noise_multiplier for e in entries] == [1.5, 1.5, 1.5, 1.5, 2.5]
    assert len(flower_app._TRAINERS) <= flower_app._KEEP

"""Privacy end to end on Flower's simulation engine: raw data never leaves, budgets stop a run cleanly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import ServerApp  # noqa: F401 - imported for Flower's side effects in the worker
from flwr.simulation import run_simulation

from fedhaven.client.flower_app import client_fn_for, client_mods, training_task
from fedhaven.client.ledger import Ledger
from fedhaven.server.app import make_server_app
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.runner import create_site_ledgers, resolve_max_weight, run_experiment
from fedhaven.sim.sites import SimulatedSites

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

METRIC_KEYS = {"site", "loss", "accuracy", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
               "total_steps", "empty_batches", "num_examples", "train_time_s", "ledger_seq", "ledger_prev_hash",
               "ledger_hash"}


def _recorder(folder: Path, kind: str):
    """A mod that saves each TRAIN reply's content, as serialised for the wire, under `folder/kind/`."""

    def mod(msg: Message, ctx, call_next):
        # read the stage first: Flower's SecAgg+ mod pops it from the incoming message
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE, "plain")
        reply = call_next(msg, ctx)
        if msg.metadata.message_type == MessageType.TRAIN and reply.has_content():
            name = f"{msg.metadata.dst_node_id}-{msg.metadata.group_id}-{stage}"
            out = folder / kind
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.bin").write_bytes(recorddict_to_proto(reply.content).SerializeToString(deterministic=True))
            task = training_task(msg)
            if task is not None:  # the task it answered: the [robust] encoding and rotation seed
                (out / f"{name}.task.json").write_text(json.dumps({"encoding": task.encoding,
                                                                   "seed": task.rotation_seed}))
        return reply

    return mod


def _load(path: Path):
    proto = ProtoRecordDict()
    proto.ParseFromString(path.read_bytes())
    return recorddict_from_proto(proto)


def test_raw_data_never_leaves_and_the_server_only_sees_masked_updates(tmp_path):
    exp = load_experiment(source="digits", overrides=["rounds=1", "train.local_epochs=2", "train.lr=0.2"])
    sites = SimulatedSites(exp, state_root=str(tmp_path / "sites"))
    create_site_ledgers(sites)
    mods = client_mods(sites)  # refusals, ledger, policy, SecAgg+, [robust] encoding, central-DP clipping
    app = ClientApp(client_fn=client_fn_for(sites),
                    mods=[_recorder(tmp_path, "sent"), *mods[:4], _recorder(tmp_path, "plain"), *mods[4:]])
    results = []
    max_weight = resolve_max_weight(exp, sites.sizes())
    server = make_server_app(run=exp.run_config(), run_dir=tmp_path / "run", max_weight=max_weight,
                             on_result=results.append)
    run_simulation(server_app=server, client_app=app, num_supernodes=exp.sites,
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert results and results[0].rounds[-1].status == "ok"

    sent = sorted((tmp_path / "sent").glob("*.bin"))
    plain = {p.name.split("-")[0]: _load(p) for p in (tmp_path / "plain").glob("*.bin")}
    tasks = [json.loads(p.read_text()) for p in (tmp_path / "plain").glob("*.task.json")]
    assert len(tasks) == exp.sites and len({json.dumps(t) for t in tasks}) == 1 and tasks[0]["encoding"] == "rotated"
    assert len(sent) == 4 * exp.sites and len(plain) == exp.sites  # four SecAgg+ stages per site
    blobs = b"".join(p.read_bytes() for p in sent)

    # (a) nothing a site sent carries its training images or labels: only declared keys, no data-shaped arrays
    for i in range(exp.sites):
        data = sites.site_data(i)
        for k in range(20):
            assert data.images[k].numpy().tobytes() not in blobs
        assert data.labels[:16].numpy().tobytes() not in blobs
        assert data.labels[:16].numpy().astype(np.int32).tobytes() not in blobs
    for path in sent:
        content = _load(path)
        for rec in content.array_records.values():
            assert len(rec) == 0, "arrays left the site outside SecAgg+ masking"
        for name, rec in content.metric_records.items():
            assert set(rec) <= METRIC_KEYS, set(rec) - METRIC_KEYS

    # (b) what the server receives from a site is unrelated to the site's true update, yet the sum is right.
    # What is masked is each site's rotated model delta ([robust], on by default), which SecAgg+ weighs and clips
    # per coordinate at the guard's range before quantising.
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import auto_update_norm
    from fedhaven.shared.updates import coordinate_range, flatten, padded_length, unrotate
    from fedhaven.shared.weights import get_weights

    initial = flatten(get_weights(build_model(cfg=exp.model, spec=sites.site_data(0).spec, seed=exp.seed,
                                              dp=exp.dp.enabled)))
    n = padded_length(initial.size)
    c = coordinate_range(bound=auto_update_norm(initial.size), length=n, factor=exp.robust.coordinate_clip)
    clipped_sum, ratios = np.zeros(n), 0.0
    for node, content in plain.items():
        fitres = compat.recorddict_to_fitres(content, keep_input=True)
        true = np.concatenate([a.ravel() for a in parameters_to_ndarrays(fitres.parameters)])
        masked_msg = _load(tmp_path / "sent" / next(p.name for p in sent if p.name.startswith(node)
                                                     and "collect" in p.name))
        arrays = [bytes_to_ndarray(b) for b in masked_msg.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        masked = np.concatenate([a.ravel() for a in arrays[1:]]).astype(np.float64)  # [0] is the masked weight
        assert masked.shape == true.shape == (n,)
        assert true.astype(np.float32).tobytes()[:256] not in blobs  # the plaintext update never went out
        assert abs(np.corrcoef(true, masked)[0, 1]) < 0.1  # statistically unrelated to the true update
        mod = exp.secagg.modulus_range
        assert 0 <= masked.min() and masked.max() < mod
        assert abs(masked.mean() / mod - 0.5) < 0.05  # masks spread values over the whole ring
        ratio = fitres.num_examples / max_weight
        clipped_sum += np.clip(true * ratio, -c, c)
        ratios += ratio
    moved = np.concatenate([a.ravel() for a in results[0].weights]) - initial
    mean_delta, padding = unrotate(clipped_sum / ratios, seed=tasks[0]["seed"], length=initial.size)
    level = 2 * c / exp.secagg.quantization_range  # one quantisation level per site, scaled by the division
    # (the padding holds what SecAgg+'s clip cut from the sites' tails; the coordinator drops it)
    assert padding < 0.05 * np.linalg.norm(mean_delta)
    assert np.linalg.norm(moved - mean_delta) <= np.sqrt(n) * exp.sites * level / ratios


def test_a_spent_budget_stops_the_run_cleanly_and_nothing_more_is_sent(tmp_path):
    # fixed noise 1.0: epsilon ~4.0 after round 1 and ~5.0 after round 2, over the sites' budget of 4.5
    exp = load_experiment(source="digits", overrides=[
        "rounds=3", "round_retries=0", "train.local_epochs=1.0", "dp.noise_multiplier=1.0", "dp.target_epsilon=10.0",
        "site_policy.max_epsilon=4.5", "site_policy.allowed_models=['lenet']",
        "central_dp.enabled=true", "central_dp.noise_multiplier=0.3", "central_dp.clipping_norm=5.0"])
    summary = run_experiment(exp=exp, run_dir=tmp_path)
    assert summary.data["rounds"] == 1
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["stopped"] and "privacy budget" in report["stopped"]
    assert len(report["site_failures"]) == exp.sites and all("privacy budget is spent" in f["reason"]
                                                             for f in report["site_failures"])
    for name, site in report["sites"].items():
        ledger = Ledger.in_dir(tmp_path / "sites" / name)
        assert ledger.verify().ok and [e.kind for e in ledger.entries()] == ["init", "update"]  # round 2 sent nothing
        from opacus.accountants import RDPAccountant

        fresh = RDPAccountant()
        fresh.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries() if e.kind == "update"]
        assert fresh.get_epsilon(delta=1e-5) == pytest.approx(site["epsilon"], rel=1e-9)
        assert site["epsilon"] <= 4.5
    central = report["central_dp"]
    assert central["enabled"] and central["rounds"] == 1 and central["epsilon"] > 0
    assert central["noise_std"] == [pytest.approx(0.3 * 5.0 / exp.sites)]
    assert report["membership_inference"]["members"] > 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["initial", "ok", "failed"]
    model = torch.load(tmp_path / "model.pt")
    assert torch.equal(model["features.0.weight"], torch.load(tmp_path / "checkpoints" / "round-001.pt",
                                                               weights_only=False)["state_dict"]["features.0.weight"])

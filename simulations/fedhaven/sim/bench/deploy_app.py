"""The plain Flower apps the deploy benchmark runs beside fedhaven; copied into each run's FAB as `fhbench_app.py`.

Two apps, written the way Flower's documentation and examples write them:

- `plain_server` / `plain_client`: message-API FedAvg (`flwr.serverapp.strategy.FedAvg`), no DP, no SecAgg+;
- `secagg_server` / `secagg_client`: Flower's SecAgg+ example pattern (`LegacyContext` + `DefaultWorkflow`
  with `SecAggPlusWorkflow` and the legacy `FedAvg` on the server; a `NumPyClient` behind `secaggplus_mod`).

Both borrow only fedhaven's data loading, model and plain-SGD training loop (`train_local` with `dp=None`),
so they do exactly the local work fedhaven's sites do. The only additions are timing records: each
process appends JSON lines to the run config's `timing-file` (when it started, when the handler ran, how
long training took; the server: when each round ended and how long it waited for replies).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from flwr.client import Client
    from flwr.common import NDArrays, Scalar
    from torch import nn

    from fedhaven.shared.data import ImageData
    from fedhaven.shared.schema import InputSpec, TrainConfig

_LAST_TRAIN_S: list[float] = []  # this process's training time, for the SecAgg+ timing mod (one message a process)


def process_start_time() -> float:
    """When this process started (wall clock, 10 ms resolution), from /proc; the current time where /proc is missing."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def record(context: Context, **fields: Any) -> None:
    """Append one timing record (a JSON line; one write, so concurrent processes never interleave)."""
    path = context.run_config.get("timing-file")
    if not path:
        return
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps({"pid": os.getpid(), **fields}) + "\n").encode())
    finally:
        os.close(fd)


def _train_config(context: Context) -> TrainConfig:
    from fedhaven.shared.schema import TrainConfig

    c = context.run_config
    return TrainConfig(local_epochs=float(c["local-epochs"]), batch_size=int(c["batch-size"]), lr=float(c["lr"]))


def _site_data(context: Context) -> ImageData:
    from fedhaven.shared.sources import load_idx

    return load_idx(Path(str(context.run_config["data-dir"])) / f"site-{int(context.node_config['partition-id'])}",
                    split="train")


def _model(spec: InputSpec) -> nn.Module:
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import ModelConfig

    return build_model(cfg=ModelConfig(name="lenet"), spec=spec, dp=False)


def _test_and_model(context: Context) -> tuple[ImageData, nn.Module]:
    from fedhaven.shared.sources import load_digits_data

    test = load_digits_data(split="test")  # what fedhaven's coordinator evaluates on for data.source = "digits"
    return test, _model(test.spec)


def _timed_grid(grid: Grid, context: Context) -> Grid:
    """Record how long each `send_and_receive` (Flower's own, with its 3 s pulls) waits; behaviour unchanged."""
    inner = grid.send_and_receive

    def send_and_receive(messages: Iterable[Message], *args: Any, **kwargs: Any) -> list[Message]:
        messages = list(messages)
        t0 = time.time()
        replies = list(inner(messages, *args, **kwargs))
        record(context, kind="wait", start=t0, end=time.time(), sent=len(messages), replies=len(replies))
        return replies

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]  # this grid object only, timed
    return grid


# ----- plain Flower: message API, FedAvg -----
plain_client = ClientApp()


@plain_client.train()
def _plain_train(msg: Message, context: Context) -> Message:
    enter = time.time()
    from fedhaven.shared.training import train_local

    data = _site_data(context)
    model = _model(data.spec)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)  # the server sends the model as an ArrayRecord
    model.load_state_dict(arrays.to_torch_state_dict())
    rep = train_local(model=model, data=data, train=_train_config(context), dp=None, device="cpu")
    metrics = MetricRecord({"num-examples": len(data), "train_loss": rep.loss, "train_time_s": rep.seconds})
    reply = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
    record(context, kind="client", message_id=msg.metadata.message_id, node=int(context.node_config["partition-id"]),
           stage="train", proc_start=process_start_time(), enter=enter, exit=time.time(), train_s=rep.seconds)
    return reply


plain_server = ServerApp()


@plain_server.main()
def _plain_main(grid: Grid, context: Context) -> None:
    from flwr.serverapp.strategy import FedAvg

    from fedhaven.shared.training import evaluate

    grid = _timed_grid(grid, context)
    test, model = _test_and_model(context)
    sites = int(context.run_config["sites"])

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model=model, data=test, device="cpu")
        record(context, kind="round", round=server_round, t=time.time(), accuracy=acc, loss=loss)
        return MetricRecord({"accuracy": acc, "loss": loss})

    FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites).start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=int(context.run_config["rounds"]),
        train_config=ConfigRecord(), evaluate_fn=central)


# ----- Flower's SecAgg+ example pattern: legacy stack -----
def _secagg_client_fn(context: Context) -> Client:
    from flwr.client import NumPyClient

    from fedhaven.shared.training import train_local
    from fedhaven.shared.weights import get_weights, set_weights

    class SiteClient(NumPyClient):
        def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
            data = _site_data(context)
            model = _model(data.spec)
            set_weights(model, parameters)
            rep = train_local(model=model, data=data, train=_train_config(context), dp=None, device="cpu")
            _LAST_TRAIN_S.append(rep.seconds)
            return get_weights(model), len(data), {"train_loss": rep.loss, "train_time_s": rep.seconds}

    return SiteClient().to_client()


def _secagg_stage(msg: Message) -> str:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    try:
        return str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
    except (KeyError, AttributeError):
        return msg.metadata.message_type


def _timing_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Outermost mod: records when the handler ran; does nothing else."""
    enter = time.time()
    stage = _secagg_stage(msg)
    reply = call_next(msg, context)
    record(context, kind="client", message_id=msg.metadata.message_id, node=int(context.node_config["partition-id"]),
           stage=stage, proc_start=process_start_time(), enter=enter, exit=time.time(),
           train_s=_LAST_TRAIN_S.pop() if _LAST_TRAIN_S else 0.0)
    return reply


def _make_secagg_client() -> ClientApp:
    from flwr.client.mod import secaggplus_mod

    return ClientApp(client_fn=_secagg_client_fn, mods=[_timing_mod, secaggplus_mod])


secagg_client = _make_secagg_client()
secagg_server = ServerApp()


@secagg_server.main()
def _secagg_main(grid: Grid, context: Context) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from fedhaven.shared.training import evaluate
    from fedhaven.shared.weights import get_weights, set_weights

    grid = _timed_grid(grid, context)
    c = context.run_config
    test, model = _test_and_model(context)
    sites = int(c["sites"])

    def central(server_round: int, parameters: NDArrays,
                config: dict[str, Scalar]) -> tuple[float, dict[str, Scalar]]:
        set_weights(model, parameters)
        loss, acc = evaluate(model=model, data=test, device="cpu")
        record(context, kind="round", round=server_round, t=time.time(), accuracy=acc, loss=loss)
        return loss, {"accuracy": acc}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=sites, min_evaluate_clients=0,
                      min_available_clients=sites, evaluate_fn=central,
                      initial_parameters=ndarrays_to_parameters(get_weights(model)))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(c["rounds"])), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=int(c["num-shares"]), reconstruction_threshold=int(c["reconstruction-threshold"]),
        max_weight=float(c["max-weight"]), clipping_range=float(c["clipping-range"]),
        quantization_range=int(c["quantization-range"]), modulus_range=int(c["modulus-range"]),
        timeout=float(c["timeout"])))
    workflow(grid, legacy)

"""Item 4: the same task as a plain Flower app, written the way Flower's documentation writes it.

Message-API FedAvg (`flwr.serverapp.strategy.FedAvg`) on the server; on each
site a `@app.train()` handler that wraps model, optimizer and a PyTorch
DataLoader with Opacus' `PrivacyEngine.make_private` every round (Poisson
sampling, default hooks engine) and trains. No SecAgg+, no ledger, no policy.
Same data split, model, DP settings and rounds as the fedhaven run it is
compared with; it borrows only fedhaven's data loading, partitioner and model
class, so the two train the same network on the same examples.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from torch import nn

    from fedhaven.shared.data import ImageData
    from fedhaven.shared.schema import InputSpec


@dataclass(frozen=True)
class BaselineTask:
    sites: int
    rounds: int
    batch_size: int
    lr: float
    momentum: float
    local_epochs: int
    noise_multiplier: float
    max_grad_norm: float
    seed: int = 0


@functools.lru_cache(maxsize=2)
def _split(sites: int, seed: int) -> tuple[ImageData, list[np.ndarray]]:
    from fedhaven.shared.partition import partition_iid
    from fedhaven.shared.schema import DataConfig
    from fedhaven.shared.sources import load_data

    train = load_data(cfg=DataConfig(), split="train")
    return train, partition_iid(num_examples=len(train), num_sites=sites, seed=seed)


def _net(spec: InputSpec) -> nn.Module:
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import ModelConfig

    return build_model(cfg=ModelConfig(name="lenet"), spec=spec, dp=False)


def make_apps(task: BaselineTask, log: list[dict[str, Any]]) -> tuple[ServerApp, ClientApp]:
    """The baseline's ServerApp and ClientApp; `log` receives (time, accuracy) per round from the server."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        import torch
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        from fedhaven.shared.data import to_model_input

        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")
        data, parts = _split(task.sites, task.seed)
        idx = torch.as_tensor(parts[int(context.node_config["partition-id"])])
        loader = DataLoader(TensorDataset(to_model_input(data.images[idx]), data.labels[idx]),
                            batch_size=task.batch_size, shuffle=True)
        model = _net(data.spec)
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)  # the server sends the model as an ArrayRecord
        model.load_state_dict(arrays.to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
        engine = PrivacyEngine()
        dp_model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                          noise_multiplier=task.noise_multiplier,
                                                          max_grad_norm=task.max_grad_norm)
        dp_model.train()
        for _ in range(task.local_epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(dp_model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
                optimizer.step()
        metrics = MetricRecord({"num-examples": len(idx), "epsilon": engine.get_epsilon(1e-5)})
        return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                       reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        import torch

        from fedhaven.shared.schema import DataConfig
        from fedhaven.shared.sources import load_data
        from fedhaven.shared.training import evaluate

        test = load_data(cfg=DataConfig(), split="test")
        torch.manual_seed(task.seed)
        model = _net(test.spec)
        start = time.perf_counter()

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(model=model, data=test, device="cpu")
            log.append({"round": server_round, "t": time.perf_counter() - start, "accuracy": acc, "loss": loss})
            return MetricRecord({"accuracy": acc, "loss": loss})

        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=task.sites,
               min_available_nodes=task.sites).start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                                     num_rounds=task.rounds, train_config=ConfigRecord(),
                                                     evaluate_fn=central)

    return server, client


def run(task: BaselineTask) -> dict[str, Any]:
    """Simulate the baseline on Flower's simulation engine with the resources fedhaven's runs get."""
    import os

    from flwr.simulation import run_simulation

    from fedhaven.shared.runtime import HARDENED_ENV
    from fedhaven.sim.bench.machine import PeakMemory

    os.environ.update(HARDENED_ENV)
    log: list[dict[str, Any]] = []
    server, client = make_apps(task, log)
    started = time.perf_counter()
    with PeakMemory() as mem:
        run_simulation(server_app=server, client_app=client, num_supernodes=task.sites,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}})
    wall = time.perf_counter() - started
    import ray

    ray.shutdown()
    times = np.diff([0.0] + [x["t"] for x in log if x["round"] > 0])
    return {"wall_s": wall, "rounds": sum(x["round"] > 0 for x in log),
            "round_s": [float(t) for t in times], "steady_round_s": float(np.median(times[1:])) if len(times) > 1
            else None, "accuracy": log[-1]["accuracy"] if log else None,
            "accuracy_per_round": [x["accuracy"] for x in log if x["round"] > 0], "peak_memory_mib": mem.peak_mib}

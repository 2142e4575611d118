"""Item 1: time per local epoch and peak memory of DP-SGD per Opacus engine, against plain torch (one process each)."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fedhaven.shared.schema import GradSampleMode

MODES: tuple[Literal["plain"] | GradSampleMode, ...] = ("plain", "ghost", "ew", "hooks", "functorch")


def _measure(mode: Literal["plain"] | GradSampleMode, *, epochs: int, batch_size: int, examples: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # as a simulated site: one core each
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import DataConfig, ModelConfig, TrainConfig
    from fedhaven.shared.sources import load_data
    from fedhaven.shared.training import DPSettings, train_local

    data = load_data(cfg=DataConfig(), split="train").subset(torch.arange(examples))
    model = build_model(cfg=ModelConfig(name="lenet"), spec=data.spec, seed=0)
    cfg = TrainConfig(local_epochs=1.0, batch_size=batch_size)
    dp = None if mode == "plain" else DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_local(model=model, data=data.subset(torch.arange(batch_size)), train=cfg, dp=dp, device="cpu")  # warm-up
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        train_local(model=model, data=data, train=cfg, dp=dp, device="cpu")
        times.append(time.perf_counter() - t)
    return {"mode": mode, "epoch_s": times, "median_epoch_s": statistics.median(times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_training_mib": base_rss, "max_abs_diff_vs_hooks": _agreement(mode) if mode != "plain" else None}


def _agreement(mode: GradSampleMode) -> float:
    """Largest weight difference after one noiseless DP step, this engine against Opacus' hooks engine."""
    import torch

    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import DataConfig, ModelConfig, TrainConfig
    from fedhaven.shared.sources import load_data
    from fedhaven.shared.training import DPSettings, train_local

    data = load_data(cfg=DataConfig(), split="train").subset(torch.arange(256))
    out = []
    engines: tuple[GradSampleMode, GradSampleMode] = (mode, "hooks")
    for m in engines:
        model = build_model(cfg=ModelConfig(name="lenet"), spec=data.spec, seed=1)
        train_local(model=model, data=data, train=TrainConfig(local_epochs=1, batch_size=256, lr=1.0, momentum=0),
                    dp=DPSettings(noise_multiplier=0.0, max_grad_norm=0.5, grad_sample_mode=m), device="cpu",
                    generator=torch.Generator().manual_seed(0))
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return float((out[0] - out[1]).abs().max())


def run(*, epochs: int, batch_size: int = 512, examples: int = 6000) -> dict[str, Any]:
    """Every engine in a fresh process (so peak memory is its own), same data, same model."""
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        res = subprocess.run([sys.executable, "-m", "fedhaven.sim.bench.dp_cost", "--mode", mode, "--epochs",
                              str(epochs), "--batch-size", str(batch_size), "--examples", str(examples)],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            rows.append({"mode": mode, "error": res.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    plain = next(r for r in rows if r["mode"] == "plain")["median_epoch_s"]
    for r in rows:
        if "median_epoch_s" in r:
            r["ratio_to_plain"] = r["median_epoch_s"] / plain
    dp_rows = [r for r in rows if r["mode"] != "plain" and "median_epoch_s" in r]
    correct = [r for r in dp_rows if r["max_abs_diff_vs_hooks"] is not None and r["max_abs_diff_vs_hooks"] < 1e-4]
    fastest = min(correct, key=lambda r: r["median_epoch_s"])["mode"] if correct else None
    return {"batch_size": batch_size, "examples": examples, "epochs": epochs, "rows": rows,
            "fastest_correct": fastest}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--examples", type=int, default=6000)
    a = p.parse_args()
    print(json.dumps(_measure(a.mode, epochs=a.epochs, batch_size=a.batch_size, examples=a.examples)))

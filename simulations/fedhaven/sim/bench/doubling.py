"""Benchmark "doubling": one site's peak memory at N and 2N 224x224 RGB images, resident memory plus the page-cache
pages of the site's data files, each size in a fresh process (the "Large images" target: at most 1.10x).

A site's process decodes its ImageFolder tree into its cache, computes the default
model's front end, and trains rounds of DP-SGD (`SiteTrainer.fit`, the deployed
site's code). Beside it this process samples, every `interval` seconds, the
site's resident memory (VmRSS, its high-water mark VmHWM) and how many bytes of
the site's files are in the page cache (`fincore`, util-linux: the kernel's own
count through mincore), namely its image files and every file in its cache
folder. The peak (`peak_mib`) is the high-water mark plus the most cached pages
seen, each at its own moment: an upper bound, since a sample can miss a short
spike of resident memory that VmHWM keeps; `sampled_mib` is the largest sum at one
sample. The image files are pushed out of the page cache before each run, so both
sizes start alike.

`python -m fedhaven.sim.bench.doubling --images 300` measures 300 and 600 images in minutes; the
"Large images" section's `doubled_224` part measures the full 10-site simulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Paths per `fincore` call (an argument list stays far below the kernel's limit).
_FINCORE_BATCH = 2000


def resident_bytes(paths: Sequence[Path]) -> int:
    """Bytes of `paths` now in the page cache, as the kernel counts them (util-linux `fincore`, mincore(2)); files
    that vanish meanwhile count 0."""
    total = 0
    for i in range(0, len(paths), _FINCORE_BATCH):
        out = subprocess.run(["fincore", "--json", "--bytes", "--output", "RES",
                              *map(str, paths[i: i + _FINCORE_BATCH])], capture_output=True, text=True)
        if out.stdout.strip():
            total += sum(int(row["res"]) for row in json.loads(out.stdout)["fincore"])
    return total


def push_out_of_cache(paths: Sequence[Path]) -> None:
    """Write `paths` back to disk and drop their pages from the page cache (POSIX_FADV_DONTNEED)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def site_process(*, tree: Path, cache: Path, rounds: int, memory_mb: int) -> None:
    """The site's side (run in the child): decode, front end, `rounds` DP-SGD rounds; one JSON line per phase."""
    import torch

    import fedhaven.client.site as site_module
    from fedhaven.client.site import SiteTrainer
    from fedhaven.client.types import PrivacyState, Site, SiteInfo
    from fedhaven.shared.features import front_features
    from fedhaven.shared.memory import peak_rss_mb, rss_mb
    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import DPConfig, ModelConfig, RunConfig, TrainConfig
    from fedhaven.shared.sources import load_imagefolder
    from fedhaven.shared.task import task_for_round
    from fedhaven.shared.weights import get_weights

    torch.set_num_threads(1)
    started = time.perf_counter()
    passes: list[int] = []  # the most examples in one forward/backward pass, per round
    real_train = vars(site_module)["train_local"]

    def train_local(**kw: Any) -> Any:
        report = real_train(**kw)
        passes.append(report.physical_batch)
        return report

    vars(site_module)["train_local"] = train_local  # the site's own call, observed

    def phase(name: str, **more: Any) -> None:
        """One line for the phase that just ended: its own peak (the high-water mark is reset after each)."""
        print(json.dumps({"phase": name, "s": round(time.perf_counter() - started, 1), "rss_mib": rss_mb(),
                          "hwm_mib": peak_rss_mb(), **more}), flush=True)
        with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM to VmRSS (Linux >= 4.0)
            fh.write("5")

    phase("imports")
    data = load_imagefolder(tree, image_size=224, channels=3, cache_dir=cache)
    phase("decoded", images=len(data))
    run = RunConfig(rounds=rounds, model=ModelConfig(), train=TrainConfig(batch_size="auto", lr=1.0),
                    dp=DPConfig(target_epsilon=3.0), memory_mb=memory_mb)
    trainer = SiteTrainer(site=Site(info=SiteInfo(name="site", cache_dir=cache, memory_mb=memory_mb), data=data))
    model = build_model(cfg=run.model, spec=data.spec, seed=0)
    front_features(model=model, data=data, cache_dir=cache, memory_mb=memory_mb)  # what round 1 would do first
    phase("front end")
    weights, privacy = get_weights(model), PrivacyState()
    for r in range(1, rounds + 1):
        out = trainer.fit(task=task_for_round(run=run, server_round=r, input_spec=data.spec, classes=data.classes),
                          weights=weights, privacy=privacy)
        weights, privacy = out.weights, out.privacy
        phase(f"round {r}", examples=out.num_examples, physical_batch=passes[-1])


def measure(*, tree: Path, cache: Path, rounds: int = 2, memory_mb: int = 2048, interval: float = 0.2,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """One site process on `tree` with an empty `cache`, sampled until it exits: its peaks and phases."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    push_out_of_cache(files)
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "fedhaven.sim.bench.doubling", "--site", str(tree), str(cache),
                             "--rounds", str(rounds), "--memory-mb", str(memory_mb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peak: dict[str, float] = {"rss_mib": 0.0, "hwm_mib": 0.0, "images_cached_mib": 0.0, "cache_cached_mib": 0.0,
                              "rss_plus_cached_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            st = _status_kib(proc.pid)
            if st:
                rss, hwm = st.get("VmRSS", 0) / 1024, st.get("VmHWM", 0) / 1024
                imgs = resident_bytes(files) / 2**20
                ours = resident_bytes(sorted(p for p in cache.rglob("*") if p.is_file())) / 2**20
                for k, v in (("rss_mib", rss), ("hwm_mib", hwm), ("images_cached_mib", imgs),
                             ("cache_cached_mib", ours), ("rss_plus_cached_mib", rss + imgs + ours)):
                    peak[k] = max(peak[k], v)
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"site process failed ({proc.returncode}): {err[-3000:]}")
    phases = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # each phase's high-water mark also covers moments between samples
    peak["hwm_mib"] = max(peak["hwm_mib"], max((p["hwm_mib"] for p in phases), default=0.0))
    return {"images": len(files), **peak, "sampled_mib": peak["rss_plus_cached_mib"],
            "peak_mib": peak["hwm_mib"] + peak["images_cached_mib"] + peak["cache_cached_mib"], "phases": phases}


def trees(root: Path, *, images: int) -> tuple[Path, Path]:
    """Two ImageFolder trees of bundled MNIST upscaled to 224x224 RGB: `images` files, and twice as many (the same
    first ones, hard-linked)."""
    from fedhaven.sim.bench.large_images import _link_subset
    from fedhaven.sim.imagesets import upscaled_mnist

    full, half = root / f"mnist224-{2 * images}", root / f"mnist224-{images}"
    if not (full / "done").exists():
        upscaled_mnist(full / "train", split="train", count=2 * images, seed=0)
        (full / "done").write_text("")
    if not (half / "done").exists():
        _link_subset(full / "train", half / "train", images)
        (half / "done").write_text("")
    return half / "train", full / "train"


def run(*, images: int = 300, rounds: int = 2, memory_mb: int = 2048, work: Path | None = None,
        log: Callable[[str], None] = print, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One site at `images` and at twice as many, each from an empty cache; the ratio of their peaks."""
    work = Path(work or tempfile.mkdtemp(prefix="fedhaven-doubling-"))
    small, big = trees(work, images=images)
    out: dict[str, Any] = {"images": images, "rounds": rounds, "memory_mb": memory_mb}
    for key, tree in (("single", small), ("double", big)):
        cache = Path(tempfile.mkdtemp(prefix=f"cache-{key}-", dir=work))
        res = measure(tree=tree, cache=cache, rounds=rounds, memory_mb=memory_mb, env=env)
        log(f"doubling: {res['images']} images: resident peak {res['hwm_mib']:.0f} MiB, cached image files "
            f"{res['images_cached_mib']:.0f} MiB, cached cache files {res['cache_cached_mib']:.0f} MiB: peak "
            f"{res['peak_mib']:.0f} MiB (largest sum at one sample {res['sampled_mib']:.0f} MiB)")
        out[key] = res
    s, d = out["single"], out["double"]
    out["rss_ratio"] = d["hwm_mib"] / s["hwm_mib"]
    out["peak_ratio"] = d["peak_mib"] / s["peak_mib"]
    out["sampled_ratio"] = d["sampled_mib"] / s["sampled_mib"]
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fedhaven.sim.bench.doubling", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300, help="images of the smaller site (the other has twice as many)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--memory-mb", type=int, default=2048, help="the site's memory_mb")
    p.add_argument("--work", type=Path, help="where the image trees and caches go (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--site", nargs=2, type=Path, metavar=("TREE", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from fedhaven.shared.runtime import harden_environment

    harden_environment()
    if args.site:
        site_process(tree=args.site[0], cache=args.site[1], rounds=args.rounds, memory_mb=args.memory_mb)
        return 0
    res = run(images=args.images, rounds=args.rounds, memory_mb=args.memory_mb, work=args.work,
              log=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.images} -> {2 * args.images} images: peak (resident + cached pages) {res['peak_ratio']:.3f}x, "
              f"resident alone {res['rss_ratio']:.3f}x")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""What the numbers were measured on, and the peak memory of a whole process tree (Ray workers included)."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("torch", "flwr", "opacus", "ray", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[4], timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available(), "versions": versions,
            "commit": commit}


def _children() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> set[int]:
    parents = _children()
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return tree


def tree_pss_mib(root: int | None = None) -> float:
    """Proportional set size of `root` and all its descendants (shared pages counted once overall)."""
    return sum(_pss_kib(p) for p in _tree(os.getpid() if root is None else root)) / 1024


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    if words and words[0].startswith("ray::"):
        return words[0]
    return " ".join(Path(w).name if i == 0 or w.startswith("/") else w for i, w in enumerate(words[:3]))[:60]


class PeakMemory:
    """Samples a process tree in a thread: the peak of its summed PSS (`peak_mib`, shared pages once), the peak of
    its summed resident memory (`peak_rss_total_mib`), and each process's own peak resident memory (VmHWM: its
    high-water mark, file pages it mapped included) in `per_process` (name -> MiB, the largest of that name).

    With `cache_dir`, also the page-cache pages of the files under it (`peak_cached_mib`, sampled every
    `cache_every` seconds with util-linux `fincore`) and the largest sum of the tree's resident memory and those
    pages at one such sample (`peak_rss_plus_cached_mib`): the issue's "resident memory including touched cache
    pages" for the run's cache files."""

    def __init__(self, interval: float = 0.5, *, cache_dir: Path | None = None, cache_every: float = 5.0) -> None:
        import shutil

        self.interval = interval
        self.cache_dir = cache_dir if shutil.which("fincore") else None
        self.cache_every = cache_every
        self._cache_at = 0.0
        self.peak_cached_mib = 0.0
        self.peak_rss_plus_cached_mib = 0.0
        self.peak_mib = 0.0
        self.peak_rss_total_mib = 0.0
        self._hwm: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        pids = _tree(os.getpid())
        self.peak_mib = max(self.peak_mib, sum(_pss_kib(p) for p in pids) / 1024)
        total = 0.0
        for p in pids:
            st = _status_kib(p)
            total += st.get("VmRSS", 0) / 1024
            if "VmHWM" in st:
                name = self._hwm.get(p, (None, 0.0))[0] or _name(p)
                self._hwm[p] = (name, max(self._hwm.get(p, ("", 0.0))[1], st["VmHWM"] / 1024))
        self.peak_rss_total_mib = max(self.peak_rss_total_mib, total)
        if self.cache_dir is not None and time.monotonic() - self._cache_at >= self.cache_every:
            from fedhaven.sim.bench.doubling import resident_bytes

            self._cache_at = time.monotonic()
            files = sorted(p for p in self.cache_dir.rglob("*") if p.is_file()) if self.cache_dir.is_dir() else []
            cached = resident_bytes(files) / 2**20
            self.peak_cached_mib = max(self.peak_cached_mib, cached)
            self.peak_rss_plus_cached_mib = max(self.peak_rss_plus_cached_mib, total + cached)

    @property
    def per_process(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, mib in self._hwm.values():
            out[name] = max(out.get(name, 0.0), mib)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def largest_process_mib(self) -> float:
        return max((mib for _, mib in self._hwm.values()), default=0.0)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

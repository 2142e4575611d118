"""Child processes that never outlive their parent, stopped by process group; no Flower import."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: deliver SIGTERM to this child when the process that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: Sequence[str], *, env: dict[str, str], stdout: IO[Any] | int | None, cwd: str | Path | None = None,
          text: bool = False) -> subprocess.Popen[Any]:
    """Start `args` in its own process group (so its own children can be stopped with it) that dies with us."""
    return subprocess.Popen(list(args), stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=_die_with_parent, text=text,
                            bufsize=1 if text else -1)


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (what `spawn` started), ignoring one that is gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen[Any], *, timeout: float = 15) -> None:
    """Stop a child and everything it started: SIGTERM to its group, SIGKILL after `timeout`; reap it."""
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by its parent) counts as stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runs_with(pid: int, marker: str) -> bool:
    """Whether live process `pid` has `marker` (e.g. its state directory) on its command line: ours, not a reused
    pid. Where /proc is unavailable, any live process counts."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return marker in cmdline


def stop_pids(pids: Sequence[int], *, marker: str, timeout: float = 15) -> list[int]:
    """Stop leftover processes of ours (and their groups): SIGTERM, then SIGKILL. Returns those it found."""
    import time

    found = [p for p in pids if runs_with(p, marker)]
    for p in found:
        signal_group(p, signal.SIGTERM)
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in found):
        time.sleep(0.2)
    for p in found:
        if pid_alive(p):
            signal_group(p, signal.SIGKILL)
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    return found

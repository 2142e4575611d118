"""What the deploy benchmark runs with: processes stopped by PID, output lines timestamped as read, a SuperLink watcher.

Every process is started in its own session (process group) and stopped by
that group, then by the PIDs of whatever it had started (snapshotted just
before), so nothing outlives the benchmark, even on failure. The watcher reads
the SuperLink's own SQLite state (read-only, WAL) every few milliseconds and
keeps, per instruction message, when the server created it, when the
SuperNode claimed it and when the server pulled its reply.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fedhaven.shared.process import spawn, stop_group
from fedhaven.sim.bench.machine import _children
from fedhaven.sim.loopback import BIN, command_env, free_port

__all__ = ["BIN", "MessageWatcher", "Proc", "Seen", "child_env", "free_port", "wait_for_port"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def child_env(*, flwr_home: Path | None = None) -> dict[str, str]:
    """Hardened, no inherited PYTHONPATH (children run the installed code), no dependency installs, own FLWR_HOME."""
    env = command_env({"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")  # Flower starts flower-superexec, flwr-* from PATH
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def wait_for_port(port: int, *, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not open port {port} within {timeout:.0f} s; see {proc.log_path}")


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> dict[int, int | None]:
    """PIDs started (directly or not) by `root`, each with its start time, to tell it from a reused PID later."""
    parents = _children()
    found, frontier = set(), [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in found]
        found.update(kids)
        frontier.extend(kids)
    return {pid: _start_ticks(pid) for pid in found}


class Proc:
    """A child in its own process group (dying with us) whose output lines are kept with the time each was read."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.popen = spawn(args, env=env, stdout=subprocess.PIPE, cwd=cwd, text=True)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        with self.log_path.open("w") as log:
            for raw in self.popen.stdout:
                t = time.time()
                text = _ANSI.sub("", raw.rstrip("\n"))
                with self._lock:
                    self.lines.append((t, text))
                log.write(f"{t:.3f} {text}\n")
                log.flush()

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.lines)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, timeout: float = 30) -> None:
        """SIGTERM the group (the child stops what it started), SIGKILL after `timeout`, then leftovers by PID."""
        tree = descendants(self.popen.pid)  # before: children in sessions of their own are not in the group
        stop_group(self.popen, timeout=timeout)
        deadline = time.monotonic() + 10
        left = {p: s for p, s in tree.items() if s is not None and _start_ticks(p) == s}
        while left and time.monotonic() < deadline:  # children in sessions of their own, still stopping
            time.sleep(0.2)
            left = {p: s for p, s in left.items() if _start_ticks(p) == s}
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(timeout=5)


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


@dataclass
class Seen:
    """One instruction message as the watcher saw it in the SuperLink's state (wall-clock seconds)."""

    message_id: str
    run_id: int
    group: str
    node: int
    message_type: str
    created: float  # the ServerApp created it (just before pushing it)
    first_seen: float  # first poll that found it stored
    delivered: float | None = None  # a SuperNode claimed it (end of the SuperNode's idle wait)
    reply_id: str | None = None  # the reply's message id, when a poll caught the reply before the ServerApp did
    reply_claimed: float | None = None  # the ServerApp claimed the reply (or the message vanished, which it does then)


class MessageWatcher:
    """Polls a SuperLink database read-only: its messages, and when each stored object appeared and went.

    An object (a message or one of its arrays) is stored when its sender pushes it and deleted when
    its receiver confirms it has pulled everything: a reply's object vanishing is the moment the
    ServerApp holds that reply.
    """

    def __init__(self, db: Path, *, interval: float = 0.025) -> None:
        self.db, self.interval = db, interval
        self.seen: dict[str, Seen] = {}
        self.objects: dict[str, list[float | None]] = {}  # object id -> [first seen, gone]
        self.polls = 0
        self.errors: list[str] = []
        self._live: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MessageWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None:
                    if not self.db.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1, isolation_level=None)
                snapshot = self._read(conn)
                with self._lock:
                    self._update(*snapshot, time.time())
                self.polls += 1
            except sqlite3.Error as exc:  # e.g. tables not created yet
                if len(self.errors) < 20:
                    self.errors.append(str(exc))
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    @staticmethod
    def _read(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], dict[str, Any], set[str]]:
        conn.execute("BEGIN")  # one read transaction: a consistent snapshot of all three tables
        try:
            ins = conn.execute("SELECT message_id, run_id, group_id, dst_node_id, message_type, created_at, "
                               "delivered_at FROM message_ins WHERE dst_node_id != 0").fetchall()
            res = {r[0]: r[1:] for r in conn.execute(
                "SELECT reply_to_message_id, message_id, delivered_at FROM message_res").fetchall()}
            objects = {r[0] for r in conn.execute("SELECT object_id FROM objects").fetchall()}
        finally:
            conn.execute("ROLLBACK")
        return ins, res, objects

    def _update(self, ins: list[tuple[Any, ...]], res: dict[str, Any], objects: set[str], now: float) -> None:
        present = set()
        for mid, run_id, group, node, mtype, created, delivered in ins:
            present.add(mid)
            s = self.seen.get(mid)
            if s is None:
                s = self.seen[mid] = Seen(mid, int(run_id) % 2**64, str(group or ""), int(node) % 2**64,
                                          str(mtype or ""), float(created), now)  # stored as signed 64-bit
            if s.delivered is None and delivered:
                s.delivered = _ts(delivered)
            if mid in res:
                s.reply_id = s.reply_id or res[mid][0]
                if s.reply_claimed is None and res[mid][1]:
                    s.reply_claimed = _ts(res[mid][1])
        for s in self.seen.values():
            if s.reply_claimed is None and s.message_id not in present:
                s.reply_claimed = now  # Flower deletes a message when the ServerApp pulls its reply
        for oid in objects - self._live:
            if oid not in self.objects:
                self.objects[oid] = [now, None]
        for oid in self._live - objects:
            self.objects[oid][1] = now
        self._live = objects

    def messages(self, run_id: int) -> list[Seen]:
        with self._lock:
            return sorted((replace(s) for s in self.seen.values() if s.run_id == run_id), key=lambda s: s.created)

    def object_spans(self, ids: set[str]) -> dict[str, list[float | None]]:
        """[first seen, gone] of each of `ids` the watcher saw."""
        with self._lock:
            return {i: list(self.objects[i]) for i in ids if i in self.objects}

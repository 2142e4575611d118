"""Runs the coordinator: Flower's SuperLink and SuperExec on loopback, the Fleet front for sites, site registrations."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any

from fedhaven.server.latency import LATENCY_ENV, NO_FORK
from fedhaven.server.provision import CoordinatorConfig, StateDir
from fedhaven.server.seam.control import Control
from fedhaven.shared.process import pid_alive, runs_with, spawn, stop_group, stop_pids
from fedhaven.shared.runtime import hardened_env

__all__ = ["Coordinator", "CoordinatorError", "Runtime", "clean_leftovers", "control_for", "leftover_parts",
           "pid_alive", "sync_sites"]

log = logging.getLogger("fedhaven.server")


class CoordinatorError(RuntimeError):
    """The coordinator could not start or stopped unexpectedly; the message names the part."""


def child_env(state: StateDir, *, latency: bool = True) -> dict[str, str]:
    """Environment of every process the coordinator starts: no telemetry, no dependency installs, own FLWR_HOME,
    and whether its ServerApps run with fedhaven's speed shims."""
    env = {**hardened_env(), "FLWR_HOME": str(state.flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", LATENCY_ENV: "1" if latency else "0"}
    bindir = str(Path(sys.executable).parent)  # Flower starts flower-superexec and flwr-serverapp from PATH
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    return env


def wait_for_port(host: str, port: int, *, timeout: float, proc: subprocess.Popen[Any] | None = None,
                  what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CoordinatorError(f"{what} exited with code {proc.returncode} while starting; see its log")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise CoordinatorError(f"{what} did not open {host}:{port} within {timeout:.0f} s")


@dataclass(frozen=True)
class Runtime:
    """coordinator.json: what is running, for `fl-server status` and `fl-server stop`."""

    pid: int
    superlink_pid: int
    superexec_pid: int
    control_address: str  # unix:<socket>: the Control API, for the operator's account only
    listen: str
    insecure: bool
    started: float
    runtime_address: str = ""  # 127.0.0.1:<port>: the Runtime API front, for Flower's executor

    def save(self, state: StateDir) -> None:
        state.runtime_file.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, state: StateDir) -> Runtime | None:
        if not state.runtime_file.exists():
            return None
        data = json.loads(state.runtime_file.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # a file from an older version still reads


def control_for(state: StateDir) -> Control:
    """The operator's Control API connection: the SuperLink's Unix socket, which only the operator's account opens."""
    return Control(address=f"unix:{state.superlink_socket}", ca_cert=None, flwr_home=state.flwr_home)


def wait_for_socket(path: Path, *, timeout: float, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CoordinatorError(f"{what} exited with code {proc.returncode} while starting; see its log")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(path))
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise CoordinatorError(f"{what} did not open {path} within {timeout:.0f} s")


def sync_sites(*, state: StateDir, control: Control) -> list[str]:
    """Make the SuperLink's allow-list match the registry: register pending sites, unregister revoked ones."""
    live = {n["node_id"] for n in control.nodes() if "unregistered" not in str(n["status"]).lower()}
    notes = []
    for rec in state.sites().values():
        if rec.status == "pending" or (rec.status == "registered" and rec.node_id not in live):
            node_id = control.register_site(public_key=state.site_public_key(rec.name), name=rec.name)
            state.update_site(replace(rec, status="registered", node_id=node_id))
            notes.append(f"registered site {rec.name} (node {node_id}, key {rec.fingerprint})")
        elif rec.status == "revoked" and rec.node_id is not None:
            if rec.node_id in live:
                control.unregister_site(node_id=rec.node_id)
            state.update_site(replace(rec, node_id=None))
            notes.append(f"revoked site {rec.name}: its key is no longer accepted")
    return notes


class Coordinator:
    """Starts and supervises the coordinator's three processes; stops them all by PID."""

    def __init__(self, *, state: StateDir, cfg: CoordinatorConfig, insecure: bool) -> None:
        self.state, self.cfg, self.insecure = state, cfg, insecure
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.logs = state.root / "logs"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[Any]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = spawn(args, stdout=out, env=child_env(self.state, latency=self.cfg.latency), cwd=self.state.root)
        self.procs[name] = proc
        return proc

    def executor_command(self) -> list[str]:
        """Flower's SuperExec (`seam.superexec`): with the latency shims, its ServerApps forked warm; without, each
        started fresh as Flower does, at Flower's task polling (the run token on no command line either way)."""
        command = [sys.executable, "-m", "fedhaven.server.seam.superexec"]
        return command if self.cfg.latency else [*command, NO_FORK]

    def door_options(self) -> list[str]:
        """The doors' latency options: Flower's timings (nothing held) when the shims are off."""
        return [] if self.cfg.latency else ["--pull-hold", "0", "--settle", "0"]

    def superlink_command(self) -> list[str]:
        """Flower's SuperLink behind fedhaven's doors (`fedhaven.server.superlink`), with server.toml's limits."""
        st, port = self.state, self.cfg.superlink_port
        # Flower's SuperLink, on a Unix socket only this account can enter. Flower requires TLS certificates
        # for SuperNode authentication; sites get TLS at the TCP listeners, the socket itself carries plain HTTP.
        tls = (["--insecure"] if self.insecure else
               ["--ssl-ca-certfile", str(st.ca_cert), "--ssl-certfile", str(st.server_cert),
                "--ssl-keyfile", str(st.server_key), "--enable-supernode-auth"])
        return [
            sys.executable, "-m", "fedhaven.server.superlink", "--uds", str(st.superlink_socket),
            "--listen", self.cfg.listen, "--runtime-listen", f"127.0.0.1:{port}",
            *([] if self.insecure else ["--certfile", str(st.server_cert), "--keyfile", str(st.server_key)]),
            *tls, "--database", str(st.database), "--disable-runtime-dependency-installation",
            "--isolation", "process", "--superexec-auth-secret-file", str(st.secret_file),
            *self.door_options(), *self.cfg.limits.options()]

    def start(self) -> Runtime:
        st, port = self.state, self.cfg.superlink_port
        st.sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(st.sockets, 0o700)
        host, _, fport = self.cfg.listen.rpartition(":")
        superlink = self._spawn("superlink", self.superlink_command())
        wait_for_socket(st.superlink_socket, timeout=60, proc=superlink, what="flower-superlink")
        wait_for_port("127.0.0.1" if host in ("0.0.0.0", "") else host, int(fport), timeout=60, proc=superlink,
                      what="the Fleet listener")
        wait_for_port("127.0.0.1", port, timeout=60, proc=superlink, what="the Runtime listener")
        superexec = self._spawn("superexec", [
            *self.executor_command(), "--runtime-api-address", f"127.0.0.1:{port}",
            *(["--insecure"] if self.insecure else ["--root-certificates", str(st.ca_cert)]),
            "--superexec-auth-secret-file", str(st.secret_file), "--parent-pid", str(superlink.pid)])
        if not self.insecure:
            control = control_for(st)
            try:
                for note in sync_sites(state=st, control=control):
                    log.info("%s", note)
            finally:
                control.close()
        runtime = Runtime(pid=os.getpid(), superlink_pid=superlink.pid, superexec_pid=superexec.pid,
                          control_address=f"unix:{st.superlink_socket}",
                          runtime_address=f"127.0.0.1:{port}", listen=self.cfg.listen,
                          insecure=self.insecure, started=time.time())
        runtime.save(st)
        return runtime

    def wait(self) -> int:
        """Block until SIGTERM/SIGINT or a child dies; then stop everything. Returns an exit code."""
        stop = {"signal": False}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        code = 0
        while not stop["signal"]:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                log.error("%s exited unexpectedly (see %s); stopping the coordinator", dead[0],
                          self.logs / f"{dead[0]}.log")
                code = 1
                break
            time.sleep(0.5)
        self.stop()
        return code

    def stop(self) -> None:
        for name in ("superexec", "superlink"):
            proc = self.procs.get(name)
            if proc is not None:
                stop_group(proc)  # the child and what it started (e.g. ServerApp processes)
        self.state.runtime_file.unlink(missing_ok=True)


def leftover_parts(state: StateDir, rt: Runtime) -> dict[str, int]:
    """Parts of a coordinator whose `fl-server start` is gone but which still run (after a crash or SIGKILL)."""
    if pid_alive(rt.pid):
        return {}
    parts = {"superlink": rt.superlink_pid, "executor": rt.superexec_pid}
    return {name: pid for name, pid in parts.items() if runs_with(pid, str(state.root))}


def clean_leftovers(state: StateDir, rt: Runtime) -> list[int]:
    """Stop what a crashed `fl-server start` left running (only processes started for this state directory)."""
    stopped = stop_pids(list(leftover_parts(state, rt).values()), marker=str(state.root))
    state.runtime_file.unlink(missing_ok=True)
    return stopped

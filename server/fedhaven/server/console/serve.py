"""Serves the operator's console, metrics and health endpoints from `fl-server start`, with uvicorn, in a thread:
always on the operator's Unix socket beside the SuperLink's (reach it through `ssh -L`), and on `--operator-listen`
HOST:PORT when asked (token required; for a browser on the coordinator's host, Prometheus and Kubernetes probes).
Never on the sites' Fleet port."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedhaven.server.console.app import ConsoleSettings, build_app
from fedhaven.server.provision import StateDir

log = logging.getLogger("fedhaven.server")
TOKEN_FILE = "operator.token"
OPERATOR_FILE = "operator.json"  # where the console answers now, for the operator's tools


def operator_socket(state: StateDir) -> Path:
    return state.sockets / "operator.sock"


def operator_token(state: StateDir) -> str:
    """The operator token (created on first use, 0600): what a TCP caller of the console or /metrics must show."""
    path = state.root / TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def check_listen(listen: str, *, fleet: str) -> tuple[str, int]:
    """HOST:PORT of the operator's TCP listener; never the sites' port."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--operator-listen: expected HOST:PORT (e.g. 127.0.0.1:9094), got {listen!r}")
    fhost, _, fport = fleet.rpartition(":")
    if int(port) != 0 and port == fport and (host == fhost or "0.0.0.0" in (host, fhost)):
        raise ValueError(f"--operator-listen {listen}: that is the sites' Fleet port ({fleet}); pick another")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class OperatorServer:
    """The operator's listeners, started by `start()` and ended by `stop()`; `url` is the TCP one's address."""

    def __init__(self, *, state: StateDir, listen: str | None, fleet: str,
                 ready: Callable[[], list[str]] = list) -> None:
        self.state, self.ready = state, ready
        self.tcp = check_listen(listen, fleet=fleet) if listen else None
        self.url: str | None = None
        self._servers: list[Any] = []
        self._thread: threading.Thread | None = None

    def start(self, *, timeout: float = 30) -> None:
        import uvicorn

        token = operator_token(self.state)
        common: dict[str, Any] = {"log_level": "warning", "access_log": False, "server_header": False,
                                  "lifespan": "off", "timeout_keep_alive": 5}
        sock = operator_socket(self.state)
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(sock.parent, 0o700)  # the boundary of the socket, which asks for no token
        sock.unlink(missing_ok=True)  # left by a killed coordinator
        local = build_app(ConsoleSettings(state=self.state, token=token, require_token=False, ready=self.ready))
        self._servers = [uvicorn.Server(uvicorn.Config(local, uds=str(sock), **common))]
        if self.tcp is not None:
            host, port = self.tcp
            if not is_loopback(host):
                log.warning("WARNING: the operator console and /metrics listen on %s:%d, beyond this host: plain "
                            "HTTP, behind the operator token only. Keep that port off every Service and firewall "
                            "it to the operator's network; /healthz and /readyz answer anyone", host, port)
            remote = build_app(ConsoleSettings(state=self.state, token=token, require_token=True, hosts=(host,),
                                               ready=self.ready))
            self._servers.append(uvicorn.Server(uvicorn.Config(remote, host=host, port=port, **common)))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="operator-console",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(s.started for s in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the operator console could not start on "
                                   f"{self.tcp and ':'.join(map(str, self.tcp))} (is the port in use?)")
            time.sleep(0.05)
        if self.tcp is not None:
            bound = self._servers[1].servers[0].sockets[0].getsockname()
            self.url = f"http://{self.tcp[0]}:{bound[1]}"
        info = {"socket": str(sock), "url": self.url, "token_file": str(self.state.root / TOKEN_FILE)}
        (self.state.root / OPERATOR_FILE).write_text(json.dumps(info, indent=2))

    async def _serve(self) -> None:
        await asyncio.gather(*(s.serve() for s in self._servers), return_exceptions=True)

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        (self.state.root / OPERATOR_FILE).unlink(missing_ok=True)
        operator_socket(self.state).unlink(missing_ok=True)

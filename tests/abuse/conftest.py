"""Attacks on the coordinator's public Fleet port, on loopback: the attack clients, the SuperLink's meters, and the
ABUSE.md record.

`make abuse` runs every test here and writes ABUSE.md (`--abuse PATH`): for each attack, what was expected, what
was observed in that run (the SuperLink's memory and file descriptors during and after, how long the door held each
attacker, the honest run's round time), how long it took, and the result. Every attack loop is bounded in count
and in time. Attackers connect from their own loopback addresses (127.0.0.x, x >= 10) so that the per-source
connection cap meets them and not the honest sites (127.0.0.1). `make test` runs the tests marked `abuse_smoke`.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import statistics
import threading
import time
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

MB = 1 << 20


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/abuse/" in str(item.fspath):
            item.add_marker(pytest.mark.abuse)


# ----- meters ---------------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Samples a process's RSS (MB) and fds every `every` seconds in a thread, between `with` and its end."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.rss: list[float] = []
        self.fds: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rss.append(rss_mb(self.pid))
            self.fds.append(fds(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> Meter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def settle_rss(pid: int, *, near: float, within: float = 100.0, timeout: float = 20.0) -> float:
    """The RSS once it is back within `within` MB of `near`, or what it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        now = rss_mb(pid)
        if now - near <= within or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


# ----- attack clients ---------------------------------------------------------------------------------------------

@dataclass
class Door:
    """Where the attackers knock: host, port, and the TLS context (None: plain HTTP)."""

    port: int
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    server_name: str = "localhost"


@dataclass
class Tally:
    """What the attackers saw: one entry per connection."""

    held: list[float] = field(default_factory=list)  # seconds from the connection's being established until let go
    statuses: dict[str, int] = field(default_factory=dict)  # first line's status code (or 'closed') -> count
    sent: list[int] = field(default_factory=list)  # bytes each connection managed to send

    def note(self, status: str, held: float, sent: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.held.append(held)
        self.sent.append(sent)

    @property
    def connections(self) -> int:
        return len(self.held)

    def worst(self) -> float:
        return max(self.held, default=0.0)

    def summary(self) -> str:
        codes = ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items()))
        return (f"{self.connections} connections ({codes}), held at most {self.worst():.1f} s"
                f" (median {statistics.median(self.held) if self.held else 0:.2f} s)")


def source(i: int) -> str:
    """The i-th attacker's own loopback address (127.0.0.10 upwards, then 127.0.1.x ...)."""
    n = 10 + i
    return f"127.0.{n // 250}.{n % 250 + 1}" if n >= 250 else f"127.0.0.{n}"


async def _open(door: Door, src: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(
        door.host, door.port, ssl=door.tls, server_hostname=door.server_name if door.tls else None,
        local_addr=(src, 0)), timeout=15)


async def _open_or_refused(door: Door, src: str,
                           tally: Tally) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection, or None with the refusal noted (connect or TLS handshake failed)."""
    t = time.monotonic()
    try:
        return await _open(door, src)
    except (OSError, TimeoutError, ssl.SSLError):
        tally.note("refused", time.monotonic() - t, 0)
        return None


async def _status(reader: asyncio.StreamReader, timeout: float) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
    except (TimeoutError, OSError, ssl.SSLError):
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 and line.startswith(b"HTTP/") else "closed"


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout=2)
    except (TimeoutError, OSError, ssl.SSLError):
        pass


async def big_body(door: Door, src: str, tally: Tally, *, path: str = "/v1/fleet/push-object",
                   declared: int = 150 * MB, headers: bytes = b"", chunk: int = MB, max_send: int = 150 * MB) -> None:
    """One connection: headers announcing a `declared` body, then the body in `chunk`s until the door stops it."""
    if (conn := await _open_or_refused(door, src, tally)) is None:
        return
    reader, writer = conn
    t, sent = time.monotonic(), 0  # held: from the connection's being established (TLS handshake done)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                     b"application/protobuf\r\n" + headers + b"Content-Length: " + str(declared).encode()
                     + b"\r\n\r\n")
        payload = os.urandom(chunk)
        status = asyncio.ensure_future(_status(reader, 120))
        while sent < max_send and not status.done():
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), timeout=30)
            sent += chunk
    except (OSError, TimeoutError, ssl.SSLError):
        pass
    tally.note(await status, time.monotonic() - t, sent)
    await _finish(writer)


async def slow_headers(door: Door, src: str, tally: Tally, *, every: float = 0.5, limit: float = 120.0) -> None:
    """One connection: a request line, then a header byte every `every` seconds, never ending its headers."""
    if (conn := await _open_or_refused(door, src, tally)) is None:
        return
    reader, writer = conn
    t, sent = time.monotonic(), 0  # held: from the connection's being established (TLS handshake done)
    status = asyncio.ensure_future(_status(reader, limit))
    try:
        writer.write(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        while not status.done() and time.monotonic() - t < limit:
            writer.write(b"a")
            await writer.drain()
            sent += 1
            await asyncio.wait([status], timeout=every)
    except (OSError, ssl.SSLError):
        pass
    tally.note(await status, time.monotonic() - t, sent)
    await _finish(writer)


async def huge_headers(door: Door, src: str, tally: Tally, *, size: int = 48 * MB) -> None:
    """One connection: a header line of `size` bytes, sent as fast as the door takes it."""
    reader, writer = await _open(door, src)
    t, sent = time.monotonic(), 0
    status = asyncio.ensure_future(_status(reader, 60))
    try:
        writer.write(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\nX-Huge: ")
        block = b"a" * MB
        while sent < size and not status.done():
            writer.write(block)
            await asyncio.wait_for(writer.drain(), timeout=30)
            sent += len(block)
    except (OSError, TimeoutError, ssl.SSLError):
        pass
    tally.note(await status, time.monotonic() - t, sent)
    await _finish(writer)


async def until(stop_at: float, attack, *args, **kwargs) -> None:  # noqa: ANN001 - a coroutine function
    """Repeat `attack(*args)` (one connection each) until `stop_at` (event-loop time)."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        await attack(*args, **kwargs)


class Signer:
    """A registered site's key used by an attacker: Flower's three authentication headers for the current time."""

    def __init__(self, key_file: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        self.key = serialization.load_ssh_private_key(key_file.read_bytes(), password=None)
        self.pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def headers(self) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        sig = self.key.sign(stamp.encode(), ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
        return (b"flwr-public-key: " + b64encode(self.pem) + b"\r\nflwr-timestamp: " + stamp.encode()
                + b"\r\nflwr-signature: " + b64encode(sig) + b"\r\n")


async def signed_post(door: Door, src: str, tally: Tally, *, path: str, body: bytes, headers: bytes,
                      declared: int | None = None) -> None:
    """One whole request with `headers` (a Signer's, or replayed ones) on a fresh connection; its status is noted
    with ' (door)' when the fedhaven door answered it, bare when Flower's app did."""
    t = time.monotonic()
    length = len(body) if declared is None else declared
    try:
        reader, writer = await _open(door, src)
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     b"Content-Type: application/protobuf\r\nAccept: application/protobuf\r\n" + headers
                     + b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + body)
        await asyncio.wait_for(writer.drain(), timeout=30)
        reply = await asyncio.wait_for(reader.read(), timeout=30)
        await _finish(writer)
        parts = reply.split(b" ", 2)
        status = parts[1].decode() if reply.startswith(b"HTTP/") and len(parts) > 1 else "closed"
        status += " (door)" if b"fedhaven: " in reply else ""
    except (OSError, TimeoutError, ssl.SSLError):
        status = "refused"
    tally.note(status, time.monotonic() - t, len(body))


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The attack clients and meters above, for the tests (pytest's importlib mode shares helpers by fixture)."""
    return SimpleNamespace(Door=Door, Tally=Tally, Meter=Meter, Signer=Signer, source=source, big_body=big_body,
                           slow_headers=slow_headers, huge_headers=huge_headers, signed_post=signed_post,
                           until=until, rss_mb=rss_mb, fds=fds, cpu_s=cpu_s, settle_rss=settle_rss, MB=MB)


@pytest.fixture(scope="module")
def fed():
    """One coordinator and three sites for the whole suite, plus `mallory`: a registered key no SuperNode uses
    (the attacker who holds a site's key)."""
    from fedhaven.sim.loopback import LoopbackFederation

    f = LoopbackFederation.in_temp(prefix="fedhaven-abuse-")
    try:
        f.start()
        f.site_dirs["mallory"] = f.add_site_dir("mallory", register=True)
        yield f
    finally:
        f.site_dirs.pop("mallory", None)
        f.stop()


@pytest.fixture(scope="module")
def mallory(fed) -> tuple[Signer, int]:
    """The attacker holding a registered key: its signer and the node id the SuperLink gave that key."""
    import json

    from fedhaven.sim.loopback import cli

    res = cli("fl-server", "site", "list", "--json", "--state-dir", str(fed.state))
    node = next(int(s["node_id"]) for s in json.loads(res.stdout)["sites"] if s["name"] == "mallory")
    return Signer(fed.site_dirs["mallory"] / "site.key"), node


@pytest.fixture(scope="module")
def door(fed) -> Door:
    ctx = ssl.create_default_context(cafile=str(fed.state / "pki" / "ca.pem"))
    return Door(port=fed.front, tls=ctx)


@pytest.fixture(scope="module")
def superlink(fed) -> int:
    rt = fed.runtime()
    assert rt is not None
    return int(rt["superlink_pid"])

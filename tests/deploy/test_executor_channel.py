"""The channel between a site's executor and its SuperNode: a process that took the loopback port first gets nothing.

Issue #22 (finding 5): the executor talked plain HTTP to 127.0.0.1:clientappio_port and
never checked who answered, so a local account that bound the port first received its
signed AcquireTask requests and kept the site from starting. Now `fl-client start`
reports a taken port before it starts anything, and the executor speaks TLS trusting only
the certificate made for this start's SuperNode (Flower's own `--ssl-*` flags), whose key
is the site account's alone: a squatter gets a handshake it cannot complete, never a request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fedhaven.client.cli import start
from fedhaven.client.site_config import CoordinatorLink, SiteConfig
from fedhaven.shared.crypto import make_ca, make_server_cert
from fedhaven.sim.loopback import command_env, free_port

#: What only a request of the executor carries: an HTTP request line, the SuperExec signature, the RPC's path.
REQUEST_MARKS = (b"POST ", b"flwr-superexec-signature", b"AcquireTask", b"/v1/")


class Squatter:
    """A process that took a port first: it accepts every connection, records every byte it receives, and answers
    like an HTTP server (plain), or completes TLS with a certificate of its own for 127.0.0.1 (tls)."""

    def __init__(self, port: int, *, tls_dir: Path | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.received = bytearray()
        self.connections = 0
        self.handshakes = 0
        self.ctx: ssl.SSLContext | None = None
        if tls_dir is not None:
            own = make_server_cert(ca=make_ca(common_name="squatter"), dns_names=[], ips=["127.0.0.1"])
            (tls_dir / "squatter.pem").write_bytes(own.cert_pem)
            (tls_dir / "squatter.key").write_bytes(own.key_pem)
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(tls_dir / "squatter.pem", tls_dir / "squatter.key")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def requests(self) -> int:
        return sum(bytes(self.received).count(m) for m in REQUEST_MARKS[:1])

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._take, args=(conn,), daemon=True).start()

    def _take(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            if self.ctx is not None:
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the executor did not trust this certificate: no application data can follow
                self.handshakes += 1
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.received += data
                if b"\r\n\r\n" in data or self.ctx is None:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def site(tmp_path):
    """A site's config file, state dir (0700, as fl-client start makes it), shared secret and this start's TLS."""
    (tmp_path / "site.toml").write_text('name = "a"\n[coordinator]\ninsecure = true\n[data]\nsource = "digits"\n')
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return tmp_path / "site.toml", start.executor_secret(state), start.runtime_tls(state)


def _executor(config: Path, secret: Path, port: int, ca: Path | None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "fedhaven.client.executor", "--config", str(config),
            "--runtime-api-address", f"127.0.0.1:{port}", "--secret-file", str(secret)]
    args += ["--runtime-ca-file", str(ca)] if ca is not None else []
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=command_env())


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_a_squatter_on_the_executor_s_port_receives_no_request(site, tmp_path, kind):
    config, secret, tls = site
    port = free_port()
    squatter = Squatter(port, tls_dir=tmp_path if kind == "tls" else None)
    proc = _executor(config, secret, port, tls.ca)
    try:
        code = proc.wait(timeout=120)  # it stops by itself
    finally:
        out = _stop(proc)
        squatter.close()
    assert squatter.connections >= 1  # it did reach the port, and stopped there
    assert squatter.handshakes == 0
    assert not any(m in squatter.received for m in REQUEST_MARKS), bytes(squatter.received[:200])
    if kind == "plain":
        assert squatter.received.startswith(b"\x16\x03")  # all it got: a TLS ClientHello
    assert code == 3, out
    assert f"what answers at 127.0.0.1:{port} is not this site's SuperNode" in out, out
    assert "sent it no request" in out


def test_without_the_pinned_certificate_the_squatter_did_receive_signed_requests(site):
    """The test's squatter would see the leak: the executor as it was (plain HTTP) hands it signed claims."""
    config, secret, _ = site
    port = free_port()
    squatter = Squatter(port)
    proc = _executor(config, secret, port, None)
    try:
        deadline = time.monotonic() + 120
        while b"flwr-superexec-signature" not in squatter.received and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        out = _stop(proc)
        squatter.close()
    assert b"flwr-superexec-signature" in squatter.received, out
    assert b"AcquireTask" in squatter.received or b"acquire-task" in squatter.received.lower()


def test_the_executor_reaches_its_own_supernode_over_tls_and_nothing_else(site, tmp_path):
    """Flower's SuperNode, started with `fl-client start`'s arguments, serves the executor's pinned TLS; a client
    pinned to any other CA is refused in the handshake."""
    from fedhaven.client.seam import runtime as flower

    config, secret, tls = site
    port = free_port()
    cfg = SiteConfig(name="a", clientappio_port=port,
                     coordinator=CoordinatorLink(address=f"127.0.0.1:{free_port()}", insecure=True))
    env = command_env({"FLWR_HOME": str(tmp_path / "flwr-home")})
    node = subprocess.Popen(start.supernode_args(cfg, config, secret, tls), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while start.runtime_port_problem(port, config) is None:  # until the SuperNode holds its port
            assert node.poll() is None and time.monotonic() < deadline, _stop(node)
            time.sleep(0.2)
        assert start.runtime_port_problem(port, config).startswith(f"another process holds 127.0.0.1:{port}")
        client = flower.executor_client(address=f"127.0.0.1:{port}", secret=secret.read_bytes(), component="test",
                                        ca=tls.ca.read_bytes())
        try:
            assert flower.acquire_task(client=client, task_types=[flower.CLIENT_APP_TASK]) is None  # no task yet
        finally:
            flower.close_client(client=client)
        other = flower.executor_client(address=f"127.0.0.1:{port}", secret=secret.read_bytes(), component="test",
                                       ca=make_ca(common_name="another").cert_pem)
        try:
            with pytest.raises(Exception) as caught:
                flower.acquire_task(client=other, task_types=[flower.CLIENT_APP_TASK])
            assert (flower.tls_failure(caught.value) or "").startswith("certificate not trusted"), caught.value
        finally:
            flower.close_client(client=other)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        _stop(node)


def test_fl_client_start_reports_a_taken_port_and_starts_nothing(tmp_path, monkeypatch):
    port = free_port()
    (tmp_path / "site.toml").write_text(f'name = "a"\nclientappio_port = {port}\n[coordinator]\ninsecure = true\n'
                                        '[data]\nsource = "digits"\n')
    monkeypatch.setattr(start, "check_site", lambda cfg: (None, None))
    monkeypatch.setattr(start, "prepare", lambda cfg, data: None)
    monkeypatch.setattr(start, "preflight", lambda cfg: None)
    started: list[list[str]] = []
    monkeypatch.setattr(start, "spawn", lambda args, **kw: started.append(args))
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    holder.setblocking(False)
    try:
        with pytest.raises(RuntimeError) as caught:
            start.run(argparse.Namespace(config=tmp_path / "site.toml"))
        with pytest.raises(BlockingIOError):
            holder.accept()  # nobody ever connected to it
    finally:
        holder.close()
    text = str(caught.value)
    assert f"another process holds 127.0.0.1:{port} (address already in use)" in text
    assert "clientappio_port" in text and f"sport = :{port}" in text and "sent that process no request" in text
    assert started == []
    assert not (tmp_path / "state" / start.SITE_RUNTIME).exists()
    assert start.runtime_port_problem(port, tmp_path / "site.toml") is None  # free again: the start goes on


def test_a_port_taken_after_the_check_stops_the_site_and_is_reported(tmp_path, monkeypatch):
    """The race: another process takes the port between `fl-client start`'s check and the SuperNode's bind. The real
    SuperNode cannot bind, the real executor meets the squatter over TLS and sends it nothing, and the start ends
    naming the port."""
    port = free_port()
    (tmp_path / "site.toml").write_text(f'name = "a"\nclientappio_port = {port}\n[coordinator]\ninsecure = true\n'
                                        f'address = "127.0.0.1:{free_port()}"\n[data]\nsource = "digits"\n')
    monkeypatch.setattr(start, "check_site", lambda cfg: (None, None))
    monkeypatch.setattr(start, "prepare", lambda cfg, data: None)
    monkeypatch.setattr(start, "preflight", lambda cfg: None)
    real, checks = start.runtime_port_problem, []

    def racy(port: int, config_path: Path) -> str | None:
        checks.append(port)
        return None if len(checks) == 1 else real(port, config_path)  # the first check passed; then it was taken

    monkeypatch.setattr(start, "runtime_port_problem", racy)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    squatter = Squatter(port)
    try:
        with pytest.raises(RuntimeError) as caught:
            start.run(argparse.Namespace(config=tmp_path / "site.toml"))
    finally:
        squatter.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert f"another process holds 127.0.0.1:{port} (address already in use)" in str(caught.value)
    assert not any(m in squatter.received for m in REQUEST_MARKS), bytes(squatter.received[:200])
    assert not (tmp_path / "state" / start.SITE_RUNTIME).exists()


def test_each_start_makes_its_own_runtime_certificate_readable_by_the_site_alone(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    first, second = start.runtime_tls(state), start.runtime_tls(state)
    assert first == second  # the same files, rewritten
    assert stat.S_IMODE(os.stat(state / start.RUNTIME_TLS).st_mode) == 0o700
    for path in (second.ca, second.cert, second.key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    from fedhaven.shared.crypto import cert_names, issued_by

    assert issued_by(second.cert.read_bytes(), second.ca.read_bytes())
    assert "127.0.0.1" in cert_names(second.cert.read_bytes())[1]
    old_ca = make_ca(common_name="a previous start").cert_pem
    assert not issued_by(second.cert.read_bytes(), old_ca)
    assert b"PRIVATE KEY" not in second.ca.read_bytes()  # the CA's key is never written


def test_another_account_cannot_read_the_runtime_key_or_its_folder():
    """In a folder other accounts may traverse (0755), uid nobody tries to read this start's Runtime API key and to
    list its folder: without the key it cannot answer the executor's TLS as the SuperNode."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another account")
    root = Path(tempfile.mkdtemp(prefix="fedhaven-runtime-tls-"))
    old = os.umask(0o077)  # as fl-client runs
    try:
        root.chmod(0o755)
        state = root / "state"
        state.mkdir(mode=0o700)
        tls = start.runtime_tls(state)
        probe = ("import os, sys\nfor p in sys.argv[1:]:\n    try:\n"
                 "        open(p, 'rb').read() if os.path.basename(p).endswith('.pem') else os.listdir(p)\n"
                 "        print('read', p)\n    except PermissionError:\n        print('denied')\n")
        targets = [str(tls.key), str(tls.key.parent), str(state)]
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I",
                              "-c", probe, *targets], capture_output=True, text=True, timeout=60)
        assert res.stdout.split() == ["denied"] * 3, res.stdout + res.stderr
    finally:
        os.umask(old)
        shutil.rmtree(root)

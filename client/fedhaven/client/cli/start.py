"""`fl-client start`: check, verify the coordinator's TLS identity, run Flower's SuperNode and the site's executor."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from fedhaven.client.cli.check import check_site
from fedhaven.client.deployment import SITE_CONFIG_KEY
from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.shared.crypto import fingerprint, write_private
from fedhaven.shared.runtime import HARDENED_ENV

log = logging.getLogger("fedhaven.client")

#: What Flower's SuperNode prints when the coordinator rejects it, and what it means for the site's IT.
KNOWN_FAILURES = {
    "Failed to activate SuperNode": "the coordinator does not accept this site's key{fp}: send site.pub to the "
                                    "operator (`fl-server site add <name> --public-key site.pub`), or it was revoked",
    "code: 2001": "the coordinator requires site authentication and this site sent no key: set private_key",
    "CERTIFICATE_VERIFY_FAILED": "the coordinator's TLS certificate does not verify against ca_cert",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("site.toml"), help="the site's configuration file")


def preflight(cfg: SiteConfig, *, timeout: float = 10.0) -> None:
    """Connect once to the coordinator and verify its certificate against the site's CA, with a clear error."""
    host, _, port = cfg.coordinator.address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise RuntimeError(f"cannot reach the coordinator at {cfg.coordinator.address} ({exc.strerror or exc}); "
                           f"is it running, and does the firewall allow this site?") from None
    with sock:
        if cfg.coordinator.insecure:
            return
        ctx = ssl.create_default_context(cafile=cfg.coordinator.ca_cert)
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as exc:
            raise RuntimeError(
                f"the coordinator at {cfg.coordinator.address} is not who the site's CA says it is "
                f"({exc.verify_message}): its certificate is not signed by {cfg.coordinator.ca_cert}, or does not "
                f"name {host}. Ask the operator for the ca.pem of this federation.") from None
        except ssl.SSLError as exc:
            raise RuntimeError(f"TLS with the coordinator at {cfg.coordinator.address} failed ({exc.reason}); "
                               f"does it serve TLS (or is the site set to insecure by mistake)?") from None


def stop_group(proc: subprocess.Popen, *, timeout: float = 15) -> None:
    """Stop a child's whole process group and reap it (SIGTERM, then SIGKILL after `timeout`)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def executor_secret(state_dir: Path) -> Path:
    """The secret the SuperNode and the site's executor share (0600, created once): no other local account can
    take the SuperNode's tasks."""
    path = state_dir / "executor.secret"
    if not path.exists():
        write_private(path, secrets.token_bytes(32))
    return path


def supernode_args(cfg: SiteConfig, config_path: Path, secret_file: Path) -> list[str]:
    """Flower's SuperNode in process isolation: it starts nothing itself; the site's own executor takes its tasks."""
    bindir = Path(sys.executable).parent
    tls = (["--insecure"] if cfg.coordinator.insecure else
           ["--root-certificates", str(cfg.coordinator.ca_cert), "--auth-supernode-private-key", str(cfg.private_key)])
    return [str(bindir / "flower-supernode"), *tls, "--superlink", cfg.coordinator.address,
            "--node-config", f'{SITE_CONFIG_KEY}="{config_path}"', "--host", "127.0.0.1",
            "--port", str(cfg.clientappio_port), "--isolation", "process",
            "--superexec-auth-secret-file", str(secret_file)]


def executor_args(config_path: Path, cfg: SiteConfig, secret_file: Path) -> list[str]:
    return [sys.executable, "-m", "fedhaven.client.executor", "--config", str(config_path),
            "--runtime-api-address", f"127.0.0.1:{cfg.clientappio_port}", "--secret-file", str(secret_file),
            "--parent-pid", str(os.getpid())]


class _Child:
    """A child process whose output is forwarded line by line (and scanned for known failures)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], reasons: list[str], fp: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                     bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._pump, args=(reasons, fp), daemon=True)
        self.reader.start()

    def _pump(self, reasons: list[str], fp: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip()
            if text and not text.endswith("INFO \x1b[0m:"):
                log.info("%s | %s", self.name, text) if self.name == "supernode" else log.info("%s", text)
            reasons.extend(why.format(fp=fp) for marker, why in KNOWN_FAILURES.items() if marker in line)


def run(args: argparse.Namespace) -> int:
    config_path = Path(args.config).expanduser().resolve()
    cfg = load_site_config(config_path)
    if cfg.coordinator.insecure:
        log.warning("WARNING: insecure = true: no TLS and no site authentication; updates travel in the clear")
    check_site(cfg)
    preflight(cfg)
    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, **HARDENED_ENV, "FLWR_HOME": str(state / "flwr-home")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    secret = executor_secret(state)
    fp = ""
    if cfg.private_key and Path(cfg.private_key).with_suffix(".pub").exists():
        fp = f" ({fingerprint(Path(cfg.private_key).with_suffix('.pub').read_bytes())})"
    log.info("site %s joining %s", cfg.name, cfg.coordinator.address)
    reasons: list[str] = []
    stop = threading.Event()

    def on_signal(signum, frame) -> None:  # noqa: ANN001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [_Child("supernode", supernode_args(cfg, config_path, secret), env, reasons, fp)]
    dead: _Child | None = None
    try:
        children.append(_Child("executor", executor_args(config_path, cfg, secret), env, reasons, fp))
        while not stop.is_set() and dead is None:
            dead = next((c for c in children if c.proc.poll() is not None), None)
            stop.wait(0.5)
    finally:
        for child in reversed(children):
            stop_group(child.proc)
        for child in children:
            child.reader.join(timeout=5)
    if reasons:
        raise RuntimeError(f"site {cfg.name} was not admitted: {reasons[0]}")
    if dead is not None and not stop.is_set():
        raise RuntimeError(f"the site's {dead.name} exited with code {dead.proc.returncode}; see the lines above. "
                           f"Nothing else keeps running: start the site again with `fl-client start`")
    return 0

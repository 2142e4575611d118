"""`fl-client start`: check, verify the coordinator's TLS identity, run Flower's SuperNode and the site's executor."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.client.cli import SITE_CONFIG_ENV, default_config
from fedhaven.client.cli.check import check_site
from fedhaven.client.deployment import SITE_CONFIG_KEY
from fedhaven.client.seam.formats import admission_failures, is_empty_log_line
from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.shared.crypto import fingerprint, make_ca, make_server_cert, write_private
from fedhaven.shared.process import pid_alive, spawn, stop_group, stop_pids
from fedhaven.shared.runtime import hardened_env

if TYPE_CHECKING:
    from types import FrameType

    from fedhaven.shared.data import ImageData

log = logging.getLogger("fedhaven.client")

#: Why the coordinator did not admit the site, as the SuperNode's output tells (`seam.formats.admission_failures`), and
#: what it means for the site's IT.
KNOWN_FAILURES = {
    "key-rejected": "the coordinator does not accept this site's key{fp}: send site.pub to the "
                    "operator (`fl-server site add <name> --public-key site.pub`), or it was revoked",
    "key-missing": "the coordinator requires site authentication and this site sent no key: set private_key",
    "tls-unverified": "the coordinator's TLS certificate does not verify against ca_cert",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=default_config(),
                   help=f"the site's configuration file (default: ${SITE_CONFIG_ENV}, else ./site.toml)")


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
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: fedhaven\r\nConnection: close\r\n\r\n")
            try:
                head = sock.recv(5)
            except OSError:
                head = b""
            if not head.startswith(b"HTTP/"):
                raise RuntimeError(f"the coordinator at {cfg.coordinator.address} speaks TLS but this site has "
                                   f"insecure = true: set insecure = false and ca_cert to the operator's ca.pem")
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
            hint = ("it does not speak TLS: was it started with --insecure? Then the site needs insecure = true "
                    "(testing only)" if exc.reason == "WRONG_VERSION_NUMBER" else "see the reason above")
            raise RuntimeError(f"TLS with the coordinator at {cfg.coordinator.address} failed ({exc.reason}): "
                               f"{hint}") from None


#: What `fl-client start` runs, so that a restart after a crash can stop what the crash left behind.
SITE_RUNTIME = "site.json"


def clean_site_leftovers(state_dir: Path, config_path: Path) -> None:
    """Stop a SuperNode or executor that a killed `fl-client start` for this site left running."""
    path = state_dir / SITE_RUNTIME
    try:
        rt = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if pid_alive(int(rt.get("pid", 0))):
        raise RuntimeError(f"this site is already running (fl-client start, pid {rt['pid']}); stop it first")
    stopped = stop_pids([int(v) for k, v in rt.items() if k != "pid"], marker=str(config_path))
    if stopped:
        log.warning("stopped what a previous `fl-client start` left running (pids %s)", ", ".join(map(str, stopped)))
    path.unlink(missing_ok=True)


def executor_secret(state_dir: Path) -> Path:
    """The secret the SuperNode and the site's executor share (0600, created once): no other local account can
    take the SuperNode's tasks."""
    path = state_dir / "executor.secret"
    if not path.exists():
        write_private(path, secrets.token_bytes(32))
    return path


#: Where the SuperNode serves its Runtime API for the site's executor: loopback only, at `clientappio_port`.
RUNTIME_HOST = "127.0.0.1"
#: The Runtime API's TLS files, made at every start, in the state directory (0700; the key 0600).
RUNTIME_TLS = "runtime-tls"


@dataclass(frozen=True)
class RuntimeTls:
    """The certificate the SuperNode serves its Runtime API with, its key, and the CA the executor trusts alone."""

    ca: Path
    cert: Path
    key: Path


def runtime_tls(state_dir: Path) -> RuntimeTls:
    """A fresh certificate for the SuperNode's Runtime API (127.0.0.1), signed by a CA made for it alone whose key
    is never written: the executor trusts that CA and nothing else, so only a process holding this start's key,
    readable by the site's account alone, can answer it. Made again at every start (nothing long-lived to steal)."""
    folder = state_dir / RUNTIME_TLS
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    ca = make_ca(common_name="fedhaven site Runtime API (one fl-client start)")
    server = make_server_cert(ca=ca, dns_names=[], ips=[RUNTIME_HOST], days=3650)  # as long as the site runs
    tls = RuntimeTls(ca=folder / "ca.pem", cert=folder / "cert.pem", key=folder / "key.pem")
    write_private(tls.key, server.key_pem)
    write_private(tls.cert, server.cert_pem)
    write_private(tls.ca, ca.cert_pem)
    return tls


def runtime_port_problem(port: int, config_path: Path) -> str | None:
    """Why the SuperNode could not serve its executor on 127.0.0.1:`port` (another process holds it), or None.

    Bound as the SuperNode binds it (SO_REUSEADDR: the TIME_WAIT of a closed connection is no holder), and let go.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((RUNTIME_HOST, port))
        except OSError as exc:
            port_of = f"the loopback port of this site's SuperNode (clientappio_port in {config_path})"
            if exc.errno == errno.EADDRINUSE:
                return (f"another process holds {RUNTIME_HOST}:{port} (address already in use), {port_of}: free it "
                        f"(`ss -ltnp 'sport = :{port}'` names its holder) or set clientappio_port to a free port. "
                        f"The site did not start there and sent that process no request")
            above = " above 1023" if exc.errno == errno.EACCES else ""
            return f"cannot use {RUNTIME_HOST}:{port} ({exc.strerror or exc}), {port_of}: set it to a free port{above}"
    return None


def supernode_args(cfg: SiteConfig, config_path: Path, secret_file: Path, tls: RuntimeTls) -> list[str]:
    """Flower's SuperNode in process isolation: it starts nothing itself; the site's own executor takes its tasks.
    Its Runtime API is served on loopback with TLS (Flower's own `--ssl-*` flags) with this start's certificate.
    Started through the site's seam (`fedhaven.client.seam.supernode`: `flower-supernode`, with its reception
    guarded so that a message of a run stopped while it arrives never stays a task for the executor)."""
    coordinator = (["--insecure"] if cfg.coordinator.insecure else
                   ["--root-certificates", str(cfg.coordinator.ca_cert),
                    "--auth-supernode-private-key", str(cfg.private_key)])
    return [sys.executable, "-m", "fedhaven.client.seam.supernode", *coordinator,
            "--superlink", cfg.coordinator.address, "--node-config", f'{SITE_CONFIG_KEY}="{config_path}"',
            "--host", RUNTIME_HOST,
            "--port", str(cfg.clientappio_port), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key),
            "--ssl-ca-certfile", str(tls.ca), "--isolation", "process",
            "--superexec-auth-secret-file", str(secret_file)]


def executor_args(config_path: Path, cfg: SiteConfig, secret_file: Path, tls: RuntimeTls) -> list[str]:
    return [sys.executable, "-m", "fedhaven.client.executor", "--config", str(config_path),
            "--runtime-api-address", f"{RUNTIME_HOST}:{cfg.clientappio_port}", "--runtime-ca-file", str(tls.ca),
            "--secret-file", str(secret_file), "--parent-pid", str(os.getpid())]


class _Child:
    """A child process whose output is forwarded line by line (and scanned for known failures)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], reasons: list[str], fp: str) -> None:
        self.name = name
        self.proc = spawn(args, stdout=subprocess.PIPE, env=env, text=True)
        self.reader = threading.Thread(target=self._pump, args=(reasons, fp), daemon=True)
        self.reader.start()

    def _pump(self, reasons: list[str], fp: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip()
            if text and not is_empty_log_line(text=text):
                log.info("%s | %s", self.name, text) if self.name == "supernode" else log.info("%s", text)
            reasons.extend(KNOWN_FAILURES[failure].format(fp=fp) for failure in admission_failures(line=line))


def prepare(cfg: SiteConfig, data: ImageData) -> None:
    """The front-end features of every built-in model the policy allows, computed now (once; then cached), so that
    no round waits for them: a round's stages have timeouts, and a large site's front end takes minutes."""
    from fedhaven.client.cli.check import BUILT_IN_MODELS
    from fedhaven.client.deployment import site_info
    from fedhaven.shared.features import features_cached, prepare_front_ends
    from fedhaven.shared.runtime import resolve_device
    from fedhaven.shared.schema import ModelConfig

    info = site_info(cfg)
    todo = [ModelConfig(name=n) for n in BUILT_IN_MODELS if cfg.policy.allows_model(n)]
    todo = [m for m in todo if not features_cached(model_cfg=m, data=data, cache_dir=info.cache())]
    if not todo:
        return
    log.info("preparing the front end of %d images (once; cached in %s)", len(data), info.cache())
    t0 = time.monotonic()
    ready = prepare_front_ends(models=todo, data=data, cache_dir=info.cache(), memory_mb=cfg.memory_mb,
                               device=resolve_device(cfg.device))
    if ready:
        log.info("front end ready for %s in %.0f s", ", ".join(ready), time.monotonic() - t0)


def run(args: argparse.Namespace) -> int:
    config_path = Path(args.config).expanduser().resolve()
    cfg = load_site_config(config_path)
    if cfg.coordinator.insecure:
        log.warning("WARNING: insecure = true: no TLS and no site authentication; updates travel in the clear")
    data, _ = check_site(cfg)
    prepare(cfg, data)
    preflight(cfg)
    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = hardened_env(FLWR_HOME=str(state / "flwr-home"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    secret = executor_secret(state)
    clean_site_leftovers(state, config_path)  # first: what a crashed start left may hold the port
    taken = runtime_port_problem(cfg.clientappio_port, config_path)
    if taken:
        raise RuntimeError(taken)
    tls = runtime_tls(state)
    fp = ""
    if cfg.private_key and Path(cfg.private_key).with_suffix(".pub").exists():
        fp = f" ({fingerprint(Path(cfg.private_key).with_suffix('.pub').read_bytes())})"
    log.info("site %s joining %s", cfg.name, cfg.coordinator.address)
    reasons: list[str] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [_Child("supernode", supernode_args(cfg, config_path, secret, tls), env, reasons, fp)]
    dead: _Child | None = None
    try:
        children.append(_Child("executor", executor_args(config_path, cfg, secret, tls), env, reasons, fp))
        (state / SITE_RUNTIME).write_text(json.dumps({"pid": os.getpid(), **{c.name: c.proc.pid for c in children}}))
        while not stop.is_set() and dead is None:
            dead = next((c for c in children if c.proc.poll() is not None), None)
            stop.wait(0.5)
    finally:
        for child in reversed(children):
            stop_group(child.proc)
        for child in children:
            child.reader.join(timeout=5)
        (state / SITE_RUNTIME).unlink(missing_ok=True)
    if reasons:
        raise RuntimeError(f"site {cfg.name} was not admitted: {reasons[0]}")
    if dead is not None and not stop.is_set():
        taken = runtime_port_problem(cfg.clientappio_port, config_path)  # taken between the check and the bind
        if taken:
            raise RuntimeError(taken)
        raise RuntimeError(f"the site's {dead.name} exited with code {dead.proc.returncode}; see the lines above. "
                           f"Nothing else keeps running: start the site again with `fl-client start`")
    return 0

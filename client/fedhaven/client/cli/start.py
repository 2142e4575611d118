"""`fl-client start`: check everything, verify the coordinator's TLS identity, then run Flower's SuperNode."""

from __future__ import annotations

import argparse
import logging
import os
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
from fedhaven.shared.crypto import fingerprint
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


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the SuperNode's whole process group (its executor and ClientApp processes) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def supernode_args(cfg: SiteConfig, config_path: Path) -> list[str]:
    bindir = Path(sys.executable).parent
    tls = (["--insecure"] if cfg.coordinator.insecure else
           ["--root-certificates", str(cfg.coordinator.ca_cert), "--auth-supernode-private-key", str(cfg.private_key)])
    return [str(bindir / "flower-supernode"), *tls, "--superlink", cfg.coordinator.address,
            "--node-config", f'{SITE_CONFIG_KEY}="{config_path}"', "--host", "127.0.0.1",
            "--port", str(cfg.clientappio_port), "--isolation", "subprocess"]


def run(args: argparse.Namespace) -> int:
    config_path = Path(args.config).expanduser().resolve()
    cfg = load_site_config(config_path)
    if cfg.coordinator.insecure:
        log.warning("WARNING: insecure = true: no TLS and no site authentication; updates travel in the clear")
    check_site(cfg)
    preflight(cfg)
    env = {**os.environ, **HARDENED_ENV, "FLWR_HOME": str(Path(cfg.state_dir) / "flwr-home")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    fp = ""
    if cfg.private_key and Path(cfg.private_key).with_suffix(".pub").exists():
        fp = f" ({fingerprint(Path(cfg.private_key).with_suffix('.pub').read_bytes())})"
    log.info("site %s joining %s", cfg.name, cfg.coordinator.address)
    proc = subprocess.Popen(supernode_args(cfg, config_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True, bufsize=1, start_new_session=True)

    def forward(signum, frame) -> None:  # noqa: ANN001
        proc.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    reasons: list[str] = []

    def pump() -> None:  # Flower's executor children inherit the pipe: read it beside, not instead of, waiting
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.rstrip()
            if text and not text.endswith("INFO \x1b[0m:"):
                log.info("supernode | %s", text)
            reasons.extend(why.format(fp=fp) for marker, why in KNOWN_FAILURES.items() if marker in line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    finally:
        stop_group(proc)
    reader.join(timeout=5)
    if reasons:
        raise RuntimeError(f"site {cfg.name} was not admitted: {reasons[0]}")
    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise RuntimeError(f"Flower's SuperNode exited with code {code}; see the lines above")
    return 0

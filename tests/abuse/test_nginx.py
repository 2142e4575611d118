"""The production front as operators deploy it: Debian's nginx with deploy/nginx/fedhaven-fleet.conf in front of the
coordinator's Fleet port, on loopback. Three sites train through it; its limits and held-pull timeouts hold."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fedhaven.server.front import DEFAULT_HOLD
from fedhaven.server.latency.uploads import DEFAULT_SETTLE
from fedhaven.server.seam.superlink_app import SUPERNODE_HTTP_TIMEOUT
from fedhaven.sim.loopback import LoopbackFederation, free_port, run_toml

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "fedhaven-fleet.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
MAIN = """worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/nginx-access.log;
    client_body_temp_path {root}/nginx-body;
    proxy_temp_path {root}/nginx-proxy;
    fastcgi_temp_path {root}/nginx-fastcgi;
    uwsgi_temp_path {root}/nginx-uwsgi;
    scgi_temp_path {root}/nginx-scgi;
    include {root}/fedhaven-fleet.conf;
}}
"""


def _seconds(name: str) -> float:
    match = re.search(rf"^\s*{name}\s+(\d+)s;", CONF.read_text(), re.M)
    assert match, name
    return float(match.group(1))


def test_the_fronts_held_pull_timeout_sits_between_hold_plus_settle_and_the_supernodes_timeout():
    assert DEFAULT_HOLD + DEFAULT_SETTLE < _seconds("proxy_read_timeout") < SUPERNODE_HTTP_TIMEOUT
    assert _seconds("client_header_timeout") <= 10


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install -y nginx)")
def test_three_sites_train_through_the_nginx_front(observe):
    obs = observe("the nginx front (deploy/nginx/fedhaven-fleet.conf) between three sites and the coordinator",
                  "a 2-round DP + SecAgg+ run completes through nginx; unsigned calls 401 and oversized bodies 413 "
                  "at nginx, huge headers refused")
    fed = LoopbackFederation.in_temp(prefix="fedhaven-nginx-")
    try:
        fed.provision()
        public = free_port()
        for name in fed.site_names:  # the sites dial nginx; nginx dials the coordinator's Fleet listener
            toml = fed.site_dirs[name] / "site.toml"
            toml.write_text(toml.read_text().replace(f'address = "localhost:{fed.front}"',
                                                     f'address = "localhost:{public}"'))
        root = fed.root
        (root / "fedhaven-fleet.conf").write_text(
            CONF.read_text().replace("@PUBLIC_LISTEN@", f"127.0.0.1:{public}")
            .replace("@FLEET_UPSTREAM@", f"127.0.0.1:{fed.front}").replace("@STATE@", str(fed.state)))
        (root / "nginx.conf").write_text(MAIN.format(root=root))
        check = subprocess.run([NGINX, "-t", "-p", str(root), "-c", str(root / "nginx.conf")], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        fed.spawn("nginx", NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;")
        fed.start()
        res = fed.run(run_toml(rounds=2), timeout=900)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        access = (root / "nginx-access.log").read_text()
        pulls = len(re.findall(r'"POST /v1/fleet/pull-messages HTTP/1.1" 200', access))
        pushes = len(re.findall(r'"POST /v1/fleet/push-object HTTP/1.1" 200', access))
        obs.observed.append(f"run completed; nginx passed {pulls} pulls and {pushes} object pushes with 200")
        assert pulls > 0 and pushes > 0

        ctx = ssl.create_default_context(cafile=str(fed.state / "pki" / "ca.pem"))
        base = f"https://localhost:{public}"
        with httpx.Client(verify=ctx, timeout=10) as client:
            unsigned = client.post(base + "/v1/fleet/push-object", content=b"x" * 1024).status_code
            big = client.post(base + "/v1/fleet/pull-messages", content=b"x" * (128 << 10),
                              headers={"flwr-public-key": "a", "flwr-timestamp": "b", "flwr-signature": "c"})
            forged = client.post(base + "/v1/fleet/pull-messages", content=b"",
                                 headers={"flwr-public-key": "a", "flwr-timestamp": "b", "flwr-signature": "c"})
            huge = client.post(base + "/v1/fleet/pull-messages", headers={"x-huge": "a" * (64 << 10)})
            control = client.post(base + "/v1/control/list-runs", content=b"").status_code
        obs.observed.append(f"unsigned {unsigned}, 128 KB pull {big.status_code}, forged signature "
                            f"{forged.status_code} ({forged.text.strip()[:60]}), 64 KB header {huge.status_code}, "
                            f"Control API {control}")
        assert unsigned == 401 and big.status_code == 413 and control == 403
        assert forged.status_code == 401 and "fedhaven" in forged.text  # the door behind nginx checks signatures
        assert huge.status_code in (400, 414, 431, 494)
    finally:
        fed.stop()
        time.sleep(0.1)

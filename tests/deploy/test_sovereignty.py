"""A hostile operator against real sites: a run's own ClientApp never runs on a site, and nobody but the operator's
account drives the coordinator."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import tomli_w

from fedhaven.client.ledger import Ledger
from fedhaven.server.seam.control import Control
from fedhaven.shared.config import to_dict
from fedhaven.shared.schema import RunConfig, SecAggConfig

pytestmark = pytest.mark.slow

EVIL_CLIENT = '''
"""A ClientApp an operator ships with a run: it would read the site's config and data and phone them home."""
import pathlib
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def steal(msg, ctx):
    pathlib.Path({marker!r}).write_text("this ran on the site")
    cfg = pathlib.Path(str(ctx.node_config.get("site-config", ""))).read_bytes()
    folder = pathlib.Path(cfg.decode().split("path = ")[1].split()[0].strip('"'))
    data = b"".join(p.read_bytes()[:4096] for p in folder.iterdir())
    return Message(RecordDict({{"loot": ConfigRecord({{"config": cfg, "data": data}})}}), reply_to=msg)
'''


def evil_package(root: Path, *, marker: Path, output_dir: Path) -> Path:
    """An app folder whose ClientApp is its own module, under fedhaven's ServerApp and a normal run config."""
    app = root / "evil-app"
    app.mkdir()
    (app / "evilclient.py").write_text(textwrap.dedent(EVIL_CLIENT.format(marker=str(marker))))
    run = RunConfig(rounds=1, min_sites=3, round_retries=0, output_dir=str(output_dir),
                    secagg=SecAggConfig(num_shares=3, reconstruction_threshold=2, max_weight=1000.0, timeout=60.0))
    doc = {"build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
           "project": {"name": "evil", "version": "1.0.0", "dependencies": []},
           "tool": {"flwr": {"app": {"publisher": "mallory",
                                     "components": {"serverapp": "fedhaven.server.deployment:app",
                                                    "clientapp": "evilclient:app"},
                                     "config": {**to_dict(run), "data": {"source": "digits"}}}}}}
    (app / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app


def wait_finished(control: Control, run_id: int, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = control.run(run_id)
        if state.finished:
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def data_samples(site_dir: Path) -> list[bytes]:
    """High-entropy 48-byte pieces of the site's training images, to look for on the coordinator."""
    import gzip

    raw = gzip.decompress((site_dir / "data" / "train-images-idx3-ubyte.gz").read_bytes())
    return [raw[i: i + 48] for i in range(len(raw) // 3, len(raw), len(raw) // 4)[:3]]


def test_a_run_carrying_its_own_clientapp_is_refused_and_then_a_normal_run_trains(federation, tmp_path):
    marker = Path(tempfile.mkdtemp()) / "pwned"
    ledgers_before = [Ledger.in_dir(d / "state").entries() for d in federation.site_dirs_list]
    app = evil_package(tmp_path, marker=marker, output_dir=federation.state / "runs")
    control = Control(address=f"unix:{federation.state / 'run' / 'superlink.sock'}", ca_cert=None,
                      flwr_home=federation.state / "flwr-home")
    try:
        run_id = control.start_run(app_dir=app)
        state = wait_finished(control, run_id)
    finally:
        control.close()
    assert state.sub_status == "failed", state
    assert not marker.exists(), "a site ran the run's own ClientApp"
    # every site refused, said why in its own log, and spent nothing
    for d, name, before in zip(federation.site_dirs_list, federation.sites, ledgers_before):
        log = (federation.root / f"{name}.log").read_text()
        assert f"site {name} refused run {run_id}" in log and "evilclient:app" in log, log[-3000:]
        assert Ledger.in_dir(d / "state").entries() == before
        assert json.loads((d / "state" / "executor.json").read_text())["refused_packages"] >= 1
    # the refusal reaches the operator: in the run's record and in `fl-server status`
    metrics = (federation.state / "runs" / f"run-{run_id}" / "metrics.jsonl").read_text()
    assert "refused run" in metrics and "evilclient:app" in metrics
    status = federation.cli("fl-server", "status", "--state-dir", str(federation.state))
    assert f"{run_id}" in status.stdout + status.stderr
    assert "this site only runs its installed fedhaven ClientApp" in status.stdout + status.stderr
    # no byte of any site's data reached the coordinator
    samples = [s for d in federation.site_dirs_list for s in data_samples(d)]
    for path in federation.state.rglob("*"):
        if path.is_file() and not path.is_socket():
            blob = path.read_bytes()
            assert not any(s in blob for s in samples), f"site data found in {path}"
    # the same sites then train a normal run
    res = federation.run(target=12.0)
    assert res.returncode == 0, res.stdout + res.stderr
    for d, before in zip(federation.site_dirs_list, ledgers_before):
        assert len(Ledger.in_dir(d / "state").entries()) == len(before) + 2


NOBODY = 65534
PROBE = '''
import json, sys
from pathlib import Path
from fedhaven.server.seam.control import Control, ControlError
out = {}
for address, ca in json.loads(sys.argv[1]):
    try:
        c = Control(address=address, ca_cert=Path(ca) if ca else None, flwr_home=Path(sys.argv[2]))
        out[address] = "ALLOWED: " + repr(c.runs())
    except ControlError as exc:
        out[address] = "refused: " + str(exc)
    except OSError as exc:
        out[address] = "refused: " + str(exc)
print(json.dumps(out))
'''


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports the given processes (and their children) listen on, read from /proc."""
    tree = set(pids)
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(ln for ln in status.read_text().splitlines() if ln.startswith("PPid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if ppid in tree:
            tree.add(int(status.parent.name))
    inodes = set()
    for pid in tree:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another (unprivileged) account")
def test_other_local_accounts_cannot_drive_the_coordinator(federation, tmp_path):
    rt = json.loads((federation.state / "coordinator.json").read_text())
    ports = listening_ports([rt["superlink_pid"], rt["superexec_pid"]])
    assert ports, "the coordinator listens on no TCP port?"
    public_ca = Path(tempfile.mkdtemp()) / "ca.pem"  # the CA certificate is public: every site holds it
    public_ca.write_bytes((federation.state / "pki" / "ca.pem").read_bytes())
    public_ca.parent.chmod(0o755)
    public_ca.chmod(0o644)
    targets = [(f"127.0.0.1:{p}", str(public_ca)) for p in sorted(ports)]
    targets.append((f"unix:{federation.state / 'run' / 'superlink.sock'}", ""))
    home = Path(tempfile.mkdtemp())
    home.chmod(0o777)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    can_import = subprocess.run([*as_nobody, sys.executable, "-c", "import fedhaven.server.seam.control"],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    if can_import.returncode != 0:  # e.g. a clone under `mktemp -d` (0700): no other account can load fedhaven
        pytest.skip("this checkout is not readable by other accounts, so no probe can run as uid nobody; run it "
                    f"from a world-readable checkout ({can_import.stderr.strip().splitlines()[-1]})")
    res = subprocess.run([*as_nobody, sys.executable, "-c", PROBE, json.dumps(targets), str(home)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    assert res.returncode == 0, res.stderr
    outcome = json.loads(res.stdout.strip().splitlines()[-1])  # Flower prints 'Using SuperLink' lines first
    assert set(outcome) == {a for a, _ in targets}
    assert not [a for a, v in outcome.items() if v.startswith("ALLOWED")], outcome
    assert "permission denied" in outcome[targets[-1][0]]  # the socket: the kernel says no, not a missing file
    # the operator's own commands, run as that account, are refused with a clear message
    for argv in (["status"], ["stop", "--run", "1"], ["site", "list"]):
        res = subprocess.run([*as_nobody, str(Path(sys.executable).parent / "fl-server"), *argv, "--state-dir",
                              str(federation.state)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HOME": str(home)})
        assert res.returncode != 0 and "Traceback" not in res.stderr, (argv, res.stdout, res.stderr)
        assert "permission" in (res.stdout + res.stderr).lower(), (argv, res.stdout, res.stderr)
    # and the operator still can
    assert federation.cli("fl-server", "status", "--state-dir", str(federation.state)).returncode == 0


def test_coordinator_state_is_the_operators_alone(federation):
    root = federation.state
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    public = {"ca.pem", "server.pem", "site.pub"}
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink() or path.is_socket():
            continue
        if path.name in public:
            if mode & 0o022:
                loose.append((str(path), oct(mode)))
        elif mode & 0o077:
            loose.append((str(path), oct(mode)))
    assert not loose, loose
    names = {p.name for p in root.rglob("*")}
    assert {"superlink.db", "ca.key", "server.key", "superexec.secret"} <= names

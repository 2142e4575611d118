"""The systemd site as shipped trains (issue #22): deploy/systemd/site.toml, with only its absolute paths moved under a
temporary root and the coordinator's address and the site's loopback port pointed at a real coordinator on
127.0.0.1, goes through what the unit's comments and docs/site.md tell a site's IT to do (`fl-client keygen`, the
operator's ca.pem, `fl-client ledger init`, `fl-client check`, `fl-client start`) and trains a DP + SecAgg+ round
beside two ordinary loopback sites. Its executor keeps the ledger's anchor where site.toml puts it (`ledger_anchor`,
outside `state_dir`); before the fix it looked beside `state_dir` and refused every task."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedhaven.client.anchor import default_anchor_path
from fedhaven.client.ledger import Ledger
from fedhaven.sim.imagesets import fine_stripes
from fedhaven.sim.loopback import LoopbackFederation, cli, free_port, run_toml

pytestmark = [pytest.mark.slow, pytest.mark.trust]

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "site.toml"
#: Ordinary loopback sites beside it (digits replaced by images of the shipped size): SecAgg+ needs three per round.
OTHERS = ("site-b", "site-c")
#: Training images per site (two classes, half each): the systemd site's few dozen, the others' fewer.
SITE_IMAGES, OTHER_IMAGES, TEST_IMAGES = 24, 16, 8


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def installed(text: str, *, root: Path, coordinator: str, port: int) -> str:
    """The shipped site.toml with every absolute path under `root`, the coordinator at `coordinator` and the
    SuperNode's loopback port `port`; every other byte (comments, relative paths, data, policy) as shipped."""
    text = text.replace('"/', f'"{root}/')
    text = re.sub(r'(?m)^address = "[^"]*"', f'address = "{coordinator}"', text)
    return re.sub(r"(?m)^clientappio_port = \d+$", f"clientappio_port = {port}", text)


def files_outside(host: Path, writable: list[Path]) -> dict[str, int]:
    """Every file under `host` outside the folders the unit lets the site write, with its size."""
    return {str(p.relative_to(host)): p.stat().st_size for p in sorted(host.rglob("*"))
            if p.is_file() and not any(p.is_relative_to(w) for w in writable)}


def test_the_shipped_systemd_site_trains_a_dp_secagg_round():
    shipped_text = SHIPPED.read_text()
    shipped = tomllib.loads(shipped_text)
    name, size, channels = shipped["name"], shipped["data"]["image_size"], shipped["data"]["channels"]
    # what this test exists for: an anchor set outside state_dir, hospital-size RGB images, the strict policy
    assert shipped.get("ledger_anchor") and not Path(shipped["ledger_anchor"]).is_relative_to(shipped["state_dir"])
    assert (size, channels, shipped["data"]["source"]) == (224, 3, "imagefolder")
    assert shipped["policy"]["require_dp"] and shipped["policy"]["require_secure_aggregation"]

    fed = LoopbackFederation.in_temp(prefix="fedhaven-systemd-", site_names=OTHERS)
    try:
        # the coordinator and the ordinary sites, each holding images of the shipped size instead of digits
        fed.provision()
        for seed, other in enumerate(OTHERS, start=1):
            site = fed.site_dirs[other]
            fine_stripes(site / "images", count=OTHER_IMAGES, seed=seed)
            toml = site / "site.toml"
            text = toml.read_text()
            data = f'source = "imagefolder"\npath = "images"\nimage_size = {size}\nchannels = {channels}'
            assert 'source = "idx"\npath = "data"' in text
            text = text.replace('source = "idx"\npath = "data"', data)
            # like the systemd site as shipped (no `roster`), they share SecAgg+ masks with the neighbours the
            # coordinator names: a roster pinned among the loopback sites alone would leave the systemd site out
            toml.write_text(re.sub(r"(?m)^roster = .*\n", "", text))

        # the systemd site: /etc/fedhaven, /var/lib/..., /srv/... under `host`
        host = fed.root / "host"
        text = installed(shipped_text, root=host, coordinator=f"localhost:{fed.front}", port=free_port())
        cfg = tomllib.loads(text)
        was, now = _flat(shipped), _flat(cfg)
        assert was.keys() == now.keys()
        changed = {k for k in was if was[k] != now[k]}
        assert {"state_dir", "ledger_anchor", "data.path"} <= changed, changed
        for key in changed - {"coordinator.address", "clientappio_port"}:
            assert was[key].startswith("/") and now[key] == f"{host}{was[key]}", key
        etc = host / "etc" / "fedhaven"
        state, anchor = Path(cfg["state_dir"]), Path(cfg["ledger_anchor"])
        for folder in (etc, state, anchor.parent):  # the unit's `install -d -m 0700` and StateDirectory=
            folder.mkdir(parents=True, mode=0o700)
        res = cli("fl-client", "keygen", "--out", str(etc))
        assert res.returncode == 0, res.stdout + res.stderr
        res = cli("fl-server", "site", "add", name, "--public-key", str(etc / "site.pub"), "--state-dir",
                  str(fed.state))
        assert res.returncode == 0, res.stdout + res.stderr
        shutil.copy(fed.state / "sites" / name / "ca.pem", etc / "ca.pem")  # from the operator's bundle
        toml = etc / "site.toml"
        toml.write_text(text)
        fine_stripes(Path(cfg["data"]["path"]), count=SITE_IMAGES, seed=0)
        bundle = files_outside(host, [state, anchor.parent])

        res = cli("fl-client", "ledger", "init", "--config", str(toml))
        assert res.returncode == 0, res.stdout + res.stderr
        res = cli("fl-client", "check", "--config", str(toml), timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 0 and "check passed" in out and str(anchor) in out, out

        # one DP + SecAgg+ round (3 shares, threshold 2) to epsilon 3, the shipped budget's 8 being the limit;
        # the coordinator's held-out test set is of the sites' size and channels, as the shipped comment asks
        test_set = fine_stripes(fed.root / "test", count=TEST_IMAGES, seed=len(OTHERS) + 1)
        data = (f'source = "imagefolder"\npath = "{test_set}"\ntest_path = "{test_set}"\nimage_size = {size}\n'
                f"channels = {channels}")
        fed.site_names = (name, *OTHERS)
        fed.site_dirs[name] = etc  # `fl-client start --config <etc>/site.toml`, as the unit's ExecStart
        fed.start()
        res = fed.run(run_toml(rounds=1, target=3.0).replace('source = "digits"', data))
        out = res.stdout + res.stderr
        assert res.returncode == 0, out + fed.log(name)[-4000:]
    finally:
        fed.stop()

    run_dir = fed.run_dir_of(out)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ok = [x for x in lines if x["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["round"] == 1, lines
    # with the anchor bug the round still aggregates, from the other two sites, and `fl-server run` exits 0
    assert ok[0]["sites_ok"] == 3 and not ok[0]["failures"], ok[0]["failures"]
    assert ok[0]["secure_aggregation"] and ok[0]["private"] and name in ok[0]["epsilons"], ok[0]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert set(privacy["sites"]) == {name, *OTHERS}
    eps = privacy["sites"][name]["epsilon"]
    assert 0 < eps <= 3.0
    # the site's own record: its ledger in the rewritten state_dir, anchored at the rewritten ledger_anchor
    ledger = Ledger.in_dir(state, anchor=anchor)
    assert [e.kind for e in ledger.entries()] == ["init", "update"]
    assert ledger.entries()[-1].epsilon_after == pytest.approx(eps)
    assert json.loads(anchor.read_text())["entries"] == 2
    assert not default_anchor_path(state).exists()  # where the executor looked before the fix
    witnesses = json.loads((fed.state / "runs" / "ledger-witnesses.json").read_text())["sites"]
    assert witnesses[name]["seq"] == 1
    executor = json.loads((state / "executor.json").read_text())
    assert executor["tasks"] >= 4 and executor["failed"] == 0, executor  # the four SecAgg+ stages
    res = cli("fl-client", "ledger", "verify", "--config", str(toml))
    assert res.returncode == 0, res.stdout + res.stderr
    # as under the unit's ProtectSystem=strict: the site wrote only its state and its anchor's folder
    assert files_outside(host, [state, anchor.parent]) == bundle
    shutil.rmtree(fed.root, ignore_errors=True)  # kept, with every process's log, when the test fails

"""`fl-server status|site list --json`: one JSON document on stdout, errors too; the state directory from
$FEDHAVEN_STATE_DIR unless --state-dir says otherwise."""

from __future__ import annotations

import json

import pytest

from fedhaven.server.cli import STATE_DIR_ENV, main
from fedhaven.shared.exitcodes import ExitCode


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("coordinator") / "state"
    assert main(["init", "--state-dir", str(root)]) == 0
    assert main(["site", "add", "hospital-a", "--state-dir", str(root)]) == 0
    assert main(["site", "add", "bank-b", "--state-dir", str(root)]) == 0
    assert main(["site", "revoke", "bank-b", "--state-dir", str(root)]) == 0
    return root


def _json(capfd, *argv: str) -> tuple[int, dict]:
    capfd.readouterr()
    code = main(list(argv))
    out, _ = capfd.readouterr()
    return code, json.loads(out)


def test_site_list_json_names_every_site_and_its_state(state, capfd):
    code, doc = _json(capfd, "site", "list", "--json", "--state-dir", str(state))
    assert code == ExitCode.OK and doc["ok"] and doc["state_dir"] == str(state)
    sites = {s["name"]: s for s in doc["sites"]}
    assert set(sites) == {"hospital-a", "bank-b"}
    assert sites["bank-b"]["status"] == "revoked" and sites["bank-b"]["revoked"] is not None
    assert sites["hospital-a"]["status"] != "revoked" and sites["hospital-a"]["fingerprint"].startswith("SHA256:")


def test_status_json_of_a_stopped_coordinator_exits_3(state, capfd):
    code, doc = _json(capfd, "status", "--json", "--state-dir", str(state))
    assert code == ExitCode.NOT_RUNNING == doc["exit_code"] and doc["ok"] is False
    assert doc["coordinator"] == {"state": "not_running"} and doc["error"] == "not_running"
    assert {s["name"] for s in doc["sites"]} == {"hospital-a", "bank-b"}


def test_the_state_directory_comes_from_the_environment_and_the_flag_wins(state, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    code, doc = _json(capfd, "site", "list", "--json")
    assert code == 0 and doc["state_dir"] == str(state) and len(doc["sites"]) == 2
    code, doc = _json(capfd, "site", "list", "--json", "--state-dir", str(tmp_path))
    assert code == 0 and doc["state_dir"] == str(tmp_path) and doc["sites"] == []


def test_a_failure_is_a_json_error_with_its_code(state, capfd):
    code, doc = _json(capfd, "site", "revoke", "--json", "--state-dir", str(state))  # no site named
    assert code == ExitCode.FAILED and doc["ok"] is False and doc["exit_code"] == 1 and doc["error"] == "failed"
    assert "needs a site name" in doc["message"]

"""`fl-client ... --json`: one JSON document on stdout and nothing else, errors too; site.toml from the environment."""

from __future__ import annotations

import json
import math

import pytest

from fedhaven.client.cli import SITE_CONFIG_ENV, main
from fedhaven.client.site_config import load_site_config
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.exitcodes import ExitCode


@pytest.fixture
def site(tmp_path, digits_site):
    digits_site(tmp_path, ledger=True)
    ledger = load_site_config(tmp_path / "site.toml").ledger()
    for r in range(2):
        with ledger.locked():
            hist = ledger.history().add(noise_multiplier=0.8, sample_rate=0.2, steps=50)
            eps = epsilon(history=hist, delta=1e-5)
            ledger.append(site="hospital-a", run_id=1, server_round=r + 1, model="lenet", update_sha256="a" * 64,
                          weights_sha256="b" * 64, update_l2_norm=1.0, num_examples=120, noise_multiplier=0.8,
                          sample_rate=0.2, steps=50, delta=1e-5, accountant="rdp", epsilon_before=0.0,
                          epsilon_after=eps, cumulative_epsilon=eps)
    return tmp_path


def _json(capfd, *argv: str) -> tuple[int, dict]:
    """Run fl-client in-process; stdout must be exactly one JSON document."""
    capfd.readouterr()
    code = main(list(argv))
    out, _ = capfd.readouterr()
    return code, json.loads(out)


SPENT = epsilon(history=PrivacyHistory().add(noise_multiplier=0.8, sample_rate=0.2, steps=100), delta=1e-5)


def test_check_json_states_data_budget_and_policy(site, capfd):
    code, doc = _json(capfd, "check", "--json", "--config", str(site / "site.toml"))
    assert code == ExitCode.OK and doc["ok"] is True
    assert doc["site"] == "hospital-a" and doc["coordinator"] == {"address": "localhost:9092", "tls": True}
    assert doc["data"]["images"] == 120 and sum(doc["data"]["classes"].values()) == 120
    assert doc["ledger"]["entries"] == 3 and doc["ledger"]["verified"] is True
    assert math.isclose(doc["budget"]["epsilon_spent"], SPENT) and doc["budget"]["max_epsilon"] == 50.0
    assert math.isclose(doc["budget"]["epsilon_left"], 50.0 - SPENT)
    assert set(doc["models"]) <= {"scatternet", "lenet"} and doc["models"]
    assert all(fp["physical_batch"] >= 1 for fp in doc["models"].values())


def test_ledger_show_and_verify_json(site, capfd):
    cfg = str(site / "site.toml")
    code, doc = _json(capfd, "ledger", "show", "--json", "--config", cfg)
    assert code == 0 and doc["ok"] and doc["updates"] == 2 and doc["problems"] == []
    assert [e["kind"] for e in doc["entries"]] == ["init", "update", "update"]
    assert [e["seq"] for e in doc["entries"]] == [0, 1, 2] and doc["entries"][2]["noise_multiplier"] == 0.8
    assert math.isclose(doc["budget"]["epsilon"], SPENT) and doc["budget"]["private"] is True
    code, doc = _json(capfd, "ledger", "verify", "--json", "--config", cfg)
    assert code == 0 and doc["ok"] and doc["entries"] == 3 and len(doc["head"]) == 64
    assert math.isclose(doc["budget"]["epsilon"], SPENT) and doc["resets"] == 0


def test_a_broken_ledger_is_a_json_failure_with_every_problem(site, capfd):
    cfg = str(site / "site.toml")
    path = load_site_config(site / "site.toml").ledger().path
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the newest entry lost: the anchor still counts it
    code, doc = _json(capfd, "ledger", "verify", "--json", "--config", cfg)
    assert code == ExitCode.FAILED and doc["ok"] is False and doc["exit_code"] == 1 and doc["problems"]
    assert any("truncated" in p for p in doc["problems"])
    code, doc = _json(capfd, "check", "--json", "--config", cfg)
    assert code == ExitCode.CONFIG and doc["error"] == "config" and doc["exit_code"] == 2
    assert any(p.startswith("ledger: ") for p in doc["problems"])


def test_errors_are_json_with_a_code(tmp_path, capfd):
    code, doc = _json(capfd, "check", "--json", "--config", str(tmp_path / "missing.toml"))
    assert code == ExitCode.CONFIG and doc == {**doc, "ok": False, "error": "config", "exit_code": 2}
    assert any("file not found" in p for p in doc["problems"])
    code, doc = _json(capfd, "ledger", "show", "--json", "--state-dir", str(tmp_path / "nowhere"))
    assert code == ExitCode.FAILED and doc["ok"] is False and doc["problems"] and doc["entries"] == []


def test_usage_errors_are_json_too(capfd):
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["ledger", "show", "--json", "--no-such-flag"])
    out, err = capfd.readouterr()
    assert exc.value.code == ExitCode.CONFIG and json.loads(out)["error"] == "config" and "--no-such-flag" in err


def test_site_config_from_the_environment_and_the_flag_wins(site, capfd, monkeypatch, tmp_path_factory):
    monkeypatch.setenv(SITE_CONFIG_ENV, str(site / "site.toml"))
    code, doc = _json(capfd, "ledger", "show", "--json")
    assert code == 0 and doc["ledger"] == str(load_site_config(site / "site.toml").ledger().path)
    other = tmp_path_factory.mktemp("elsewhere") / "site.toml"
    code, doc = _json(capfd, "check", "--json", "--config", str(other))
    assert code == ExitCode.CONFIG and any(str(other) in p for p in doc["problems"])

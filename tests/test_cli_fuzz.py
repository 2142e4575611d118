"""Fuzzed command lines: every command answers bad input with an exit code and a message, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhaven.client.cli import build_parser as client_parser
from fedhaven.client.cli import main as fl_client
from fedhaven.server.cli import build_parser as server_parser
from fedhaven.shared.cli import parse_with_overrides
from fedhaven.sim.cli import main as fl_sim

WORDS = ["run", "check", "list", "status", "stop", "start", "site", "init", "ledger", "show", "verify", "keygen",
         "add", "revoke", "--state-dir", "--config", "--run", "--rounds", "--sites", "--seed", "--partition",
         "--no-dp", "--no-secagg", "--detach", "--timeout", "-v", "--public-key", "--name", "--ip", "--listen",
         "digits", "mnist", "rounds=2", "train.lr=x", "dp.enabled=false", "=", "==", "a=b=c", "-", "--", "1", "-1",
         "nan", "inf", "dirichlet:0", "/nonexistent", "é", ""]
ARGV = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)), max_size=7)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(argv=ARGV)
def test_parsers_accept_or_exit_2(argv):
    for build in (server_parser, client_parser):
        parser, _ = build()
        try:
            parse_with_overrides(parser, argv)
        except SystemExit as exc:
            assert exc.code == 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200), action=st.sampled_from([["check"], ["ledger", "verify"], ["ledger", "show"]]))
def test_fl_client_with_any_site_toml_exits_with_a_message(tmp_path, capsys, text, action):
    path = tmp_path / "site.toml"
    path.write_text(text)
    code = fl_client([*action, "--config", str(path)])
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and err.strip(), (code, err)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.one_of(
    st.sampled_from(["rounds=0", "rounds=2", "sites=1", "sites=3", "train.lr=-1", "train.lr=nan", "dp.delta=2",
                     "model.name=resnet9000", "strategy.name=krum9", "partition=dirichlet:0", "dp.target_epsilon=0",
                     "secagg.num_shares=4", "data.source=imagefolder", "bogus.key=1", "dp.noise_multiplier=-1"]),
    st.from_regex(r"[a-z_.]{1,12}=[a-z0-9.\"-]{0,6}", fullmatch=True)), max_size=3))
def test_fl_sim_check_answers_any_override_without_a_traceback(tmp_path, capsys, monkeypatch, overrides):
    monkeypatch.chdir(tmp_path)
    code = fl_sim(["check", "digits", *overrides])
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip()


@pytest.mark.parametrize("override, says", [("model.name=resnet9000", "resnet9000"),
                                            ("strategy.name=krum9", "krum9")])
def test_fl_sim_check_refuses_what_run_would_fail_on(capsys, override, says):
    assert fl_sim(["check", "digits", override]) == 2
    assert says in capsys.readouterr().err

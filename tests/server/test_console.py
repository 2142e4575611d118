"""The operator console, metrics and probes in-process (Starlette's test client) over a state directory written as
the coordinator writes it; the coordinator itself is not running, so the Control API does not answer."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from fedhaven.server.console.app import COOKIE, ConsoleSettings, build_app
from fedhaven.server.console.serve import check_listen, operator_token
from fedhaven.server.console.view import read_federation
from fedhaven.server.provision import SiteRecord, StateDir
from fedhaven.server.records import RoundRecord

TOKEN = "s3cret-operator-token"


def _round(n: int, status: str = "ok", **kw) -> RoundRecord:
    base = dict(round=n, status=status, attempt=1, loss=1.0 / (n + 1), accuracy=0.3 + 0.2 * n,
                epsilon_max=0.5 * n, epsilon_mean=0.5 * n, sites_ok=2, sites_failed=0, round_time_s=4.0 * (n + 1),
                fit_time_s=1.0, eval_time_s=0.1, secure_aggregation=True,
                epsilons={"hospital-a": 0.5 * n, "hospital-b": 0.4 * n})
    base.update(kw)
    return RoundRecord(**base)


@pytest.fixture
def state(tmp_path):
    st = StateDir(tmp_path / "coordinator")
    st.runs.mkdir(parents=True)
    st.save_sites({"hospital-a": SiteRecord("hospital-a", "SHA256:aa", "registered", 11),
                   "hospital-b": SiteRecord("hospital-b", "SHA256:bb", "registered", 12),
                   "hospital-c": SiteRecord("hospital-c", "SHA256:cc", "revoked")})
    run = st.runs / "run-42"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "round-002.pt").write_bytes(b"x")
    (run / "config.json").write_text(json.dumps({"rounds": 4, "dp": {"enabled": True, "target_epsilon": 3.0}}))
    rounds = [_round(0, "initial", epsilons={}), _round(1), _round(2),
              _round(3, "failed", accuracy=None, failures=["site hospital-b <b>refused</b>: budget"],
                     refusals={"SITE_BUDGET": 1}, sites_failed=1),
              _round(3, "rejected", attempt=2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rounds))
    return st


def _client(state, *, token: bool) -> TestClient:
    app = build_app(ConsoleSettings(state=state, token=TOKEN, require_token=token))
    return TestClient(app, base_url="http://127.0.0.1:9094", follow_redirects=False)


def test_the_view_reads_registry_and_run_directories(state):
    fed = read_federation(state)
    assert fed.control_error and "does not exist" in fed.control_error  # no coordinator: said, not hidden
    assert [(s.name, s.status, s.online) for s in fed.sites] == [
        ("hospital-a", "registered", False), ("hospital-b", "registered", False), ("hospital-c", "revoked", False)]
    assert {s.name: s.epsilon for s in fed.sites} == {"hospital-a": 1.5, "hospital-b": pytest.approx(1.2),
                                                     "hospital-c": None}
    run = fed.run("run-42")
    assert run is not None and run.done == 2 and run.rejected == 1 and run.resumable
    assert run.refusals == {"SITE_BUDGET": 1} and run.budget_left("hospital-a") == pytest.approx(1.5)


def test_probes_answer_anyone_and_say_not_ready_without_the_superlink(state):
    client = _client(state, token=True)
    assert client.get("/healthz").status_code == 200
    res = client.get("/readyz", headers={"host": "10.1.2.3:9094"})  # a kubelet dials the pod's IP
    assert res.status_code == 503 and "Control API" in res.text


def test_the_console_and_metrics_need_the_operator_token_over_tcp(state):
    client = _client(state, token=True)
    assert client.get("/").headers["location"] == "/login"
    assert client.get("/metrics").status_code == 401
    assert client.post("/runs/run-42/stop", data={"csrf": "x"}).status_code == 401
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    res = client.post("/login", data={"token": TOKEN})
    assert res.status_code == 303 and res.headers["set-cookie"].startswith(f"{COOKIE}=")
    assert "httponly" in res.headers["set-cookie"].lower()
    assert "samesite=strict" in res.headers["set-cookie"].lower() and TOKEN not in res.headers["set-cookie"]
    assert _client(state, token=True).get("/", cookies={COOKIE: TOKEN}).status_code == 303  # the token is no cookie
    page = client.get("/")
    assert page.status_code == 200 and "hospital-a" in page.text and "run-42" in page.text
    assert "2 sites registered" not in page.text and "3 sites registered, 0 online, 1 revoked" in page.text
    bearer = _client(state, token=True).get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200


def test_metrics_count_rounds_refusals_durations_and_epsilon(state):
    text = _client(state, token=False).get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("fedhaven_rounds_total", (("outcome", "ok"),))] == 2
    assert samples[("fedhaven_rounds_total", (("outcome", "rejected"),))] == 1
    assert samples[("fedhaven_rounds_total", (("outcome", "failed"),))] == 1
    assert samples[("fedhaven_site_refusals_total", (("reason", "site_budget"),))] == 1
    assert samples[("fedhaven_sites", (("status", "registered"),))] == 2
    assert samples[("fedhaven_sites", (("status", "revoked"),))] == 1
    assert samples[("fedhaven_sites_online", ())] == 0 and samples[("fedhaven_control_api_up", ())] == 0
    assert samples[("fedhaven_site_epsilon", (("site", "hospital-a"),))] == pytest.approx(1.5)
    assert samples[("fedhaven_round_duration_seconds_count", ())] == 4
    assert samples[("fedhaven_round_duration_seconds_sum", ())] == pytest.approx(8 + 12 + 16 + 16)


def test_pages_escape_site_text_and_may_not_be_framed(state):
    res = _client(state, token=False).get("/runs/run-42")
    assert res.status_code == 200 and "&lt;b&gt;refused&lt;/b&gt;" in res.text and "<b>refused" not in res.text
    assert res.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in res.headers[
        "content-security-policy"]
    assert 'data-site="hospital-a"' in res.text and "Resume this run" in res.text
    svg = _client(state, token=False).get("/runs/run-42/epsilon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content


def test_actions_need_confirmation_csrf_and_the_same_origin(state):
    client = _client(state, token=False)
    confirm = client.get("/runs/run-42/resume")
    assert confirm.status_code == 200 and 'method="post"' in confirm.text
    csrf = ConsoleSettings(state=state, token=TOKEN, require_token=False).csrf
    assert csrf in confirm.text
    assert client.post("/runs/run-42/resume", data={}).status_code == 403
    evil = client.post("/runs/run-42/resume", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.text
    # the right token and origin: the action runs and says why it could not (no coordinator here)
    res = client.post("/runs/run-42/resume", data={"csrf": csrf}, headers={"origin": "http://127.0.0.1:9094"})
    assert res.status_code == 409 and "does not exist" in res.text


def test_pages_answer_only_to_local_host_names(state):
    res = _client(state, token=False).get("/", headers={"host": "attacker.example:9094"})
    assert res.status_code == 400  # DNS rebinding: a page from another origin cannot read the console


def test_the_operator_port_is_never_the_sites_port(tmp_path):
    with pytest.raises(ValueError, match="Fleet port"):
        check_listen("0.0.0.0:9092", fleet="0.0.0.0:9092")
    assert check_listen("127.0.0.1:9094", fleet="0.0.0.0:9092") == ("127.0.0.1", 9094)
    state = StateDir(tmp_path)
    token = operator_token(state)
    assert len(token) >= 32 and operator_token(state) == token
    assert (tmp_path / "operator.token").stat().st_mode & 0o077 == 0


def test_a_flooded_form_is_refused_before_it_is_read(state):
    client = _client(state, token=True)
    res = client.post("/login", content=b"token=" + b"x" * 100_000,
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert res.status_code == 413
    chunked = client.post("/login", content=iter([b"token=", b"x" * 100_000]),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413  # no Content-Length: refused as well


def test_torn_and_corrupt_run_files_are_read_as_far_as_they_go(state):
    run = state.runs / "run-42"
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 4, "status": "o')  # a line torn by a crash
    (run / "privacy.json").write_text("{not json")
    (state.runs / "run-7").mkdir()  # a run that died before writing anything
    fed = read_federation(state)
    assert fed.run("run-42").done == 2 and fed.run("run-7").rounds == ()
    client = _client(state, token=False)
    assert client.get("/").status_code == 200 and client.get("/runs/run-7").status_code == 200
    assert client.get("/runs/run-42/accuracy.svg").status_code == 200
    assert client.get("/runs/no-such-run").status_code == 404


def test_the_round_loop_records_refusals_by_their_code(tmp_path):
    """What fedhaven_site_refusals_total counts: each attempt's refusals by code, written into metrics.jsonl (a
    crash, which carries no code, is a failure but no refusal)."""
    from fedhaven.server.failures import RoundFailed, SiteFailure
    from fedhaven.server.federation import _one_round
    from fedhaven.server.flower_legacy import FitOutcome, FitRoundLog
    from fedhaven.server.recorder import RunRecorder
    from fedhaven.shared.models import InputSpec
    from fedhaven.shared.refusal import Code
    from fedhaven.shared.schema import ModelConfig, RunConfig

    class Refusing:
        def fit_round(self, server_round):
            failures = [SiteFailure("site a: budget spent", Code.SITE_BUDGET),
                        SiteFailure("site b: budget spent", Code.SITE_BUDGET),
                        SiteFailure("site c: noise too low", Code.POLICY), SiteFailure("site d: crashed")]
            return FitOutcome(weights=None, log=FitRoundLog(failures=failures), halted_stage="fit")

        def available_sites(self):
            return 4

    run = RunConfig(model=ModelConfig(name="lenet"), round_retries=0)
    recorder = RunRecorder(run_dir=tmp_path, run=run, input_spec=InputSpec(1, 8, 3), classes=("a", "b", "c"))
    with pytest.raises(RoundFailed):
        _one_round(fed=Refusing(), run=run, server_round=1, recorder=recorder, evaluator=None)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["refusals"] == {"SITE_BUDGET": 2, "POLICY": 1}


PNG = b"\x89PNG\r\n\x1a\n" + b"figure-bytes"


@pytest.fixture
def explained(state):
    """run-42 with explanations (as `fedhaven.shared.explain` writes them) and one site's shared histogram."""
    run = state.runs / "run-42"
    explain = run / "explain"
    explain.mkdir()
    for name in ("confusion.png", "reliability.png", "attributions-class-0.png"):
        (explain / name).write_bytes(PNG + name.encode())
    (explain / "explain.json").write_text(json.dumps({
        "format": 1, "privacy": "Computed by the coordinator on its own held-out test set", "test_examples": 360,
        "accuracy": 0.9, "per_class_accuracy": {"zero": 0.95, "<b>one</b>": None},
        "calibration": {"ece": 0.042}, "attribution": {"method": "integrated gradients (Captum)"},
        "files": {"attributions_zero": "attributions-class-0.png", "confusion_matrix": "confusion.png",
                  "reliability": "reliability.png", "odd": "../config.json"}}))
    (run / "site-statistics.json").write_text(json.dumps(
        {"hospital-a": {"class_histogram": {"zero": 101.0, "<i>one</i>": 87.0}, "round": 1}}))
    (state.root / "secret.png").write_bytes(b"not for the browser")
    return state


def test_the_run_page_shows_explanations_and_what_sites_shared_of_their_data(explained):
    client = _client(explained, token=False)
    page = client.get("/runs/run-42").text
    assert 'src="/runs/run-42/explain/confusion.png"' in page and "expected calibration error 0.042" in page
    assert 'src="/runs/run-42/explain/attributions-class-0.png"' in page and "config.json" not in page
    assert "&lt;b&gt;one&lt;/b&gt;" in page and "<b>one" not in page and "0.950" in page and "360 test" in page
    quality = page.split('id="site-quality"')[1].split("</table>")[0]
    a = quality.split('data-site="hospital-a"')[1].split("</tr>")[0]
    b = quality.split('data-site="hospital-b"')[1].split("</tr>")[0]
    assert "noisy class histogram (round 1)" in a and "zero 101" in a and "&lt;i&gt;one&lt;/i&gt; 87" in a
    assert "stays at the site" in b and "histogram" not in b
    for img in ("confusion.png", "attributions-class-0.png"):
        res = client.get(f"/runs/run-42/explain/{img}")
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        assert res.content == PNG + img.encode() and res.headers["x-content-type-options"] == "nosniff"


def test_a_run_without_explanations_says_so_and_every_site_keeps_its_report(state):
    page = _client(state, token=False).get("/runs/run-42").text
    assert "None yet" in page and "/explain/" not in page
    quality = page.split('id="site-quality"')[1].split("</table>")[0]
    assert quality.count("stays at the site") == 2 and "histogram (round" not in quality


def test_only_figures_inside_the_runs_explain_folder_are_served(explained):
    import os

    client = _client(explained, token=False)
    explain = explained.runs / "run-42" / "explain"
    os.symlink(explained.root / "secret.png", explain / "link.png")  # a link out of the folder
    (explained.runs / "run-9").symlink_to(explained.root, target_is_directory=True)  # a run folder that leaves runs/
    (explained.root / "explain").mkdir()
    (explained.root / "explain" / "secret.png").write_bytes(b"not for the browser")
    os.mkfifo(explain / "fifo.png")  # opening it must not hang the console
    for path in ("/runs/run-42/explain/..%2F..%2F..%2Fsecret.png", "/runs/run-42/explain/%2e%2e%2Fconfig.json",
                 "/runs/run-42/explain/..%5Cconfig.json", "/runs/%2e%2e/explain/secret.png",
                 "/runs/run-42/explain/explain.json", "/runs/run-42/explain/link.png",
                 "/runs/run-9/explain/secret.png", "/runs/run-42/explain/fifo.png",
                 "/runs/run-42/explain/missing.png", "/runs/run-42/explain/.png"):
        res = client.get(path)
        assert res.status_code == 404, path
        assert b"not for the browser" not in res.content and b"figure-bytes" not in res.content
    guarded = _client(explained, token=True).get("/runs/run-42/explain/confusion.png")
    assert guarded.status_code == 303 and guarded.headers["location"] == "/login"  # the figures need the token too

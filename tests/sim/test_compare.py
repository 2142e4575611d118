"""`fl-sim compare`: two runs side by side in a table and together in one plot, from their run directories."""

from __future__ import annotations

import json
from dataclasses import asdict

from fedhaven.server.records import RoundRecord
from fedhaven.sim import cli


def _run_dir(path, *, name, accuracies, eps_step, dp=True):
    path.mkdir(parents=True)
    lines = []
    for n, acc in enumerate(accuracies):
        eps = {"site-00": eps_step * n, "site-01": eps_step * n / 2} if n else {}
        lines.append(asdict(RoundRecord(round=n, status="ok" if n else "initial", attempt=1, loss=1.0 / (n + 1),
                                        accuracy=acc, epsilon_max=max(eps.values(), default=0.0), epsilon_mean=0.0,
                                        sites_ok=2, sites_failed=0, round_time_s=2.0, fit_time_s=1.5,
                                        eval_time_s=0.5, secure_aggregation=True, epsilons=eps)))
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (path / "summary.json").write_text(json.dumps({"experiment": name, "sites": 2, "partition": "iid"}))
    (path / "experiment.json").write_text(json.dumps({"dp": {"enabled": dp, "delta": 1e-5},
                                                      "secagg": {"enabled": True}, "strategy": {"name": "fedavg"}}))
    (path / "privacy.json").write_text(json.dumps({"epsilon_max": eps_step * (len(accuracies) - 1),
                                                   "outcome": "completed"}))
    return path


def test_compare_prints_two_runs_side_by_side_and_plots_them(tmp_path, capsys):
    a = _run_dir(tmp_path / "a", name="digits-3-sites-iid", accuracies=[0.1, 0.5, 0.7], eps_step=1.5)
    b = _run_dir(tmp_path / "b", name="digits-3-sites-dirichlet0.3", accuracies=[0.1, 0.3, 0.45, 0.6], eps_step=0.5)
    out_png = tmp_path / "cmp.png"
    assert cli.main(["compare", str(a), str(b), "--out", str(out_png)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "digits-3-sites-iid" in lines[0] and "digits-3-sites-dirichlet0.3" in lines[0]
    row = {ln.split("  ")[0]: ln.split()[-2:] for ln in lines if ln.startswith(("test accuracy", "epsilon max",
                                                                                "rounds "))}
    assert row["test accuracy"] == ["70.00%", "60.00%"] and row["epsilon max"] == ["3.000", "1.500"]
    assert row["rounds"] == ["2", "3"]
    assert any(ln.startswith("accuracy round 3") and ln.split()[-2:] == ["-", "60.00%"] for ln in lines)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli.main(["compare", str(a), str(b), "--out", str(out_png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["final_accuracy"] for r in doc["runs"]] == [0.7, 0.6] and doc["plot"] == str(out_png)


def test_compare_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    a = _run_dir(tmp_path / "a", name="x", accuracies=[0.1, 0.5], eps_step=1.0)
    assert cli.main(["compare", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "c.png")]) == 2
    assert "nothing: not a fedhaven run directory (no metrics.jsonl)" in capsys.readouterr().err

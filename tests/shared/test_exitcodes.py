"""One table of exit codes for the three commands, the same in code and the operator's guide; `--version` on each."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from fedhaven.shared.exitcodes import MEANINGS, ExitCode, table

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def test_every_code_has_a_meaning_and_the_operators_guide_shows_the_table():
    assert set(MEANINGS) == set(ExitCode) and len({int(c) for c in ExitCode}) == len(ExitCode)
    assert table() in GUIDE.read_text(), "docs/operator.md's exit-code table differs from exitcodes.table()"


@pytest.mark.parametrize("prog", ["fl-server", "fl-client", "fl-sim"])
def test_version_names_fedhaven_and_flower(prog, capsys):
    from fedhaven.client.cli import main as client
    from fedhaven.server.cli import main as server
    from fedhaven.sim.cli import main as sim

    main = {"fl-server": server, "fl-client": client, "fl-sim": sim}[prog]
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    out = capsys.readouterr().out.strip()
    assert exc.value.code == 0
    assert out.startswith(f"{prog} {importlib.metadata.version('fedhaven')} (Flower 1.42")


def test_json_documents_are_strict_json(capsys):
    import json
    import math

    from fedhaven.shared.exitcodes import ExitCode, error_document, print_json

    print_json({"epsilon": math.inf, "rows": [(1.0, math.nan)], "private": False})
    assert json.loads(capsys.readouterr().out) == {"epsilon": None, "rows": [[1.0, None]], "private": False}
    doc = error_document(command="fl-server status", code=ExitCode.NOT_RUNNING, message="not running")
    assert doc["exit_code"] == 3 and doc["error"] == "not_running" and doc["problems"] == ["not running"]

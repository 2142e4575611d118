"""The exit codes of fl-server, fl-client and fl-sim: one table, used by all three commands and shown in the docs."""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Sequence
from typing import Any


class ExitCode(enum.IntEnum):
    """What a fedhaven command's exit status means (docs/operator.md shows this table, under "Scripts")."""

    OK = 0  # done: the check passed, the run completed, the ledger verifies
    FAILED = 1  # it ran and failed: a run failed or trained nothing, a ledger does not verify, an API call failed
    CONFIG = 2  # bad command line or configuration; nothing was started (every problem is listed)
    NOT_RUNNING = 3  # `fl-server status`: the coordinator is not running
    BROKEN = 4  # `fl-server status`: the coordinator is gone but parts of it still run (`fl-server stop` ends them)
    PERMISSION = 5  # a file belongs to another account (fedhaven's files are their owner's alone)


#: One line per code, for the docs and `--help` epilogs.
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "ran and failed (run failed or trained nothing, ledger does not verify, Control API error)",
    ExitCode.CONFIG: "bad command line or configuration; nothing was started",
    ExitCode.NOT_RUNNING: "fl-server status: the coordinator is not running",
    ExitCode.BROKEN: "fl-server status: the coordinator is gone but parts of it still run",
    ExitCode.PERMISSION: "permission denied: run the command as the account that owns the files",
}


def table() -> str:
    """The exit codes as a Markdown table (what docs/operator.md shows; a test keeps the two equal)."""
    rows = ["| code | name | meaning |", "|---|---|---|"]
    rows += [f"| {c.value} | {c.name} | {MEANINGS[c]} |" for c in ExitCode]
    return "\n".join(rows)


def epilog() -> str:
    """The exit codes for a command's --help."""
    return "exit codes: " + "; ".join(f"{c.value} {MEANINGS[c]}" for c in ExitCode)


def _strict(value: Any) -> Any:
    """`value` with every NaN or infinity as null: strict JSON, which every reader parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def print_json(document: dict[str, Any]) -> None:
    """Write one JSON document to stdout (a `--json` command's whole stdout); NaN and infinities become null (an
    infinite epsilon always comes with `"private": false` beside it)."""
    sys.stdout.write(json.dumps(_strict(document), indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def error_document(*, command: str, code: ExitCode, message: str, problems: Sequence[str] = ()) -> dict[str, Any]:
    """A `--json` command's answer when it fails: `ok` false, the exit code by number and name, every problem."""
    return {"ok": False, "command": command, "exit_code": int(code), "error": code.name.lower(),
            "message": message, "problems": list(problems) or [message]}

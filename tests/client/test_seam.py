"""The site's seam with Flower: its records hold for the installed Flower; only the seam touches its internals."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import fedhaven.client
from fedhaven.client.seam import INTERNALS, READ_FROM
from fedhaven.shared.seams import Internal, verify

CLIENT = Path(fedhaven.client.__file__).parent
SEAM = CLIENT / "seam"
#: What Flower documents as public for a ClientApp; a `from M import X` must name an X in M.__all__.
PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.client", "flwr.client.mod", "flwr.common")


def _flwr_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None for `import module`) of every import of Flower in a file."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "flwr"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "flwr":
                found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def _is_public(module: str, name: str | None) -> bool:
    if name is None:
        return module in PUBLIC
    if module == "flwr":
        return f"flwr.{name}" in PUBLIC
    if module not in PUBLIC:
        return False
    mod = importlib.import_module(module)
    return name in getattr(mod, "__all__", ()) or (module == "flwr.common" and name in vars(mod))


def test_the_seam_s_records_hold_for_the_installed_flower():
    assert READ_FROM == "flwr 1.42.0"
    assert INTERNALS and all(isinstance(it, Internal) for it in INTERNALS)
    assert verify(INTERNALS) == []


def test_a_record_names_what_a_flower_upgrade_removed(monkeypatch):
    run_clientapp = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    monkeypatch.delattr(run_clientapp, "pull_task_input")  # the function the seam's pull is an adapted copy of
    problems = verify(INTERNALS)
    assert problems == ["flwr.supernode.runtime.run_clientapp.pull_task_input: 'pull_task_input' is gone"]


def test_a_record_names_a_changed_parameter_and_changed_source(monkeypatch):
    run_clientapp = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    heartbeat = importlib.import_module("flwr.supercore.heartbeat")

    def push_task_output(client, context, status, details):  # `sub_status` renamed
        """A push_task_output whose parameter was renamed."""

    def make_task_heartbeat_fn_http(client):  # no longer raises SIGINT
        """A heartbeat that changed what the seam's copy leaves out."""
        return lambda: client.SendTaskHeartbeat(None)

    monkeypatch.setattr(run_clientapp, "push_task_output", push_task_output)
    monkeypatch.setattr(heartbeat, "make_task_heartbeat_fn_http", make_task_heartbeat_fn_http)
    problems = verify(INTERNALS)
    assert "flwr.supernode.runtime.run_clientapp.push_task_output: parameter 'sub_status' is gone" in problems
    assert any(p.startswith("flwr.supercore.heartbeat.make_task_heartbeat_fn_http: its source no longer holds")
               for p in problems)
    assert all("push_task_output" in p or "make_task_heartbeat_fn_http" in p for p in problems)


def test_every_internal_the_seam_imports_has_a_record():
    recorded = {(it.module, it.name.split(".")[0]) for it in INTERNALS} | {(it.module, "") for it in INTERNALS}
    missing = []
    for path in sorted(SEAM.glob("*.py")):
        for line, module, name in _flwr_imports(path):
            if _is_public(module, name):
                continue
            as_module = f"{module}.{name}" if name else module
            if (module, name or "") not in recorded and (as_module, "") not in recorded:
                missing.append(f"{path.name}:{line}: {module} {name or ''}")
    assert missing == []


def test_the_seam_s_docstring_lists_every_record():
    doc = inspect.getdoc(importlib.import_module("fedhaven.client.seam")) or ""
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "1.42.0" in line]
    assert len(rows) == len(INTERNALS)
    for it in INTERNALS:
        assert f"`{it.module}`" in doc, it
        assert (f"| `{it.name}` | {it.kind} |" if it.name else f"| (module text) | {it.kind} |") in doc, it


def test_outside_the_seam_the_site_imports_only_flower_s_public_api():
    files = [p for p in sorted(CLIENT.rglob("*.py")) if SEAM not in p.parents]
    assert len(files) > 10
    private = [f"{p.relative_to(CLIENT)}:{line}: {module}{'.' + name if name else ''}"
               for p in files for line, module, name in _flwr_imports(p) if not _is_public(module, name)]
    assert private == []


@pytest.mark.parametrize(("line", "failures"), [
    ("ERROR :     Failed to initialize the connection to the SuperLink.", ()),
    ("[code: 2004] Failed to activate SuperNode.", ("key-rejected",)),
    ("[code: 2001] SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.",
     ("key-missing",)),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", ("tls-unverified",)),
])
def test_the_supernode_s_admission_errors_are_recognised(line, failures):
    from fedhaven.client.seam.formats import admission_failures

    assert admission_failures(line=line) == failures


def test_empty_flower_info_lines_are_recognised_in_flower_s_own_format():
    import logging

    from flwr.supercore.logger import ConsoleHandler  # the text the seam relies on, as Flower formats it today

    from fedhaven.client.seam.formats import is_empty_log_line

    handler = ConsoleHandler(timestamps=False, json=False, colored=True)
    empty = handler.format(logging.LogRecord("flwr", logging.INFO, __file__, 1, "", None, None)).rstrip()
    full = handler.format(logging.LogRecord("flwr", logging.INFO, __file__, 1, "Starting", None, None)).rstrip()
    assert is_empty_log_line(text=empty)
    assert not is_empty_log_line(text=full)

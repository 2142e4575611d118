"""The coordinator's Flower seam: every internal it lists is still there as read, a removed one fails by name, and no
module outside the seams reaches past Flower's public API."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from fedhaven.server import seam
from fedhaven.shared.seams import Internal, verify

ROOT = Path(__file__).resolve().parents[2]
#: Flower's documented public modules (a name imported from them must be one they export).
PUBLIC = frozenset({"flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.client", "flwr.client.mod", "flwr.server",
                    "flwr.server.strategy", "flwr.server.workflow", "flwr.common", "flwr.simulation"})
#: Each side's seam, and the benchmarks (which measure Flower itself; see fedhaven.server.seam's docstring).
OUTSIDE_THE_RULE = ("server/fedhaven/server/seam", "client/fedhaven/client/seam", "simulations/fedhaven/sim/bench")


def test_every_internal_the_coordinator_relies_on_is_still_there():
    assert len(seam.INTERNALS) > 40
    assert verify(seam.INTERNALS) == []


def test_a_removed_or_changed_internal_fails_by_name(monkeypatch):
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow

    monkeypatch.delattr(secaggplus_workflow, "WorkflowState")
    assert verify(seam.INTERNALS) == [
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow.WorkflowState: 'WorkflowState' is gone"]
    monkeypatch.undo()
    from flwr.proto import message_pb2

    monkeypatch.setattr(message_pb2.PushObjectRequest, "OBJECT_ID_FIELD_NUMBER", 4, raising=False)
    assert verify(seam.INTERNALS) == ["flwr.proto.message_pb2.PushObjectRequest: OBJECT_ID_FIELD_NUMBER is 4, "
                                      "fedhaven relies on 3"]


def test_verify_checks_parameters_and_source():
    odd = (Internal("flwr.server.workflow.default_workflows", "default_fit_workflow", "import", "t",
                    params=("grid", "driver")),
           Internal("flwr.server.strategy.fedopt", "FedOpt.__init__", "patch", "t", source=("self.no_such_thing",)),
           Internal("flwr.no_such_module", "", "import", "t"))
    problems = verify(odd)
    assert any("parameter 'driver' is gone" in p for p in problems)
    assert any("no longer holds 'self.no_such_thing'" in p for p in problems)
    assert any("does not import" in p for p in problems)


def test_the_seams_docstring_lists_everything_it_relies_on():
    doc = seam.__doc__ or ""
    assert "1.42.0" in doc and seam.READ_FROM == "flwr 1.42.0"
    for it in seam.INTERNALS:
        assert f"`{it.module}.{it.name}`" in doc, it


def _product_files() -> list[Path]:
    out = []
    for top in ("shared", "client", "server", "simulations"):
        for path in (ROOT / top / "fedhaven").rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(OUTSIDE_THE_RULE):
                out.append(path)
    return out


def _flower_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) of every flwr import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "flwr"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flwr":
            out += [(node.lineno, node.module, a.name) for a in node.names]
    return out


def test_no_module_outside_the_seams_imports_flower_internals():
    files = _product_files()
    assert len(files) > 60
    found = []
    for path in files:
        for line, module, name in _flower_imports(path):
            rel = f"{path.relative_to(ROOT)}:{line}"
            if module not in PUBLIC:
                found.append(f"{rel}: {module}" + (f".{name}" if name else ""))
            elif name is not None and not hasattr(importlib.import_module(module), name):
                found.append(f"{rel}: {module}.{name} is not exported by {module}")
    assert found == []


@pytest.mark.parametrize("text", [
    "from flwr.server.workflow.constant import Key\n",
    "import flwr.supercore.superexec.run_superexec as superexec\n",
])
def test_the_import_check_sees_an_internal(tmp_path, text):
    path = tmp_path / "m.py"
    path.write_text(text)
    assert [m for _, m, _ in _flower_imports(path)] and all(m not in PUBLIC for _, m, _ in _flower_imports(path))


def test_flowers_unguarded_grpc_switches_never_reach_what_fedhaven_starts(monkeypatch, tmp_path):
    """FLWR_INTERNAL_GRPC_FLEET_API=1 would make the SuperLink open gRPC Fleet and Control APIs on 0.0.0.0, beside
    the gate and the operator-only socket: removed from every process the coordinator and sites start."""
    from fedhaven.server.coordinator import child_env
    from fedhaven.server.provision import StateDir
    from fedhaven.shared.runtime import UNSAFE_ENV, harden_environment, hardened_env

    for name in UNSAFE_ENV:
        monkeypatch.setenv(name, "1")
    assert not set(UNSAFE_ENV) & set(child_env(StateDir(tmp_path)))
    assert not set(UNSAFE_ENV) & set(hardened_env(X="1"))
    harden_environment()
    assert not set(UNSAFE_ENV) & set(__import__("os").environ)

"""Packaging and process hygiene: one `fedhaven` namespace, no bare packages, no telemetry, single log lines."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    # Flower exports its sys.path as PYTHONPATH when it starts Ray; children must not inherit that here.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "RAY_", "PYTHONPATH"))}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=120)


def test_one_namespace_and_no_bare_packages(tmp_path):
    code = """
import importlib, fedhaven
assert not hasattr(fedhaven, '__file__') or fedhaven.__file__ is None, 'fedhaven must be a PEP 420 namespace'
for m in ('fedhaven.shared', 'fedhaven.client', 'fedhaven.server', 'fedhaven.sim'):
    importlib.import_module(m)
bad = []
for m in ('shared', 'client', 'server', 'simulations', 'sim'):
    try:
        importlib.import_module(m)
        bad.append(m)
    except ImportError:
        pass
print(sorted(str(p) for p in fedhaven.__path__))
assert not bad, bad
"""
    res = _py(code, tmp_path)
    assert res.returncode == 0, res.stderr
    for folder in ("shared", "client", "server", "simulations"):
        assert str(ROOT / folder) in res.stdout
        assert not (ROOT / folder / "__init__.py").exists()
        assert not (ROOT / folder / "fedhaven" / "__init__.py").exists()


def test_shared_imports_no_flower(tmp_path):
    code = """
import sys
import fedhaven.shared.training, fedhaven.shared.accounting, fedhaven.shared.data, fedhaven.shared.task
import fedhaven.shared.partition, fedhaven.shared.weights, fedhaven.shared.models
assert not [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')], 'fedhaven.shared imported Flower'
"""
    res = _py(code, tmp_path)
    assert res.returncode == 0, res.stderr


def test_entry_points_turn_telemetry_off_before_flower_loads(tmp_path):
    code = """
import fedhaven.sim.cli, fedhaven.client.flower_app, fedhaven.server.app
import flwr.supercore.telemetry as t, os
assert t.FLWR_TELEMETRY_ENABLED == '0', t.FLWR_TELEMETRY_ENABLED
assert os.environ['FLWR_DISABLE_UPDATE_CHECK'] == '1'
"""
    res = _py(code, tmp_path)
    assert res.returncode == 0, res.stderr


def test_opacus_does_not_double_flower_log_lines(tmp_path):
    code = """
from fedhaven.shared.runtime import configure_logging
configure_logging()
import opacus, flwr, logging
from flwr.supercore import log
assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger().handlers), logging.getLogger().handlers
log(logging.CRITICAL, 'only-once')
"""
    res = _py(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (res.stdout + res.stderr).count("only-once") == 1


def test_dependencies_are_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "flwr[simulation]==1.42.0", "opacus==1.6.0"):
        assert pin in deps
    assert any(d.startswith("cryptography==") for d in deps) and any(d.startswith("grpcio==") for d in deps)

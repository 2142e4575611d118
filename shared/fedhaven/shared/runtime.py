"""Process set-up shared by every entry point: no telemetry, single log lines, one device decision."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Literal, TextIO

#: Environment every fedhaven process and everything it starts runs with.
HARDENED_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",  # Flower reads this once, when flwr is first imported
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


#: Flower switches that would open its gRPC Fleet (0.0.0.0:9092) and Control (0.0.0.0:9093) APIs beside fedhaven's
#: doors, where neither the gate nor the operator-only socket guards them: never passed on (flwr.common.constant).
UNSAFE_ENV = ("FLWR_INTERNAL_GRPC_FLEET_API", "FLWR_INTERNAL_GRPC_CONTROL_API")


def harden_environment() -> None:
    """Turn Flower's telemetry and update check (and Ray's usage stats) off for this process and its children, and
    remove the switches that would open Flower's unguarded gRPC ports."""
    os.environ.update(HARDENED_ENV)
    for name in UNSAFE_ENV:
        os.environ.pop(name, None)


def hardened_env(**extra: str) -> dict[str, str]:
    """The environment of a process fedhaven starts: this one's, hardened, without the unsafe switches."""
    env = {k: v for k, v in os.environ.items() if k not in UNSAFE_ENV}
    return {**env, **HARDENED_ENV, **extra}


def quiet_opacus_import() -> None:
    """Import Opacus without its `logging.basicConfig` call doubling every Flower log line.

    Opacus configures the root logger on import; Flower logs through its own
    handler and propagates to root, so every line would print twice. A root
    handler installed first makes `basicConfig` a no-op.
    """
    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.NullHandler()
        root.addHandler(added)
    import opacus  # noqa: F401 - the import is the point

    if added is not None:
        root.removeHandler(added)


class _FlowerLogFloor(logging.Filter):
    """Drops Flower's records below a level; a filter survives Flower's own `setLevel(DEBUG)` on import."""

    _NOISE = ("run_simulation` function is deprecated",)

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.floor and not any(n in record.getMessage() for n in self._NOISE)


def configure_logging(*, verbose: bool = False) -> logging.Logger:
    """fedhaven's logger, printing once per line; Flower's own logger kept quieter unless `verbose`."""
    harden_environment()
    # A root handler makes Opacus' import-time basicConfig a no-op, whenever Opacus is imported later
    # (importing it here would cost every command several seconds).
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    # Quiet by default: fedhaven reports rounds, failures and their reasons itself;
    # Flower's own errors arrive wrapped in long Ray tracebacks. `verbose` shows them.
    flwr_logger = logging.getLogger("flwr")
    for f in [f for f in flwr_logger.filters if isinstance(f, _FlowerLogFloor)]:
        flwr_logger.removeFilter(f)
    flwr_logger.addFilter(_FlowerLogFloor(logging.DEBUG if verbose else logging.CRITICAL))
    quiet_python_warnings(verbose=verbose)
    logger = logging.getLogger("fedhaven")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logger


def quiet_python_warnings(*, verbose: bool) -> None:
    """Python's own warnings (a quantiser's RuntimeWarning, a library's DeprecationWarning) only under `verbose`:
    in this process, and through PYTHONWARNINGS in every process it starts (Ray workers, SuperLink, SuperNodes,
    ClientApp processes), unless the user set PYTHONWARNINGS."""
    import warnings

    if verbose:
        if os.environ.get("PYTHONWARNINGS") == _QUIET_WARNINGS:
            os.environ.pop("PYTHONWARNINGS")
        return
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", _QUIET_WARNINGS)


_QUIET_WARNINGS = "ignore"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time of each record (test capture, redirection)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


Device = Literal["auto", "cpu", "cuda"]


@functools.cache
def resolve_device(preference: Device = "auto") -> str:
    """`cuda` when asked for or available under `auto`, else `cpu`; decided once per process."""
    import torch

    if preference == "cpu":
        return "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use device = 'auto' or 'cpu'")
        return "cuda"
    return "cuda" if torch.cuda.is_available() else "cpu"

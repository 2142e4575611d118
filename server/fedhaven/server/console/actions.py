"""The console's two actions, through the same calls as `fl-server stop --run` and `fl-server run --resume
--detach`."""

from __future__ import annotations

import shutil

from fedhaven.server.cli.run import interrupted_runs, resume_config
from fedhaven.server.coordinator import control_for
from fedhaven.server.provision import StateDir
from fedhaven.server.seam.control import Control, ControlError, write_app_dir
from fedhaven.shared.config import ConfigError


class ActionError(RuntimeError):
    """An action the coordinator refused; the message says why and what to do."""


def _run_id(name: str) -> int:
    rid = name.removeprefix("run-")
    if not rid.isdigit():
        raise ActionError(f"{name!r} is not a run name (run-<id>)")
    return int(rid)


def _control(state: StateDir) -> Control:
    try:
        return control_for(state)
    except ControlError as exc:
        raise ActionError(str(exc)) from None


def stop_run(*, state: StateDir, name: str) -> str:
    """Stop a running run (Flower's StopRun); its last complete round's checkpoint stays, so it can be resumed."""
    run_id = _run_id(name)
    control = _control(state)
    try:
        current = control.run(run_id)
        if current.finished:
            raise ActionError(f"run {run_id} is not running ({current.status}:{current.sub_status})")
        control.stop_run(run_id)
    except (ControlError, KeyError) as exc:
        raise ActionError(f"the coordinator could not stop run {run_id}: {exc}") from None
    finally:
        control.close()
    return f"run {run_id} stopped; it can be resumed from its last complete round"


def resume_run(*, state: StateDir, name: str) -> str:
    """Continue an interrupted run from its last checkpoint, with its own configuration (a new Flower run that
    writes on in the same run directory)."""
    _run_id(name)
    control = _control(state)
    try:
        running = {f"run-{r.run_id}" for r in control.runs() if not r.finished}
        if running:  # a resumed run has a new id: which directory a running run writes to is not known here
            raise ActionError(f"a run is training ({', '.join(sorted(running))}): resume {name} when it has ended")
        if name not in {n for n, _, _ in interrupted_runs(state, running=running)}:
            raise ActionError(f"{name} is not an interrupted run (it runs, finished, or has no checkpoint yet)")
        cfg = resume_config(state=state, which=name)
        app_dir = write_app_dir(run=cfg)
        try:
            run_id = control.start_run(app_dir=app_dir)
        finally:
            shutil.rmtree(app_dir, ignore_errors=True)
    except (ControlError, ConfigError) as exc:
        raise ActionError(str(exc)) from None
    finally:
        control.close()
    return f"{name} resumed as run {run_id}; it writes on in {state.runs / name}"

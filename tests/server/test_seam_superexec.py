"""The coordinator's ServerApp executor starts a ServerApp exactly as Flower's SuperExec would, minus the cold start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from fedhaven.server.seam.superexec import ForkingExecutor, serverapp_args


@pytest.mark.parametrize("insecure,certs,parent,install", [(False, "/ca.pem", 42, False), (True, None, None, True)])
def test_the_forked_serverapp_gets_the_command_line_flowers_executor_would_run(monkeypatch, insecure, certs, parent,
                                                                                install):
    spec = ExecutionSpec(task_type=TaskType.SERVER_APP, runtime_api_address="127.0.0.1:9091", token="t0k",
                         insecure=insecure, root_certificates_path=certs, parent_pid=parent,
                         runtime_dependency_install=install, task_id=7, suppress_output=False)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: started.append(list(args)))
    SubprocessExecutor().launch(spec)
    assert started == [serverapp_args(spec)]


@pytest.mark.parametrize("fork", [True, False])
def test_no_run_token_ever_stands_on_a_command_line(monkeypatch, tmp_path, fork):
    """Forked, the token travels over the fork server's socket; started fresh (forking failed, or the latency shims
    off), it is in a 0600 file Flower's `--token-file` reads, removed when the ServerApp ends."""
    import os
    import stat

    spec = ExecutionSpec(task_type=TaskType.SERVER_APP, runtime_api_address="127.0.0.1:9091", token="s3cret-t0k",
                         insecure=True, root_certificates_path=None, parent_pid=None,
                         runtime_dependency_install=False, task_id=3, suppress_output=False)
    monkeypatch.setattr(ForkingExecutor, "_warm", lambda self: None)
    executor = ForkingExecutor(fork=fork)

    def broken(*args, **kwargs):
        raise OSError("no temporary directory")

    monkeypatch.setattr(executor._ctx, "Process", broken)
    started, files = [], []

    class Proc:
        def __init__(self, args, **kw):
            started.append(list(args))
            path = args[args.index("--token-file") + 1]
            files.append((path, Path(path).read_text(), stat.S_IMODE(os.stat(path).st_mode),
                          stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)))
            self.done = False

        def poll(self):
            return 0 if self.done else None

    monkeypatch.setattr(subprocess, "Popen", Proc)
    assert executor.launch(spec).status == LaunchResult.accepted().status
    assert not any("s3cret-t0k" in a for a in started[0]) and "--token" not in started[0]
    path, content, mode, folder = files[0]
    assert content == "s3cret-t0k" and mode == 0o600 and folder == 0o700
    executor._started[0][0].done = True
    executor.reconcile()
    assert not os.path.exists(path)


def test_the_fork_server_preloads_everything_a_serverapp_imports_before_its_first_round():
    """A forked ServerApp used to import Opacus (model check, accounting) and scikit-learn (digits) itself: about
    two seconds of every run. The preload holds them, and Opacus' import left the root logger alone."""
    import sys

    from fedhaven.server.seam.superexec import PRELOAD

    code = (f"import sys, logging\nfor m in {list(PRELOAD)!r}: __import__(m)\n"
            "need = ['flwr.superlink.cli.flwr_serverapp', 'fedhaven.server.deployment', 'opacus', 'sklearn.datasets',"
            " 'fedhaven.shared.models', 'fedhaven.shared.data']\n"
            "print([m for m in need if m not in sys.modules], len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] 0"

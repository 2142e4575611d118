"""The coordinator's ServerApp executor: Flower's SuperExec, each run's ServerApp forked from a warm process.

Flower's `flower-superexec` starts every run's ServerApp as a fresh `flwr-serverapp`
interpreter, which then imports Flower, torch, Opacus and fedhaven before the first
round (several seconds; ten on a busy 2-core machine). Here Flower's own SuperExec
loop (`run_superexec`: task polling, authentication, plugin) runs unchanged, with one
executor swapped in: a ServerApp is started by a fork server (`multiprocessing`'s
"forkserver", single-threaded) that imported all of that once, so a run's ServerApp
is running the moment the SuperExec claims it. The forked process then does exactly
what `flwr-serverapp` does (Flower's own entry point, same arguments); its run token
travels over the fork server's private socket instead of a command line other local
accounts could read. Any other task type is started as Flower starts it.

Usage: `python -m fedhaven.server.seam.superexec <flower-superexec arguments>`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fedhaven.server.latency import NO_FORK
from fedhaven.shared.files import write_atomic
from fedhaven.shared.runtime import harden_environment

harden_environment()

from flwr.supercore.constant import TaskType  # noqa: E402 - imported after harden_environment()
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor  # noqa: E402 - imported after harden_environment()
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult  # noqa: E402 - imported after harden_environment()

#: What a ServerApp process imports: Flower's ServerApp runtime, fedhaven's deployed ServerApp, Opacus, data readers.
PRELOAD = ("fedhaven.server.seam.preload",)
#: How often Flower's SuperExec asks the SuperLink for a new run (Flower's default is 1 s).
TASK_POLL_INTERVAL = "0.2"
log = logging.getLogger("fedhaven.server")


def serverapp_args(spec: ExecutionSpec, *, token_file: str | None = None) -> list[str]:
    """`flwr-serverapp`'s command line for `spec`, as Flower's SubprocessExecutor builds it; with `token_file`, the
    run token is read from that file (Flower's `--token-file`) instead of standing on the command line."""
    token = ["--token-file", token_file] if token_file is not None else ["--token", spec.token]
    args = ["flwr-serverapp", "--runtime-api-address", spec.runtime_api_address, *token]
    if spec.insecure:
        args.append("--insecure")
    elif spec.root_certificates_path is not None:
        args += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        args += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        args.append("--allow-runtime-dependency-installation")
    return args


def _serverapp(args: list[str], suppress_output: bool) -> None:
    """In the forked process: Flower's `flwr-serverapp` entry point with `args`."""
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    if suppress_output:  # as Flower's executor does: the ServerApp's output to /dev/null
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    sys.argv = args
    flwr_serverapp()


class ForkingExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that a ServerApp's run token never stands on a command line (other
    local accounts read command lines): ServerApps are forked from a warm fork server, the token passed over its
    private socket; or, with `fork` off or when forking fails, started fresh as Flower does but with the token in
    a file only this account can read (`flwr-serverapp --token-file`), removed when the ServerApp ends."""

    def __init__(self, *, fork: bool = True) -> None:
        self.fork = fork
        self._started: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._tokens: tempfile.TemporaryDirectory[str] | None = None
        self._ctx = multiprocessing.get_context("forkserver")
        if fork:
            self._ctx.set_forkserver_preload(list(PRELOAD))
            # start the fork server (and its imports) now, not when the first run is waiting for it
            threading.Thread(target=self._warm, name="forkserver-warm", daemon=True).start()

    def _warm(self) -> None:
        p = self._ctx.Process(target=os.getpid)
        p.start()
        p.join()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.SERVER_APP:
            return super().launch(spec)
        if self.fork:
            try:
                proc = self._ctx.Process(target=_serverapp, args=(serverapp_args(spec), spec.suppress_output),
                                         name=f"serverapp-{spec.task_id}")
                proc.start()
                return LaunchResult.accepted()
            except OSError as exc:  # e.g. no writable temporary directory for the fork server's socket
                log.warning("could not fork the ServerApp (%s); starting it in a fresh process", exc)
        return self._start_fresh(spec)

    def _start_fresh(self, spec: ExecutionSpec) -> LaunchResult:
        """`flwr-serverapp` in a fresh process, as Flower starts it, its token in a 0600 file in a 0700 folder."""
        if self._tokens is None:
            self._tokens = tempfile.TemporaryDirectory(prefix="fedhaven-tokens-")
            os.chmod(self._tokens.name, 0o700)
        token = Path(self._tokens.name) / f"run-{spec.task_id}.token"
        write_atomic(token, spec.token.encode(), mode=0o600)
        out = subprocess.DEVNULL if spec.suppress_output else None
        proc = subprocess.Popen(serverapp_args(spec, token_file=str(token)), stdout=out, stderr=out)
        self._started.append((proc, token))
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        multiprocessing.active_children()  # reaps finished forked ServerApps
        for proc, token in [s for s in self._started if s[0].poll() is not None]:
            token.unlink(missing_ok=True)
            self._started.remove((proc, token))


def main(argv: list[str] | None = None) -> None:
    """Flower's `flower-superexec` with `ForkingExecutor` as its executor (`--no-fork`: fresh processes, Flower's
    poll interval; the run token still never on a command line)."""
    import flwr.supercore.superexec.run_superexec as superexec
    from flwr.supercore.cli.flower_superexec import flower_superexec

    args = list(sys.argv[1:] if argv is None else argv)
    fork = NO_FORK not in args
    if fork:
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_INTERVAL)
    # the one piece of Flower replaced
    superexec.get_executor = (  # type: ignore[attr-defined]  # a name run_superexec imports, not exports
        lambda *a, **kw: ForkingExecutor(fork=fork))
    sys.argv = ["flower-superexec", *(a for a in args if a != NO_FORK)]
    flower_superexec()


if __name__ == "__main__":  # run from the named module, so that what the fork server unpickles is found there
    from fedhaven.server.seam.superexec import main as _main

    _main()

"""The site's long-lived executor: takes ClientApp tasks from its own SuperNode and only ever runs the installed app.

Flower's SuperNode, in process isolation, leaves starting ClientApps to an
external executor speaking its Runtime API. This is that executor, started by
`fl-client start`. For every task it pulls the message, the run and the run's
app package (FAB); it reviews the package without installing or importing
anything from it (`app_package.review_package`), and then either answers with
the site's refusal or calls fedhaven's installed ClientApp in this process. So:

- no code that arrives with a run ever runs on the site, whatever the
  coordinator ships;
- the process stays up across messages and runs: the site's data, model and
  noise calibration stay loaded (no per-message interpreter, torch and Opacus
  import as with Flower's `flwr-clientapp`);
- it speaks to its SuperNode only over TLS that trusts the one certificate
  `fl-client start` made for that SuperNode at this start (`--runtime-ca-file`):
  a process that took the SuperNode's loopback port first gets a TLS handshake
  it cannot complete and no request, and the executor stops, naming the port.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fedhaven.shared.runtime import configure_logging, harden_environment

harden_environment()  # before flwr is imported

from flwr.app import Context, Error, Message  # noqa: E402 - imported after harden_environment()

from fedhaven.client.app_package import installed_version, review_package  # noqa: E402 - imported after harden_environment()
from fedhaven.client.seam import runtime as flower  # noqa: E402 - imported after harden_environment()
from fedhaven.client.types import Code, TaskRefused  # noqa: E402 - imported after harden_environment()
from fedhaven.shared.accounting import NOTHING_SENT  # noqa: E402 - imported after harden_environment()
from fedhaven.shared.text import without_paths  # noqa: E402 - imported after harden_environment()

log = logging.getLogger("fedhaven.client")

COMPONENT = "fedhaven-site-executor"
#: Task kinds taken: ClientApp tasks, and AgentApp tasks so that a run asking for one gets a refusal at once
#: instead of waiting for an executor that will never come.
_TASK_TYPES = [flower.CLIENT_APP_TASK, flower.AGENT_APP_TASK]
ClientAppCall = Callable[[Message, Context], Message]
#: The executor's exit code when what answers at the Runtime API address is not its SuperNode.
NOT_ITS_SUPERNODE = 3


class NotItsSuperNode(RuntimeError):
    """What answers at the Runtime API address did not prove to be this site's SuperNode: nothing was sent to it."""


@dataclass
class ExecutorStats:
    """What this executor has done since it started (written to `executor.json` in the site's state dir)."""

    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    version: str = field(default_factory=installed_version)
    tasks: int = 0
    refused_packages: int = 0
    failed: int = 0
    runs: list[int] = field(default_factory=list)
    last_task: dict[str, Any] = field(default_factory=dict)


class SiteExecutor:
    """Polls the SuperNode's Runtime API for tasks and serves them one at a time, in this process."""

    def __init__(self, *, runtime_address: str, secret: bytes, site: str, app: ClientAppCall,
                 allowed_packages: tuple[str, ...] = (), poll_interval: float = 0.05,
                 stats_file: Path | None = None, runtime_ca: bytes | None = None) -> None:
        self.address = runtime_address
        self.runtime_ca = runtime_ca
        self.site = site
        self.app = app
        self.allowed_packages = allowed_packages
        self.poll_interval = poll_interval
        self.stats_file = stats_file
        self.stats = ExecutorStats()
        self.busy = False  # serving a task (a stop then waits for its end)
        self._acquire = flower.executor_client(address=runtime_address, secret=secret, component=COMPONENT,
                                               ca=runtime_ca)
        self._write_stats()

    def serve(self, stop: threading.Event) -> None:
        """Take and run tasks until `stop` is set; raises `NotItsSuperNode` when the address answers without the
        pinned certificate."""
        log.info("site %s: executor up (fedhaven %s, pid %d); it runs only the installed ClientApp", self.site,
                 self.stats.version, self.stats.pid)
        if self.runtime_ca is None:
            log.warning("WARNING: plain HTTP to the SuperNode at %s (no --runtime-ca-file): a local account holding "
                        "that port would receive this executor's requests", self.address)
        while not stop.is_set():
            try:
                claimed = flower.acquire_task(client=self._acquire, task_types=_TASK_TYPES)
            except Exception as exc:
                why = flower.tls_failure(exc) if self.runtime_ca is not None else None
                if why is None:
                    raise
                flower.close_client(client=self._acquire)
                raise NotItsSuperNode(
                    f"site {self.site}: what answers at {self.address} is not this site's SuperNode ({why}); "
                    f"another process may hold the port. The executor sent it no request and stops.") from None
            if claimed is not None:
                token, task_type = claimed
                self.busy = True
                try:
                    self.run_task(token=token, task_type=task_type)
                finally:
                    self.busy = False
            else:
                stop.wait(self.poll_interval)
        flower.close_client(client=self._acquire)

    def run_task(self, *, token: str, task_type: str) -> None:
        """Serve one task: pull its input, review the run's package, answer, push the output."""
        t0 = time.perf_counter()
        client = flower.task_client(address=self.address, token=token, component=COMPONENT, ca=self.runtime_ca)
        stop_heartbeat = flower.start_heartbeat(client=client)
        message = context = reply = None
        completed, details, verdict = False, "the task failed before it started", "error"
        timing: dict[str, float] = {}
        try:
            task = flower.pull_task_input(client=client, give_up=self.poll_interval * 200 + 10)
            message, context, run_id = task.message, task.context, task.run_id
            timing["pull_s"] = time.perf_counter() - t0
            review = review_package(content=task.fab_content, allowed_hashes=self.allowed_packages)
            if task_type != flower.CLIENT_APP_TASK:
                refusal = f"the run asks for a {task_type} task; this site only runs its installed fedhaven ClientApp"
            elif not review.accepted:
                refusal = "; ".join(review.problems)
            else:
                refusal = None
            if refusal is not None:
                reason = (f"site {self.site} refused run {run_id}: {refusal}. Nothing from the run's package "
                          f"was loaded ({NOTHING_SENT}).")
                log.error("%s (package sha256 %s)", reason, review.sha256)
                reply = Message(Error(code=int(Code.PACKAGE), reason=reason), reply_to=message)
                details, verdict = reason, "refused-package"
                self.stats.refused_packages += 1
            else:
                t1 = time.perf_counter()
                try:
                    reply = self.app(message, context)
                    completed, details, verdict = True, "", "ok"
                except TaskRefused as exc:  # the site's own code and sentence, as they are
                    reply = Message(Error(code=int(exc.code), reason=without_paths(str(exc))), reply_to=message)
                    details, verdict = str(exc), "refused-task"
                    log.warning("%s", exc)
                except Exception as exc:  # any failure becomes the site's answer, never a crash
                    reason = f"site {self.site} failed the task: {type(exc).__name__}: {exc}"
                    log.exception("%s", reason)
                    reply = Message(Error(code=flower.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                                    reply_to=message)
                    details, verdict = reason, "failed"
                timing["app_s"] = time.perf_counter() - t1
            if run_id not in self.stats.runs:
                self.stats.runs.append(run_id)
        except Exception as exc:  # noqa: BLE001 - the SuperNode went away or answered garbage
            details = f"the executor could not take the task: {type(exc).__name__}: {exc}"
            log.error("site %s: %s", self.site, details)
        finally:
            t2 = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    flower.push_reply(client=client, message=reply, context=context)
                flower.finish_task(client=client, context=context, completed=completed, details=details[:1000])
            except Exception as exc:  # noqa: BLE001 - logged: the task is reported failed, the executor goes on
                log.error("site %s: could not hand the reply back to the SuperNode: %s", self.site, exc)
                verdict = "failed"
            timing["push_s"] = time.perf_counter() - t2
            stop_heartbeat()
            flower.close_client(client=client)
        self.stats.tasks += 1
        self.stats.failed += verdict in ("failed", "error")
        kind = message.metadata.message_type if message is not None else "?"
        self.stats.last_task = {"type": kind, "verdict": verdict, "seconds": time.perf_counter() - t0, **timing}
        log.info("site %s: task %d (%s) %s in %.2f s (%s)", self.site, self.stats.tasks, kind, verdict,
                 time.perf_counter() - t0, ", ".join(f"{k[:-2]} {v:.2f}" for k, v in timing.items()))
        self._write_stats()

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_name(f".{self.stats_file.name}.tmp")
        tmp.write_text(json.dumps(asdict(self.stats), indent=2))
        os.replace(tmp, self.stats_file)


def main(argv: list[str] | None = None) -> NoReturn:
    """`python -m fedhaven.client.executor --config site.toml --runtime-api-address HOST:PORT --secret-file F
    --runtime-ca-file CA`."""
    p = argparse.ArgumentParser(prog=COMPONENT, description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the site's site.toml")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (loopback)")
    p.add_argument("--secret-file", type=Path, required=True, help="shared secret with the SuperNode (0600)")
    p.add_argument("--runtime-ca-file", type=Path,
                   help="the certificate fl-client start made for the SuperNode's Runtime API: TLS trusting it "
                        "alone (without it: plain HTTP, which any local account holding the port would receive)")
    p.add_argument("--parent-pid", type=int, help="exit when this process (fl-client start) is gone")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    configure_logging(verbose=args.verbose)
    from fedhaven.client.site_config import load_site_config

    cfg = load_site_config(args.config)
    if cfg.cpu_threads:  # before torch loads: OpenMP reads its thread count once
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(cfg.cpu_threads)
    from fedhaven.client.deployment import app  # the installed ClientApp: the only one this process calls

    threading.Thread(target=_warm_up, args=(cfg.cpu_threads,), name="warm-up", daemon=True).start()

    state = Path(cfg.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    runtime_ca = args.runtime_ca_file.read_bytes() if args.runtime_ca_file else None
    executor = SiteExecutor(runtime_address=args.runtime_api_address, secret=args.secret_file.read_bytes(),
                            site=cfg.name, app=app, allowed_packages=cfg.policy.allowed_app_packages,
                            stats_file=state / "executor.json", runtime_ca=runtime_ca)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not executor.busy:  # idle, perhaps inside calls retried to a SuperNode that is gone: nothing to finish
            _leave()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    try:
        executor.serve(stop)  # returns between tasks: every task's ledger entry and stats are already on disk
    except NotItsSuperNode as exc:
        log.error("%s", exc)
        _leave(NOT_ITS_SUPERNODE)
    _leave()


def _leave(code: int = 0) -> NoReturn:
    """Exit between tasks, at once: interpreter teardown would wait for a warm-up still importing torch (seconds on
    a busy machine), and nothing is left to write (each task's ledger entry and stats are on disk before its reply)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, RuntimeError, ValueError):  # a signal may land inside a write to the same stream
            pass
    os._exit(code)


def _warm_up(cpu_threads: int) -> None:
    """Load torch, Opacus and the training code while the site waits for its first task (seconds a first round
    would otherwise spend); a task that comes first simply finds them loaded or loading."""
    import torch

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    from fedhaven.client import site  # noqa: F401 - loads the trainer, its data and model code
    from fedhaven.shared.training import warm_up

    warm_up()


def _watch_parent(pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != pid:
            log.error("fl-client start (pid %d) is gone; the executor stops", pid)
            stop.set()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

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
  import as with Flower's `flwr-clientapp`).
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

from flwr.app import Context, Error, Message  # noqa: E402
from flwr.common.constant import ErrorCode, SubStatus  # noqa: E402
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # noqa: E402
from flwr.supercore.constant import TaskType  # noqa: E402
from flwr.supercore.heartbeat import HeartbeatSender  # noqa: E402
from flwr.supercore.interceptors import (  # noqa: E402
    RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker  # noqa: E402
from flwr.supercore.runtime import RuntimeHttpClient  # noqa: E402
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output  # noqa: E402

from fedhaven.client.app_package import installed_version, review_package  # noqa: E402
from fedhaven.client.types import Code, TaskRefused  # noqa: E402
from fedhaven.shared.accounting import NOTHING_SENT  # noqa: E402

log = logging.getLogger("fedhaven.client")

COMPONENT = "fedhaven-site-executor"
#: Task kinds a SuperNode may hand out. All are taken, so that a run asking for anything but a
#: ClientApp gets a refusal at once instead of waiting for an executor that will never come.
_TASK_TYPES = [TaskType.CLIENT_APP, TaskType.AGENT_APP]
ClientAppCall = Callable[[Message, Context], Message]


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
                 stats_file: Path | None = None) -> None:
        self.address = runtime_address
        self.site = site
        self.app = app
        self.allowed_packages = allowed_packages
        self.poll_interval = poll_interval
        self.stats_file = stats_file
        self.stats = ExecutorStats()
        self.busy = False  # serving a task (a stop then waits for its end)
        self._acquire = RuntimeHttpClient.from_server_address(
            server_address=runtime_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name=COMPONENT),
                          SuperExecAuthHttpInterceptor(master_secret=secret,
                                                       protected_methods={"/flwr.proto.Runtime/AcquireTask"})],
            retry_invoker=make_simple_http_retry_invoker())
        self._write_stats()

    def serve(self, stop: threading.Event) -> None:
        """Take and run tasks until `stop` is set."""
        log.info("site %s: executor up (fedhaven %s, pid %d); it runs only the installed ClientApp", self.site,
                 self.stats.version, self.stats.pid)
        while not stop.is_set():
            res = self._acquire.AcquireTask(AcquireTaskRequest(supported_task_types=_TASK_TYPES))
            if res.HasField("task") and res.token:
                self.busy = True
                try:
                    self.run_task(token=res.token, task_type=res.task.type)
                finally:
                    self.busy = False
            else:
                stop.wait(self.poll_interval)
        self._acquire.close()

    def run_task(self, *, token: str, task_type: str) -> None:
        """Serve one task: pull its input, review the run's package, answer, push the output."""
        t0 = time.perf_counter()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name=COMPONENT), RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker())
        beat = HeartbeatSender(_heartbeat_fn(client))
        beat.start()
        message = context = reply = None
        sub_status, details, verdict = SubStatus.FAILED, "the task failed before it started", "error"
        timing: dict[str, float] = {}
        try:
            message, context, run, fab = pull_task_input(client, give_up=self.poll_interval * 200 + 10)
            timing["pull_s"] = time.perf_counter() - t0
            review = review_package(content=fab.content, allowed_hashes=self.allowed_packages)
            if task_type != TaskType.CLIENT_APP:
                refusal = f"the run asks for a {task_type} task; this site only runs its installed fedhaven ClientApp"
            elif not review.accepted:
                refusal = "; ".join(review.problems)
            else:
                refusal = None
            if refusal is not None:
                reason = (f"site {self.site} refused run {run.run_id}: {refusal}. Nothing from the run's package "
                          f"was loaded ({NOTHING_SENT}).")
                log.error("%s (package sha256 %s)", reason, review.sha256)
                reply = Message(Error(code=int(Code.PACKAGE), reason=reason), reply_to=message)
                details, verdict = reason, "refused-package"
                self.stats.refused_packages += 1
            else:
                t1 = time.perf_counter()
                try:
                    reply = self.app(message, context)
                    sub_status, details, verdict = SubStatus.COMPLETED, "", "ok"
                except TaskRefused as exc:  # the site's own code and sentence, as they are
                    reply = Message(Error(code=int(exc.code), reason=str(exc)), reply_to=message)
                    details, verdict = str(exc), "refused-task"
                    log.warning("%s", exc)
                except Exception as exc:  # noqa: BLE001 - any failure becomes the site's answer, never a crash
                    reason = f"site {self.site} failed the task: {type(exc).__name__}: {exc}"
                    log.exception("%s", reason)
                    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                                    reply_to=message)
                    details, verdict = reason, "failed"
                timing["app_s"] = time.perf_counter() - t1
            if run.run_id not in self.stats.runs:
                self.stats.runs.append(run.run_id)
        except Exception as exc:  # noqa: BLE001 - the SuperNode went away or answered garbage
            details = f"the executor could not take the task: {type(exc).__name__}: {exc}"
            log.error("site %s: %s", self.site, details)
        finally:
            t2 = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=sub_status, details=details[:1000])
            except Exception as exc:  # noqa: BLE001
                log.error("site %s: could not hand the reply back to the SuperNode: %s", self.site, exc)
                verdict = "failed"
            timing["push_s"] = time.perf_counter() - t2
            beat.stop()
            client.close()
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


def pull_task_input(client: RuntimeHttpClient, *, give_up: float) -> tuple[Message, Context, Any, Any]:
    """Flower's `pull_task_input`, for an executor that is already running when the task appears.

    The SuperNode creates a task before it has stored the message's objects; a
    freshly started `flwr-clientapp` never sees that gap, a waiting executor does,
    and Flower's own pull then backs off a full second. Here the message is polled
    for and its objects are pulled with a 20 ms initial backoff.
    """
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    deadline = time.monotonic() + give_up
    delay = 0.01
    while not (pulled := client.PullMessages(PullAppMessagesRequest())).messages_list:
        if time.monotonic() > deadline:
            raise RuntimeError("the SuperNode handed out a task without a message")
        time.sleep(delay)
        delay = min(0.2, delay * 2)
    tree = pulled.message_object_trees[0]
    node = Node(node_id=context.node_id)
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, max_time=give_up, initial_backoff=0.02, backoff_cap=0.5)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's own pull does
    return message, context, run, fab


def _heartbeat_fn(client: RuntimeHttpClient) -> Callable[[], bool]:
    """Keep a claimed task alive. Unlike Flower's own, never signals the (long-lived) process on a refusal."""
    req = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(req).success)
        except Exception:  # noqa: BLE001 - a missed heartbeat is retried by HeartbeatSender
            return False

    return beat


def main(argv: list[str] | None = None) -> NoReturn:
    """`python -m fedhaven.client.executor --config site.toml --runtime-api-address HOST:PORT --secret-file F`."""
    p = argparse.ArgumentParser(prog=COMPONENT, description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the site's site.toml")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (loopback)")
    p.add_argument("--secret-file", type=Path, required=True, help="shared secret with the SuperNode (0600)")
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
    executor = SiteExecutor(runtime_address=args.runtime_api_address, secret=args.secret_file.read_bytes(),
                            site=cfg.name, app=app, allowed_packages=cfg.policy.allowed_app_packages,
                            stats_file=state / "executor.json")
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not executor.busy:  # idle, perhaps inside calls retried to a SuperNode that is gone: nothing to finish
            _leave()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    executor.serve(stop)  # returns between tasks: every task's ledger entry and stats are already on disk
    _leave()


def _leave() -> NoReturn:
    """Exit between tasks, at once: interpreter teardown would wait for a warm-up still importing torch (seconds on
    a busy machine), and nothing is left to write (each task's ledger entry and stats are on disk before its reply)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, RuntimeError, ValueError):  # a signal may land inside a write to the same stream
            pass
    os._exit(0)


def _warm_up(cpu_threads: int) -> None:
    """Load torch, Opacus and the training code while the site waits for its first task (seconds a first round
    would otherwise spend); a task that comes first simply finds them loaded or loading."""
    import torch

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    from fedhaven.client import site  # noqa: F401  (the trainer, its data and model code)
    from fedhaven.shared.training import warm_up

    warm_up()


def _watch_parent(pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != pid:
            log.error("fl-client start (pid %d) is gone; the executor stops", pid)
            stop.set()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Flower's Runtime API as the site's executor speaks it: clients, claims, pulls, pushes, heartbeat, task identity."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

#: The Runtime API client; callers hold it and hand it back to this module, nothing else.
RuntimeClient = RuntimeHttpClient
#: A ClientApp task, and an AgentApp task (a SuperNode hands out both to executors).
CLIENT_APP_TASK: str = TaskType.CLIENT_APP
AGENT_APP_TASK: str = TaskType.AGENT_APP
#: Flower's error code for a ClientApp that raised (what `flwr-clientapp` answers then).
CLIENT_APP_RAISED_EXCEPTION: int = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
#: The RPC that SuperExec auth signs: Flower's private `run_superexec._SUPEREXEC_AUTH_METHODS`, copied.
_SUPEREXEC_AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})


@dataclass(frozen=True)
class TaskInput:
    """What a claimed task carries: the message, its context, the run's id and the run's app package (FAB) bytes."""

    message: Message
    context: Context
    run_id: int
    fab_content: bytes


def executor_client(*, address: str, secret: bytes, component: str, ca: bytes | None = None) -> RuntimeClient:
    """The executor's own client, signed with the secret it shares with the SuperNode (as `flower-superexec`'s).

    With `ca` (the certificate `fl-client start` made for this SuperNode's Runtime API), TLS that trusts it alone:
    Flower builds an `ssl.SSLContext(PROTOCOL_TLS_CLIENT)` (hostname checked) with only these bytes as trust
    anchor, so a process that took the port without the certificate's key fails the handshake before any request,
    signed or not, is sent. Without `ca`: plain HTTP (tests only).
    """
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=ca is None, root_certificates=ca,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=component),
                      SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=_SUPEREXEC_AUTH_METHODS)],
        retry_invoker=make_simple_http_retry_invoker())


def task_client(*, address: str, token: str, component: str, ca: bytes | None = None) -> RuntimeClient:
    """A client for one claimed task, carrying the task's token (as `flwr-clientapp`'s), over the same TLS."""
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=ca is None, root_certificates=ca,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=component), RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker())


def tls_failure(exc: BaseException) -> str | None:
    """Why the TLS handshake with the Runtime API failed, when that is what `exc` (as the client raised it) comes
    from; else None. Flower's retry gives up on a TLS error instead of retrying it, and the client raises it."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {cur.verify_message}"
        if isinstance(cur, ssl.SSLError):
            return f"TLS failed: {cur.reason or cur}"
        cur = cur.__cause__ or cur.__context__
    text = str(exc)  # what Flower's retry gives up on (a handshake that timed out, say)
    return f"TLS failed: {text}" if any(t in text.lower() for t in ("certificate", "ssl", "tls")) else None


def acquire_task(*, client: RuntimeClient, task_types: Sequence[str]) -> tuple[str, str] | None:
    """Claim the oldest pending task of one of `task_types`: (its token, its type), or None when there is none.

    The claim step of Flower's `run_superexec` loop, without `agentapp_fab_hashes`.
    """
    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=list(task_types)))
    if res.HasField("task") and res.token:
        return res.token, res.task.type
    return None


def close_client(*, client: RuntimeClient) -> None:
    """Close a client made here."""
    client.close()


def set_task_identity(*, task_id: int, run_id: int, node_id: int) -> None:
    """Set Flower's process-global task identity, which `Message(...)` reads to address new messages."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id


def set_message_id(*, message: Message, message_id: str) -> None:
    """Set a message's id, which the inflated message lacks (its own object id), as Flower's own pull does."""
    message.metadata.__dict__["_message_id"] = message_id


def pull_task_input(*, client: RuntimeClient, give_up: float) -> TaskInput:
    """Flower's `pull_task_input`, for an executor that is already running when the task appears.

    The SuperNode creates a task before it has stored the message's objects; a
    freshly started `flwr-clientapp` never sees that gap, a waiting executor does,
    and Flower's own pull then backs off a full second. Here the message is polled
    for and its objects are pulled with a 20 ms initial backoff. (The site's own
    SuperNode, guarded by `seam.supernode`, hands a task out only once its message is
    received; the poll stays for a SuperNode started without that guard.)
    """
    res = client.PullTaskInput(PullTaskInputRequest())
    set_task_identity(task_id=res.task_id, run_id=res.run.run_id, node_id=res.context.node_id)
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
    set_message_id(message=message, message_id=tree.object_id)
    return TaskInput(message=message, context=context, run_id=run.run_id, fab_content=fab.content)


def _heartbeat_fn(client: RuntimeClient) -> Callable[[], bool]:
    """Flower's `make_task_heartbeat_fn_http`, except that it never signals the (long-lived) process on a refusal."""
    req = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(req).success)
        except Exception:  # noqa: BLE001 - a missed heartbeat is retried by HeartbeatSender
            return False

    return beat


def start_heartbeat(*, client: RuntimeClient) -> Callable[[], None]:
    """Keep a claimed task alive from a background thread until the returned function is called."""
    sender = HeartbeatSender(_heartbeat_fn(client))
    sender.start()
    return sender.stop


def push_reply(*, client: RuntimeClient, message: Message, context: Context) -> None:
    """Hand the reply to the SuperNode (Flower's `push_message`: the message, then the objects it asks for)."""
    push_message(client, message, context)


def finish_task(*, client: RuntimeClient, context: Context | None, completed: bool, details: str) -> None:
    """Report the task's end and its context to the SuperNode (Flower's `push_task_output`)."""
    push_task_output(client=client, context=context, sub_status=SubStatus.COMPLETED if completed else SubStatus.FAILED,
                     details=details)

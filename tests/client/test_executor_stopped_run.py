"""A message whose run stops while the SuperNode receives it is never handed to the site's executor.

Flower's own SuperNode loop (`_pull_and_store_message`, `_push_messages`), its
NodeState and the Runtime API's handlers (what the executor's calls reach), and the
site's own executor over those handlers without HTTP, run here in-process against a
fake SuperLink, in which a run stops in the middle of a message's reception: while
its objects are pulled, or at the receipt. The loopback test of the same fault is
tests/faults/test_stopped_run.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
import zipfile

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.app.metadata import Metadata
from flwr.common.constant import Status, SubStatus
from flwr.common.serde import message_from_proto
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullAppMessagesRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run, RunNotRunningException
from flwr.supercore.servicer.runtime import runtime_handlers as core_handlers
from flwr.supernode import start_client_internal as loop
from flwr.supernode.nodestate import NodeStateFactory
from flwr.supernode.servicer.runtime import runtime_handlers

from fedhaven.client import executor as executor_module
from fedhaven.client.app_package import INSTALLED_CLIENTAPP
from fedhaven.client.executor import SiteExecutor
from fedhaven.client.seam import supernode as seam

NODE, RUN_A, RUN_B = 7, 101, 202


class FakeLink:
    """The SuperLink as the SuperNode's loop sees it; a stopped run's calls raise as Flower's retry does (403)."""

    def __init__(self, *, stop_at: str) -> None:
        self.inbox: list[tuple[Message, object]] = []
        self.objects: dict[str, bytes] = {}
        self.stopped: set[int] = set()
        self.stop_at = stop_at  # "pull": while the message's objects are pulled; "confirm": at the receipt
        self.sent: list[Message] = []
        self.during_pull: list[object] = []  # what a claim saw while a message was being received
        self.state = None

    def put(self, run_id: int, n: int) -> Message:
        meta = Metadata(run_id=run_id, message_id="", src_node_id=1, dst_node_id=NODE, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600.0, message_type="train")
        msg = Message(metadata=meta, content=RecordDict({"config": ConfigRecord({"n": n})}))
        msg.metadata.__dict__["_message_id"] = msg.object_id
        self.objects.update({k: v.deflate() for k, v in get_all_nested_objects(msg).items()})
        self.inbox.append((remove_content_from_message(msg), get_object_tree(msg)))
        return msg

    def receive(self):
        return self.inbox.pop(0) if self.inbox else None

    def pull_object(self, run_id: int, object_id: str) -> bytes:
        if self.state is not None:
            self.during_pull.append(claim(self.state))
        if run_id in self.stopped and self.stop_at == "pull":
            raise RunNotRunningException
        return self.objects[object_id]

    def confirm(self, run_id: int, message_id: str) -> None:
        if run_id in self.stopped:
            raise RunNotRunningException

    def send(self, message: Message, tree: object, runtime: float):
        if message.metadata.run_id in self.stopped:
            raise RunNotRunningException
        self.sent.append(message)
        return set(), "session"


def claim(state):
    """What the executor's AcquireTask gets from this SuperNode: a claimed task, or None."""
    res = runtime_handlers.acquire_task(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]), state)
    return res.task if res.HasField("task") else None


def _fab() -> Fab:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a package that only names the installed ClientApp: the site accepts it
        z.writestr("pyproject.toml", f'[tool.flwr.app.components]\nclientapp = "{INSTALLED_CLIENTAPP}"\n')
        z.writestr(".info/CONTENT", "pyproject.toml,0,0")
    return Fab(hash_str=hashlib.sha256(buf.getvalue()).hexdigest(), content=buf.getvalue(), verifications={})


def supernode():
    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    state = factory.state()
    state.set_node_id(NODE)
    fab = _fab()
    state.store_fab(fab)
    for run_id in (RUN_A, RUN_B):  # both runs known to the SuperNode already (no FAB fetch here)
        state.store_run(dataclasses.replace(Run.create_empty(run_id), fab_hash=fab.hash_str, series_id=run_id))
        state.set_run_series_context(run_id, Context(run_id=run_id, node_id=NODE, node_config={},
                                                     state=RecordDict(), run_config={}))
    return state


def pull(state, link: FakeLink) -> int | None:
    """One reception step of the SuperNode's loop (Flower's function, guarded where the test guarded it)."""
    return loop._pull_and_store_message(
        state=state, object_store=state.object_store, node_config={}, receive=link.receive, get_run=None,
        get_fab=None, pull_object=link.pull_object, confirm_message_received=link.confirm, trusted_entities=None)


def serve(state, task) -> Message:
    """The executor's side of one task: pull its message (Runtime API handler) and store an answer to it."""
    res = runtime_handlers.pull_messages(PullAppMessagesRequest(), state, task)
    reply = Message(RecordDict({"config": ConfigRecord({"ok": 1})}), reply_to=message_from_proto(res.messages_list[0]))
    loop._insert_message(reply, state, state.object_store)
    return reply


def push(state, link: FakeLink) -> None:
    """The SuperNode loop's push step (Flower's `_push_messages`): sends whatever replies it finds."""
    loop._push_messages(state=state, object_store=state.object_store, send=link.send,
                        push_object=lambda *_: None)


@pytest.fixture
def guarded(monkeypatch):
    monkeypatch.setattr(loop, "_pull_and_store_message", loop._pull_and_store_message)  # undone after the test
    seam.guard_reception()


@pytest.mark.parametrize("stop_at", ["pull", "confirm"])
def test_flower_alone_hands_out_a_message_of_a_run_that_stopped_while_received(stop_at):
    """The root cause, as Flower 1.42 behaves without the seam's guard: if Flower fixes it, the guard can go."""
    state, link = supernode(), FakeLink(stop_at=stop_at)
    link.put(RUN_A, 1)
    link.stopped.add(RUN_A)
    assert pull(state, link) is None  # "Ignoring message": the loop moves on ...
    orphan = claim(state)
    assert orphan is not None and orphan.run_id == RUN_A  # ... but its task is still there for the executor
    if stop_at == "confirm":  # the message is complete: the executor answers it, before the next run's message
        serve(state, orphan)
        link.put(RUN_B, 1)
        assert pull(state, link) == RUN_B
        b1 = claim(state)
        push(state, link)  # takes the stopped run's answer (refused by the link) as if it were B1's ...
        serve(state, b1)
        assert link.sent == []  # ... and B1's answer waits in the SuperNode until some other message comes
        assert len(state.get_messages_legacy(is_reply=True)) == 1


@pytest.mark.parametrize("stop_at", ["pull", "confirm"])
def test_a_message_given_up_in_reception_never_reaches_the_executor(guarded, stop_at):
    state, link = supernode(), FakeLink(stop_at=stop_at)
    a1 = link.put(RUN_A, 1)
    link.stopped.add(RUN_A)
    assert pull(state, link) is None
    assert claim(state) is None  # nothing for the executor to take
    tasks = state.get_tasks(run_ids=[RUN_A])
    assert [(t.status.status, t.status.sub_status) for t in tasks] == [(Status.FINISHED, SubStatus.STOPPED)]
    assert tasks[0].status.details == seam.GIVEN_UP
    assert state.get_messages_legacy(run_ids=[RUN_A]) == []  # the message is gone, and its objects
    assert state.object_store.get(a1.metadata.message_id) is None

    b1 = link.put(RUN_B, 1)  # the next run's first message: taken, answered, and its answer is what is sent
    assert pull(state, link) == RUN_B
    task = claim(state)
    assert task is not None and task.run_id == RUN_B
    reply = serve(state, task)
    push(state, link)
    assert [m.metadata.message_id for m in link.sent] == [reply.metadata.message_id]
    assert link.sent[0].metadata.reply_to_message_id == b1.metadata.message_id
    assert claim(state) is None


def test_a_task_is_claimed_only_once_its_message_is_received(guarded):
    state, link = supernode(), FakeLink(stop_at="pull")
    link.state = state  # each object pull of the loop first tries a claim, as a waiting executor would
    link.put(RUN_B, 1)
    assert pull(state, link) == RUN_B
    assert link.during_pull and all(seen is None for seen in link.during_pull)
    task = claim(state)
    assert task is not None and task.run_id == RUN_B


def test_claims_from_other_threads_meet_a_reception_consistently(guarded):
    """Claims racing the loop (as the Runtime API's threads do) get the task after its reception, exactly once."""
    state, link = supernode(), FakeLink(stop_at="pull")
    got: list[object] = []
    stop = threading.Event()

    def executor() -> None:
        while not stop.is_set():
            if (task := claim(state)) is not None:
                got.append(task)
            time.sleep(0.001)
    thread = threading.Thread(target=executor)
    thread.start()
    try:
        for n in range(20):
            link.put(RUN_A if n % 2 else RUN_B, n)
            link.stopped = {RUN_A}
            pull(state, link)
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert sorted(t.run_id for t in got) == [RUN_B] * 10  # every message received, none given up
    stopped = state.get_tasks(run_ids=[RUN_A])
    assert len(stopped) == 10 and all(t.status.sub_status == SubStatus.STOPPED for t in stopped)


class InProcessRuntime:
    """The SuperNode's Runtime API without HTTP: each call of the executor goes to Flower's handler, on the state."""

    def __init__(self, state, token: str | None = None) -> None:
        self.state, self.token = state, token

    def _task(self):
        task = self.state.get_task_by_token(self.token)
        assert task is not None, "a call with a token the SuperNode no longer knows"
        return task

    def AcquireTask(self, req):
        return runtime_handlers.acquire_task(req, self.state)

    def SendTaskHeartbeat(self, req):
        return core_handlers.send_task_heartbeat(req, self.state, self._task())

    def __getattr__(self, name: str):  # PullTaskInput, PullMessages, PullObject, PushMessages, ...
        handler = getattr(runtime_handlers, "".join("_" + c.lower() if c.isupper() else c for c in name)[1:])
        return lambda req: handler(req, self.state, self._task())

    def close(self) -> None:
        pass


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "flower-alone"])
def test_the_site_executor_answers_the_next_run_not_the_stopped_one(monkeypatch, guard):
    """Flower's loop, its NodeState and Runtime handlers, and the site's own executor (serving tasks in a thread):
    the stopped run's complete message is given up at its receipt, then the next run's first message comes."""
    monkeypatch.setattr(loop, "_pull_and_store_message", loop._pull_and_store_message)
    if guard:
        seam.guard_reception()
    state, link = supernode(), FakeLink(stop_at="confirm")
    monkeypatch.setattr(executor_module.flower, "executor_client", lambda **_: InProcessRuntime(state))
    monkeypatch.setattr(executor_module.flower, "task_client", lambda *, token, **_: InProcessRuntime(state, token))
    seen: list[int] = []

    def app(msg: Message, ctx: Context) -> Message:
        seen.append(msg.metadata.run_id)
        return Message(RecordDict({"config": ConfigRecord({"n": len(seen)})}), reply_to=msg)

    executor = SiteExecutor(runtime_address="127.0.0.1:1", secret=b"s", site="a", app=app, poll_interval=0.01)
    stop = threading.Event()
    serving = threading.Thread(target=executor.serve, args=(stop,))
    serving.start()
    try:
        link.put(RUN_A, 1)
        link.stopped.add(RUN_A)
        assert pull(state, link) is None  # the stopped run's message, given up at its receipt
        deadline = time.monotonic() + (0.1 if guard else 5.0)  # the executor polls every 10 ms meanwhile
        while (guard or executor.stats.tasks < 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        b1 = link.put(RUN_B, 1)
        assert pull(state, link) == RUN_B
        push(state, link)  # the SuperNode waits for a reply to B1, as it does at once after receiving it
        deadline = time.monotonic() + 5.0
        while executor.stats.tasks < (1 if guard else 2) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        serving.join(timeout=10)
    if guard:
        assert seen == [RUN_B] and executor.stats.tasks == 1 and executor.stats.failed == 0
        assert [m.metadata.reply_to_message_id for m in link.sent] == [b1.metadata.message_id]
    else:  # the failure as the sites saw it: B1 answered, but that answer is not what the SuperNode sent
        assert seen == [RUN_A, RUN_B]
        assert link.sent == [] and len(state.get_messages_legacy(is_reply=True)) == 1

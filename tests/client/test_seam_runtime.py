"""The site's executor against an in-process Runtime API: the seam's pull, push and heartbeat speak Flower's protocol.

The fake SuperNode below serves and takes messages with Flower's own serialisation
(object trees, deflated objects), so the seam's adapted copies are checked against
what Flower itself produces and reads, without starting a SuperNode.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import context_to_proto, fab_to_proto, message_from_proto, run_to_proto
from flwr.proto import message_pb2, runtime_pb2
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run

from fedhaven.client import executor as executor_module
from fedhaven.client.app_package import INSTALLED_CLIENTAPP
from fedhaven.client.executor import SiteExecutor
from fedhaven.client.seam import runtime as flower
from fedhaven.client.types import Code

RUN_ID, NODE_ID, TASK_ID = 11, 22, 33


def _fab(*extra: str) -> Fab:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", f'[tool.flwr.app.components]\nclientapp = "{INSTALLED_CLIENTAPP}"\n')
        z.writestr(".info/CONTENT", "pyproject.toml,0,0")
        for name in extra:
            z.writestr(name, "print('hello')")
    return Fab(hash_str="h", content=buf.getvalue(), verifications={})


class FakeSuperNode:
    """The Runtime API of a SuperNode holding one task, recording what the executor hands back."""

    def __init__(self, *, fab: Fab, empty_pulls: int = 2) -> None:
        content = RecordDict({"arrays": ArrayRecord([np.arange(6.0).reshape(2, 3)]),
                              "config": ConfigRecord({"lr": 0.1})})
        self.message = Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN)
        self.objects = get_all_nested_objects(self.message)
        self.tree = get_object_tree(self.message)
        self.context = Context(run_id=RUN_ID, node_id=NODE_ID, node_config={}, state=RecordDict(), run_config={})
        self.fab = fab
        self.empty_pulls = empty_pulls
        self.pushed: list[runtime_pb2.PushAppMessagesRequest] = []
        self.pushed_objects: dict[str, bytes] = {}
        self.outputs: list[runtime_pb2.PushTaskOutputRequest] = []
        self.confirmed = 0
        self.closed = False

    def PullTaskInput(self, req):
        return runtime_pb2.PullTaskInputResponse(task_id=TASK_ID, run=run_to_proto(Run.create_empty(RUN_ID)),
                                                 context=context_to_proto(self.context), fab=fab_to_proto(self.fab))

    def PullMessages(self, req):
        if self.empty_pulls:  # the task exists before its message is stored
            self.empty_pulls -= 1
            return runtime_pb2.PullAppMessagesResponse()
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto

        return runtime_pb2.PullAppMessagesResponse(messages_list=[message_to_proto(
            remove_content_from_message(self.message))], message_object_trees=[self.tree])

    def PullObject(self, req):
        return message_pb2.PullObjectResponse(object_found=True, object_available=True,
                                              object_content=self.objects[req.object_id].deflate())

    def ConfirmMessageReceived(self, req):
        self.confirmed += 1
        return message_pb2.ConfirmMessageReceivedResponse()

    def PushMessages(self, req):
        self.pushed.append(req)
        ids = [self.pushed[-1].message_object_trees[0].object_id]
        stack = list(req.message_object_trees[0].children)
        while stack:
            node = stack.pop()
            ids.append(node.object_id)
            stack += list(node.children)
        return runtime_pb2.PushAppMessagesResponse(objects_to_push=ids, session_id="s")

    def PushObject(self, req):
        self.pushed_objects[req.object_id] = req.object_content
        return message_pb2.PushObjectResponse(stored=True)

    def PushTaskOutput(self, req):
        self.outputs.append(req)
        return runtime_pb2.PushTaskOutputResponse()

    def SendTaskHeartbeat(self, req):
        return runtime_pb2.SendTaskHeartbeatResponse(success=True)

    def close(self) -> None:
        self.closed = True


def test_the_seam_pulls_a_task_flower_serialised_and_sets_its_identity():
    node = FakeSuperNode(fab=_fab())
    task = flower.pull_task_input(client=node, give_up=5.0)
    assert task.run_id == RUN_ID and task.fab_content == node.fab.content
    assert task.context.node_id == NODE_ID and task.context.run_id == RUN_ID
    assert task.message.metadata.message_id == node.tree.object_id  # the fix-up Flower's own pull does
    assert task.message.content.object_id == node.message.content.object_id
    assert node.empty_pulls == 0 and node.confirmed == 1
    made = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)  # reads Flower's task identity
    assert (made.metadata.run_id, made.metadata.src_node_id, made.metadata.src_task_id) == (RUN_ID, NODE_ID, TASK_ID)


def test_the_seam_gives_up_on_a_task_without_a_message():
    node = FakeSuperNode(fab=_fab(), empty_pulls=10**6)
    with pytest.raises(RuntimeError, match="without a message"):
        flower.pull_task_input(client=node, give_up=0.05)


@pytest.fixture
def served(monkeypatch):
    """Serve one task from a FakeSuperNode with the site's executor; the app echoes the message's arrays back."""

    def serve(node: FakeSuperNode, app=None) -> FakeSuperNode:
        monkeypatch.setattr(executor_module.flower, "executor_client", lambda **_: node)
        monkeypatch.setattr(executor_module.flower, "task_client", lambda **_: node)

        def echo(msg, ctx):
            return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

        ex = SiteExecutor(runtime_address="127.0.0.1:1", secret=b"s", site="a", app=app or echo)
        ex.run_task(token="t", task_type=flower.CLIENT_APP_TASK)
        assert node.closed and ex.stats.tasks == 1
        return node

    return serve


def test_the_executor_answers_through_the_seam_as_flower_s_clientapp_would(served):
    node = served(FakeSuperNode(fab=_fab()))
    [req] = node.pushed
    reply = message_from_proto(req.messages_list[0])
    assert reply.metadata.reply_to_message_id == node.tree.object_id
    assert set(node.pushed_objects) >= {req.message_object_trees[0].object_id}
    [out] = node.outputs
    assert (out.sub_status, out.details, out.context.node_id) == ("completed", "", NODE_ID)


def test_the_executor_refuses_a_package_that_brings_code(served):
    node = served(FakeSuperNode(fab=_fab("task.py")))
    reply = message_from_proto(node.pushed[0].messages_list[0])
    assert reply.has_error() and reply.error.code == int(Code.PACKAGE)
    [out] = node.outputs
    assert out.sub_status == "failed" and "carries files of its own (task.py)" in out.details


def test_an_app_that_raises_answers_with_flower_s_client_app_error_code(served):
    def broken(msg, ctx):
        raise ZeroDivisionError("boom")

    node = served(FakeSuperNode(fab=_fab()), app=broken)
    reply = message_from_proto(node.pushed[0].messages_list[0])
    assert reply.error.code == flower.CLIENT_APP_RAISED_EXCEPTION == 2
    assert node.outputs[0].sub_status == "failed" and "ZeroDivisionError: boom" in node.outputs[0].details

"""Flower's HTTP wire as the coordinator's doors read it: the route layout and the protobuf bodies, read only.

Flower 1.42 serves its APIs as protobuf messages over HTTP POST, one route per
call (`flwr/superlink/routers/fleet/router.py`, `flwr/supercore/routers/runtime`).
Neither the routes nor the bodies are a documented API; the doors only read them
(who pulls, which objects a push announces, whether a pull came back empty) and
pass Flower's bytes on unchanged. Every function here returns a neutral value for
anything it cannot read, so that the doors then behave as if they were absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

#: The route prefixes: sites' Fleet API, the ServerApp executor's Runtime API (the Control API is neither).
FLEET_PREFIX = "/v1/fleet/"
RUNTIME_PREFIX = "/v1/runtime/"
PULL_PATH = FLEET_PREFIX + "pull-messages"
#: Runtime calls after which a held pull asks again: the ServerApp pushed a message or one of its objects.
RING_PATHS = frozenset({RUNTIME_PREFIX + "push-messages", RUNTIME_PREFIX + "push-object"})
#: Where messages are pulled, pushed (the answer lists the objects to upload next), and objects uploaded.
PULL_PATHS = frozenset({PULL_PATH, RUNTIME_PREFIX + "pull-messages"})
PUSH_PATHS = frozenset({FLEET_PREFIX + "push-messages", RUNTIME_PREFIX + "push-messages"})
OBJECT_PUSH_PATHS = frozenset({FLEET_PREFIX + "push-object", RUNTIME_PREFIX + "push-object"})
#: Where a SuperNode asks to join, and the code Flower's SuperLink answers a key it cannot activate with
#: (`flwr.supercore.error.base.ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED`, checked by the seam test).
ACTIVATE_NODE_PATH = FLEET_PREFIX + "activate-node"
ACTIVATION_FAILED_CODE = 2004
#: `PushObjectRequest.object_id`'s field number (flwr/proto/message.proto): a string, serialised before the content.
OBJECT_ID_FIELD = 3


def pulling_node(body: bytes) -> int | None:
    """The node id a `PullMessagesRequest` names (Flower's app checks the node's signature), or None."""
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    try:
        return int(PullMessagesRequest.FromString(body).node.node_id)
    except Exception:  # noqa: BLE001 - not a pull Flower would accept: pass it on unheld
        return None


def objects_to_push(path: str, body: bytes) -> list[str]:
    """The objects a message push's answer asks the sender to upload next (none for anything else)."""
    if path.startswith(FLEET_PREFIX):
        from flwr.proto.fleet_pb2 import PushMessagesResponse as Pushed
    else:
        from flwr.proto.runtime_pb2 import (  # type: ignore[assignment]  # the Fleet answer's twin, read alike
            PushAppMessagesResponse as Pushed,
        )
    try:
        return list(Pushed.FromString(body).objects_to_push)
    except Exception:  # noqa: BLE001 - not Flower's answer: nothing to wait for
        return []


def pushed_object_id(body: bytes) -> str:
    """The `object_id` of a serialised `PushObjectRequest`, found by walking its fields up to that one (the object's
    content, up to the body cap, is never parsed); "" for anything that is not well-formed up to there."""
    pos, end = 0, len(body)

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while pos < end and shift < 64:
            byte = body[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("truncated varint")

    try:
        while pos < end:
            key = varint()
            field, wire = key >> 3, key & 7
            if wire == 0:
                varint()
            elif wire == 2:
                size = varint()
                if pos + size > end:
                    return ""
                if field == OBJECT_ID_FIELD:
                    return body[pos:pos + size].decode("ascii")
                pos += size
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return ""
    except (ValueError, UnicodeDecodeError):
        return ""
    return ""


def tree_ids(trees: Iterable[Any]) -> Iterator[str]:
    """Every object id in Flower `ObjectTree`s (a message, its records, their arrays)."""
    stack = list(trees)
    while stack:
        tree = stack.pop()
        yield tree.object_id
        stack.extend(tree.children)


def pulled_object_ids(path: str, status: int, body: bytes) -> list[str]:
    """The object ids of every message in a pull's answer (none if it is not a successful Flower answer)."""
    if status != 200:
        return []
    if path.startswith(FLEET_PREFIX):
        from flwr.proto.fleet_pb2 import PullMessagesResponse as Pulled
    else:
        from flwr.proto.runtime_pb2 import (  # type: ignore[assignment]  # the Fleet answer's twin, read alike
            PullAppMessagesResponse as Pulled,
        )
    try:
        return list(tree_ids(Pulled.FromString(body).message_object_trees))
    except Exception:  # noqa: BLE001 - not Flower's answer: nothing to wait for
        return []


def is_empty_pull(status: int, body: bytes) -> bool:
    """Flower's answer to a pull is a `PullMessagesResponse` without messages (anything else is passed on at once)."""
    if status != 200:
        return False
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    try:
        return len(PullMessagesResponse.FromString(body).messages_list) == 0
    except Exception:  # noqa: BLE001 - not what we expected: never hold it
        return False


#: `NodeInfo`'s fields read from `Grid.get_nodes()` (flwr/proto/node.proto): the node's id and registered name.
NODE_INFO_FIELDS = (("NODE_ID_FIELD_NUMBER", 1), ("NAME_FIELD_NUMBER", 13))


def node_names(nodes: Iterable[Any]) -> dict[int, str]:
    """Node id -> the name its key was registered under (`fl-server site add` registers key and name with the
    SuperLink; the node proves the key on every call), from `Grid.get_nodes()`; nameless nodes (simulation) are
    left out."""
    out = {}
    for n in nodes:
        name = getattr(n, "name", "")
        if isinstance(name, str) and name:
            out[int(n.node_id)] = name
    return out

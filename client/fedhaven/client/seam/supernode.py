"""The site's SuperNode: Flower's `flower-supernode`, except that a message it gives up on never stays a task.

Flower 1.42's SuperNode takes one message at a time (`flwr/supernode/start_client_internal.py`):
it creates the message's task and stores the message (lines 388, 411), pulls the
message's objects from the SuperLink and confirms receipt (415-423), then waits for
*any* reply and sends it (`_push_messages`, 469), and only after a message has come in
(260-271). When the message's run stops while the message is being received (the
SuperLink answers 403, which Flower's retry raises as `RunNotRunningException`, a
`BaseException`: `flwr/supercore/retry/http_retry.py:99`), the `except Exception` that
would delete the message and finish its task (425-439) does not catch it, and the outer
handler (441-455) only logs "Ignoring message" and returns. The task stays pending
with its message: the site's executor takes it, waits for objects that never come or
answers it; an answer is then taken by the SuperNode as the reply to the *next* run's
message, whose own reply waits in the SuperNode until a further message arrives, so
the site stays one reply behind and every SecAgg+ stage of the next run times out.

`Reception` closes that gap around Flower's own loop, in this process: a task the
loop creates while it receives a message cannot be claimed until the message is
received, and when the loop gives the message up, its task is finished as stopped and
the message and its objects are deleted (what Flower's `except Exception` does), so
no executor ever sees it and no reply is ever made for it. `fl-client start` runs the
SuperNode as `python -m fedhaven.client.seam.supernode` with `flower-supernode`'s
arguments.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, cast

from flwr.common.constant import SubStatus
from flwr.supernode import start_client_internal as supernode_loop
from flwr.supernode.nodestate import NodeState

#: Why a task of a message the SuperNode gave up on ends (its task's status details).
GIVEN_UP = "the SuperNode gave the message up while receiving it (its run is not running); nothing ran for it"
_GUARD = "__fedhaven_reception__"
#: The loop's reception step, which the guard wraps (a private function of Flower's: see the seam's table).
_STEP = "_pull_and_store_message"


class Reception:
    """The message the SuperNode's loop is receiving: its task is held back until it is received, dropped if not.

    Wraps three methods of one `NodeState` (the instance the loop and the Runtime API share): `create_task` and
    `store_message` note what the loop's thread creates while it receives; `claim_task` refuses those tasks until
    the reception ends. One lock orders a claim against the creation and the settling of a held task.
    """

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self._lock = threading.RLock()
        self._thread: int | None = None
        self._tasks: set[int] = set()
        self._messages: set[str] = set()
        self._create, self._store, self._claim = state.create_task, state.store_message, state.claim_task
        setattr(state, "create_task", self._create_task)  # noqa: B010 - instance attributes shadow the methods
        setattr(state, "store_message", self._store_message)  # noqa: B010
        setattr(state, "claim_task", self._claim_task)  # noqa: B010

    def receive(self, pull: Callable[[], int | None], *, object_store: Any) -> int | None:
        """Run one step of the loop's reception (`pull`, Flower's `_pull_and_store_message`); returns its run id."""
        with self._lock:
            self._thread = threading.get_ident()
        run_id: int | None = None
        try:
            run_id = pull()
            return run_id
        finally:
            self._settle(received=run_id is not None, object_store=object_store)

    def _settle(self, *, received: bool, object_store: Any) -> None:
        with self._lock:
            tasks, messages = self._tasks, self._messages
            self._tasks, self._messages, self._thread = set(), set(), None
            if not received:  # still under the lock: no claim comes between release and finish
                for task_id in tasks:
                    self.state.finish_task(task_id, SubStatus.STOPPED, GIVEN_UP)
        if not received and messages:
            self.state.delete_messages(message_ids=sorted(messages))
            for message_id in messages:
                object_store.delete(message_id)

    def _receiving(self) -> bool:
        return self._thread == threading.get_ident()

    def _create_task(self, *args: Any, **kwargs: Any) -> int | None:
        if not self._receiving():
            return self._create(*args, **kwargs)
        with self._lock:
            task_id = self._create(*args, **kwargs)
            if task_id is not None:
                self._tasks.add(task_id)
            return task_id

    def _store_message(self, message: Any) -> str | None:
        message_id = self._store(message)
        if message_id is not None and self._receiving() and not message.metadata.reply_to_message_id:
            with self._lock:
                self._messages.add(message_id)
        return message_id

    def _claim_task(self, task_id: int) -> str | None:
        with self._lock:
            return None if task_id in self._tasks else self._claim(task_id)


def guard_reception() -> None:
    """Wrap the SuperNode loop's `_pull_and_store_message` with a `Reception` of its state (once per process)."""
    original = getattr(supernode_loop, _STEP)
    if getattr(original, _GUARD, False):
        return

    def pull_and_store_message(**kwargs: Any) -> int | None:
        state: NodeState = kwargs["state"]
        reception = getattr(state, _GUARD, None)
        if reception is None:
            reception = Reception(state)
            setattr(state, _GUARD, reception)
        return reception.receive(lambda: cast(int | None, original(**kwargs)), object_store=kwargs["object_store"])

    setattr(pull_and_store_message, _GUARD, True)
    setattr(supernode_loop, _STEP, pull_and_store_message)  # the loop looks it up by name at each step


def main() -> None:
    """`python -m fedhaven.client.seam.supernode ARGS`: `flower-supernode ARGS`, guarded."""
    guard_reception()
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    main()

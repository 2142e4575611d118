"""Flower's SuperLink application, built with Flower's own command-line parsing and checks, for fedhaven's listeners.

Flower builds its SuperLink app from `flower-superlink`'s arguments inside its
entry point; the same two steps are taken here (the private argument parser reads
`sys.argv`), so fedhaven can serve that very app on its own listeners
(`fedhaven.server.superlink`). The public alternative, Flower's `flower-superlink`
behind a reverse proxy, would lose the operator-only socket and the held pulls.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: Flower's SuperNode gives up on an HTTP request after this many seconds (`ProtobufClient(timeout=30.0)`).
SUPERNODE_HTTP_TIMEOUT = 30.0


def superlink_app(flower_args: list[str]) -> Any:
    """Flower's SuperLink ASGI app for a `flower-superlink` command line, with its lifespan (state, checks)."""
    from flwr.superlink.main import create_app

    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function
    sys.argv = ["flower-superlink", *flower_args]
    config = flower._parse_superlink_lifespan_config()  # noqa: SLF001 - Flower's own CLI parsing and checks
    return create_app(config, flower.SuperLinkLifespan)

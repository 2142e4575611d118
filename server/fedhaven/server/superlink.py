"""Flower's SuperLink served on a Unix socket, so that no other local account can reach its Control API.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, and the
open-source Control API has no user authentication: any process that can open
a TCP connection to the SuperLink (any local account, on loopback) can list,
submit and stop runs. Here the very same SuperLink application (Flower's
`create_app` with Flower's own argument parsing) listens on a Unix socket in a
directory only the operator's account can enter. The coordinator's fronts
forward the Fleet API (to sites) and the Runtime API (to Flower's executor) and
nothing else; the operator's commands reach the Control API through the socket.

Usage: `python -m fedhaven.server.superlink --uds PATH <flower-superlink arguments>`.
"""

from __future__ import annotations

import os
import sys

from fedhaven.shared.runtime import harden_environment

harden_environment()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--uds" not in args or args.index("--uds") + 1 >= len(args):
        raise SystemExit("fedhaven superlink: --uds PATH is required")
    i = args.index("--uds")
    uds = args[i + 1]
    del args[i: i + 2]
    os.umask(0o077)  # the socket, the database and its -wal/-shm files: owner only
    import importlib

    import uvicorn
    from flwr.superlink.main import create_app

    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function

    sys.argv = ["flower-superlink", *args]
    config = flower._parse_superlink_lifespan_config()  # noqa: SLF001 - Flower's own CLI parsing and checks
    app = create_app(config, flower.SuperLinkLifespan)
    if os.path.exists(uds):
        os.unlink(uds)  # a socket left by a killed SuperLink
    # Plain HTTP on the socket: the 0700 directory is the boundary; sites reach TLS at the Fleet front.
    uvicorn.run(app=app, uds=uds, reload=False, access_log=False, workers=1, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    main()

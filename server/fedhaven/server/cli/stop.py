"""`fl-server stop`: stop one run (--run ID) or the whole coordinator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from fedhaven.server.coordinator import Runtime, clean_leftovers, control_for, pid_alive
from fedhaven.server.provision import StateDir

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=int, help="stop this run only; the coordinator stays up")


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    rt = Runtime.load(state)
    if rt is not None and not pid_alive(rt.pid) and args.run is None:
        stopped = clean_leftovers(state, rt)
        log.info("the coordinator (pid %d) was gone; stopped what it left running: %s", rt.pid,
                 ", ".join(map(str, stopped)) or "nothing")
        return 0
    if rt is None or not pid_alive(rt.pid):
        raise RuntimeError(f"no coordinator is running from {state.root}")
    if args.run is not None:
        control = control_for(state)
        try:
            control.stop_run(args.run)
        finally:
            control.close()
        log.info("run %d stopped", args.run)
        return 0
    os.kill(rt.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(rt.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(rt.pid):
        raise RuntimeError(f"the coordinator (pid {rt.pid}) did not stop within 60 s")
    log.info("coordinator stopped")
    return 0

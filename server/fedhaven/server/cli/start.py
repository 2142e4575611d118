"""`fl-server start`: the coordinator in the foreground (systemd/Kubernetes friendly); stop with Ctrl-C or
`fl-server stop`."""

from __future__ import annotations

import argparse
import logging

from fedhaven.server.coordinator import Coordinator, Runtime, clean_leftovers, pid_alive
from fedhaven.server.provision import StateDir

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="plain HTTP, no TLS and no site authentication (testing only; prints a warning)")


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    cfg = state.config()
    if not args.insecure and not state.has_pki():
        raise RuntimeError(f"no TLS certificates in {state.pki}: run `fl-server init --state-dir {state.root}` "
                           f"first (plain HTTP only with --insecure)")
    rt = Runtime.load(state)
    if rt is not None and pid_alive(rt.pid):
        raise RuntimeError(f"a coordinator is already running from {state.root} (pid {rt.pid})")
    if rt is not None:
        stopped = clean_leftovers(state, rt)
        log.warning("the previous coordinator (pid %d) did not stop cleanly%s", rt.pid,
                    f"; stopped what it left running (pids {', '.join(map(str, stopped))})" if stopped else "")
    if args.insecure:
        log.warning("WARNING: --insecure: no TLS and no site authentication. Anyone who reaches %s can read "
                    "the traffic and join as a site.", cfg.listen)
    coordinator = Coordinator(state=state, cfg=cfg, insecure=args.insecure)
    try:
        runtime = coordinator.start()
    except BaseException:
        coordinator.stop()
        raise
    log.info("coordinator up: sites connect to %s (%s); SuperLink on %s (loopback only); logs in %s",
             cfg.listen, "plain HTTP" if args.insecure else "TLS, registered sites only",
             runtime.control_address, coordinator.logs)
    log.info("submit a run with: fl-server run run.toml --state-dir %s", state.root)
    from fedhaven.server.cli.run import interrupted_runs

    for name, last, planned in interrupted_runs(state, running=set()):
        log.warning("run %s stopped after round %d of %d without finishing; continue it with: "
                    "fl-server run --resume %s --state-dir %s", name, last, planned, name, state.root)
    return coordinator.wait()

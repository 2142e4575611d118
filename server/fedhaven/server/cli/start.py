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
    p.add_argument("--operator-listen", metavar="HOST:PORT",
                   help="also serve the operator console, /metrics, /healthz and /readyz over TCP here (e.g. "
                        "127.0.0.1:9094; the operator token is required except for the probes); they are always "
                        "served on the operator's socket <state-dir>/run/operator.sock")


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
    from fedhaven.server.console.serve import OperatorServer

    def down() -> list[str]:
        return [f"{name} exited" for name, proc in coordinator.procs.items() if proc.poll() is not None]

    # first, so that /healthz answers (and /readyz says "not ready") while the SuperLink starts
    operator = OperatorServer(state=state, listen=args.operator_listen, fleet=cfg.listen, ready=down)
    try:
        operator.start()
        runtime = coordinator.start()
    except BaseException:
        operator.stop()
        coordinator.stop()
        raise
    log.info("operator console, /metrics, /healthz, /readyz: %s%s", operator.url or "",
             f"{' and ' if operator.url else ''}socket {state.sockets / 'operator.sock'}")
    log.info("coordinator up: sites connect to %s (%s); SuperLink on %s (loopback only); logs in %s",
             cfg.listen, "plain HTTP" if args.insecure else "TLS, registered sites only",
             runtime.control_address, coordinator.logs)
    log.info("submit a run with: fl-server run run.toml --state-dir %s", state.root)
    from fedhaven.server.cli.run import interrupted_runs

    for name, last, planned in interrupted_runs(state, running=set()):
        log.warning("run %s stopped after round %d of %d without finishing; continue it with: "
                    "fl-server run --resume %s --state-dir %s", name, last, planned, name, state.root)
    try:
        return coordinator.wait()
    finally:
        operator.stop()

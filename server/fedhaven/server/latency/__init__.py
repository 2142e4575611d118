"""Where a deployed round's time goes in Flower 1.42, what fedhaven does about each wait, and the one switch for all.

Every shim is speed only: with the switch off (`latency = false` under `[coordinator]`
in server.toml), the coordinator runs Flower's own timings and code paths, and a run
gives the same results, only slower (BENCHMARKS.md section 7 measures both beside
plain Flower).

| Flower's wait | fedhaven's shim | where | off |
|---|---|---|---|
| a SuperNode that finds no message sleeps 3 s before asking again (a SecAgg+ round is four messages) | the Fleet door holds an empty pull up to `--pull-hold` (10 s) and answers the moment the ServerApp pushes that site's message | `fedhaven.server.front.Gate` with `latency.uploads.Doorbell` | `--pull-hold 0`: answered at once, as Flower does |
| a receiver asking for a message's objects before its sender uploaded them backs off 1 s, then 2 s | both doors note which objects a push announced and hold a pulled message until they are stored (at most `--settle`, 10 s) | `latency.uploads.Uploads` | `--settle 0` |
| the ServerApp's grid waits 3 s between pulls for replies | pulls every 0.05-0.2 s, backing off | `latency.grid.PollingGrid` | the same grid at Flower's 3 s |
| each run's ServerApp starts a fresh interpreter that imports Flower, torch, Opacus and fedhaven (seconds) | forked from a warm fork server that imported them once | `fedhaven.server.seam.superexec` (with `seam.preload`) | started fresh, as Flower does (`--no-fork`; its token still in a file, never on a command line) |
| the SuperExec asks for a new run every second | every 0.2 s | `seam.superexec.TASK_POLL_INTERVAL` | Flower's 1 s |
| `fl-server run` imports torch and Opacus to check the model and test set (seconds) | a check that passed is remembered by a fingerprint of everything it depends on | `latency.checked` | checked every time |

Sites have shims of their own, needed for what a site trusts anyway: one long-lived
executor process (data, model and noise calibration stay loaded between messages;
`fedhaven.client.executor`) pulling its task input with a short backoff.
"""

from __future__ import annotations

import os

#: The environment variable the coordinator sets for the processes it starts (its ServerApps read it): "0" is off.
LATENCY_ENV = "FEDHAVEN_LATENCY"
#: `fedhaven.server.seam.superexec`'s option with the shims off: ServerApps started fresh, Flower's task polling.
NO_FORK = "--no-fork"
#: The ServerApp grid's pull interval, seconds: fedhaven's (from, backing off to) and Flower's own.
GRID_POLL = (0.05, 0.2)
FLOWER_GRID_POLL = (3.0, 3.0)


def enabled() -> bool:
    """Whether this process runs with the shims (the default), as the coordinator that started it says."""
    return os.environ.get(LATENCY_ENV, "1") != "0"


def grid_poll() -> tuple[float, float]:
    """(first, longest) pull interval of the ServerApp's grid."""
    return GRID_POLL if enabled() else FLOWER_GRID_POLL

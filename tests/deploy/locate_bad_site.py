"""TEST ONLY: a deployed site that sends a broken update, for the loopback test of locating it under SecAgg+.

A deployed site runs only its installed code, and fedhaven's `fl-client` has no attack switch. This program plays
the site's IT gone rogue: it is `fl-client start` whose executor calls fedhaven's installed ClientApp with one more
update mod, the attack of `fl-sim`'s harness (`fedhaven.sim.attack.attacked_update`), placed where the harness puts
it (after training and the site's bound, before encoding and masking; the kept update a re-mask request answers
with is the attacked one, as a consistently bad site's would be).

    python locate_bad_site.py start --attack nan --config site.toml     (fl-client start, the attacking executor)
    python locate_bad_site.py executor --attack nan ARGS...             (what that start runs as its executor)
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable

EXECUTOR = "fedhaven.client.executor"


def attack_mod(kind: str) -> Callable:
    """A ClientApp mod that replaces every trained update by what `kind`'s attacker sends."""
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    from fedhaven.client.flower_app import training_task
    from fedhaven.client.seam.legacy import fitins_ndarrays, fitres_of, with_fitres
    from fedhaven.shared.schema import AttackConfig
    from fedhaven.sim.attack import attacked_update

    parameter = AttackConfig(kind=kind).parameter()
    rng = np.random.default_rng(secrets.randbits(64))

    def mod(msg, ctx, call_next):
        if training_task(msg) is None:
            return call_next(msg, ctx)
        start = fitins_ndarrays(content=msg.content)
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        res = fitres_of(reply=reply)
        res.parameters = ndarrays_to_parameters(attacked_update(
            kind=kind, parameter=parameter, new=parameters_to_ndarrays(res.parameters), start=start, rng=rng))
        with_fitres(reply=reply, res=res)
        return reply

    return mod


def run_executor(kind: str, argv: list[str]) -> None:
    import fedhaven.client.executor as executor  # hardens the environment before Flower loads
    from fedhaven.client import deployment
    from fedhaven.client.flower_app import make_client_app

    deployment.app = make_client_app(sites=deployment.SiteConfigProvider(), update_mods=[attack_mod(kind)])
    executor.main(argv)  # imports `deployment.app` when it starts: the attacking one


def run_start(kind: str, argv: list[str]) -> int:
    from fedhaven.client import cli
    from fedhaven.client.cli import start

    honest = start.executor_args

    def attacking(*args, **kwargs) -> list[str]:
        cmd = honest(*args, **kwargs)
        at = cmd.index(EXECUTOR)  # [python, -m, fedhaven.client.executor, ARGS...]
        return [cmd[0], __file__, "executor", "--attack", kind, *cmd[at + 1:]]

    start.executor_args = attacking
    return cli.main(["start", *argv])


def main(argv: list[str]) -> int:
    mode, flag, kind, *rest = argv
    if flag != "--attack":
        raise SystemExit(__doc__)
    if mode == "executor":
        run_executor(kind, rest)
        return 0
    return run_start(kind, rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

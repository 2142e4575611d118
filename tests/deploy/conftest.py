"""A real deployment on 127.0.0.1 shared by the deployment tests: fl-server and three fl-client sites, TLS,
node auth."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedhaven.sim.loopback import LoopbackFederation, cli, run_toml


class Federation(LoopbackFederation):
    """The shared federation, with the shorthands these tests use."""

    cli = staticmethod(cli)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.site_names)

    @property
    def site_dirs_list(self) -> list[Path]:
        return [self.site_dirs[n] for n in self.site_names]

    def run(self, *, retries: int = 1, dp_extra: str = "", target: float = 6.0,  # type: ignore[override]  # keywords
            timeout: float = 600) -> subprocess.CompletedProcess:
        """`fl-server run` of a 2-round DP + SecAgg+ digits run, as the operator.

        `target` is each site's epsilon after the run, counting what it spent before (sites hold 50).
        """
        text = run_toml(retries=retries, target=target).replace("[dp]\n", f"[dp]\n{dp_extra}\n")
        return super().run(text, timeout=timeout)

    @staticmethod
    def run_dir_of(res: subprocess.CompletedProcess) -> Path:  # type: ignore[override]  # takes the result
        return LoopbackFederation.run_dir_of(res.stdout + res.stderr)

    def site_dir(self, name: str, *, register: bool) -> Path:
        return self.add_site_dir(name, register=register)


@pytest.fixture
def deploy_cli():
    """Run an installed fedhaven command with the hardened environment."""
    return cli


@pytest.fixture(scope="session")
def federation():
    # In a 0755 folder, not under pytest's 0700 tmp root: the tests show that the coordinator's OWN permissions
    # keep other local accounts out.
    fed = Federation.in_temp(prefix="fedhaven-deploy-")
    try:
        fed.start()
        yield fed
    finally:
        fed.stop()

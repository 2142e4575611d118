"""What the ClientApp tests share: Flower's task identity (the test plays the coordinator) and a one-site ClientApp."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from fedhaven.client.flower_app import make_client_app
from fedhaven.client.types import Site

_KEYS = itertools.count()


def _answer(reply):
    """A ClientApp's reply as the coordinator reads it: the reply, or the site's coded refusal raised again as
    TaskRefused (its code and sentence, as they were sent)."""
    from fedhaven.shared.refusal import TaskRefused, code_of

    if reply.has_error():
        code = code_of(reply.error.code)
        assert code is not None, f"an error that is not a refusal: {reply.error}"
        raise TaskRefused(code, reply.error.reason)
    return reply


class OneSite:
    """A SiteProvider serving one site; each instance its own cache key (never id(): a freed object's id is reused)."""

    def __init__(self, site: Site) -> None:
        self.site, self._key = site, f"test-site-{next(_KEYS)}"

    def key(self, context):
        return self._key

    def info(self, context):
        return self.site.info

    def data(self, context):
        return self.site.data


@pytest.fixture(autouse=True)
def _task_identity():
    """What Flower's runtime sets in the process that builds a message (through the site's seam)."""
    from fedhaven.client.seam.runtime import set_task_identity

    set_task_identity(task_id=1, run_id=1, node_id=0)


@pytest.fixture
def client_app_for() -> Callable[[Site], object]:
    """The ClientApp serving one site, as a deployed site's executor builds it."""
    return lambda site: make_client_app(sites=OneSite(site))


@pytest.fixture
def answer():
    """`answer(reply)`: the reply, or the site's coded refusal raised as TaskRefused (see `_answer`)."""
    return _answer


DIGITS_SITE_TOML = """
name = "hospital-a"
{extra}
[coordinator]
address = "localhost:9092"
ca_cert = "ca.pem"
[data]
source = "idx"
path = "data"
[policy]
max_epsilon = 50.0
"""


@pytest.fixture
def digits_site():
    """`digits_site(folder, extra="", ledger=False)`: a site folder as `fl-client` reads it: 120 digits images as IDX,
    a CA certificate, site.toml (`extra` lines at its top), the site's key, and with `ledger` an initialised
    ledger. Returns the folder."""
    import numpy as np

    from fedhaven.client.cli import main
    from fedhaven.shared.crypto import make_ca
    from fedhaven.shared.sources import load_digits_data, save_idx

    def make(folder, *, extra: str = "", ledger: bool = False):
        save_idx(load_digits_data(split="train").subset(np.arange(120)), folder / "data", split="train")
        (folder / "site.toml").write_text(DIGITS_SITE_TOML.format(extra=extra))
        (folder / "ca.pem").write_bytes(make_ca().cert_pem)
        assert main(["keygen", "--out", str(folder)]) == 0
        if ledger:
            assert main(["ledger", "init", "--config", str(folder / "site.toml")]) == 0
        return folder

    return make

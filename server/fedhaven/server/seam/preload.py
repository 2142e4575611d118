"""What every forked ServerApp needs loaded, imported once by the coordinator's fork server (`seam.superexec`).

Flower's ServerApp runtime and fedhaven's deployed ServerApp (torch); Opacus,
which the ServerApp imports to check the model and account for privacy (about a
second, imported quietly: see `quiet_opacus_import`); and scikit-learn's dataset
reader, which the bundled `digits` source uses (most of a second).
"""

from __future__ import annotations

import flwr.superlink.cli.flwr_serverapp  # noqa: F401 - preloaded for every forked ServerApp

import fedhaven.server.deployment  # noqa: F401 - preloaded for every forked ServerApp
from fedhaven.shared.runtime import quiet_opacus_import

quiet_opacus_import()
import sklearn.datasets  # noqa: E402, F401 - preloaded, after Opacus' quiet import

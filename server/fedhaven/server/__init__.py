"""fedhaven's coordinator: the ServerApp, strategies, the SecAgg+ workflow, run records and `fl-server`."""

from fedhaven.shared.runtime import harden_environment

harden_environment()

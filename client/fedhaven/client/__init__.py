"""fedhaven's site side: the ClientApp, site policy and the `fl-client` command."""

from fedhaven.shared.runtime import harden_environment

harden_environment()

"""fedhaven's researcher side: `fl-sim` runs many simulated sites with the deployment ClientApp and ServerApp."""

from fedhaven.shared.runtime import harden_environment

harden_environment()

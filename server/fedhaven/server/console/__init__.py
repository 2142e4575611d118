"""The operator's console, Prometheus metrics and health endpoints, served by `fl-server start` on the operator's
side only (its Unix socket; a TCP listener with the operator token); never on the sites' Fleet port."""

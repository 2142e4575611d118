"""Flower text and file formats the site relies on: SuperNode admission errors, console lines, the FAB layout."""

from __future__ import annotations

#: Text in the SuperNode's output when the coordinator does not admit it, by the failure it tells of. Flower text,
#: relied upon as printed by flwr 1.42.0 (see the seam's table):
#: - "Failed to activate SuperNode": the SuperLink's public message for FLEET_NODE_ACTIVATION_FAILED
#:   (`flwr.supercore.error.catalog`): its key is unknown or revoked;
#: - "code: 2001": FLEET_SUPERNODE_REGISTRATION_DISABLED (`flwr.supercore.error.base.ApiErrorCode`), printed as
#:   "[code: N] message" by `flwr.supernode.fleet_http_connection.http_request_response`: it sent no key;
#: - "CERTIFICATE_VERIFY_FAILED": OpenSSL's text, which the same function prints as `str(exc)`.
ADMISSION_MARKERS: dict[str, str] = {
    "Failed to activate SuperNode": "key-rejected",
    "fedhaven: unknown or revoked key": "key-rejected",  # the coordinator's gate (fedhaven.server.gate_auth)
    "code: 2001": "key-missing",
    "CERTIFICATE_VERIFY_FAILED": "tls-unverified",
}
#: How an INFO line with an empty message ends in Flower's colored console format
#: (`flwr.supercore.logger.ConsoleHandler.format`: color, level, reset, ": ", padding), once right-stripped.
_EMPTY_INFO_END = "INFO \x1b[0m:"

#: The FAB's project file (`flwr.common.constant.FAB_CONFIG_FILE`) and the manifest Flower's `flwr build` adds
#: (`flwr.cli.build.build_fab_from_files`); the `.info/CONTENT` file is not documented.
FAB_CONFIG_FILE = "pyproject.toml"
FAB_CONTENT_FILE = ".info/CONTENT"
#: Files a FAB that only names an installed app holds: its pyproject.toml and Flower's own bookkeeping.
FAB_BOOKKEEPING_FILES = frozenset({FAB_CONFIG_FILE, FAB_CONTENT_FILE})


def admission_failures(*, line: str) -> tuple[str, ...]:
    """The admission failures (keys of `ADMISSION_MARKERS`' values, in its order) a SuperNode output line tells of."""
    return tuple(failure for marker, failure in ADMISSION_MARKERS.items() if marker in line)


def is_empty_log_line(*, text: str) -> bool:
    """Whether a right-stripped SuperNode output line is a Flower INFO log line with an empty message."""
    return text.endswith(_EMPTY_INFO_END)

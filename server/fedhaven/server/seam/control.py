"""The operator's side of Flower's Control API (register sites, submit, follow and stop runs), behind one module."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from fedhaven.shared.config import to_dict
from fedhaven.shared.schema import RunConfig

if TYPE_CHECKING:
    from flwr.supercore.control.control_http_client import ControlHttpClient

APP_PUBLISHER = "fedhaven"
APP_NAME = "fedhaven"


class ControlError(RuntimeError):
    """The Control API refused or could not be reached; the message says which and why."""


def write_app_dir(*, run: RunConfig, version: str = "0.1.0") -> Path:
    """A Flower app folder (pyproject.toml only) whose components are fedhaven's deployed apps.

    The run's whole configuration becomes the app's config, so the FAB records
    exactly what was run. Sites and coordinator import fedhaven from their own
    installation; the FAB carries no code.
    """
    folder = Path(tempfile.mkdtemp(prefix="fedhaven-app-"))
    doc: dict[str, Any] = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": APP_NAME, "version": version, "description": "fedhaven federated run",
                    "dependencies": []},
        "tool": {"flwr": {"app": {"publisher": APP_PUBLISHER,
                                  "components": {"serverapp": "fedhaven.server.deployment:app",
                                                 "clientapp": "fedhaven.client.deployment:app"},
                                  "config": to_dict(run)}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return folder


@dataclass(frozen=True)
class RunState:
    run_id: int
    status: str
    sub_status: str
    details: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class Control:
    """The operator's Control API connection: over the SuperLink's Unix socket, which only the operator can open.

    `address` is `unix:/path/to/superlink.sock` (the coordinator's own SuperLink) or `host:port` (a
    SuperLink reached over TCP, e.g. to show that the Fleet front refuses Control calls).
    """

    def __init__(self, *, address: str, ca_cert: Path | None, flwr_home: Path) -> None:
        os.environ["FLWR_HOME"] = str(flwr_home)  # Flower's CLI helpers keep tokens there, never in ~/.flwr
        try:
            if address.startswith("unix:"):
                self._client = _socket_client(address[len("unix:"):])
            else:
                from flwr.cli.typing import SuperLinkConnection
                from flwr.cli.utils import init_http_client_from_connection

                conn = SuperLinkConnection(name="fedhaven", address=address, insecure=ca_cert is None,
                                           root_certificates=str(ca_cert) if ca_cert else None)
                self._client = init_http_client_from_connection(conn)
        except Exception as exc:  # noqa: BLE001 - Flower raises several kinds
            raise ControlError(f"cannot open the Control API at {address}: {exc}") from None

    def _call(self, name: str, request: Any) -> Any:
        try:
            return getattr(self._client, name)(request=request)
        except Exception as exc:  # noqa: BLE001 - transport and HTTP errors alike
            raise ControlError(f"Control API {name} failed: {exc}") from None

    def register_site(self, *, public_key: bytes, name: str) -> int:
        from cryptography.hazmat.primitives import serialization
        from flwr.proto.control_pb2 import RegisterNodeRequest

        key = serialization.load_ssh_public_key(public_key.strip())
        raw = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        res = self._call("RegisterNode", RegisterNodeRequest(public_key=raw, name=name))  # PEM SPKI, as flwr's CLI
        if not res.node_id:
            raise ControlError(f"the SuperLink did not register site {name}")
        return int(res.node_id)

    def unregister_site(self, *, node_id: int) -> None:
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self._call("UnregisterNode", UnregisterNodeRequest(node_id=node_id))

    def nodes(self) -> list[dict[str, Any]]:
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._call("ListNodes", ListNodesRequest())
        # last_activated_at / last_deactivated_at: ISO times the SuperLink set when the node went online / offline
        return [{"node_id": n.node_id, "name": n.name, "status": n.status, "last_activated_at": n.last_activated_at,
                 "last_deactivated_at": n.last_deactivated_at} for n in res.nodes_info]

    def start_run(self, *, app_dir: Path) -> int:
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        fab_bytes = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        res = self._call("StartRun", StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto({}),
                                                     federation=""))
        return int(res.run_id)

    def runs(self) -> list[RunState]:
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._call("ListRuns", ListRunsRequest())
        return [RunState(int(rid), r.status.status, r.status.sub_status, r.status.details)
                for rid, r in sorted(res.run_dict.items())]

    def run(self, run_id: int) -> RunState:
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._call("ListRuns", ListRunsRequest(run_id=run_id))
        r = res.run_dict[run_id]
        return RunState(run_id, r.status.status, r.status.sub_status, r.status.details)

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self._call("StopRun", StopRunRequest(run_id=run_id))

    def close(self) -> None:
        self._client.close()



def _socket_client(path: str) -> ControlHttpClient:
    """Flower's own Control client (same interceptors as its CLI), carried over a Unix socket."""
    import httpx
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.supercore.control.control_http_client import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    try:
        os.stat(path)
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(path)
    except PermissionError:
        raise ControlError(f"permission denied: this account may not use {path}; only the operator's account "
                           f"drives the coordinator") from None
    except FileNotFoundError:
        raise ControlError(f"the coordinator's socket {path} does not exist: is `fl-server start` running?") from None
    client = ControlHttpClient("http://superlink",
                               interceptors=[CliClientHttpInterceptor(),
                                             RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
    client._client.close()  # noqa: SLF001 - same client settings, over the socket instead of TCP
    client._client = httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=30.0,  # noqa: SLF001 - as above
                                  follow_redirects=True)
    return client

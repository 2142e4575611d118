"""The site's one seam with Flower: every Flower internal, patch, adapted copy and relied-upon text on the site side.

Everything else under `fedhaven.client` uses only Flower's public API (`flwr.app`,
`flwr.clientapp`, `flwr.client`, `flwr.client.mod`, and the names `flwr.common` exports)
plus this package. Its modules:

- `runtime`: the executor's Runtime API client (TLS trusting only the certificate
  `fl-client start` made for its SuperNode, served through Flower's own `--ssl-*` flags),
  task claims, pulls, pushes, heartbeat, Flower's task identity and the message-id fix-up
  (adapted copies of `run_clientapp.pull_task_input`, `heartbeat.make_task_heartbeat_fn_http`,
  and the claim step of `run_superexec`);
- `legacy`: the legacy FitIns/FitRes records and the SecAgg+ records the ClientApp's mods
  read and write, and the ledger's hash of the bytes sent;
- `formats`: the SuperNode's admission error text, its console line format, the FAB layout;
- `supernode`: the site's SuperNode process (`python -m fedhaven.client.seam.supernode`), Flower's
  `flower-supernode` with its reception guarded, so that a message of a run that stops while it is
  received never stays a task for the executor (Flower 1.42 leaves it, and the next run stalls);
- `internals`: the `Internal` records below, as data (no Flower import).

Each internal is listed in `INTERNALS`; `fedhaven.shared.seams.verify(INTERNALS)` imports each
module, checks each name, parameter, attribute and source fragment recorded, and names any
that a Flower upgrade removed or changed (`tests/client/test_seam.py`). "(module text)" rows
rely on text in the module's source. `CERTIFICATE_VERIFY_FAILED` is OpenSSL's text, printed by
the SuperNode through `http_request_response`'s `str(exc)`. `MessageType` is not listed: the
site imports it from `flwr.app`, where Flower exports it. All rows were read from flwr 1.42.0.

The executor reaches its SuperNode over TLS, not a Unix socket: Flower 1.42's SuperNode hands
uvicorn only `host` and `port` (`_start_supernode_http_api`, no `uds`), and its Runtime API
client dials `http(s)://{server_address}` through a plain `httpx.Client` (no transport to
give it): a socket file would need a patch on both sides, TLS needs only Flower's flags.

`seam.runtime`:

| module / name | kind | read from | why | public alternative |
|---|---|---|---|---|
| **`flwr.common.constant`** | | | | |
| `ErrorCode` | import | 1.42.0 | the error code for a ClientApp that raised | `Error(code=2)`: any int |
| `SubStatus` | import | 1.42.0 | a task's final sub-status | none |
| **`flwr.common.serde`** | | | | |
| `context_from_proto` | import | 1.42.0 | a task's Context | none |
| `run_from_proto` | import | 1.42.0 | a task's Run | none |
| `fab_from_proto` | import | 1.42.0 | the run's FAB | none |
| **`flwr.supercore.run`** | | | | |
| `Run` | format | 1.42.0 | the run id of a task | none |
| **`flwr.supercore.fab`** | | | | |
| `Fab` | format | 1.42.0 | the FAB bytes the site reviews | none |
| **`flwr.proto.node_pb2`** | | | | |
| `Node` | import | 1.42.0 | pulls objects for node_id | none |
| **`flwr.proto.runtime_pb2`** | | | | |
| `AcquireTaskRequest` | import | 1.42.0 | claims a task: task, token, task.type | none |
| `PullTaskInputRequest` | import | 1.42.0 | task_id, run, context, fab | none |
| `PullAppMessagesRequest` | import | 1.42.0 | the message's object tree | none |
| `SendTaskHeartbeatRequest` | import | 1.42.0 | heartbeat; reads success | none |
| **`flwr.supercore.constant`** | | | | |
| `TaskType` | import | 1.42.0 | the task kinds claimed | none |
| **`flwr.supercore.heartbeat`** | | | | |
| `HeartbeatSender` | import | 1.42.0 | a claimed task's heartbeat | none |
| `make_task_heartbeat_fn_http` | copy | 1.42.0 | never raises SIGINT on a refused beat | none |
| **`flwr.supercore.inflatable.inflatable_protobuf_utils`** | | | | |
| `make_pull_object_fn_protobuf` | import | 1.42.0 | pulls objects | none |
| `make_confirm_message_received_fn_protobuf` | import | 1.42.0 | confirms receipt | none |
| **`flwr.supercore.inflatable.inflatable_utils`** | | | | |
| `pull_and_inflate_object_from_tree` | import | 1.42.0 | inflates the message | none |
| **`flwr.supercore.interceptors`** | | | | |
| `RuntimeVersionHttpInterceptor` | import | 1.42.0 | version headers | none |
| `RuntimeTokenHttpInterceptor` | import | 1.42.0 | the task's token | none |
| `SuperExecAuthHttpInterceptor` | import | 1.42.0 | signs AcquireTask (shared secret) | none |
| **`flwr.supercore.retry`** | | | | |
| `make_simple_http_retry_invoker` | import | 1.42.0 | HTTP retries; gives up on a TLS error | none |
| **`flwr.supercore.runtime`** | | | | |
| `RuntimeHttpClient` | import | 1.42.0 | the Runtime API client | none |
| `RuntimeHttpClient.from_server_address` | import | 1.42.0 | builds the client; TLS trusting only the pinned CA | none |
| `RuntimeHttpClient.AcquireTask` | format | 1.42.0 | RPC name SuperExec auth signs | none |
| **`flwr.supernode.cli.flower_supernode`** | | | | |
| `_start_supernode_http_api` | format | 1.42.0 | Runtime API on --host/--port, TLS from --ssl-*; no Unix socket | `--ssl-certfile`, `--ssl-keyfile`, `--ssl-ca-certfile`, `--host`, `--port` (flags only) |
| **`flwr.supercore.task_identity`** | | | | |
| `TaskIdentity` | patch | 1.42.0 | global identity `Message()` reads; set per task | none |
| `_TaskIdentityMeta` | patch | 1.42.0 | its class-level setters | none |
| **`flwr.app.metadata`** | | | | |
| `Metadata` | patch | 1.42.0 | private `_message_id`, set on pull | none |
| **`flwr.supernode.runtime.run_clientapp`** | | | | |
| `push_message` | import | 1.42.0 | hands the reply back | none |
| `push_task_output` | import | 1.42.0 | reports the task's end | none |
| `pull_task_input` | copy | 1.42.0 | polls for the message; 20 ms backoff | none |
| `run_clientapp` | copy | 1.42.0 | `SiteExecutor.run_task`, no FAB install | none |
| **`flwr.supercore.superexec.run_superexec`** | | | | |
| `run_superexec` | copy | 1.42.0 | claim step of `SiteExecutor.serve` | none |
| `_SUPEREXEC_AUTH_METHODS` | copy | 1.42.0 | the RPCs SuperExec auth signs | none |

`seam.legacy`:

| module / name | kind | read from | why | public alternative |
|---|---|---|---|---|
| **`flwr.common.secure_aggregation.secaggplus_constants`** | | | | |
| `RECORD_KEY_CONFIGS` | import | 1.42.0 | recognises SecAgg+ messages | none |
| `RECORD_KEY_STATE` | import | 1.42.0 | finds SecAgg+'s state | none |
| `Key` | import | 1.42.0 | the SecAgg+ fields the site's terms read | none |
| `Stage` | import | 1.42.0 | SecAgg+'s stage names | none |
| **`flwr.client.mod.secure_aggregation.secaggplus_mod`** | | | | |
| `SecAggPlusState` | format | 1.42.0 | `max_weight`: refuse before training; threshold, shares, node, neighbours: the site's terms | none |
| `_unmask` | format | 1.42.0 | seed shares for nodes said active, key shares for nodes said dead: why the lists are checked | none |
| `_setup` | format | 1.42.0 | the setup reply's two public keys, which the site signs | none |
| `secaggplus_mod` | format | 1.42.0 | state kept in context; stage key popped | none |
| `secaggplus_mod` | format | 1.42.0 | its collect reply keeps the FitRes metrics | none |
| **`flwr.server.workflow.secure_aggregation.secaggplus_workflow`** | | | | |
| `SecAggPlusWorkflow.collect_masked_vectors_stage` | format | 1.42.0 | only stage with the FitIns | none |
| **`flwr.common.serde`** | | | | |
| `recorddict_to_proto` | import | 1.42.0 | ledger hash of 'the bytes sent' | `content.object_id` (new hash) |
| **`flwr.compat.common.recorddict_compat`** | | | | |
| `recorddict_to_fitins` | import | 1.42.0 | task config, received weights | none |
| `recorddict_to_fitres` | import | 1.42.0 | the update, to encode | none |
| `fitres_to_recorddict` | import | 1.42.0 | writes it back | none |
| `fitres_to_recorddict` | format | 1.42.0 | 'fitres.metrics': where the ledger entry's hash is added to a reply | none |
| `_recorddict_to_fit_or_evaluate_ins_components` | format | 1.42.0 | 'fitins.config' marks a task | none |

`seam.formats`:

| module / name | kind | read from | why | public alternative |
|---|---|---|---|---|
| **`flwr.supercore.error.catalog`** | | | | |
| (module text) | format | 1.42.0 | 'Failed to activate SuperNode': key not accepted | exit code 305 (no reason) |
| **`flwr.supercore.error.base`** | | | | |
| `ApiErrorCode` | format | 1.42.0 | 'code: 2001': no key sent | none |
| **`flwr.supernode.fleet_http_connection`** | | | | |
| `http_request_response` | format | 1.42.0 | prints '[code: N] msg', or `str(exc)` (TLS) | none |
| **`flwr.supercore.logger`** | | | | |
| `ConsoleHandler.format` | format | 1.42.0 | empty INFO lines (dropped) | none |
| (module text) | format | 1.42.0 | the console's INFO and reset colors | none |
| **`flwr.common.constant`** | | | | |
| (module text) | format | 1.42.0 | the FAB's project file | none |
| **`flwr.cli.build`** | | | | |
| `build_fab_from_files` | format | 1.42.0 | a FAB: pyproject.toml, '.info/CONTENT' | none |

`seam.supernode`:

| module / name | kind | read from | why | public alternative |
|---|---|---|---|---|
| **`flwr.supernode.cli`** | | | | |
| `flower_supernode` | import | 1.42.0 | the SuperNode's entry point, run once guarded | the `flower-supernode` command (unguarded) |
| **`flwr.supernode.start_client_internal`** | | | | |
| `_pull_and_store_message` | patch | 1.42.0 | wrapped: a task made for a message given up in reception is held back, then finished | none |
| `start_client_internal` | format | 1.42.0 | calls it by its module name, with keywords | none |
| `_push_messages` | format | 1.42.0 | takes any reply as the answer to the message just received: no task may outlive its message | none |
| **`flwr.supernode.nodestate`** | | | | |
| `NodeState` | patch | 1.42.0 | three methods wrapped per instance; a given-up task finished, its message deleted | none |
| **`flwr.supernode.nodestate.nodestate_factory`** | | | | |
| `NodeStateFactory.state` | format | 1.42.0 | one NodeState for the loop and the Runtime API | none |
| **`flwr.supercore.servicer.runtime.runtime_handlers`** | | | | |
| `acquire_task` | format | 1.42.0 | claims through `state.claim_task`, which the guard holds back | none |
| **`flwr.supercore.retry.http_retry`** | | | | |
| `make_simple_http_retry_invoker` | format | 1.42.0 | a 403 (run not running) is raised as `RunNotRunningException` | none |
| **`flwr.common.constant`** | | | | |
| `SubStatus` | import | 1.42.0 | a given-up message's task ends stopped | none |
"""

from __future__ import annotations

from fedhaven.client.seam.internals import FORMATS, LEGACY, RUNTIME, SUPERNODE
from fedhaven.shared.seams import Internal

#: The Flower release every record below was read from.
READ_FROM = "flwr 1.42.0"
#: Every Flower internal the site relies on (imported, patched, copied, or a text/format relied upon).
INTERNALS: tuple[Internal, ...] = (*RUNTIME, *LEGACY, *FORMATS, *SUPERNODE)

__all__ = ["INTERNALS", "READ_FROM", "Internal"]

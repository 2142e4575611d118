"""The coordinator's seam: every Flower internal the coordinator relies on, in one package, each listed and checked.

Read from Flower 1.42.0. Outside this package the coordinator uses Flower's public
API only (`flwr.app`, `flwr.serverapp`, `flwr.server` with its `strategy` and
`workflow` packages, `flwr.common`, `flwr.simulation`), which `tests/test_flower_seam.py`
checks module by module; `INTERNALS` below lists what this package relies on, and
`fedhaven.shared.seams.verify(INTERNALS)` (run by that test) names any of it a Flower
upgrade removes or changes. Modules:

- `legacy`: the legacy stack driven one fit round at a time (SecAgg+ stages, central
  DP's aggregation, the client manager, the workflows' state, strategies' state);
- `secagg_relay`: the sites' signed SecAgg+ keys relayed from setup to share-keys;
- `superexec` (with `preload`): Flower's SuperExec with ServerApps forked warm;
- `superlink_app`: Flower's SuperLink app built for fedhaven's listeners;
- `wire`: Flower's HTTP routes and protobuf bodies, read by the doors;
- `fleet_auth`: Flower's SuperNode authentication headers, checked by the public door before a body;
- `control`: Flower's Control API client over the operator's socket;
- `errors`: Flower's and Ray's error text made readable (display only).
- `simulation`: which simulated node holds which partition, so that `fl-sim` names a site
  that has not answered yet (display only).

The benchmarks (`fedhaven.sim.bench`) measure Flower itself (its masking, its SQL
state, its log lines) and are not part of a run: they are outside this rule.

| what | kind | why | public alternative |
|---|---|---|---|
| `flwr.compat.common.recorddict_compat.arrayrecord_to_parameters` | import | reads the global weights from LegacyContext's state | ArrayRecord.to_numpy_ndarrays() |
| `flwr.compat.common.recorddict_compat.parameters_to_arrayrecord` | import | writes the global weights (resume) into LegacyContext's state | ArrayRecord(list of ndarrays) |
| `flwr.server.client_manager.SimpleClientManager` | import | base of BoundedClientManager: bounded, reporting waits; silent sites not sampled again at once | flwr.server.SimpleClientManager (its .clients is not public) |
| `flwr.server.client_manager.SimpleClientManager.wait_for` | patch | overridden: Flower waits 86,400 s in silence | none |
| `flwr.server.client_manager.SimpleClientManager.sample` | patch | overridden: leaves out nodes that just went silent | none |
| `flwr.server.client_manager.SimpleClientManager.unregister` | patch | overridden: a node Flower dropped comes back afresh | none |
| `flwr.server.client_proxy.ClientProxy` | import | a node's proxy: its cid / node id | none |
| `flwr.server.criterion.Criterion.select` | import | sampling only trusted nodes | none |
| `flwr.server.compat.app_utils.start_update_client_manager_thread` | import | registers the grid's nodes in the client manager (it wraps the manager's methods) | DefaultWorkflow starts it (but runs all rounds) |
| `flwr.server.workflow.constant.` | import | the legacy context's records: current round, start time, global parameters | none |
| `flwr.server.workflow.constant.Key` | import | record keys | none |
| `flwr.server.workflow.default_workflows.default_init_params_workflow` | import | initial global parameters, as DefaultWorkflow sets them | none |
| `flwr.server.workflow.default_workflows.default_fit_workflow` | import | one plain fit round; replaces the parameters record only when it aggregates | none |
| `flwr.server.workflow.secure_aggregation.secaggplus_workflow.WorkflowState` | import | the failures and the trained replies of a SecAgg+ round | none |
| `flwr.server.workflow.SecAggPlusWorkflow.__call__` | copy | CheckedSecAggPlus: the same four stages, remembering where the protocol halted and why | none |
| `flwr.server.workflow.SecAggPlusWorkflow.collect_masked_vectors_stage` | import | a stage CheckedSecAggPlus calls | none |
| `flwr.server.workflow.SecAggPlusWorkflow.unmask_stage` | import | a stage CheckedSecAggPlus calls | none |
| `flwr.compat.common.recorddict_compat.fitres_to_recorddict` | format | 'fitres.metrics': a training reply's metrics, read to check the name it reports | none |
| `flwr.proto.node_pb2.NodeInfo` | format | a node's id and the name its key was registered under, as `Grid.get_nodes()` returns them | none |
| `flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS` | import | the SecAgg+ record of a stage's messages | none |
| `flwr.common.secure_aggregation.secaggplus_constants.Key` | import | a message's stage | none |
| `flwr.common.secure_aggregation.secaggplus_constants.Stage` | import | the stages whose messages the relay reads and extends | none |
| `flwr.server.workflow.SecAggPlusWorkflow.setup_stage` | format | setup replies arrive through `grid.send_and_receive`; only their two keys are kept | none |
| `flwr.server.workflow.SecAggPlusWorkflow.share_keys_stage` | format | one share-keys message per node, keyed by its neighbours' node ids | none |
| `flwr.server.strategy.DifferentialPrivacyClientSideFixedClipping.aggregate_fit` | copy | TolerantCentralDP: noise calibrated to the updates actually averaged, tolerating dropouts | none |
| `flwr.server.strategy.DifferentialPrivacyClientSideFixedClipping.__init__` | import | the wrapper's state TolerantCentralDP reads | none |
| `flwr.server.strategy.DifferentialPrivacyClientSideAdaptiveClipping._update_clip_norm` | import | adaptive clipping's norm update, called after noising with the norm the sites used | none |
| `flwr.server.strategy.DifferentialPrivacyClientSideAdaptiveClipping.__init__` | import | its noise split (Andrew et al.) | none |
| `flwr.supercore.differential_privacy.add_gaussian_noise_to_params` | import | the central-DP noise on the aggregate (std z*C/m) | none |
| `flwr.supercore.differential_privacy.compute_stdv` | import | the noise's std, recorded | none |
| `flwr.server.strategy.fedopt.FedOpt.__init__` | patch | checkpoints read and restore FedAdam's moments (m_t, v_t) and current point | none |
| `flwr.supercore.constant.TaskType` | import | which tasks the fork server starts | none |
| `flwr.supercore.superexec.executor.subprocess_executor.SubprocessExecutor` | patch | ForkingExecutor subclasses it | none |
| `flwr.supercore.superexec.executor.subprocess_executor.SubprocessExecutor.launch` | copy | serverapp_args: flwr-serverapp's command line as Flower builds it | none |
| `flwr.supercore.superexec.executor.types.ExecutionSpec` | import | what a launch receives | none |
| `flwr.supercore.superexec.executor.types.LaunchResult.accepted` | import | a launch's answer | none |
| `flwr.superlink.cli.flwr_serverapp.flwr_serverapp` | import | the ServerApp entry point, run in the forked process (it parses sys.argv) | the flwr-serverapp command in a fresh process |
| `flwr.supercore.superexec.run_superexec.get_executor` | patch | the module global replaced by the fork-server executor | none |
| `flwr.supercore.superexec.run_superexec.run_superexec` | patch | looks its executor up by that global name; its poll interval comes from the environment | none |
| `flwr.supercore.superexec.run_superexec._get_task_poll_interval` | format | reads the poll interval fedhaven sets | none |
| `flwr.supercore.superexec.run_superexec.` | format | the poll interval's environment variable | none |
| `flwr.supercore.cli.flower_superexec.flower_superexec` | import | Flower's SuperExec entry point, run with a rewritten sys.argv | none |
| `flwr.superlink.main.create_app` | import | the SuperLink ASGI app | flower-superlink behind a reverse proxy (loses the operator socket and held pulls) |
| `flwr.superlink.cli.flower_superlink._parse_superlink_lifespan_config` | import | Flower's own argument parsing and checks (reads sys.argv) | none |
| `flwr.superlink.cli.flower_superlink.SuperLinkLifespan` | import | the app's lifespan (state) | none |
| `flwr.supercore.protobuf.client.ProtobufClient.__init__` | format | the SuperNode's 30 s HTTP timeout, which a held pull plus its settle stay under | none |
| `flwr.superlink.routers.fleet.node_auth.authenticate_node` | copy | fleet_auth: the door makes Flower's header checks (key, window, signature) before reading a body | none |
| `flwr.supercore.constant.` | format | fleet_auth: the authentication header names (deploy/nginx names them too) | none |
| `flwr.common.constant.` | format | limits: an object push is at most one 5 MB array chunk (the door's --max-object default is 16 MB) | none |
| `flwr.common.constant.` | format | fleet_auth: the signed-time header and Flower's window | none |
| `flwr.supercore.primitives.asymmetric.verify_signature` | import | fleet_auth: Flower's signature check | none |
| `flwr.supercore.primitives.asymmetric.bytes_to_public_key` | import | fleet_auth: the registered key as Flower loads it | none |
| `flwr.supercore.constant.` | format | gate_auth: a SuperNode has 2 object pushes and 2 pulls open at once; 16 requests per node leave room | none |
| `flwr.supercore.constant.NodeStatus` | import | fleet_auth: which nodes count as registered | none |
| `flwr.server.superlink.linkstate.linkstate.LinkState.get_node_info` | import | fleet_auth: every registered key in one query | none |
| `flwr.superlink.main.create_app` | format | fleet_auth: the app's link state and auth switch on `app.state` | none |
| `flwr.supernode.node_auth_http_interceptor.NodeAuthHttpInterceptor.intercept` | format | gate_auth refuses a replayed (key, time): the SuperNode signs a fresh time on every call | none |
| `flwr.supercore.protobuf.client.ProtobufClient._unary_unary` | format | gate_auth: every retry runs the interceptors again (a fresh signed time), so no retry looks replayed | none |
| `flwr.superlink.routers.fleet.router.` | format | the Fleet routes the doors admit and hold | none |
| `flwr.supercore.error.base.ApiErrorCode` | format | the door refuses an unknown key's activation with Flower's own activation-failed code | none |
| `flwr.supercore.retry.http_retry.` | format | a SuperNode answered 401 stops itself silently: the door answers an unknown key's activation 412 | none |
| `flwr.proto.fleet_pb2.PullMessagesRequest` | import | who pulls | none |
| `flwr.proto.fleet_pb2.PullMessagesResponse` | import | an empty pull; the pulled objects | none |
| `flwr.proto.fleet_pb2.PushMessagesResponse` | import | objects a push announces | none |
| `flwr.proto.runtime_pb2.PushAppMessagesResponse` | import | objects a ServerApp push announces | none |
| `flwr.proto.runtime_pb2.PullAppMessagesResponse` | import | objects a ServerApp pull receives | none |
| `flwr.proto.message_pb2.PushObjectRequest` | format | pushed_object_id reads this field by number, never parsing the object's content | none |
| `flwr.proto.message_pb2.ObjectTree` | import | tree_ids walks it | none |
| `flwr.supercore.control.control_http_client.ControlHttpClient` | patch | its httpx client (`_client`, set by its base) swapped for one over the Unix socket | none |
| `flwr.supercore.protobuf.client.ProtobufClient.__init__` | patch | where `_client` is set | none |
| `flwr.cli.cli_client_interceptor.CliClientHttpInterceptor` | import | as Flower's CLI calls | none |
| `flwr.supercore.interceptors.RuntimeVersionHttpInterceptor` | import | as Flower's CLI calls | none |
| `flwr.cli.typing.SuperLinkConnection` | import | a TCP Control connection (tests, benchmark) | none |
| `flwr.cli.utils.init_http_client_from_connection` | import | the same, Flower's way | none |
| `flwr.proto.control_pb2.` | import | Control requests | none |
| `flwr.cli.build.build_fab_from_disk` | import | the run's package, built as `flwr run` does | none |
| `flwr.common.serde.fab_to_proto` | import | the package on the wire | none |
| `flwr.common.serde.user_config_to_proto` | import | the run config on the wire | none |
| `flwr.supercore.fab.Fab` | import | the package | the flwr CLI (not over a socket) |
| `flwr.supernode.runtime.run_clientapp.run_clientapp` | format | a raised exception as Flower writes it into an Error's reason | none |
| `flwr.clientapp.client_app.ClientAppException` | format | Flower's message marker in simulation | none |
| `flwr.simulation.run_simulation.run_simulation` | format | run_simulation's deprecation warning, dropped from fl-sim's output | `flwr run` against a local SuperLink (installs app dependencies with uv by default) |
| `flwr.server.superlink.fleet.vce.vce_api._register_nodes` | format | simulation: node i, registered i-th, holds partition i (fl-sim names its sites before they answer) | none |
| `flwr.server.superlink.linkstate.in_memory_linkstate.InMemoryLinkState.create_node` | format | simulation: each node stamped `registered_at` when created, the order `Grid.get_nodes()` shows | none |
"""

from __future__ import annotations

from fedhaven.shared.seams import Internal

READ_FROM = "flwr 1.42.0"

INTERNALS: tuple[Internal, ...] = (
    # ---- seam.legacy: the legacy stack fedhaven drives one fit round at a time ----
    Internal("flwr.compat.common.recorddict_compat", "arrayrecord_to_parameters", "import",
             "reads the global weights from LegacyContext's state", params=("record", "keep_input"),
             alternative="ArrayRecord.to_numpy_ndarrays()"),
    Internal("flwr.compat.common.recorddict_compat", "parameters_to_arrayrecord", "import",
             "writes the global weights (resume) into LegacyContext's state", params=("parameters", "keep_input"),
             alternative="ArrayRecord(list of ndarrays)"),
    Internal("flwr.server.client_manager", "SimpleClientManager", "import",
             "base of BoundedClientManager: bounded, reporting waits; silent sites not sampled again at once",
             source=("self.clients",), alternative="flwr.server.SimpleClientManager (its .clients is not public)"),
    Internal("flwr.server.client_manager", "SimpleClientManager.wait_for", "patch",
             "overridden: Flower waits 86,400 s in silence", params=("num_clients", "timeout")),
    Internal("flwr.server.client_manager", "SimpleClientManager.sample", "patch",
             "overridden: leaves out nodes that just went silent", params=("num_clients", "min_num_clients",
                                                                            "criterion")),
    Internal("flwr.server.client_manager", "SimpleClientManager.unregister", "patch",
             "overridden: a node Flower dropped comes back afresh", params=("client",)),
    Internal("flwr.server.client_proxy", "ClientProxy", "import", "a node's proxy: its cid / node id",
             source=("self.cid",)),
    Internal("flwr.server.criterion", "Criterion.select", "import", "sampling only trusted nodes",
             params=("client",)),
    Internal("flwr.server.compat.app_utils", "start_update_client_manager_thread", "import",
             "registers the grid's nodes in the client manager (it wraps the manager's methods)",
             params=("grid", "client_manager"), alternative="DefaultWorkflow starts it (but runs all rounds)"),
    Internal("flwr.server.workflow.constant", "", "import",
             "the legacy context's records: current round, start time, global parameters",
             attrs=("MAIN_CONFIGS_RECORD", "MAIN_PARAMS_RECORD", "Key")),
    Internal("flwr.server.workflow.constant", "Key", "import", "record keys", attrs=("START_TIME", "CURRENT_ROUND")),
    Internal("flwr.server.workflow.default_workflows", "default_init_params_workflow", "import",
             "initial global parameters, as DefaultWorkflow sets them", params=("grid", "context")),
    Internal("flwr.server.workflow.default_workflows", "default_fit_workflow", "import",
             "one plain fit round; replaces the parameters record only when it aggregates",
             params=("grid", "context"), source=("Exception(msg.error)",)),
    Internal("flwr.server.workflow.secure_aggregation.secaggplus_workflow", "WorkflowState", "import",
             "the failures and the trained replies of a SecAgg+ round", attrs=("failures", "legacy_results")),
    Internal("flwr.server.workflow", "SecAggPlusWorkflow.__call__", "copy",
             "CheckedSecAggPlus: the same four stages, remembering where the protocol halted and why",
             params=("grid", "context"), source=("setup_stage", "share_keys_stage", "collect_masked_vectors_stage",
                                                 "unmask_stage")),
    Internal("flwr.server.workflow", "SecAggPlusWorkflow.collect_masked_vectors_stage", "import",
             "a stage CheckedSecAggPlus calls", params=("grid", "context", "state")),
    Internal("flwr.server.workflow", "SecAggPlusWorkflow.unmask_stage", "import",
             "a stage CheckedSecAggPlus calls", params=("grid", "context", "state")),
    Internal("flwr.compat.common.recorddict_compat", "fitres_to_recorddict", "format",
             "'fitres.metrics': a training reply's metrics, read to check the name it reports",
             source=('res_str = "fitres"', 'recorddict.config_records[f"{res_str}.metrics"]')),
    Internal("flwr.proto.node_pb2", "NodeInfo", "format",
             "a node's id and the name its key was registered under, as `Grid.get_nodes()` returns them",
             equals=(("NODE_ID_FIELD_NUMBER", 1), ("NAME_FIELD_NUMBER", 13))),
    # ---- seam.secagg_relay: the sites' signed SecAgg+ keys carried from setup to share-keys ----
    Internal("flwr.common.secure_aggregation.secaggplus_constants", "RECORD_KEY_CONFIGS", "import",
             "the SecAgg+ record of a stage's messages"),
    Internal("flwr.common.secure_aggregation.secaggplus_constants", "Key", "import", "a message's stage",
             attrs=("STAGE",)),
    Internal("flwr.common.secure_aggregation.secaggplus_constants", "Stage", "import",
             "the stages whose messages the relay reads and extends", attrs=("SETUP", "SHARE_KEYS")),
    Internal("flwr.server.workflow", "SecAggPlusWorkflow.setup_stage", "format",
             "setup replies arrive through `grid.send_and_receive`; only their two keys are kept",
             params=("grid", "context", "state"),
             source=("grid.send_and_receive(", "pk1, pk2 = key_dict[Key.PUBLIC_KEY_1], key_dict[Key.PUBLIC_KEY_2]")),
    Internal("flwr.server.workflow", "SecAggPlusWorkflow.share_keys_stage", "format",
             "one share-keys message per node, keyed by its neighbours' node ids, sent through the grid",
             params=("grid", "context", "state"),
             source=("grid.send_and_receive(", "{str(nid): state.nid_to_publickeys[nid] for nid in neighbours}",
                     "content = RecordDict({RECORD_KEY_CONFIGS: cfg_record})")),
    Internal("flwr.server.strategy", "DifferentialPrivacyClientSideFixedClipping.aggregate_fit", "copy",
             "TolerantCentralDP: noise calibrated to the updates actually averaged, tolerating dropouts",
             params=("server_round", "results", "failures"),
             source=("add_gaussian_noise_to_params", "self.num_sampled_clients")),
    Internal("flwr.server.strategy", "DifferentialPrivacyClientSideFixedClipping.__init__", "import",
             "the wrapper's state TolerantCentralDP reads", params=("strategy", "noise_multiplier", "clipping_norm",
                                                                     "num_sampled_clients"),
             source=("self.clipping_norm", "self.noise_multiplier", "self.strategy")),
    Internal("flwr.server.strategy", "DifferentialPrivacyClientSideAdaptiveClipping._update_clip_norm", "import",
             "adaptive clipping's norm update, called after noising with the norm the sites used",
             params=("results",)),
    Internal("flwr.server.strategy", "DifferentialPrivacyClientSideAdaptiveClipping.__init__", "import",
             "its noise split (Andrew et al.)", params=("noise_multiplier", "clipped_count_stddev",
                                                         "initial_clipping_norm"),
             source=("compute_adaptive_noise_params",)),
    Internal("flwr.supercore.differential_privacy", "add_gaussian_noise_to_params", "import",
             "the central-DP noise on the aggregate (std z*C/m)",
             params=("model_params", "noise_multiplier", "clipping_norm", "num_sampled_clients")),
    Internal("flwr.supercore.differential_privacy", "compute_stdv", "import", "the noise's std, recorded",
             params=("noise_multiplier", "clipping_norm", "num_sampled_clients")),
    Internal("flwr.server.strategy.fedopt", "FedOpt.__init__", "patch",
             "checkpoints read and restore FedAdam's moments (m_t, v_t) and current point",
             source=("self.m_t", "self.v_t", "self.current_weights")),
    # ---- seam.superexec: Flower's SuperExec with ServerApps forked warm ----
    Internal("flwr.supercore.constant", "TaskType", "import", "which tasks the fork server starts",
             attrs=("SERVER_APP",)),
    Internal("flwr.supercore.superexec.executor.subprocess_executor", "SubprocessExecutor", "patch",
             "ForkingExecutor subclasses it", attrs=("launch", "reconcile", "get_eligible_capacity",
                                                     "wait_for_capacity", "close")),
    Internal("flwr.supercore.superexec.executor.subprocess_executor", "SubprocessExecutor.launch", "copy",
             "serverapp_args: flwr-serverapp's command line as Flower builds it", params=("spec",),
             source=("runtime_api_address", "--insecure", "--root-certificates", "--parent-pid")),
    Internal("flwr.supercore.superexec.executor.types", "ExecutionSpec", "import", "what a launch receives",
             attrs=("task_type", "runtime_api_address", "token", "insecure", "root_certificates_path",
                    "runtime_dependency_install", "parent_pid", "suppress_output", "task_id")),
    Internal("flwr.supercore.superexec.executor.types", "LaunchResult.accepted", "import", "a launch's answer"),
    Internal("flwr.superlink.cli.flwr_serverapp", "flwr_serverapp", "import",
             "the ServerApp entry point, run in the forked process (it parses sys.argv)",
             alternative="the flwr-serverapp command in a fresh process"),
    Internal("flwr.supercore.superexec.run_superexec", "get_executor", "patch",
             "the module global replaced by the fork-server executor", source=()),
    Internal("flwr.supercore.superexec.run_superexec", "run_superexec", "patch",
             "looks its executor up by that global name; its poll interval comes from the environment",
             source=("get_executor(",)),
    Internal("flwr.supercore.superexec.run_superexec", "_get_task_poll_interval", "format",
             "reads the poll interval fedhaven sets", source=("_TASK_POLL_INTERVAL_ENV",)),
    Internal("flwr.supercore.superexec.run_superexec", "", "format", "the poll interval's environment variable",
             equals=(("_TASK_POLL_INTERVAL_ENV", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"),)),
    Internal("flwr.supercore.cli.flower_superexec", "flower_superexec", "import",
             "Flower's SuperExec entry point, run with a rewritten sys.argv"),
    # ---- seam.superlink_app: Flower's SuperLink app on fedhaven's listeners ----
    Internal("flwr.superlink.main", "create_app", "import", "the SuperLink ASGI app",
             params=("config", "superlink_lifespan_class"),
             alternative="flower-superlink behind a reverse proxy (loses the operator socket and held pulls)"),
    Internal("flwr.superlink.cli.flower_superlink", "_parse_superlink_lifespan_config", "import",
             "Flower's own argument parsing and checks (reads sys.argv)"),
    Internal("flwr.superlink.cli.flower_superlink", "SuperLinkLifespan", "import", "the app's lifespan (state)"),
    Internal("flwr.supercore.protobuf.client", "ProtobufClient.__init__", "format",
             "the SuperNode's 30 s HTTP timeout, which a held pull plus its settle stay under",
             source=("timeout: float = 30.0",)),
    # ---- seam.fleet_auth (with gate_auth): SuperNode authentication checked before a body is read ----
    Internal("flwr.superlink.routers.fleet.node_auth", "authenticate_node", "copy",
             "fleet_auth: the door makes Flower's header checks (key, window, signature) before reading a body",
             source=("TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE", "verify_signature(", "get_node_id_by_public_key")),
    Internal("flwr.supercore.constant", "", "format",
             "fleet_auth: the authentication header names (deploy/nginx names them too)",
             equals=(("FLEET_HTTP_PUBLIC_KEY_HEADER", "flwr-public-key"), ("FLEET_HTTP_SIGNATURE_HEADER", "flwr-signature"))),
    Internal("flwr.common.constant", "", "format",
             "limits: an object push is at most one 5 MB array chunk (the door's --max-object default is 16 MB)",
             equals=(("FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 5242880),)),
    Internal("flwr.common.constant", "", "format",
             "fleet_auth: the signed-time header and Flower's window",
             equals=(("TIMESTAMP_HEADER", "flwr-timestamp"),), attrs=("TIMESTAMP_TOLERANCE", "SYSTEM_TIME_TOLERANCE")),
    Internal("flwr.supercore.primitives.asymmetric", "verify_signature", "import",
             "fleet_auth: Flower's signature check",
             params=("public_key", "message", "signature")),
    Internal("flwr.supercore.primitives.asymmetric", "bytes_to_public_key", "import",
             "fleet_auth: the registered key as Flower loads it"),
    Internal("flwr.supercore.constant", "", "format",
             "gate_auth: a SuperNode has 2 object pushes and 2 pulls open at once; 16 requests per node leave room",
             equals=(("FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES", 2), ("FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS", 2))),
    Internal("flwr.supercore.constant", "NodeStatus", "import",
             "fleet_auth: which nodes count as registered",
             attrs=("REGISTERED", "ONLINE", "OFFLINE")),
    Internal("flwr.server.superlink.linkstate.linkstate", "LinkState.get_node_info", "import",
             "fleet_auth: every registered key in one query",
             params=("statuses",)),
    Internal("flwr.superlink.main", "create_app", "format",
             "fleet_auth: the app's link state and auth switch on `app.state`",
             source=("fastapi_app.state.linkstate_factory", "fastapi_app.state.enable_supernode_auth")),
    Internal("flwr.supernode.node_auth_http_interceptor", "NodeAuthHttpInterceptor.intercept", "format",
             "gate_auth refuses a replayed (key, time): the SuperNode signs a fresh time on every call",
             source=("now().isoformat()",)),
    Internal("flwr.supercore.protobuf.client", "ProtobufClient._unary_unary", "format",
             "gate_auth: every retry runs the interceptors again (a fresh signed time), so no retry looks replayed",
             source=("self._send(context)",)),
    # ---- seam.wire: the doors read Flower's routes and protobuf bodies ----
    Internal("flwr.superlink.routers.fleet.router", "", "format", "the Fleet routes the doors admit and hold",
             source=('"/pull-messages"', '"/push-messages"', '"/push-object"', '"/activate-node"')),
    Internal("flwr.supercore.error.base", "ApiErrorCode", "format",
             "the door refuses an unknown key's activation with Flower's own activation-failed code",
             equals=(("FLEET_NODE_ACTIVATION_FAILED", 2004),)),
    Internal("flwr.supercore.retry.http_retry", "", "format",
             "a SuperNode answered 401 stops itself silently: the door answers an unknown key's activation 412",
             source=("httpx.codes.UNAUTHORIZED", "os.kill(os.getpid(), signal.SIGINT)")),
    Internal("flwr.proto.fleet_pb2", "PullMessagesRequest", "import", "who pulls", attrs=("NODE_FIELD_NUMBER",)),
    Internal("flwr.proto.fleet_pb2", "PullMessagesResponse", "import", "an empty pull; the pulled objects",
             attrs=("MESSAGES_LIST_FIELD_NUMBER", "MESSAGE_OBJECT_TREES_FIELD_NUMBER")),
    Internal("flwr.proto.fleet_pb2", "PushMessagesResponse", "import", "objects a push announces",
             attrs=("OBJECTS_TO_PUSH_FIELD_NUMBER",)),
    Internal("flwr.proto.runtime_pb2", "PushAppMessagesResponse", "import", "objects a ServerApp push announces",
             attrs=("OBJECTS_TO_PUSH_FIELD_NUMBER",)),
    Internal("flwr.proto.runtime_pb2", "PullAppMessagesResponse", "import", "objects a ServerApp pull receives",
             attrs=("MESSAGE_OBJECT_TREES_FIELD_NUMBER",)),
    Internal("flwr.proto.message_pb2", "PushObjectRequest", "format",
             "pushed_object_id reads this field by number, never parsing the object's content",
             equals=(("OBJECT_ID_FIELD_NUMBER", 3),)),
    Internal("flwr.proto.message_pb2", "ObjectTree", "import", "tree_ids walks it", attrs=("OBJECT_ID_FIELD_NUMBER",
                                                                                           "CHILDREN_FIELD_NUMBER")),
    # ---- seam.control: Flower's Control API client over the operator's socket ----
    Internal("flwr.supercore.control.control_http_client", "ControlHttpClient", "patch",
             "its httpx client (`_client`, set by its base) swapped for one over the Unix socket",
             params=("base_url", "interceptors")),
    Internal("flwr.supercore.protobuf.client", "ProtobufClient.__init__", "patch", "where `_client` is set",
             source=("self._client = httpx.Client(",)),
    Internal("flwr.cli.cli_client_interceptor", "CliClientHttpInterceptor", "import", "as Flower's CLI calls"),
    Internal("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor", "import", "as Flower's CLI calls",
             params=("component_name",)),
    Internal("flwr.cli.typing", "SuperLinkConnection", "import", "a TCP Control connection (tests, benchmark)"),
    Internal("flwr.cli.utils", "init_http_client_from_connection", "import", "the same, Flower's way"),
    Internal("flwr.proto.control_pb2", "", "import", "Control requests",
             attrs=("RegisterNodeRequest", "UnregisterNodeRequest", "ListNodesRequest", "StartRunRequest",
                    "ListRunsRequest", "StopRunRequest")),
    Internal("flwr.cli.build", "build_fab_from_disk", "import", "the run's package, built as `flwr run` does"),
    Internal("flwr.common.serde", "fab_to_proto", "import", "the package on the wire"),
    Internal("flwr.common.serde", "user_config_to_proto", "import", "the run config on the wire"),
    Internal("flwr.supercore.fab", "Fab", "import", "the package", alternative="the flwr CLI (not over a socket)"),
    # ---- seam.errors: Flower's and Ray's words, made readable ----
    Internal("flwr.supernode.runtime.run_clientapp", "run_clientapp", "format",
             "a raised exception as Flower writes it into an Error's reason", source=("str(type(ex)) + \":<'\"",)),
    Internal("flwr.clientapp.client_app", "ClientAppException", "format", "Flower's message marker in simulation",
             source=("occurred. Message: ",)),
    # ---- fedhaven.shared.runtime: a log line filtered by its words (quiet output) ----
    Internal("flwr.simulation.run_simulation", "run_simulation", "format",
             "run_simulation's deprecation warning, dropped from fl-sim's output",
             source=("The `run_simulation` function is deprecated",),
             alternative="`flwr run` against a local SuperLink (installs app dependencies with uv by default)"),
    # ---- seam.simulation: which simulated node holds which partition (names before a site answers) ----
    Internal("flwr.server.superlink.fleet.vce.vce_api", "_register_nodes", "format",
             "simulation: node i, registered i-th, holds partition i (fl-sim names its sites before they answer)",
             params=("num_nodes", "state_factory"),
             source=("for i in range(num_nodes):", "node_id = state.create_node(", "nodes_mapping[node_id] = i")),
    Internal("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState.create_node", "format",
             "simulation: each node stamped `registered_at` when created, the order `Grid.get_nodes()` shows",
             source=("registered_at=now().isoformat()",)),
)

"""Building the Faust application: topics, the user-state table, agents and web routes.

:mod:`streams.app` holds the module-level app that ``faust -A streams.app worker``
runs; tests and the CLI build their own with :func:`create_app`.
"""

from __future__ import annotations

from typing import Any

import faust
import numpy as np

from core.settings import Settings, load_settings
from core.topics import USER_STATE_TABLE
from state.store import VectorFill
from state.user_state import UserState
from streams import faults, highwater, local_state, seams
from streams.agents import register_agents
from streams.context import Worker, raw_topic, rocksdb_table_options
from streams.http_api import application_options, register_http_api
from streams.intake import BatchIntake
from streams.monitoring import register_monitoring
from streams.ppp import register_ppp
from streams.restore import BulkRestoreTableManager, register_store
from streams.runtime import Runtime
from streams.table_store import TableStateStore
from streams.web import register_views

__all__ = ["Worker", "create_app", "faust_options"]


def create_app(settings: Settings | None = None) -> Worker:
    s = settings or load_settings()
    app = faust.App(s.faust_app_id, **faust_options(s))
    roles = s.worker.role_set
    intake = None
    if "vectors" in roles and s.worker.intake == "lean":
        intake = BatchIntake(
            s.kafka.events_topic, s.worker.batch_max, s.worker.batch_linger_s, max_bytes=s.worker.intake_max_bytes,
            trace=s.worker.trace_stages,
        )
    seams.install(  # every Faust/aiokafka private name this app relies on (see streams.seams)
        app,
        fetch_max_wait_ms=s.kafka.fetch_max_wait_ms,  # Faust hard-codes 1500 ms: a freshness floor on Tansu
        intake=intake,  # the lean intake's fetch loop (streams.intake)
        changelog_ends=highwater.fetched_ends,  # recovery reads each changelog to its real end
        table_manager=BulkRestoreTableManager,  # restores active table partitions in bulk (streams.restore)
    )
    events_topic = raw_topic(app, s.kafka.events_topic, s.kafka.partitions)
    vectors_topic = raw_topic(app, s.kafka.vectors_topic, s.kafka.partitions)
    dlq_topic = raw_topic(app, s.kafka.dlq_topic, s.kafka.partitions)
    table = None
    if "vectors" in roles:
        table = app.Table(
            USER_STATE_TABLE,
            default=None,
            partitions=s.kafka.partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs={"cleanup.policy": "compact"},
            options=rocksdb_table_options(s),  # Faust's default block cache is 2 GiB per partition
        )
    worker = Worker(s, app, Runtime(s), events_topic, vectors_topic, dlq_topic, table)
    if table is not None:
        worker.store = TableStateStore(
            app, table, s.kafka.vectors_topic, retained=lambda: worker.runtime.updater.policy.max_retained,
            fill=VectorFill(lambda state: restored_vector(worker.runtime, state)),
            vector_encoding=s.worker.vector_encoding,
        )
        faults.install(worker)  # test-only crash point, off unless DUPN_FAULT_KILL_AFTER_STATES is set
        register_store(table, worker.store)  # the bulk restore writes through the same store
        worker.store.fence_changelog_replay()  # Faust's own replay keeps the newest state too
        register_agents(worker, intake)
    if "ppp" in roles:
        register_ppp(worker)
    local_state.guard_tables([worker.table, worker.ppp_table])  # a corrupt partition is moved aside, rebuilt
    register_views(worker)
    register_http_api(worker)  # batch reads, /owners, probes, /openapi.json (streams.http_api)
    register_monitoring(worker)
    return worker


def restored_vector(runtime: Runtime, state: UserState) -> tuple[np.ndarray, str]:
    """The vector of a restored state (the changelog carries none: state.changelog): its run rebuilt from
    the restored behaviors, as after any cache miss, and pooled as of its last event."""
    snap = runtime.updater.read_snapshot(state)
    carried = snap.encoder_state()
    return snap.encoder.represent([carried], [state.last_event_ts])[0], snap.encoder.model_version


def faust_options(s: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "broker": s.kafka.broker,
        "store": "rocksdb://",
        "datadir": str(s.data_path),
        "web_host": s.http.web_host,
        "web_bind": s.http.web_host,
        "web_port": s.http.web_port,
        "canonical_url": f"http://{s.http.web_host}:{s.http.web_port}",
        "topic_partitions": s.kafka.partitions,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": s.kafka.session_timeout_s,
        "broker_heartbeat_interval": s.kafka.heartbeat_interval_s,
        "broker_rebalance_timeout": s.kafka.rebalance_timeout_s,
        "stream_recovery_delay": 0.0,
        "broker_max_poll_records": max(500, s.worker.batch_max),
        "stream_buffer_maxsize": max(4096, 4 * s.worker.batch_max),
        "producer_linger": 0.002,
        "producer_max_batch_size": 512 * 1024,  # ~one produce batch per partition per worker batch
        "autodiscover": False,
        "web_enabled": True,
        "web_metrics_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_tables_enabled": False,
        "web_application_options": application_options(s),  # request limits + token guard (+ binary reads)
        "table_standby_replicas": 1,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    credentials = s.kafka.faust_broker_credentials()  # the one Settings -> Kafka security translation (core.settings)
    if credentials is not None:
        opts["broker_credentials"] = credentials
    return opts

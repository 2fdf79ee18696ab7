"""Building the Faust application: topics, the user-state table, agents and web routes.

:mod:`streams.app` holds the module-level app that ``faust -A streams.app worker``
runs; tests and the CLI build their own with :func:`create_app`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from core.settings import Settings, load_settings
from core.topics import USER_STATE_TABLE
from streams import faults, highwater
from streams.http_api import application_options
from streams.restore import BulkRestoreTableManager
from streams.runtime import Runtime


@dataclass
class Worker:
    """Everything the agents and views of one app share."""

    settings: Settings
    app: faust.App
    runtime: Runtime
    events_topic: Any
    vectors_topic: Any
    dlq_topic: Any
    table: Any  # user-state; None on a worker without the "vectors" role
    ppp_topic: Any = None  # set by streams.ppp.register_ppp ("ppp" role)
    ppp_table: Any = None
    batch_writer: Any = None  # streams.batch_io.BatchWriter, made on the first batch


def create_app(settings: Settings | None = None) -> Worker:
    s = settings or load_settings()
    app = faust.App(s.faust_app_id, **faust_options(s))
    fetch_max_wait(s.kafka.fetch_max_wait_ms)
    highwater.install(app)  # recovery must read each changelog to its real end (see streams.highwater)
    events_topic = _raw_topic(app, s.kafka.events_topic, s.kafka.partitions)
    vectors_topic = _raw_topic(app, s.kafka.vectors_topic, s.kafka.partitions)
    dlq_topic = _raw_topic(app, s.kafka.dlq_topic, s.kafka.partitions)
    roles = s.worker.role_set
    table = None
    if "vectors" in roles:
        table = app.Table(
            USER_STATE_TABLE,
            default=None,
            partitions=s.kafka.partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs={"cleanup.policy": "compact"},
        )
    worker = Worker(s, app, Runtime(s), events_topic, vectors_topic, dlq_topic, table)
    from streams.agents import register_agents
    from streams.http_api import register_http_api
    from streams.monitoring import register_monitoring
    from streams.ppp import register_ppp
    from streams.web import register_views

    if "vectors" in roles:
        register_agents(worker)
        faults.install(worker)  # test-only crash point, off unless DUPN_FAULT_KILL_AFTER_STATES is set
    if "ppp" in roles:
        register_ppp(worker)
    register_views(worker)
    register_http_api(worker)  # batch reads, /owners, probes, /openapi.json (streams.http_api)
    register_monitoring(worker)
    return worker


def fetch_max_wait(ms: int) -> None:
    """Set the worker consumer's fetch max wait (faust-streaming hard-codes 1500 ms).

    A broker should answer a waiting fetch as soon as data arrives, so on Kafka this
    only bounds how often an idle consumer polls. The embedded broker (Tansu) answers
    a waiting fetch only when the wait expires: there the wait is a freshness floor
    (median 392 ms at 1500 ms, measured by ``dupn bench``), hence a short default.
    aiokafka reads the value when the consumer starts, so setting it on the new
    consumer object is enough.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__", None)
    original = original or AIOKafkaConsumerThread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create.__wrapped__ = original  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    """Bytes in, bytes out: parsing is ours, so a bad message can't crash Faust's decoder."""
    return app.topic(
        name, partitions=partitions, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


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
        "TableManager": BulkRestoreTableManager,  # restores active table partitions in bulk (streams.restore)
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    credentials = s.kafka.faust_broker_credentials()  # the one Settings -> Kafka security translation (core.settings)
    if credentials is not None:
        opts["broker_credentials"] = credentials
    return opts

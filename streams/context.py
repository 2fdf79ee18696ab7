"""What the agents, views and monitoring of one app share, and raw topics.

Apart from :mod:`streams.worker` (which builds it) so that the modules it wires
(agents, faults, monitoring, ppp, web) import this, not the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.settings import Settings
from state.store import UserStateStore
from streams.runtime import Runtime


@dataclass
class Worker:
    """Everything the agents and views of one app share."""

    settings: Settings
    app: Any  # faust.App
    runtime: Runtime
    events_topic: Any
    vectors_topic: Any
    dlq_topic: Any
    table: Any  # user-state (Faust table: its changelog topic routes HTTP); None without the "vectors" role
    store: UserStateStore | None = None  # the user-state store on ``table``: all reads and writes of states
    ppp_topic: Any = None  # set by streams.ppp.register_ppp ("ppp" role)
    ppp_table: Any = None


def raw_topic(app: Any, name: str, partitions: int) -> Any:
    """Bytes in, bytes out: parsing is ours, so a bad message can't crash Faust's decoder."""
    return app.topic(
        name, partitions=partitions, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def rocksdb_table_options(settings: Settings) -> dict[str, Any]:
    """Store options of a RocksDB table (Faust's ``RocksDBOptions``): a bounded block cache per partition."""
    return {"block_cache_size": settings.worker.rocksdb_block_cache_bytes}

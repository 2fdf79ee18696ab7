"""Changelog end offsets for table recovery, as a Fetch response reports them.

Faust restores a table by reading each changelog partition up to the end offset
that ListOffsets(latest) returns. Tansu 0.6, the embedded broker, answers that
request with the base offset of the partition's last record batch + 1 instead
of the offset after its last record (``dupn``'s producer batches, so a batch
often holds several state writes). Recovery then stops before the newest
writes of each partition: they are never restored, and a worker whose RocksDB
already holds them cannot start at all (Faust's ``ConsistencyError``: "persisted
offset ... is higher than the last offset in that topic").

The high watermark in a Fetch response is right on Tansu too, so recovery takes
the larger of the two, fetching the last batch of each partition once with a
short-lived group-less consumer. On Kafka both agree; the cost is one small
fetch per partition per recovery. :func:`streams.seams.install` (``changelog_ends=``)
puts :func:`fetched_ends` in the consumer's end-offset lookup for changelog partitions only:
recovery is what must not stop short, and other callers (the lag gauge, every few seconds)
should not pay a fetch each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0


async def fetched_ends(thread: Any, listed: Mapping[Any, int | None]) -> dict[Any, int | None]:  # pragma: no cover
    """``listed`` raised to the high watermark a fetch of each partition's last batch reports."""
    import aiokafka

    from streams.restore import changelog_consumer

    out = dict(listed)
    todo = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp, end in listed.items() if end}
    if not todo:
        return out
    probe = changelog_consumer(thread.app, "highwater")
    await probe.start()
    try:
        probe.assign(list(todo))
        for ktp, tp in todo.items():
            probe.seek(ktp, int(listed[tp] or 0) - 1)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        pending = set(todo)
        while pending and time.monotonic() < deadline:
            await probe.getmany(*pending, timeout_ms=500)
            for ktp in list(pending):
                hw = probe.highwater(ktp)
                if hw is not None:
                    out[todo[ktp]] = max(int(out[todo[ktp]] or 0), hw)
                    pending.discard(ktp)
        if pending:
            log.warning("no fetch high watermark for %s within %.0fs; using ListOffsets", pending, PROBE_TIMEOUT_S)
    finally:
        await probe.stop()
    raised = {tp: (listed[tp], out[tp]) for tp in listed if out[tp] != listed[tp]}
    if raised:
        log.info("changelog end offsets raised to the fetch high watermark: %s", raised)
    return out

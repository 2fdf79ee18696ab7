"""Batches that keep failing, and failures no retry can fix (issue 14 item 7).

A batch whose ``apply`` or store write raises is not acknowledged and the worker stops
(:mod:`streams.agents`), so the batch comes back: after a restart, or to the partition's next
owner. A batch that fails every time (one event the encoder cannot take, a state the store
refuses) would come back forever. :class:`PoisonLedger` counts attempts per batch, durably
enough to survive the worker's own crash: before a batch is applied, each of its partitions'
first offset (``partition@offset``) gets one more attempt in a small JSON file in the worker's
data dir (written to a temporary file and renamed; not fsynced: it survives a killed or crashed
process, which is what it is for, not a lost machine); a batch that succeeds removes its entries.
A redelivered batch starts at the same first offset per partition (offsets are committed only up
to the first unacknowledged batch), so its count goes on where it was.

With ``DUPN_POISON_ATTEMPTS`` (N) attempts recorded, the batch is applied in halves, recursively
(a bisection: one poison event does not take its batch-mates down), and an event that fails alone
goes to the DLQ with reason ``processing_error``. If even that fails N more times (the process
dies while bisecting, so nothing could be caught), the whole batch goes to the DLQ unapplied.

A full disk is not a poison batch: no event is at fault and retrying elsewhere is the remedy.
:func:`is_disk_full` recognises it (``ENOSPC`` from Python, RocksDB's "No space left on device")
and :func:`exit_disk_full` ends the process at once with :data:`EXIT_DISK_FULL` after a CRITICAL
log line: nothing of the failed batch (or of any later one) was acknowledged, so nothing
acknowledged is lost, and the next start (with space) gets the batch again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROCESSING_ERROR = "processing_error"  # the DLQ reason of a quarantined event
LEDGER_FILE = "poison-attempts.json"
EXIT_DISK_FULL = 74  # EX_IOERR
DISK_FULL_MARKERS = ("No space left on device", "ENOSPC")


def batch_keys(messages: Sequence[Any]) -> list[str]:
    """``partition@offset`` of each partition's first message in the batch."""
    first: dict[int, int] = {}
    for m in messages:
        if m.partition not in first or m.offset < first[m.partition]:
            first[m.partition] = m.offset
    return [f"{p}@{o}" for p, o in sorted(first.items())]


class PoisonLedger:
    """Attempts per batch key, kept in ``path`` (a JSON object ``{"partition@offset": attempts}``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._counts: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a torn or foreign file: start counting afresh, say so
            log.warning("poison ledger %s unreadable (%r): attempts start from zero", self.path, exc)
            return {}
        return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def attempts(self, keys: Iterable[str]) -> int:
        """Failed (or unfinished) attempts of the batch so far: the most of any of its keys."""
        return max((self._counts.get(k, 0) for k in keys), default=0)

    def begin(self, keys: Iterable[str]) -> None:
        for k in keys:
            self._counts[k] = self._counts.get(k, 0) + 1
        self._save()

    def done(self, keys: Iterable[str]) -> None:
        """The batch went through: its entries go."""
        removed = [k for k in keys if self._counts.pop(k, None) is not None]
        if removed:
            self._save()

    def undo(self, keys: Iterable[str]) -> None:
        """Take back this attempt (a failure that is not the batch's fault: a full disk)."""
        for k in keys:
            left = self._counts.get(k, 0) - 1
            if left > 0:
                self._counts[k] = left
            else:
                self._counts.pop(k, None)
        try:
            self._save()
        except OSError as exc:  # the disk is full: the file keeps the attempt; one more is harmless
            log.warning("poison ledger %s not updated: %r", self.path, exc)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._counts, separators=(",", ":")))
        os.replace(tmp, self.path)


def is_disk_full(exc: BaseException | None) -> bool:
    """An ``ENOSPC`` anywhere in the exception's chain (Python's errno, or RocksDB's IO error text)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if any(marker in str(exc) for marker in DISK_FULL_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _hard_exit(code: int) -> None:  # pragma: no cover - ends the process
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(code)


exit_process: Callable[[int], None] = _hard_exit  # tests replace it


def exit_disk_full(exc: BaseException, where: str) -> None:
    log.critical(
        "DISK FULL: %s failed with %r. Exiting with code %d: nothing of this batch was acknowledged, so it is "
        "redelivered once the worker runs with space again (free space under the data dir, then restart)",
        where, exc, EXIT_DISK_FULL,
    )
    exit_process(EXIT_DISK_FULL)

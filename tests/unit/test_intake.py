"""The lean intake hands out batches in arrival order, bounded, and forgets revoked partitions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.intake import BatchIntake


@dataclass(frozen=True)
class Msg:
    tp: tuple[str, int]
    offset: int


def test_batches_are_bounded_ordered_and_flushed_by_time() -> None:
    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=3, within_s=0.01)
        msgs = [Msg(("events", i % 2), i) for i in range(5)]
        assert intake.offer(msgs[0]) and intake.offer(msgs[1])
        assert not intake.offer(msgs[2])  # full: the fetch loop must wait for space
        assert await intake.take() == msgs[:3]
        await asyncio.wait_for(intake.wait_space(), 1)
        intake.offer(msgs[3])
        intake.offer(msgs[4])
        assert await intake.take() == msgs[3:]  # not full: flushed after within_s

    asyncio.run(scenario())


def test_discard_drops_only_revoked_partitions() -> None:
    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=10, within_s=0.01)
        msgs = [Msg(("events", i % 3), i) for i in range(9)]
        for m in msgs:
            intake.offer(m)
        assert intake.discard([("events", 1)]) == 3
        assert [m.offset for m in await intake.take()] == [0, 2, 3, 5, 6, 8]

    asyncio.run(scenario())

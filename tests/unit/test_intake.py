"""The lean intake hands out batches in arrival order, bounded, and forgets revoked partitions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.intake import BatchIntake


@dataclass(frozen=True)
class Msg:
    tp: tuple[str, int]
    offset: int


def test_batches_are_bounded_ordered_and_taken_as_soon_as_something_is_buffered() -> None:
    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=3)
        msgs = [Msg(("events", i % 2), i) for i in range(5)]
        waiter = asyncio.ensure_future(intake.take())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # nothing buffered: take() waits (no polling, no timeout)
        assert intake.offer(msgs[0])
        assert await asyncio.wait_for(waiter, 1) == msgs[:1]  # natural batching: no waiting for a full batch
        assert intake.offer(msgs[1]) and intake.offer(msgs[2])
        assert not intake.offer(msgs[3])  # full: the fetch loop must wait for space
        space = asyncio.ensure_future(intake.wait_space())
        await asyncio.sleep(0.01)
        assert not space.done()
        assert await intake.take() == msgs[1:4]
        await asyncio.wait_for(space, 1)
        intake.offer(msgs[4])
        assert await intake.take() == msgs[4:]

    asyncio.run(scenario())


def test_linger_waits_for_a_fuller_batch() -> None:
    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=10, linger_s=0.05)
        intake.offer(Msg(("events", 0), 0))
        taken = asyncio.ensure_future(intake.take())
        await asyncio.sleep(0.01)
        intake.offer(Msg(("events", 0), 1))
        assert [m.offset for m in await taken] == [0, 1]

    asyncio.run(scenario())


def test_discard_drops_only_revoked_partitions() -> None:
    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=10)
        msgs = [Msg(("events", i % 3), i) for i in range(9)]
        for m in msgs:
            intake.offer(m)
        assert intake.discard([("events", 1)]) == 3
        assert [m.offset for m in await intake.take()] == [0, 2, 3, 5, 6, 8]

    asyncio.run(scenario())


def test_a_batch_taken_while_a_revoke_runs_holds_no_message_of_the_revoked_partitions() -> None:
    """The revoke discards under the intake lock and a batch is taken under it: never in between."""

    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=4)
        for i in range(4):
            intake.offer(Msg(("events", i % 2), i))  # a full batch is due
        taken: list[list[Msg]] = []

        async def batch_task() -> None:
            async with intake.next_batch() as batch:
                taken.append(batch)

        async with intake.lock:  # the revoke handler, waiting out the batch in flight
            task = asyncio.create_task(batch_task())
            await asyncio.sleep(0.05)  # the batch is due; the task now waits for the lock
            intake.discard([("events", 1)])
        await task
        assert [m.offset for m in taken[0]] == [0, 2]

    asyncio.run(scenario())


@dataclass(frozen=True)
class Big:
    tp: tuple[str, int]
    offset: int
    key: bytes
    value: bytes


def test_held_bytes_stay_under_the_limit_with_large_events() -> None:
    """Issue 14 item 9: with 1 MB events, 2,000 buffered messages would be 2 GB; DUPN_INTAKE_MAX_BYTES bounds it.

    The fetch loop's side is played as streams.seams' copy plays it: offer, and on False wait for space.
    """
    limit, size, n = 4 << 20, 1 << 20, 40
    seen: list[int] = []

    async def scenario() -> None:
        intake = BatchIntake("events", max_batch=2000, max_bytes=limit)

        async def fetch_loop() -> None:
            for i in range(n):
                if not intake.offer(Big(("events", 0), i, b"u%d" % i, bytes(size))):
                    seen.append(intake.held_bytes)
                    await intake.wait_space()
                seen.append(intake.held_bytes)

        fetcher = asyncio.ensure_future(fetch_loop())
        taken = []
        while len(taken) < n:
            batch = await intake.take()
            seen.append(sum(len(m.value) + len(m.key) for m in batch))  # what one batch holds once taken
            taken.extend(batch)
            await asyncio.sleep(0.001)  # the batch is being applied: the fetch loop runs meanwhile
        await fetcher
        assert [m.offset for m in taken] == list(range(n))
        assert intake.held_bytes == 0

    asyncio.run(scenario())
    # never more than the limit plus the one message being handed in
    assert max(seen) < limit + size + 16, max(seen)
    assert max(seen) >= limit  # the limit was reached: the fetch loop did wait

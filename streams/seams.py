"""Every use of a Faust or aiokafka private name, in one place; :func:`install` puts them in for one app.

Pinned to faust-streaming 0.15.3 and aiokafka 0.14.0. ``tests/unit/test_faust_seams.py``
fails when any name below is gone or its signature differs from :data:`PINNED_SIGNATURES`,
or when the Faust code :func:`_make_drain` copies changed (:data:`PINNED_DRAIN_SHA256`).
Public ``StoreT`` methods are used wherever they suffice (``apply_changelog_batch``,
``persisted_offset``, ``set_persisted_offset``; pinned too, as the restore relies on
what they do).

Private names used, and why:

- ``App._new_consumer`` (faust.app.base): wrapped once, by :func:`install`, to adjust the
  consumer object each time Faust makes one. Everything below that concerns the consumer
  happens in that one wrapper, in a fixed order.
- ``ThreadDelegateConsumer._thread`` (faust.transport.consumer): the consumer's
  ``AIOKafkaConsumerThread``, which makes and owns the aiokafka consumer.
- ``AIOKafkaConsumerThread._create_worker_consumer`` and aiokafka
  ``AIOKafkaConsumer._fetch_max_wait_ms``: Faust hard-codes a 1,500 ms fetch wait. Set per
  app, on this app's consumer thread only (the thread calls the method through ``self``),
  not on the class for the whole process. aiokafka reads the value when the consumer starts,
  so setting it on the new consumer object is enough. Why a short wait: the embedded broker
  (Tansu) answers a waiting fetch only when the wait expires, so there the wait is a
  freshness floor (median 392 ms at 1,500 ms, measured by ``dupn bench``); on Kafka it only
  bounds how often an idle consumer polls.
- ``AIOKafkaConsumerThread._highwaters``: recovery's end offsets of the table changelogs,
  raised to the fetch high watermark (:mod:`streams.highwater`: the embedded broker's
  ListOffsets under-reports them). Replaced on the thread object; other topics keep
  Faust's answer.
- ``Consumer._drain_messages`` (faust.transport.consumer), replaced on the consumer object by
  a copy (:func:`_make_drain`) that hands the events topic's messages to the lean intake
  (:mod:`streams.intake`) with a list append instead of Faust's per-message path. The copy
  reads what Faust's own reads: ``Service._stopped`` (mode) of the consumer and the fetcher,
  ``Consumer._read_offset``, ``Consumer._commit_every``, ``Consumer._n_acked`` and calls
  ``Consumer._add_gap``.
- ``Consumer._committed_offset``: the group's committed offset Faust keeps per partition
  (:func:`committed_offset`; the consumer-lag gauge).
- ``TableManager._recovery`` (faust.tables.manager): where the manager keeps its
  ``Recovery``; :class:`HookedTableManager` makes it its ``recovery_class``.
- ``Recovery._build_offsets`` (faust.tables.recovery): the step after which Faust has the
  active partitions' end offsets and before it builds the offsets it reads from;
  :class:`HookedRecovery` runs the bulk restore there (:mod:`streams.restore`).
- ``Store._db_for_partition`` (faust.stores.rocksdb): the RocksDB instance of one table
  partition. Faust's public ``get``/``__setitem__`` choose the partition from the current
  event (faust-streaming #497 in batches) and write one key at a time; the state store reads
  and writes a given partition, a batch in one ``WriteBatch`` (:func:`db_for_partition`).
- ``Store._open_for_partition`` (faust.stores.rocksdb): opens one partition's RocksDB; wrapped on
  the store object by :func:`reopen_corrupt_partitions` so a partition that RocksDB reports
  corrupt is moved aside and opened empty (then rebuilt from the changelog by recovery);
  ``Store.partition_path`` (public, pinned too) names the directory moved.
- ``Store._dbs_for_actives``: the RocksDB instances of the partitions this worker actively
  owns (the owned-users gauge; :func:`dbs_for_actives`).
- ``Collection._on_changelog_event`` (faust.tables.base): a table's changelog callback, which
  has no public getter; the bulk restore skips a table that has one, since it would not be
  called (:func:`changelog_callback`).
- ``Producer._ensure_producer`` (faust.transport.drivers.aiokafka): the app's started
  aiokafka producer, for whole produce batches (``create_batch``/``send_batch``, public in
  aiokafka) on the producer Faust flushes before it commits (:func:`aiokafka_producer`).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery

if TYPE_CHECKING:
    from streams.intake import BatchIntake

PINNED_FAUST = "0.15.3"
PINNED_AIOKAFKA = "0.14.0"

#: "module:qualname" -> ``str(inspect.signature(...))`` in the pinned versions.
PINNED_SIGNATURES: dict[str, str] = {
    "faust.app.base:App._new_consumer": "(self) -> faust.types.transports.ConsumerT",
    "faust.transport.consumer:Consumer._drain_messages": "(self, fetcher: mode.types.services.ServiceT) -> None",
    "faust.transport.consumer:Consumer._add_gap": (
        "(self, tp: faust.types.tuples.TP, offset_from: int, offset_to: int) -> None"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": (
        "(self, partitions: List[faust.types.tuples.TP]) -> Mapping[faust.types.tuples.TP, int]"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "(self, transport: 'Transport') -> aiokafka.consumer.consumer.AIOKafkaConsumer"
    ),
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": (
        "(self) -> aiokafka.producer.producer.AIOKafkaProducer"
    ),
    "faust.tables.recovery:Recovery._build_offsets": (
        "(self, consumer: faust.types.transports.ConsumerT, tps: Set[faust.types.tuples.TP], "
        "destination: Counter[faust.types.tuples.TP], title: str) -> None"
    ),
    "faust.stores.rocksdb:Store._db_for_partition": "(self, partition: int) -> Rdict",
    "faust.stores.rocksdb:Store._dbs_for_actives": "(self) -> Iterator[Rdict]",
    "faust.stores.rocksdb:Store._open_for_partition": "(self, partition: int) -> Rdict",
    "faust.stores.rocksdb:Store.partition_path": "(self, partition: int) -> pathlib.Path",
    # public, pinned because the restore relies on exactly what they do
    "faust.stores.rocksdb:Store.apply_changelog_batch": (
        "(self, batch: Iterable[faust.types.events.EventT], to_key: Callable[[Any], Any], "
        "to_value: Callable[[Any], Any]) -> None"
    ),
    "faust.stores.rocksdb:Store.persisted_offset": "(self, tp: faust.types.tuples.TP) -> Optional[int]",
    "faust.stores.rocksdb:Store.set_persisted_offset": "(self, tp: faust.types.tuples.TP, offset: int) -> None",
}

#: Instance attributes (no signature to compare): "module:Class" -> the names its source assigns.
PINNED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "faust.transport.consumer:Consumer": ("_read_offset", "_commit_every", "_committed_offset", "_n_acked"),
    "faust.transport.consumer:ThreadDelegateConsumer": ("_thread",),
    "faust.tables.manager:TableManager": ("_recovery",),
    "faust.tables.base:Collection": ("_on_changelog_event",),
    "mode.services:Service": ("_stopped",),
    "aiokafka.consumer.consumer:AIOKafkaConsumer": ("_fetch_max_wait_ms",),
}

#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._drain_messages)`` that
#: :func:`_make_drain` copies: a Faust whose loop differs needs the copy redone.
PINNED_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"

ChangelogEnds = Callable[[Any, Mapping[Any, "int | None"]], Awaitable[Mapping[Any, "int | None"]]]
"""``(consumer thread, {changelog TP: ListOffsets end}) -> raised ends`` (:func:`streams.highwater.fetched_ends`)."""


def install(
    app: Any,
    *,
    fetch_max_wait_ms: int,
    intake: BatchIntake | None = None,
    changelog_ends: ChangelogEnds | None = None,
    table_manager: type[HookedTableManager] | None = None,
) -> None:
    """Put every seam into ``app``; call once, right after ``faust.App(...)`` and before any table.

    - every consumer Faust makes for the app: its fetch wait, then (with ``changelog_ends``)
      recovery's changelog end offsets, then (with ``intake``) the lean intake's fetch loop;
    - with ``table_manager``: the app's table manager (its ``recovery_class``: the bulk restore).
    """
    if getattr(app, "_dupn_seams", False):
        raise RuntimeError("streams.seams.install was already called for this app")
    app._dupn_seams = True
    if table_manager is not None:
        if "tables" in app.__dict__:  # faust.App.tables is a cached property, made by the first table
            raise RuntimeError("streams.seams.install must run before the app's first table")
        app.conf.TableManager = table_manager
    original_new_consumer = app._new_consumer

    def new_consumer() -> Any:
        consumer = original_new_consumer()
        thread = consumer._thread
        _set_fetch_max_wait(thread, fetch_max_wait_ms)
        if changelog_ends is not None:
            _raise_changelog_ends(app, thread, changelog_ends)
        if intake is not None:
            consumer._drain_messages = types.MethodType(_make_drain(intake), consumer)
        return consumer

    app._new_consumer = new_consumer


def _set_fetch_max_wait(thread: Any, ms: int) -> None:
    create = thread._create_worker_consumer

    def create_worker_consumer(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    thread._create_worker_consumer = create_worker_consumer


def _raise_changelog_ends(app: Any, thread: Any, changelog_ends: ChangelogEnds) -> None:
    """``consumer.highwaters()`` of table changelog partitions: ``changelog_ends`` of Faust's answer.

    Only changelogs: recovery is what must not stop short, and other callers (the lag gauge,
    every few seconds) should not pay a fetch each time.
    """
    listed = thread._highwaters

    async def _highwaters(partitions: Any) -> Mapping[Any, int | None]:
        ends = dict(await listed(partitions))
        changelogs = app.tables.changelog_topics
        if thread.consumer.in_transaction or not any(tp.topic in changelogs for tp in ends):
            return ends
        return {**ends, **await changelog_ends(thread, {tp: e for tp, e in ends.items() if tp.topic in changelogs})}

    thread._highwaters = _highwaters


def _make_drain(intake: BatchIntake) -> Any:
    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - runs in the worker
        """faust.transport.consumer.Consumer._drain_messages (0.15.3), with the intake short cut."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        topic = intake.topic
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > 100:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.topic == topic:
                        if not intake.offer(message):
                            await self.wait_first(intake.wait_space(), self.suspend_flow.wait())
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    return _drain_messages


class HookedRecovery(Recovery):
    """Faust's ``Recovery`` with a step before it builds the active partitions' read offsets."""

    async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        if destination is self.active_offsets:
            await self.before_active_offsets(tps)
        elif destination is self.standby_offsets:
            await self.before_standby_offsets(consumer, tps)
        await super()._build_offsets(consumer, tps, destination, title)

    async def before_active_offsets(self, tps: Any) -> None:
        """Runs once Faust has the active partitions' end offsets (``active_highwaters``) and their
        persisted offsets (``active_offsets``); it may advance the latter."""

    async def before_standby_offsets(self, consumer: Any, tps: Any) -> None:
        """Runs once Faust has the standby partitions' persisted offsets (``standby_offsets``), before
        their end offsets (``consumer.highwaters``, which this step may ask for itself)."""


class HookedTableManager(TableManager):
    """Faust's ``TableManager`` whose recovery is a ``recovery_class`` (app setting ``TableManager``).

    Subclass it at module level: mode registers a service's tasks under its qualified name."""

    recovery_class: type[HookedRecovery] = HookedRecovery

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


# -- RocksDB store, producer, consumer bookkeeping ---------------------------------------


def is_rocksdb(store: Any) -> bool:
    """The table's store is Faust's RocksDB store (what the state store and bulk restore need)."""
    return hasattr(store, "_db_for_partition")


def db_for_partition(store: Any, partition: int) -> Any:
    """The ``rocksdict.Rdict`` (raw mode) of one partition of a Faust RocksDB store."""
    return store._db_for_partition(partition)


def reopen_corrupt_partitions(store: Any, on_corrupt: Callable[[int, Any, BaseException], Any]) -> None:
    """Wrap ``store``'s partition open: when RocksDB reports corruption, ``on_corrupt(partition, path,
    exc)`` runs (it moves the files aside) and the partition is opened again, empty."""
    opened = store._open_for_partition

    def _open_for_partition(partition: int) -> Any:
        try:
            return opened(partition)
        except Exception as exc:
            if "Corruption" not in str(exc):
                raise
            on_corrupt(partition, store.partition_path(partition), exc)
            return opened(partition)

    store._open_for_partition = _open_for_partition


def dbs_for_actives(store: Any) -> Iterator[Any] | None:
    """The RocksDB instances of the partitions this worker actively owns; None if not a RocksDB store."""
    owned = getattr(store, "_dbs_for_actives", None)
    return None if owned is None else owned()


def changelog_callback(table: Any) -> Any:
    """The table's ``on_changelog_event`` callback (None: none)."""
    return getattr(table, "_on_changelog_event", None)


def aiokafka_producer(app: Any) -> Any:
    """The app's (started) ``aiokafka.AIOKafkaProducer``: the one Faust flushes before it commits."""
    return app.producer._ensure_producer()


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The consumer group's committed offset Faust holds for ``tp`` (None: never committed)."""
    offset = consumer._committed_offset.get(tp)
    return None if offset is None else int(offset)


async def confirm_membership(app: Any) -> bool:
    """Ask the group coordinator now whether this worker is still a member of its current generation.

    One heartbeat, sent on the consumer's own thread and event loop (aiokafka's coordinator lives
    there), through aiokafka's ``GroupCoordinator._do_heartbeat``: False when the coordinator no longer
    knows this member or its generation (it was fenced out: frozen past the session timeout, or a
    revoke slower than the rebalance timeout), or the request failed; aiokafka then resets and rejoins
    as after any failed heartbeat. True while the group is rebalancing but this member still in it:
    its partitions cannot move before it rejoins and its revoke handler has settled.

    Whenever the answer is False, a rejoin is requested too (``GroupCoordinator.request_rejoin``): the
    caller drops batches until the next revocation, so a rebalance must follow even when the heartbeat
    only failed to get an answer."""
    thread = app.consumer._thread

    async def beat() -> bool:
        coordinator = thread._ensure_consumer()._coordinator
        try:
            ok = bool(coordinator.member_id) and coordinator.generation >= 0 and await coordinator._do_heartbeat()
        except Exception:
            ok = False
        if not ok:
            coordinator.request_rejoin()
        return bool(ok)

    return bool(await thread.call_thread(beat))

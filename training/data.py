"""Task examples + behavior histories → model batches.

Layout
------
Every user's history is encoded once (``records_from_events``) into one
``BEHAVIOR_DTYPE`` array; an example's input is then just a slice of it,
``history[max(0, n - W):n]`` with n = ``history_len`` and W = the window, so
building a batch never re-parses an event.

Examples that share an *input* — same user, history length, time and query —
are one **context**: the simulator emits a whole impression slate (all its candidates) or
a snapshot's talent/shop candidates with one context, and the Taobao log does
the same for a click and its sampled negatives.  A batch encodes each distinct context once and
indexes the representation per example, so the LSTM (the only expensive part)
runs once per slate, not once per candidate.

Multi-task sampling
-------------------
Each training step draws one mini-batch **per task** (the paper keeps one data
set per task): ``batch_size`` contexts — user windows — taken from a seeded
shuffle of that task's contexts (each epoch reshuffles), with all of their
examples (a CTR slate's candidates, a snapshot's talent candidates).  We count
contexts, not examples, because the LSTM over a window is what a step costs;
the heads are cheap.  The per-task mini-batches are concatenated into one
forward pass and their losses summed, so a single-task run with the same
``batch_size`` and step count sees exactly the same examples of its task as
the multi-task run does ("equal step budget per task").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from encoder.config import EncoderConfig
from encoder.features import BEHAVIOR_DTYPE, bucketize, hash_id, item_record, query_bucket, records_from_events
from encoder.model import BehaviorTensors, UserContext

TASKS: tuple[str, ...] = ("ctr", "l2r", "talent", "ppp", "shop")
BINARY_TASKS: frozenset[str] = frozenset({"ctr", "l2r", "talent", "shop"})


class Example(Protocol):
    """What a task example must provide (``training.simulator.TaskExample`` and Taobao's)."""

    @property
    def task(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def history_len(self) -> int: ...
    @property
    def now_ms(self) -> int: ...
    @property
    def query(self) -> str | None: ...
    @property
    def item(self) -> dict[str, object] | None: ...
    @property
    def ranking_features(self) -> tuple[float, ...] | None: ...
    @property
    def target_id(self) -> str | None: ...
    @property
    def target_features(self) -> tuple[float, ...] | None: ...
    @property
    def label(self) -> float: ...
    @property
    def weight(self) -> float: ...


class HistoryStore:
    """Every user's encoded behavior records and known profile, built once."""

    def __init__(
        self,
        histories: Mapping[str, Sequence[dict[str, Any]]],
        profiles: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.user_index: dict[str, int] = {}
        self.records: list[np.ndarray] = []
        for uid, events in histories.items():
            self.user_index[uid] = len(self.records)
            self.records.append(records_from_events(events))
        n = len(self.records)
        self.age_group = np.full(n, -1, dtype=np.int64)  # -1 = unknown (model's learned default)
        self.gender = np.full(n, -1, dtype=np.int64)
        for uid, prof in (profiles or {}).items():
            if uid in self.user_index:
                i = self.user_index[uid]
                self.age_group[i] = int(prof.get("age_group", -1))
                self.gender[i] = int(prof.get("gender", -1))

    @classmethod
    def from_users(
        cls, histories: Mapping[str, Sequence[dict[str, Any]]], users: Sequence[Any] = ()
    ) -> HistoryStore:
        """Profiles from objects with ``user_id`` and ``profile`` (``SimUser``)."""
        return cls(histories, {u.user_id: u.profile for u in users})

    def index(self, user_id: str) -> int:
        if user_id not in self.user_index:
            raise KeyError(f"example for user {user_id!r} whose history is unknown")
        return self.user_index[user_id]


@dataclass
class ExampleTable:
    """One task's examples as columns, grouped into contexts (rows sharing one input)."""

    task: str
    ctx_user: np.ndarray  # (C,) user index into the store
    ctx_len: np.ndarray  # (C,) history length
    ctx_now: np.ndarray  # (C,) ms
    ctx_query: np.ndarray  # (C,) query bucket (0 = none)
    ctx_start: np.ndarray  # (C+1,) example offsets of each context
    label: np.ndarray  # (N,) float32 (ppp: level 1..7)
    weight: np.ndarray  # (N,) float32
    items: np.ndarray | None  # (N,) BEHAVIOR_DTYPE candidate items (ctr, l2r)
    features: np.ndarray | None  # (N, F) float32 ranking / talent / shop features
    target: np.ndarray | None  # (N,) int64 talent / shop bucket
    oracle: np.ndarray | None = None  # (N, 2) float64 planted truth: all effects, static effects (simulator only)

    @property
    def n_examples(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_contexts(self) -> int:
        return int(self.ctx_user.shape[0])

    def example_rows(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Example indices of the given contexts, and for each the position of its context."""
        starts, ends = self.ctx_start[contexts], self.ctx_start[contexts + 1]
        sizes = ends - starts
        owner = np.repeat(np.arange(len(contexts)), sizes)
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return np.repeat(starts, sizes) + offsets, owner


def build_table(
    task: str, examples: Sequence[Example], store: HistoryStore, cfg: EncoderConfig
) -> ExampleTable:
    """Columnar form of one task's examples; consecutive examples with one input form a context."""
    keys = [(store.index(e.user_id), e.history_len, e.now_ms, e.query) for e in examples]
    is_new = [i == 0 or keys[i] != keys[i - 1] for i in range(len(keys))]
    firsts = [i for i, new in enumerate(is_new) if new]
    ctx_keys = [keys[i] for i in firsts]
    return ExampleTable(
        task=task,
        ctx_user=np.array([k[0] for k in ctx_keys], dtype=np.int64),
        ctx_len=np.array([k[1] for k in ctx_keys], dtype=np.int64),
        ctx_now=np.array([k[2] for k in ctx_keys], dtype=np.int64),
        ctx_query=np.array([query_bucket(k[3], cfg.query_buckets) for k in ctx_keys], dtype=np.int64),
        ctx_start=np.array([*firsts, len(examples)], dtype=np.int64),
        label=np.array([e.label for e in examples], dtype=np.float32),
        weight=np.array([e.weight for e in examples], dtype=np.float32),
        items=_item_records(examples) if task in ("ctr",) else None,
        features=_task_features(task, examples, cfg),
        target=_targets(task, examples, cfg),
        oracle=_oracle(examples),
    )


def _oracle(examples: Sequence[Example]) -> np.ndarray | None:
    """The simulator's planted scores (``TaskExample.oracle`` / ``oracle_static``) when every example has them."""
    rows = [(getattr(e, "oracle", None), getattr(e, "oracle_static", None)) for e in examples]
    if not rows or any(a is None or b is None for a, b in rows):
        return None
    return np.array(rows, dtype=np.float64)


def _item_records(examples: Sequence[Example]) -> np.ndarray:
    cache: dict[int, np.ndarray] = {}  # simulator items are shared dicts: encode each once
    out = np.zeros(len(examples), dtype=BEHAVIOR_DTYPE)
    for i, e in enumerate(examples):
        item = e.item or {}
        key = id(item)
        if key not in cache:
            cache[key] = item_record(item)
        out[i] = cache[key]
    return out


def _pad_features(rows: list[tuple[float, ...]], width: int, what: str) -> np.ndarray:
    """Features as (N, width) float32, zero-padded: a head's input width is fixed by the config."""
    out = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"{what} has {len(row)} features but the model expects at most {width}")
        out[i, : len(row)] = row
    return out


def _task_features(task: str, examples: Sequence[Example], cfg: EncoderConfig) -> np.ndarray | None:
    if task == "l2r":
        rows = [e.ranking_features or () for e in examples]
        return _pad_features(rows, cfg.n_ranking_features, "l2r example")
    if task in ("talent", "shop"):
        width = cfg.n_talent_features if task == "talent" else cfg.n_shop_features
        return _pad_features([e.target_features or () for e in examples], width, f"{task} example")
    return None


def _targets(task: str, examples: Sequence[Example], cfg: EncoderConfig) -> np.ndarray | None:
    if task not in ("talent", "shop"):
        return None
    buckets = cfg.talent_buckets if task == "talent" else cfg.shop_buckets
    hashes = np.array([hash_id(e.target_id or "") for e in examples], dtype=np.uint32)
    return bucketize(hashes, buckets).astype(np.int64)


# -- batches ----------------------------------------------------------------------------


@dataclass
class TaskPart:
    """One task's examples inside a batch; ``ctx`` maps each to its row of the encoded block."""

    task: str
    ctx: Tensor  # (n,) int64
    label: Tensor  # (n,) float32
    weight: Tensor  # (n,) float32
    items: BehaviorTensors | None
    features: Tensor | None
    target: Tensor | None


@dataclass
class Batch:
    """Distinct contexts as one left-padded block, plus each task's examples."""

    behaviors: BehaviorTensors
    mask: Tensor  # (C, L) bool
    now: Tensor  # (C,) int64 ms
    context: UserContext
    parts: list[TaskPart]
    pool_mask: Tensor | None = None  # (C, L) bool: the attention window (None = ``mask``)

    @property
    def n_contexts(self) -> int:
        return int(self.mask.shape[0])


def run_starts(lengths: np.ndarray, window: int, anchor_every: int | None) -> np.ndarray:
    """Where the LSTM run behind a prefix of n behaviors starts (``UpdatePolicy.run_start``).

    ``None``: the exact window, max(0, n - W). R: the incremental policy's anchored run,
    max(0, ⌊n/R⌋·R - W), which starts up to R - 1 behaviors before the window.
    """
    if anchor_every is None:
        return np.maximum(lengths - window, 0)
    return np.maximum((lengths // anchor_every) * anchor_every - window, 0)


def left_padded(
    store: HistoryStore, users: np.ndarray, lengths: np.ndarray, window: int, anchor_every: int | None = None
) -> np.ndarray:
    """(C, L) records: each row its run (default: the last ≤ ``window`` behaviors before
    ``lengths``; with ``anchor_every``, the anchored run of :func:`run_starts`), left-padded."""
    takes = lengths - run_starts(lengths, window, anchor_every)
    width = max(int(takes.max()) if len(takes) else 0, 1)
    block = np.zeros((len(users), width), dtype=BEHAVIOR_DTYPE)
    for row, (u, n, k) in enumerate(zip(users.tolist(), lengths.tolist(), takes.tolist(), strict=True)):
        if k:
            block[row, width - k :] = store.records[u][n - k : n]
    return block


def collate(
    store: HistoryStore,
    picks: Sequence[tuple[ExampleTable, np.ndarray]],
    cfg: EncoderConfig,
    window: int,
    anchor_every: int | None = None,
) -> Batch:
    """One batch from (table, context indices) per task; identical contexts are encoded once.

    ``mask`` marks each row's LSTM run and ``pool_mask`` its last ≤ ``window`` behaviors (the
    attention window); they differ only for anchored runs (``anchor_every``, see :func:`run_starts`).
    """
    keys: dict[tuple[int, int, int, int], int] = {}
    rows: list[tuple[int, int, int, int]] = []
    parts: list[TaskPart] = []
    for table, contexts in picks:
        ctx_row = np.empty(len(contexts), dtype=np.int64)
        for j, c in enumerate(contexts.tolist()):
            key = (
                int(table.ctx_user[c]),
                int(table.ctx_len[c]),
                int(table.ctx_now[c]),
                int(table.ctx_query[c]),
            )
            ctx_row[j] = keys.setdefault(key, len(keys))
            if ctx_row[j] == len(rows):
                rows.append(key)
        ex, owner = table.example_rows(contexts)
        parts.append(task_part(table, ex, ctx_row[owner], cfg))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    users, lengths, now, query = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    block = left_padded(store, users, lengths, window, anchor_every)
    cols = np.arange(block.shape[1])[None, :]
    mask = cols >= (block.shape[1] - (lengths - run_starts(lengths, window, anchor_every)))[:, None]
    pool_mask = cols >= (block.shape[1] - np.minimum(lengths, window))[:, None]
    ctx = UserContext(
        query=torch.from_numpy(query.copy()),
        age_group=torch.from_numpy(store.age_group[users]),
        gender=torch.from_numpy(store.gender[users]),
    )
    return Batch(
        BehaviorTensors.from_records(block, cfg),
        torch.from_numpy(mask),
        torch.from_numpy(now.copy()),
        ctx,
        parts,
        torch.from_numpy(pool_mask),
    )


def task_part(table: ExampleTable, ex: np.ndarray, ctx_row: np.ndarray, cfg: EncoderConfig) -> TaskPart:
    def opt(a: np.ndarray | None) -> Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a[ex]))

    items = None if table.items is None else BehaviorTensors.from_records(table.items[ex], cfg)
    return TaskPart(
        task=table.task,
        ctx=torch.from_numpy(ctx_row),
        label=torch.from_numpy(table.label[ex]),
        weight=torch.from_numpy(table.weight[ex]),
        items=items,
        features=opt(table.features),
        target=opt(table.target),
    )


class ContextSampler:
    """Endless seeded shuffle of one table's contexts, ``batch_size`` contexts at a time."""

    def __init__(self, table: ExampleTable, batch_size: int, seed: int) -> None:
        if table.n_contexts == 0:
            raise ValueError(f"task {table.task!r} has no training examples")
        self.table, self.batch_size = table, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(table.n_contexts)
        self.pos = 0
        self.epochs = 0

    def next(self) -> np.ndarray:
        picked: list[np.ndarray] = []
        need = self.batch_size
        while need > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(self.table.n_contexts), 0
                self.epochs += 1
            take = self.order[self.pos : self.pos + need]
            picked.append(take)
            self.pos += len(take)
            need -= len(take)
        return np.concatenate(picked)


class MultiTaskBatches:
    """Iterator of training batches: one mini-batch of ``batch_size`` contexts per task per step."""

    def __init__(
        self,
        store: HistoryStore,
        tables: Mapping[str, ExampleTable],
        cfg: EncoderConfig,
        batch_size: int,
        seed: int,
        window: int | None = None,
        anchor_every: int | None = None,
    ) -> None:
        self.store, self.cfg = store, cfg
        self.window = min(window or cfg.window, cfg.window)
        self.anchor_every = anchor_every
        seq = np.random.SeedSequence(seed)
        self.samplers = [
            ContextSampler(t, batch_size, int(s.generate_state(1)[0]))
            for t, s in zip(tables.values(), seq.spawn(len(tables)), strict=True)
        ]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        picks = [(s.table, s.next()) for s in self.samplers]
        return collate(self.store, picks, self.cfg, self.window, self.anchor_every)

    def one_task(self, index: int) -> Batch:
        """A batch of one task only (the ``round_robin`` schedule)."""
        s = self.samplers[index]
        return collate(self.store, [(s.table, s.next())], self.cfg, self.window, self.anchor_every)


def eval_batches(
    store: HistoryStore,
    table: ExampleTable,
    cfg: EncoderConfig,
    contexts_per_batch: int = 512,
    window: int | None = None,
    anchor_every: int | None = None,
) -> Iterator[tuple[np.ndarray, Batch]]:
    """In-order batches over a whole table; yields (example indices, batch) to align predictions."""
    w = min(window or cfg.window, cfg.window)
    for lo in range(0, table.n_contexts, contexts_per_batch):
        contexts = np.arange(lo, min(lo + contexts_per_batch, table.n_contexts))
        ex, _ = table.example_rows(contexts)
        yield ex, collate(store, [(table, contexts)], cfg, w, anchor_every)


def subsample_contexts(table: ExampleTable, max_contexts: int, seed: int) -> ExampleTable:
    """A table restricted to a seeded random subset of its contexts (to bound evaluation cost)."""
    if table.n_contexts <= max_contexts:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.n_contexts, max_contexts, replace=False))
    ex, _ = table.example_rows(keep)
    sizes = table.ctx_start[keep + 1] - table.ctx_start[keep]

    def sel(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[ex]

    return ExampleTable(
        task=table.task,
        ctx_user=table.ctx_user[keep],
        ctx_len=table.ctx_len[keep],
        ctx_now=table.ctx_now[keep],
        ctx_query=table.ctx_query[keep],
        ctx_start=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        label=table.label[ex],
        weight=table.weight[ex],
        items=sel(table.items),
        features=sel(table.features),
        target=sel(table.target),
        oracle=sel(table.oracle),
    )


def split_examples_by_time(
    examples: Mapping[str, Sequence[Example]], train_frac: float = 0.8
) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """Split any examples (e.g. Taobao's) at the ``train_frac`` quantile of their time span."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be in (0, 1)")
    times = [e.now_ms for exs in examples.values() for e in exs]
    if not times:
        return {t: [] for t in examples}, {t: [] for t in examples}
    lo, hi = min(times), max(times)
    cutoff = lo + train_frac * (hi - lo)
    train = {t: [e for e in exs if e.now_ms < cutoff] for t, exs in examples.items()}
    test = {t: [e for e in exs if e.now_ms >= cutoff] for t, exs in examples.items()}
    return train, test

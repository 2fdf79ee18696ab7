"""Scores from vectors the stream worker itself produces, and the offline twins they must match.

The worker (``streams.updater.VectorUpdater``, default incremental policy) knows a user's
profile from the optional ``profile`` of their events (the events contract), and encodes a user
whose events carry none with the "unknown" profile row; a ranker asks for the query-aware
vector (``GET /users/{id}/vector?query=``), which re-pools the carried state's attention with
the query and the user's profile in the context, as of the request time. :func:`served_scores`
replays each test user's events through the updater (with their profile on every event, as a
producer that knows it would send them), keeps the carried encoder state after every behavior a
test context needs, re-pools it exactly that way and feeds the task heads; and, from the same
states, re-pools with the profile unknown: what a producer that sends no profile gets.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from encoder.model import DUPN, UserContext
from encoder.streaming import EncoderState, StreamingEncoder, UpdatePolicy
from state.codec import decode_state, encode_state
from streams.updater import Incoming, VectorUpdater
from training.data import ExampleTable, HistoryStore, eval_batches, task_part
from training.train import encode_batch, part_logits

#: Row names of the served path in the evaluation (``training.experiments``, ``training.report``).
SERVED = "DUPN-all served"  # the users' profiles on their events
SERVED_UNKNOWN = "DUPN-all served, unknown profile"  # the same states, no profile source
OFFLINE_UNKNOWN = "DUPN-all offline, unknown profile"  # the training code path, every profile unknown


def served_states(
    encoder: StreamingEncoder,
    policy: UpdatePolicy,
    histories: Mapping[str, Sequence[dict[str, Any]]],
    needed: Mapping[str, set[int]],
    batch: int = 512,
    profiles: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[tuple[str, int], EncoderState]:
    """The worker's carried encoder state of each (user, n) in ``needed``, after their n-th event.

    Events go through ``VectorUpdater.apply`` as Kafka messages would, round-robin over users
    (one event per user per call, at most ``batch`` users per call, so the state after every
    event is observable). With ``profiles`` (user → {age_group, gender}) every event of a user
    carries the user's profile.
    """
    updater = VectorUpdater(encoder, policy, cache_capacity=10**7)
    store: dict[str, bytes] = {}

    users = [u for u in needed if needed[u]]
    stop = {u: max(needed[u]) for u in users}
    longest = max((stop[u] for u in users), default=0)
    out: dict[tuple[str, int], EncoderState] = {}
    offset = 0
    for i in range(longest):  # pass i: the i-th event of every user still going; one per user per batch
        active = [u for u in users if i < stop[u]]
        for lo in range(0, len(active), batch):
            msgs = []
            for u in active[lo : lo + batch]:
                event = histories[u][i] if profiles is None else {**histories[u][i], "profile": dict(profiles[u])}
                msgs.append(Incoming(0, offset, u.encode(), json.dumps(event).encode()))
                offset += 1
            result = updater.apply(msgs, lambda u, _m: decode_state(u, store[u]) if u in store else None)
            if result.rejections or len(result.updates) != len(msgs):
                raise ValueError(f"the updater rejected or skipped simulated events: {result.rejections[:3]}")
            for up in result.updates:
                st = up.state
                store[st.user_id] = encode_state(st)
                if st.events_seen in needed[st.user_id]:
                    out[(st.user_id, st.events_seen)] = copy.deepcopy(updater.encoder_state(st))
    return out


@dataclass(frozen=True)
class ServedScores:
    """Task scores (table order) from the served path, with the events' profiles and with none."""

    with_profile: dict[str, np.ndarray]
    unknown_profile: dict[str, np.ndarray]


@torch.no_grad()
def served_scores(
    model: DUPN,
    store: HistoryStore,
    histories: Mapping[str, Sequence[dict[str, Any]]],
    tables: Mapping[str, ExampleTable],
    policy: UpdatePolicy,
    profiles: Mapping[str, Mapping[str, int]] | None = None,
) -> ServedScores:
    """Scores from the served path: updater state → ``?query=`` re-pool → heads.

    ``with_profile``: the states' own profiles (from the events; unknown without ``profiles``), as
    the HTTP read fills them in; ``unknown_profile``: the same states re-pooled with the profile unknown."""
    model.train(False)
    encoder = StreamingEncoder(model, "eval")
    names = {i: u for u, i in store.user_index.items()}
    needed: dict[str, set[int]] = defaultdict(set)
    for table in tables.values():
        for u, n in zip(table.ctx_user.tolist(), table.ctx_len.tolist(), strict=True):
            needed[names[u]].add(int(n))
    states = served_states(encoder, policy, histories, needed, profiles=profiles)
    out: dict[bool, dict[str, np.ndarray]] = {True: {}, False: {}}
    for task, table in tables.items():
        ctx_states = [
            states[(names[u], int(n))] for u, n in zip(table.ctx_user.tolist(), table.ctx_len.tolist(), strict=True)
        ]
        query = torch.from_numpy(table.ctx_query.copy())
        ex, owner = table.example_rows(np.arange(table.n_contexts))
        part = task_part(table, ex, owner, model.cfg)
        for own_profile in (True, False):
            reps = []
            for lo in range(0, table.n_contexts, 512):
                hi = min(lo + 512, table.n_contexts)
                unknown = torch.full((hi - lo,), -1, dtype=torch.int64)
                sub = (
                    UserContext(query=query[lo:hi])  # profile filled in from each state, as the HTTP read does
                    if own_profile
                    else UserContext(query=query[lo:hi], age_group=unknown, gender=unknown)
                )
                reps.append(encoder.represent(ctx_states[lo:hi], table.ctx_now[lo:hi], sub))
            scores = part_logits(model, torch.from_numpy(np.concatenate(reps)), part).numpy()
            result = np.empty_like(scores)
            result[ex] = scores
            out[own_profile][task] = result
    return ServedScores(with_profile=out[True], unknown_profile=out[False])


@torch.no_grad()
def offline_scores(
    model: DUPN,
    store: HistoryStore,
    tables: Mapping[str, ExampleTable],
    anchor_every: int | None,
    unknown_profile: bool,
) -> dict[str, np.ndarray]:
    """The training code path's scores, optionally with every profile "unknown" (the served path's twin)."""
    model.train(False)
    out: dict[str, np.ndarray] = {}
    for task, table in tables.items():
        result: np.ndarray | None = None
        for ex, batch in eval_batches(store, table, model.cfg, anchor_every=anchor_every):
            if unknown_profile:
                unk = torch.full_like(batch.context.query if batch.context.query is not None else batch.now, -1)
                batch.context = UserContext(query=batch.context.query, age_group=unk, gender=unk)
            s = part_logits(model, encode_batch(model, batch), batch.parts[0]).numpy()
            if result is None:
                result = np.empty((table.n_examples, *s.shape[1:]), dtype=s.dtype)
            result[ex] = s
        assert result is not None
        out[task] = result
    return out

"""The worker's profile source: an optional ``profile`` on events, kept with the user's state and used
for every vector the worker publishes or a read re-pools (README, "User profile")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.contracts import UNKNOWN_PROFILE, BehaviorEvent, Rejection, parse_event
from encoder.features import records_from_events
from encoder.model import UserContext
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from state.changelog import DurableMarks, changelog_records, ring_for, states_from_changelog
from state.codec import decode_header, decode_state, encode_header, encode_state
from state.user_state import UserState
from streams.updater import VectorUpdater
from tests.support.factories import interleave, make_events
from tests.support.fakes import MemoryTable, apply_in_batches

NOW = 1_800_000_000_000
POLICY = UpdatePolicy("incremental", 7)


def event(**extra: object) -> dict[str, object]:
    return {"event_id": "e1", "user_id": "u1", "ts": NOW - 1000, "event_type": "click", "item_id": "i1", **extra}


def parse(doc: dict[str, object]) -> BehaviorEvent | Rejection:
    return parse_event(b"u1", json.dumps(doc).encode(), now_ms=NOW)


def with_profile(events: list[dict[str, object]], age: int | None, gender: int | None) -> list[dict[str, object]]:
    return [{**e, "profile": {"age_group": age, "gender": gender}} for e in events]


# -- the contract ------------------------------------------------------------------------------


def test_the_profile_is_optional_and_null_means_unknown() -> None:
    assert parse(event()) == parse(event(profile=None))
    assert isinstance(got := parse(event()), BehaviorEvent) and got.profile is None
    assert isinstance(got := parse(event(profile={"age_group": 3, "gender": 1})), BehaviorEvent)
    assert got.profile == (3, 1)
    assert isinstance(got := parse(event(profile={"gender": 0})), BehaviorEvent) and got.profile == (-1, 0)
    assert isinstance(got := parse(event(profile={})), BehaviorEvent) and got.profile == UNKNOWN_PROFILE
    assert got.to_json()["profile"] == {"age_group": None, "gender": None}


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        ("f", "bad_type"),
        ([1, 0], "bad_type"),
        ({"age_group": "3"}, "bad_type"),
        ({"gender": True}, "bad_type"),
        ({"age_group": 2.0}, "bad_type"),
        ({"age_group": 128}, "bad_value"),
        ({"age_group": -1}, "bad_value"),
        ({"agegroup": 1}, "bad_value"),
    ],
)
def test_a_bad_profile_is_refused_with_its_reason(profile: object, reason: str) -> None:
    got = parse(event(profile=profile))
    assert isinstance(got, Rejection) and got.reason == reason and "profile" in got.detail


# -- the stored state --------------------------------------------------------------------------


def test_the_profile_survives_the_codec_and_the_changelog() -> None:
    records = records_from_events(make_events("u", 12))
    state = UserState("u", records, 12, "u-e11", 0, 11, "m1", None, 5, profile=(4, 1))
    assert decode_state("u", encode_state(state)).profile == (4, 1)
    state.vector = np.ones(8, np.float32)
    back = decode_state("u", encode_state(state))
    assert back.profile == (4, 1) and np.array_equal(back.vector, state.vector)
    assert decode_header(encode_header(state, 24)).profile == (4, 1)
    restored = states_from_changelog(changelog_records(state, ring_for(12), DurableMarks().get(b"u")))["u"]
    assert restored.profile == (4, 1) and restored.events_seen == 12


def test_a_user_without_a_profile_costs_no_bytes_and_an_old_reader_keeps_the_behaviors() -> None:
    records = records_from_events(make_events("u", 5))
    plain = UserState("u", records, 5, "u-e4", 0, 4, "m1", None, 5)
    known = UserState("u", records, 5, "u-e4", 0, 4, "m1", None, 5, profile=(2, 0))
    assert decode_state("u", encode_state(plain)).profile == UNKNOWN_PROFILE
    a, b = encode_state(plain), encode_state(known)
    # the profile is two trailing bytes behind a flag bit: a reader that ignores both reads the same state
    assert len(b) == len(a) + 2 and b[2:-2] == a[2:] and b[1] == a[1] | 2


# -- the worker ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_users", [20_000, 1])
def test_vectors_use_each_users_profile_from_their_events(tiny_encoder: StreamingEncoder, cache_users: int) -> None:
    """Users with different profiles share batches; each gets the offline vector of its own profile."""
    users = {
        "a": with_profile(make_events("a", 40, seed=1), 3, 1),
        "b": make_events("b", 35, seed=2),  # no profile: unknown
        "c": with_profile(make_events("c", 30, seed=3), 0, 0),
    }
    store = MemoryTable()
    published = apply_in_batches(
        VectorUpdater(tiny_encoder, POLICY, cache_capacity=cache_users), store, interleave(*users.values()), batch=9
    )
    want = {"a": (3, 1), "b": UNKNOWN_PROFILE, "c": (0, 0)}
    refs = {
        u: reference_vectors(tiny_encoder, records_from_events(ev), POLICY, profile=want[u]) for u, ev in users.items()
    }
    assert len(published) > 20
    for msg in published:
        assert np.abs(msg.vector - refs[msg.user_id][msg.events_seen - 1]).max() <= 1e-5
    for u in users:
        assert decode_state(u, store.data[u]).profile == want[u]
    unknown = reference_vectors(tiny_encoder, records_from_events(users["a"]), POLICY)
    assert np.abs(refs["a"][-1] - unknown[-1]).max() > 1e-4  # the profile changes the vector


def test_a_profile_change_applies_from_its_event_and_an_event_without_one_keeps_it(
    tiny_encoder: StreamingEncoder,
) -> None:
    events = make_events("u", 30, seed=4)
    events = with_profile(events[:10], 1, 0) + events[10:20] + with_profile(events[20:], 5, 1)
    store = MemoryTable()
    published = apply_in_batches(VectorUpdater(tiny_encoder, POLICY), store, events, batch=3)
    recs = records_from_events(events)
    first = reference_vectors(tiny_encoder, recs, POLICY, profile=(1, 0))
    second = reference_vectors(tiny_encoder, recs, POLICY, profile=(5, 1))
    for msg in published:  # the batch of events 19-21 publishes after 21, with the new profile
        n = msg.events_seen
        want = first[n - 1] if n <= 20 else second[n - 1]
        assert np.abs(msg.vector - want).max() <= 1e-5, n
    assert decode_state("u", store.data["u"]).profile == (5, 1)


def test_a_code_the_model_has_no_row_for_is_served_as_unknown(tiny_encoder: StreamingEncoder) -> None:
    assert tiny_encoder.cfg.n_age_groups < 100
    events = with_profile(make_events("u", 12), 100, None)
    store = MemoryTable()
    (*_, last) = apply_in_batches(VectorUpdater(tiny_encoder, POLICY), store, events, batch=4)
    unknown = reference_vectors(tiny_encoder, records_from_events(events), POLICY)
    assert np.abs(last.vector - unknown[-1]).max() <= 1e-5
    assert decode_state("u", store.data["u"]).profile == (100, -1)  # kept as sent: a newer model may know it


def test_a_query_read_re_pools_with_the_users_stored_profile(tiny_encoder: StreamingEncoder) -> None:
    events = with_profile(make_events("u", 20), 2, 1)
    store = MemoryTable()
    updater = VectorUpdater(tiny_encoder, POLICY)
    apply_in_batches(updater, store, events, batch=5)
    state = decode_state("u", store.data["u"])
    snap = updater.read_snapshot(state)
    rebuilt = snap.encoder_state()
    now = state.last_event_ts + 60_000
    q = torch.tensor([3])
    got = tiny_encoder.represent([rebuilt], [now], UserContext(query=q))
    explicit = tiny_encoder.represent(
        [rebuilt], [now], UserContext(query=q, age_group=torch.tensor([2]), gender=torch.tensor([1]))
    )
    unknown = tiny_encoder.represent(
        [rebuilt], [now], UserContext(query=q, age_group=torch.tensor([-1]), gender=torch.tensor([-1]))
    )
    np.testing.assert_allclose(got, explicit, atol=1e-6)
    assert np.abs(got - unknown).max() > 1e-4
    # the published vector (no query) equals a re-pool at its own time with the stored profile
    assert state.vector is not None
    np.testing.assert_allclose(tiny_encoder.represent([rebuilt], [state.last_event_ts])[0], state.vector, atol=1e-5)

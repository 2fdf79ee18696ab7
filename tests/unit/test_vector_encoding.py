"""``user-vectors`` contract v2 (binary float32 / float16) next to v1 (JSON): round trips, what tells them
apart, the errors bad bytes give, readers that meet a mix, and the setting that picks the producer's encoding.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.vector_cache import VectorCache
from clients.vectors import decodable
from core import metrics
from core.contracts import (
    VECTOR_ENCODINGS,
    VECTOR_MAGIC,
    VectorDecodeError,
    VectorMessage,
    decode_vector_message,
    encode_vector_message,
    is_binary_vector_message,
    peek_vector_message,
)
from core.settings import load_settings
from state.memory import MemoryStateStore
from state.store import StateWrite
from state.user_state import UserState
from streams.ppp import process_vector
from streams.updater import vector_message
from tests.support.factories import a_vector_message, ppp_scorer
from tests.support.fakes import BatchProducer, RecordingSink

HEADER = 40  # bytes before the vector (core.contracts module docstring)


class Rec(NamedTuple):
    offset: int
    value: bytes


def same_fields(a: VectorMessage, b: VectorMessage) -> bool:
    return (a.user_id, a.model_version, a.events_seen, a.last_event_id, a.last_event_ts, a.updated_at) == (
        b.user_id, b.model_version, b.events_seen, b.last_event_id, b.last_event_ts, b.updated_at)


def v1_as_before(raw: bytes | str | dict[str, Any]) -> VectorMessage:
    """The v1 decoder as it was before v2 existed (copied): v1 must decode exactly like this still."""
    doc = raw if isinstance(raw, dict) else orjson.loads(raw)
    vector = np.frombuffer(base64.b64decode(doc["vector_b64"]), dtype="<f4").astype(np.float32)
    assert vector.shape[0] == int(doc["dim"])
    return VectorMessage(str(doc["user_id"]), str(doc["model_version"]), vector, int(doc["events_seen"]),
                         str(doc["last_event_id"]), int(doc["last_event_ts"]), int(doc["updated_at"]))


# -- round trips ------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", VECTOR_ENCODINGS)
def test_every_encoding_round_trips_through_the_one_decoder(encoding: str) -> None:
    msg = VectorMessage("ü-1:@x", "0123456789abcdef", a_vector_message().vector, 2**40, "é-41", 2**62, -1)
    raw = msg.to_bytes(encoding)
    assert raw == encode_vector_message(msg, encoding)
    back = decode_vector_message(raw)
    assert same_fields(back, msg) and back.vector.dtype == np.float32 and back.dim == 256
    want = msg.vector.astype(np.float16).astype(np.float32) if encoding == "f16" else msg.vector
    assert np.array_equal(back.vector, want)
    assert is_binary_vector_message(raw) == (encoding != "json")
    peek = peek_vector_message(raw)
    assert (peek["user_id"], peek["events_seen"], peek["last_event_id"], peek["updated_at"], peek["dim"]) == (
        msg.user_id, msg.events_seen, msg.last_event_id, msg.updated_at, 256)


def test_the_binary_layout_is_the_documented_one() -> None:
    msg = a_vector_message("ab", "m1", events_seen=7, dim=3)
    raw = msg.to_bytes("f16")
    assert raw[:4] == b"DUPU" == VECTOR_MAGIC and raw[4] == 2 and raw[5] == 2
    assert struct.unpack_from("<Hqqq", raw, 6) == (3, 7, msg.last_event_ts, msg.updated_at)
    assert struct.unpack_from("<HHHH", raw, 32) == (2, 2, 5, 0)
    assert raw[HEADER : HEADER + 6] == msg.vector.astype("<f2").tobytes()
    assert raw[HEADER + 6 :] == b"abm1ab-e6" and len(raw) == HEADER + 6 + 9 == 55
    assert msg.to_bytes("f32")[5] == 1 and len(msg.to_bytes("f32")) == HEADER + 12 + 9


def test_v1_is_byte_for_byte_what_it_was_and_decodes_as_before() -> None:
    msg = a_vector_message(seed=3)
    raw = msg.to_bytes()
    assert raw == msg.to_bytes("json") == orjson.dumps(msg.to_json())  # the default is still v1
    assert json.loads(raw)["schema_version"] == 1
    for form in (raw, raw.decode(), json.loads(raw), b" \n\t" + raw):
        got, old = decode_vector_message(form), v1_as_before(form)
        assert same_fields(got, old) and np.array_equal(got.vector, old.vector)
    # v1 keeps no new rules on its values: a NaN decodes as it always did
    doc = {**msg.to_json(), "vector_b64": base64.b64encode(np.full(2, np.nan, "<f4").tobytes()).decode(), "dim": 2}
    assert np.isnan(decode_vector_message(orjson.dumps(doc)).vector).all()


def test_float16_keeps_tanh_range_vectors_to_cosine_0_9999() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        vec = np.tanh(rng.normal(scale=rng.uniform(0.1, 3.0), size=256)).astype(np.float32)
        back = decode_vector_message(VectorMessage("u", "m", vec, 1, "e", 1, 1).to_bytes("f16")).vector
        assert float(vec @ back / (np.linalg.norm(vec) * np.linalg.norm(back))) >= 0.9999
        assert np.abs(back - vec).max() <= 2.0**-12  # half a float16 step in [0.5, 1)


# -- v1 and v2 cannot be confused --------------------------------------------------------------------
def test_the_magic_is_never_the_start_of_json() -> None:
    assert VECTOR_MAGIC[:1] not in b'{[" \t\n\r-0123456789tfn'  # no JSON value, let alone an object, starts so
    for encoding in ("f32", "f16"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(a_vector_message().to_bytes(encoding))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=5),
       st.sampled_from(["", " ", "\n", "\t\r\n "]))
def test_no_json_object_reads_as_binary(doc: dict[str, Any], space: str) -> None:
    raw = space.encode() + json.dumps(doc).encode()
    assert not is_binary_vector_message(raw) and not is_binary_vector_message(raw.decode())
    with pytest.raises(VectorDecodeError):  # an object that is not a vector message: the one clear error
        decode_vector_message(raw)


# -- bad bytes: one clear error ----------------------------------------------------------------------
def _patched(raw: bytes, offset: int, fmt: str, value: float) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = a_vector_message("u9", "m1", seed=9).to_bytes("f16")
BAD: dict[str, tuple[bytes, str]] = {
    "magic only": (VECTOR_MAGIC, "shorter than its 40-byte header"),
    "header cut": (GOOD[:39], "shorter than its 40-byte header"),
    "vector cut": (GOOD[:300], "its header says"),
    "last byte cut": (GOOD[:-1], "its header says"),
    "a byte too many": (GOOD + b"\0", "its header says"),
    "dim too large": (_patched(GOOD, 6, "<H", 257), "its header says"),
    "dim too small": (_patched(GOOD, 6, "<H", 255), "its header says"),
    "version 1": (_patched(GOOD, 4, "<B", 1), "version 1, this reader knows 2"),
    "version 3": (_patched(GOOD, 4, "<B", 3), "version 3, this reader knows 2"),
    "dtype 0": (_patched(GOOD, 5, "<B", 0), "unknown vector dtype code 0"),
    "dtype 3": (_patched(GOOD, 5, "<B", 3), "unknown vector dtype code 3"),
    "a flag": (_patched(GOOD, 38, "<H", 1), "unknown flags"),
    "id length past the end": (_patched(GOOD, 32, "<H", 999), "its header says"),
    "id not UTF-8": (GOOD[:-1] + b"\xff", "not UTF-8"),
    "NaN": (_patched(GOOD, HEADER, "<e", float("nan")), "non-finite"),
    "infinity": (_patched(GOOD, HEADER + 2, "<e", float("inf")), "non-finite"),
    "not JSON": (b"garbage", "not a user-vectors v1 message"),
    "empty": (b"", "not a user-vectors v1 message"),
    "JSON list": (b"[1, 2]", "top-level JSON is list"),
    "v1 field missing": (b'{"user_id": "u"}', "KeyError"),
    "v1 dim disagrees": (orjson.dumps({**a_vector_message().to_json(), "dim": 3}), "dim says 3"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_bytes_give_the_one_clear_error(name: str) -> None:
    raw, says = BAD[name]
    with pytest.raises(VectorDecodeError, match=says):
        decode_vector_message(raw)
    assert issubclass(VectorDecodeError, ValueError)  # readers that skip ValueErrors keep skipping


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.integers(0, len(GOOD)), st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.binary(max_size=64))
def test_any_damage_decodes_or_raises_the_clear_error_only(cut: int, at: int, byte: int, tail: bytes) -> None:
    """Truncated, a byte changed, bytes appended, or random bytes after the magic: never another exception."""
    damaged = bytearray(GOOD[:cut])
    if at < len(damaged):
        damaged[at] = byte
    for raw in (bytes(damaged), bytes(damaged) + tail, VECTOR_MAGIC + tail):
        with contextlib.suppress(VectorDecodeError):  # anything else fails the test
            decode_vector_message(raw)


@pytest.mark.parametrize("vector, says", [
    (np.array([1.0, np.nan], np.float32), "non-finite"),
    (np.array([1.0, np.inf], np.float32), "non-finite"),
    (np.array([1.0, 70_000.0], np.float32), "beyond f16's range"),
    (np.ones((2, 2), np.float32), "1-D"),
])
def test_a_producer_refuses_what_v2_cannot_carry(vector: np.ndarray, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        VectorMessage("u", "m", vector, 1, "e", 1, 1).to_bytes("f16")


def test_a_producer_refuses_an_unknown_encoding_and_fields_v2_cannot_hold() -> None:
    with pytest.raises(ValueError, match="json, f32, f16"):
        a_vector_message().to_bytes("f64")
    with pytest.raises(ValueError, match="'u'"):  # events_seen beyond int64
        VectorMessage("u", "m", np.ones(2, np.float32), 2**63, "e", 1, 1).to_bytes("f32")
    with pytest.raises(ValueError, match="longer than 65535"):
        VectorMessage("u", "m", np.ones(2, np.float32), 1, "e" * 70_000, 1, 1).to_bytes("f32")
    assert len(VectorMessage("u", "m", np.ones(2, np.float32), 1, "e" * 70_000, 1, 1).to_bytes()) > 70_000  # v1 as ever


# -- readers given a mix of v1, v2 and garbage ---------------------------------------------------------
def _mix(version: str) -> tuple[list[bytes], list[str]]:
    """Good messages of three users in all three encodings, and two that decode as nothing; the good users."""
    good = [a_vector_message(u, version, seed=k).to_bytes(enc)
            for k, (u, enc) in enumerate([("ann", "json"), ("bob", "f32"), ("cyd", "f16")])]
    return [good[0], b"\x00garbage", good[1], GOOD[:100], good[2]], ["ann", "bob", "cyd"]


def test_the_ppp_agent_scores_v1_and_v2_and_skips_the_bad_ones(tmp_path: Path) -> None:
    version, scorer = ppp_scorer(tmp_path)

    def bad() -> float:
        return metrics.REGISTRY.get_sample_value("dupn_ppp_skipped_total", {"reason": "bad_message"}) or 0.0

    values, users = _mix(version)
    sink, before = RecordingSink(), bad()
    table: dict[bytes, bytes] = {}
    bodies = [asyncio.run(process_vector(scorer, table, sink, b"k", v)) for v in values]
    assert [b["user_id"] for b in bodies if b is not None] == users
    assert [k for k, _ in sink.sent] == [u.encode() for u in users] and bad() == before + 2
    # the f16 vector's level is the one its float32 original gets
    f16 = a_vector_message("cyd", version, seed=2)
    assert bodies[-1]["level"] == scorer.score(f16)["level"]  # type: ignore[index]


def test_the_vector_cache_keeps_v1_and_v2_and_counts_the_bad_ones(caplog: pytest.LogCaptureFixture) -> None:
    cache = VectorCache.__new__(VectorCache)  # no broker: only the merge of polled records
    cache._vectors, cache._lock, cache.undecodable = {}, threading.Lock(), 0
    values, users = _mix("m1")
    with caplog.at_level(logging.WARNING):
        cache._apply({0: [Rec(i, v) for i, v in enumerate(values)]})
    assert sorted(cache._vectors) == users and cache.undecodable == 2
    assert "offset 1" in caplog.text and "offset 3" in caplog.text
    got = cache.get("cyd")
    assert got is not None and np.array_equal(got[0].vector, decode_vector_message(values[4]).vector)


def test_the_follower_and_the_probes_skip_what_does_not_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    values, users = _mix("m1")
    assert [m.user_id for m in decodable(Rec(i, v) for i, v in enumerate(values))] == users
    import ops.probes

    monkeypatch.setattr(ops.probes, "read_topic", lambda s, topic: [Rec(i, v) for i, v in enumerate(values)])
    s = load_settings(env={})
    assert sorted(ops.probes.latest_vectors(s)) == sorted(ops.probes.newest_vectors(s)) == users


# -- the setting, and the worker's publish path ----------------------------------------------------
def test_the_encoding_setting_defaults_to_json_and_refuses_others() -> None:
    import core.settings

    assert core.settings.VECTOR_ENCODINGS == VECTOR_ENCODINGS  # the setting names what the contract encodes
    assert load_settings(env={}).worker.vector_encoding == "json"
    for encoding in VECTOR_ENCODINGS:
        assert load_settings(env={"DUPN_VECTOR_ENCODING": encoding}).worker.vector_encoding == encoding
    with pytest.raises(ValueError, match="DUPN_VECTOR_ENCODING must be one of json, f32, f16, not 'float16'"):
        load_settings(env={"DUPN_VECTOR_ENCODING": "float16"})
    with pytest.raises(ValueError, match="DUPN_VECTOR_ENCODING"):
        load_settings(env={}).replace(vector_encoding="F16")
    assert load_settings(env={}, vector_encoding="f16").env()["DUPN_VECTOR_ENCODING"] == "f16"  # reaches a child


def _write(user: str = "amy") -> StateWrite:
    from encoder.features import records_from_events
    from tests.support.factories import make_events

    state = UserState(user, records_from_events(make_events(user, 4)), 4, f"{user}-e3", 0, 3, "m1",
                      a_vector_message(user).vector, 1_700_000_000_123)
    return StateWrite(0, state, vector_message(state))


@pytest.mark.parametrize("encoding", VECTOR_ENCODINGS)
def test_the_worker_store_publishes_in_the_configured_encoding(
    encoding: str, tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create_app`` hands DUPN_VECTOR_ENCODING to the RocksDB store; its ``write_batch`` produces that."""
    import streams.table_store
    from streams.worker import create_app

    s = load_settings(env={}, home=str(tmp_path), model_path=str(model_dir), partitions=4, vector_encoding=encoding)
    store = create_app(s).store
    assert isinstance(store, streams.table_store.TableStateStore) and store.vector_encoding == encoding
    producer = BatchProducer(partitions=4)
    monkeypatch.setattr(streams.table_store.seams, "aiokafka_producer", lambda app: producer)
    monkeypatch.setattr(store, "_put_local", lambda partition, items: None)  # the table is not open (no worker)
    write = _write()

    async def publish() -> None:
        ack = await store.write_batch([write])
        await ack.delivered

    asyncio.run(publish())
    (value,) = [v for topic, _, _, v in producer.sent if topic == s.kafka.vectors_topic]
    assert value == encode_vector_message(write.vector, encoding)
    assert is_binary_vector_message(value) == (encoding != "json")
    assert same_fields(decode_vector_message(value), write.vector)


def test_a_fault_injecting_store_publishes_like_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import faults
    from streams.worker import create_app

    w = create_app(load_settings(env={}, home=str(tmp_path), model_path=str(tmp_path / "none"), partitions=2,
                                 vector_encoding="f16"))
    monkeypatch.setenv(faults.FREEZE_ENV, "1000")
    faults.install(w)
    store = w.store
    assert isinstance(store, faults._FreezingStore) and store.vector_encoding == "f16"


def test_the_memory_store_publishes_in_its_encoding() -> None:
    store = MemoryStateStore(vector_encoding="f16")
    write = _write("bea")
    asyncio.run(store.write_batch([write]))
    ((key, value),) = store.vectors
    assert key == b"bea" and value[:6] == VECTOR_MAGIC + b"\x02\x02"
    (back,) = store.published()
    assert same_fields(back, write.vector)
    with pytest.raises(ValueError, match="json, f32, f16"):
        MemoryStateStore(vector_encoding="f8")


def test_the_write_cost_part_reports_vector_bytes_for_each_encoding() -> None:
    """Bytes per live event, side by side, from the encoder the store calls (offline: no broker, no model)."""
    from ops.bench.common import BenchConfig, make_stream
    from ops.bench.report import _write_cost_lines
    from ops.bench.write_cost import write_cost

    got = write_cost(BenchConfig(Path("/no-model-needed"), users=20, events=1_000), make_stream(20, 1_000, 0))
    live = got["live_vector_bytes_per_event"]
    assert list(live) == list(VECTOR_ENCODINGS) == list(got["drain_vector_bytes_per_event"])
    assert live["json"] == got["live"]["new"]["json_vector_bytes_per_event"]  # the figure earlier runs report
    assert live["json"] > live["f32"] > live["f16"] > 0
    assert live["f32"] - live["f16"] == pytest.approx(512)  # 256 floats, 2 bytes fewer each, one vector per event
    lines = "\n".join(_write_cost_lines(got))
    assert "| case | json | f32 | f16 |" in lines and f"| live (paced load) | {live['json']:,.0f} |" in lines

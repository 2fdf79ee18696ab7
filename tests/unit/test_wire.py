"""core.wire: murmur2 partitioning (equal to Kafka's clients) and the binary vector format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from core import wire


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    rng = np.random.default_rng(0)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", b"u1", "ü-ß".encode()]
    keys += [bytes(rng.integers(0, 256, size=int(n), dtype=np.uint8)) for n in rng.integers(0, 300, size=500)]
    for key in keys:
        assert wire.murmur2(key) == aiokafka_murmur2(key), key
        for parts in (1, 2, 8, 13):
            assert wire.partition_of(key, parts) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % parts


def _rows() -> list[dict]:
    rng = np.random.default_rng(1)
    vec = rng.normal(size=256).astype(np.float32)
    vec[:3] = [np.float32(1e-38), np.float32(-0.0), np.float32(3.4e38)]
    return [
        {"user_id": "u1", "status": "found", "model_version": "m1", "events_seen": 5, "vector": list(map(float, vec))},
        {"user_id": "nobody", "status": "not_found"},
        {"user_id": "u2", "status": "stale", "events_seen": 1, "vector": list(map(float, vec[::-1]))},
        {"user_id": "u3", "status": "unavailable", "reason": "rebalancing"},
        {"user_id": "ü", "status": "error"},
    ]


def test_binary_round_trip_equals_the_json_floats() -> None:
    rows = _rows()
    raw = wire.encode_vectors(rows, {"retry_after_s": 1})
    magic, version, flags, count, dim, _meta_len = struct.unpack_from("<4sHHIII", raw)
    assert (magic, version, flags, count, dim) == (b"DUPV", 1, 0, 5, 256)
    meta, vectors = wire.decode_vectors(raw)
    assert meta["retry_after_s"] == 1
    assert vectors.dtype == np.float32 and vectors.shape == (5, 256)
    for row, got, vec in zip(rows, meta["results"], vectors, strict=True):
        assert got == {k: v for k, v in row.items() if k != "vector"}
        if "vector" in row:
            want = np.asarray(row["vector"], np.float32)
            assert want.tobytes() == vec.tobytes()  # bit-identical, -0.0 and subnormals included
        else:
            assert not vec.any()


def test_empty_and_vectorless_answers() -> None:
    meta, vectors = wire.decode_vectors(wire.encode_vectors([]))
    assert meta == {"results": []} and vectors.shape == (0, 0)
    meta, vectors = wire.decode_vectors(wire.encode_vectors([{"user_id": "x", "status": "not_found"}]))
    assert vectors.shape == (1, 0) and meta["results"][0]["status"] == "not_found"


def test_rows_start_aligned() -> None:
    for n in range(1, 6):
        rows = [{"user_id": "u" * n, "status": "found", "vector": [1.0, 2.0]}]
        raw = wire.encode_vectors(rows)
        assert len(raw) % 4 == 0
        assert wire.decode_vectors(raw)[1].tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + struct.pack("<H", 2) + b[6:], "version"),
        (lambda b: b[:-4], "bytes"),
        (lambda b: b[:10], "header"),
        (lambda b: b[:20] + bytes([1]) + b[21:], "disagrees"),
    ],
)
def test_malformed_bytes_are_refused(mutate, match) -> None:
    raw = wire.encode_vectors(_rows()[:2])
    with pytest.raises(wire.WireError, match=match):
        wire.decode_vectors(mutate(raw))


def test_encode_refuses_unknown_status_and_mixed_sizes() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_vectors([{"status": "maybe"}])
    with pytest.raises(wire.WireError):
        wire.encode_vectors([{"status": "found", "vector": [1.0]}, {"status": "found", "vector": [1.0, 2.0]}])


def test_accept_header() -> None:
    assert wire.prefers_binary("application/octet-stream")
    assert wire.prefers_binary("application/json, Application/Octet-Stream;q=0.9")
    assert not wire.prefers_binary("*/*")
    assert not wire.prefers_binary("")


def test_user_id_pattern() -> None:
    assert wire.USER_ID_RE.match("u1:a@b~c-d_e.f")
    for bad in (".", "..", "a b", "a/b", "x" * 129, "", "é"):
        assert not wire.USER_ID_RE.match(bad)

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import load_settings


def test_defaults_need_no_flags() -> None:
    s = load_settings(env={})
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.kafka.partitions == 8 and s.http.web_host == "127.0.0.1"


def test_env_vars_with_prefix_then_overrides() -> None:
    s = load_settings(env={"DUPN_PARTITIONS": "12", "DUPN_BROKER": "kafka://k1:9093;kafka://k2:9093"}, web_port=7000)
    assert s.kafka.partitions == 12 and s.http.web_port == 7000
    assert s.kafka.bootstrap == "k1:9093,k2:9093"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DUPN_PARTITIONS"):
        load_settings(env={"DUPN_PARTITIONS": "eight"})
    with pytest.raises(ValueError, match="update_mode"):
        load_settings(env={"DUPN_UPDATE_MODE": "fast"})


def test_security_settings_reach_kafka_clients() -> None:
    s = load_settings(
        env={
            "DUPN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DUPN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "DUPN_KAFKA_SASL_USERNAME": "svc",
            "DUPN_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    opts = s.kafka.kafka_client_options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "svc"


def test_rocksdb_block_cache_is_the_setting_not_faust_s_2_gib(tmp_path: Path) -> None:
    """Issue 14 item 9: Faust's RocksDB store opens each partition with a 2 GiB block cache by default."""
    from streams.worker import create_app

    s = load_settings(env={}, home=str(tmp_path), model_path=str(tmp_path / "none"), rocksdb_block_cache_bytes=8 << 20)
    w = create_app(s)
    assert w.table.data.rocksdb_options.block_cache_size == 8 << 20
    assert w.ppp_table.data.rocksdb_options.block_cache_size == 8 << 20
    with pytest.raises(ValueError, match="DUPN_ROCKSDB_BLOCK_CACHE_BYTES"):
        load_settings(env={"DUPN_ROCKSDB_BLOCK_CACHE_BYTES": "0"})
    with pytest.raises(ValueError, match="DUPN_INTAKE_MAX_BYTES"):
        load_settings(env={"DUPN_INTAKE_MAX_BYTES": "0"})

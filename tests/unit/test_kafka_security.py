"""SASL/TLS settings reach every Kafka client the project builds, through one translation in core.settings.

Each client factory is called with the Kafka classes replaced by recorders, so
the test sees exactly the keyword arguments a real cluster would get.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core.settings import Settings, load_settings

SECURE = {
    "DUPN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "DUPN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "DUPN_KAFKA_SASL_USERNAME": "svc-dupn",
    "DUPN_KAFKA_SASL_PASSWORD": "pw-123",
}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key (serves as CA bundle and as client certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=dupn-test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def secure(tls_files: tuple[Path, Path]) -> Settings:
    cert, key = tls_files
    return load_settings(
        env={
            **SECURE,
            "DUPN_KAFKA_SSL_CAFILE": str(cert),
            "DUPN_KAFKA_SSL_CERTFILE": str(cert),
            "DUPN_KAFKA_SSL_KEYFILE": str(key),
            "DUPN_BROKER": "kafka://kafka-1:9093",
        }
    )


EXPECTED_KAFKA_PYTHON = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "svc-dupn",
    "sasl_plain_password": "pw-123",
}


class Recorder:
    """Stands in for KafkaProducer / KafkaConsumer / KafkaAdminClient and remembers its kwargs."""

    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Recorder.calls.append((type(self).__name__, kwargs))

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def __getattr__(self, _name: str) -> Any:
        return lambda *a, **k: {}


class FakeProducer(Recorder):
    def send(self, *_a: Any, **_k: Any) -> Any:
        raise AssertionError("nothing is sent in this test")


class FakeConsumer(Recorder):
    pass


class FakeAdmin(Recorder):
    pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    import kafka
    import kafka.admin

    Recorder.calls = []
    monkeypatch.setattr(kafka, "KafkaProducer", FakeProducer)
    monkeypatch.setattr(kafka, "KafkaConsumer", FakeConsumer)
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", FakeAdmin)
    yield Recorder.calls


def assert_secure(kwargs: dict[str, Any], s: Settings) -> None:
    for key, value in EXPECTED_KAFKA_PYTHON.items():
        assert kwargs.get(key) == value, (key, kwargs.get(key))
    assert kwargs["ssl_cafile"] == s.kafka.kafka_ssl_cafile
    assert kwargs["ssl_certfile"] == s.kafka.kafka_ssl_certfile and kwargs["ssl_keyfile"] == s.kafka.kafka_ssl_keyfile
    assert kwargs["bootstrap_servers"] == "kafka-1:9093"


def test_replay_producer(
    secure: Settings, recorded: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ops.replay

    monkeypatch.setattr(ops.replay, "require_reachable", lambda s, timeout_s=2.0: None)
    ops.replay.producer(secure)
    ((kind, kwargs),) = recorded
    assert kind == "FakeProducer"
    assert_secure(kwargs, secure)


def test_topic_admin(
    secure: Settings, recorded: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ops.topics

    monkeypatch.setattr(ops.topics, "require_reachable", lambda s, timeout_s=2.0: None)
    ops.topics.admin_client(secure)
    ((kind, kwargs),) = recorded
    assert kind == "FakeAdmin"
    assert_secure(kwargs, secure)


def test_vector_reader(secure: Settings, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from clients.vectors import follow_vectors

    gen = follow_vectors(secure)
    next(gen)
    gen.close()
    ((kind, kwargs),) = recorded
    assert kind == "FakeConsumer"
    assert_secure(kwargs, secure)


def test_vector_cache(secure: Settings, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from clients.vector_cache import VectorCache

    VectorCache(secure, start=False)
    ((kind, kwargs),) = recorded
    assert kind == "FakeConsumer"
    assert_secure(kwargs, secure)


def test_testing_helpers(secure: Settings, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    from ops.probes import produce, produce_raw, read_dlq

    produce(secure, [])
    produce_raw(secure, [])
    read_dlq(secure, expected=0, timeout_s=0)
    assert [kind for kind, _ in recorded] == ["FakeProducer", "FakeProducer", "FakeConsumer"]
    for _, kwargs in recorded:
        assert_secure(kwargs, secure)


@pytest.mark.parametrize("roles", ["vectors,ppp", "ppp"])
def test_faust_worker_and_ppp_worker(secure: Settings, roles: str) -> None:
    """Faust turns broker_credentials into aiokafka's kwargs for its consumer, producer and admin."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.worker import faust_options

    opts = faust_options(secure.replace(roles=roles))
    auth = credentials_to_aiokafka_auth(opts["broker_credentials"])
    assert {k: auth[k] for k in EXPECTED_KAFKA_PYTHON} == EXPECTED_KAFKA_PYTHON
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("dupn-test" in str(c.get("subject")) for c in context.get_ca_certs())


def test_tls_without_sasl(tls_files: tuple[Path, Path]) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    cert, _ = tls_files
    s = load_settings(env={"DUPN_KAFKA_SECURITY_PROTOCOL": "SSL", "DUPN_KAFKA_SSL_CAFILE": str(cert)})
    assert s.kafka.kafka_client_options() == {"security_protocol": "SSL", "ssl_cafile": str(cert)}
    auth = credentials_to_aiokafka_auth(s.kafka.faust_broker_credentials())
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)


def test_plaintext_is_the_default() -> None:
    s = load_settings(env={})
    assert s.kafka.kafka_client_options() == {"security_protocol": "PLAINTEXT"}
    assert s.kafka.faust_broker_credentials() is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DUPN_KAFKA_SECURITY_PROTOCOL": "SASL_TLS"}, "DUPN_KAFKA_SECURITY_PROTOCOL"),
        ({"DUPN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "DUPN_KAFKA_SASL_MECHANISM"),
        ({**SECURE, "DUPN_KAFKA_SASL_USERNAME": ""}, "DUPN_KAFKA_SASL_USERNAME"),
        ({"DUPN_KAFKA_SASL_MECHANISM": "PLAIN"}, "DUPN_KAFKA_SECURITY_PROTOCOL"),
        ({"DUPN_KAFKA_SSL_CAFILE": "/etc/hosts"}, "DUPN_KAFKA_SECURITY_PROTOCOL"),
        ({"DUPN_KAFKA_SECURITY_PROTOCOL": "SSL", "DUPN_KAFKA_SSL_CAFILE": "/no/such.pem"}, "/no/such.pem"),
        ({"DUPN_KAFKA_SECURITY_PROTOCOL": "SSL", "DUPN_KAFKA_SSL_KEYFILE": "/etc/hosts"}, "DUPN_KAFKA_SSL_CERTFILE"),
    ],
)
def test_half_configured_security_fails_at_startup_naming_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        load_settings(env=env)

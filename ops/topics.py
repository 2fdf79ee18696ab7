"""Create every topic up front with the partition count we mean (the layout is ``core.topics``)."""

from __future__ import annotations

from core.settings import Settings
from core.topics import no_broker_message, topic_specs


def admin_client(s: Settings, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    require_reachable(s)
    try:
        return KafkaAdminClient(
            bootstrap_servers=s.kafka.bootstrap,
            client_id=f"{s.kafka.app_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
            **s.kafka.kafka_client_options(),
        )
    except (KafkaError, OSError) as exc:
        raise ConnectionError(no_broker_message(s.kafka)) from exc


def require_reachable(s: Settings, timeout_s: float = 2.0) -> None:
    """Fail in seconds, with the fix in the message, when no bootstrap server accepts a connection."""
    import socket

    for server in s.kafka.bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise ConnectionError(no_broker_message(s.kafka))


def create_topics(s: Settings) -> dict[str, str]:
    """Create missing topics; return {name: "created" | "exists (N partitions)"}; idempotent."""
    admin = admin_client(s)
    try:
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics() if t.get("name")}
        out: dict[str, str] = {}
        todo = {}
        for spec in topic_specs(s.kafka):
            if spec.name in existing:
                have = existing[spec.name]
                if have != spec.partitions:
                    raise RuntimeError(
                        f"topic {spec.name} exists with {have} partitions, expected {spec.partitions}; "
                        "delete it or set DUPN_PARTITIONS to match"
                    )
                out[spec.name] = f"exists ({have} partitions)"
                continue
            configs = {"cleanup.policy": "compact"} if spec.compact else {}
            todo[spec.name] = {
                "num_partitions": spec.partitions,
                "replication_factor": s.kafka.replication_factor,
                "configs": configs,
            }
            out[spec.name] = f"created ({spec.partitions} partitions)"
        if todo:
            admin.create_topics(todo, raise_errors=True)
        return out
    finally:
        admin.close()

"""Create every topic up front with the partition count we mean.

Brokers (Tansu among them) may auto-create an unknown topic on first touch with
their own default partition count, which silently breaks co-partitioning of
the events topic and the state changelog. So all topics, internal ones
included, are created here before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.config import Settings

USER_STATE_TABLE = "user-state"
PPP_TABLE = "purchasing-power"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compact: bool = False


def topic_specs(s: Settings) -> list[TopicSpec]:
    p = s.partitions
    return [
        TopicSpec(s.events_topic, p),
        TopicSpec(s.vectors_topic, p, compact=True),
        TopicSpec(s.dlq_topic, p),
        TopicSpec(changelog_topic(s), p, compact=True),
        TopicSpec(f"{s.app_id}-__assignor-__leader", 1),
        TopicSpec(s.ppp_topic, p, compact=True),
        # the PPP table's changelog, for a worker running both roles and for a `dupn ppp-worker`
        TopicSpec(ppp_changelog_topic(s.app_id), p, compact=True),
        TopicSpec(ppp_changelog_topic(f"{s.app_id}-ppp"), p, compact=True),
        TopicSpec(f"{s.app_id}-ppp-__assignor-__leader", 1),
    ]


def changelog_topic(s: Settings) -> str:
    return f"{s.app_id}-{USER_STATE_TABLE}-changelog"


def ppp_changelog_topic(faust_app_id: str) -> str:
    return f"{faust_app_id}-{PPP_TABLE}-changelog"


def admin_client(s: Settings, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    require_reachable(s)
    try:
        return KafkaAdminClient(
            bootstrap_servers=s.bootstrap,
            client_id=f"{s.app_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
            **s.kafka_client_options(),
        )
    except (KafkaError, OSError) as exc:
        raise ConnectionError(no_broker_message(s)) from exc


def require_reachable(s: Settings, timeout_s: float = 2.0) -> None:
    """Fail in seconds, with the fix in the message, when no bootstrap server accepts a connection."""
    import socket

    for server in s.bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise ConnectionError(no_broker_message(s))


def no_broker_message(s: Settings) -> str:
    return f"no broker at {s.bootstrap} — run `dupn broker start` or set DUPN_BROKER"


def create_topics(s: Settings) -> dict[str, str]:
    """Create missing topics; return {name: "created" | "exists (N partitions)"}; idempotent."""
    admin = admin_client(s)
    try:
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics() if t.get("name")}
        out: dict[str, str] = {}
        todo = {}
        for spec in topic_specs(s):
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
            todo[spec.name] = {"num_partitions": spec.partitions, "replication_factor": 1, "configs": configs}
            out[spec.name] = f"created ({spec.partitions} partitions)"
        if todo:
            admin.create_topics(todo, raise_errors=True)
        return out
    finally:
        admin.close()

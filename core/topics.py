"""Names of every topic and table, and the topic layout a deployment needs.

Brokers (Tansu among them) may auto-create an unknown topic on first touch with
their own default partition count, which silently breaks co-partitioning of
the events topic and the state changelog. So all topics, internal ones
included, are listed here and created up front (``ops.topics.create_topics``)
before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import KafkaSettings

USER_STATE_TABLE = "user-state"
PPP_TABLE = "purchasing-power"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compact: bool = False


def topic_specs(k: KafkaSettings) -> list[TopicSpec]:
    p = k.partitions
    return [
        TopicSpec(k.events_topic, p),
        TopicSpec(k.vectors_topic, p, compact=True),
        TopicSpec(k.dlq_topic, p),
        TopicSpec(changelog_topic(k), p, compact=True),
        TopicSpec(f"{k.app_id}-__assignor-__leader", 1),
        TopicSpec(k.ppp_topic, p, compact=True),
        # the PPP table's changelog, for a worker running both roles and for a `dupn ppp-worker`
        TopicSpec(ppp_changelog_topic(k.app_id), p, compact=True),
        TopicSpec(ppp_changelog_topic(f"{k.app_id}-ppp"), p, compact=True),
        TopicSpec(f"{k.app_id}-ppp-__assignor-__leader", 1),
    ]


def changelog_topic(k: KafkaSettings) -> str:
    return f"{k.app_id}-{USER_STATE_TABLE}-changelog"


def ppp_changelog_topic(faust_app_id: str) -> str:
    return f"{faust_app_id}-{PPP_TABLE}-changelog"


def no_broker_message(k: KafkaSettings) -> str:
    return f"no broker at {k.bootstrap} — run `dupn broker start` or set DUPN_BROKER"

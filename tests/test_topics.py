"""Topic names and idempotent creation against a real broker."""

from __future__ import annotations

import pytest

from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicError, TopicNames, ensure_topics, topic_specs


def test_names_share_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TopicNames().all() == ["asmg.interactions", "asmg.watermarks", "asmg.periods", "asmg.models",
                                  "asmg.dlq"]
    monkeypatch.setenv("ASMG_TOPIC_PREFIX", "staging.asmg.")
    assert TopicNames.from_env().models == "staging.asmg.models"


def test_specs_follow_the_design() -> None:
    specs = {s.name: s for s in topic_specs(TopicNames(), partitions=6)}
    assert specs["asmg.interactions"].partitions == 6
    assert specs["asmg.periods"].partitions == 1
    assert specs["asmg.models"].partitions == 1
    assert specs["asmg.models"].config["cleanup.policy"] == "compact"
    with pytest.raises(TopicError):
        topic_specs(TopicNames(), partitions=0)


@pytest.mark.kafka
def test_ensure_topics_is_idempotent_and_models_is_compacted(
    kafka_settings: KafkaSettings, topic_names: TopicNames
) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    first = ensure_topics(kafka_settings, topic_names, partitions=3)
    assert first == {name: "created" for name in topic_names.all()}
    second = ensure_topics(kafka_settings, topic_names, partitions=3)
    assert second == {name: "exists" for name in topic_names.all()}

    admin = AdminClient(kafka_settings.confluent_config())
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topic_names.interactions].partitions) == 3
    assert len(metadata.topics[topic_names.periods].partitions) == 1
    assert len(metadata.topics[topic_names.models].partitions) == 1

    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic_names.models),
                 ConfigResource(ConfigResource.Type.TOPIC, topic_names.interactions)]
    configs = {r.name: f.result(timeout=10) for r, f in admin.describe_configs(resources).items()}
    assert configs[topic_names.models]["cleanup.policy"].value == "compact"
    assert configs[topic_names.interactions]["cleanup.policy"].value == "delete"

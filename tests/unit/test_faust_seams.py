"""streams.seams: every Faust/aiokafka private name we use still exists, with the pinned signature.

A Faust or aiokafka upgrade that renames, removes or re-signs one of them fails here, not in a
worker under load. The pinned values are recorded in streams.seams (faust-streaming 0.15.3,
aiokafka 0.14.0).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from typing import Any

import aiokafka
import faust
import pytest

from streams import seams


def _resolve(path: str) -> Any:
    module, qualname = path.split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", sorted(seams.PINNED_SIGNATURES))
def test_pinned_name_exists_with_its_signature(path: str) -> None:
    assert str(inspect.signature(_resolve(path))) == seams.PINNED_SIGNATURES[path], path


@pytest.mark.parametrize("path", sorted(seams.PINNED_ATTRIBUTES))
def test_pinned_instance_attributes_are_still_assigned(path: str) -> None:
    source = inspect.getsource(_resolve(path))
    for name in seams.PINNED_ATTRIBUTES[path]:
        assert re.search(rf"self\.{name}\b\s*(:[^=\n]*)?=", source) or re.search(rf"^\s+{name}\s*:", source, re.M), (
            f"{path} no longer assigns {name}"
        )


def test_the_copied_fetch_loop_is_faust_s_current_one() -> None:
    """streams.seams._make_drain copies Consumer._drain_messages: a changed original needs the copy redone."""
    from faust.transport.consumer import Consumer

    digest = hashlib.sha256(inspect.getsource(Consumer._drain_messages).encode()).hexdigest()
    assert digest == seams.PINNED_DRAIN_SHA256


def test_installed_versions_are_the_pinned_ones_or_match_every_signature() -> None:
    signatures_match = all(
        str(inspect.signature(_resolve(p))) == sig for p, sig in seams.PINNED_SIGNATURES.items()
    )
    assert faust.__version__ == seams.PINNED_FAUST or signatures_match
    assert aiokafka.__version__ == seams.PINNED_AIOKAFKA or signatures_match


def test_every_private_name_is_listed_in_the_docstring() -> None:
    doc = seams.__doc__ or ""
    for path in seams.PINNED_SIGNATURES:
        name = path.rsplit(".", 1)[-1]
        assert name in doc, f"{name} used by streams.seams but not explained in its docstring"
    for names in seams.PINNED_ATTRIBUTES.values():
        for name in names:
            assert name in doc, f"{name} used by streams.seams but not explained in its docstring"


def test_install_wraps_new_consumer_once_and_sets_the_fetch_wait_per_app() -> None:
    """Two apps in one process keep their own fetch wait (the class is not patched)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    class Thread:
        def _create_worker_consumer(self, transport: Any) -> Any:
            return type("C", (), {"_fetch_max_wait_ms": 1500})()

        def _highwaters(self, partitions: Any) -> Any:  # pragma: no cover - not called here
            return {}

    class App:
        def __init__(self) -> None:
            self.made = 0

        def _new_consumer(self) -> Any:
            self.made += 1
            return type("Consumer", (), {"_thread": Thread()})()

    original = AIOKafkaConsumerThread._create_worker_consumer
    a, b = App(), App()
    seams.install(a, fetch_max_wait_ms=20)
    seams.install(b, fetch_max_wait_ms=300)
    with pytest.raises(RuntimeError, match="already"):
        seams.install(a, fetch_max_wait_ms=20)
    assert a._new_consumer()._thread._create_worker_consumer(None)._fetch_max_wait_ms == 20
    assert b._new_consumer()._thread._create_worker_consumer(None)._fetch_max_wait_ms == 300
    assert (a.made, b.made) == (1, 1)
    assert AIOKafkaConsumerThread._create_worker_consumer is original

"""Work around faust-streaming #497: table access inside batches uses the wrong partition.

Faust's table store and changelog pick the partition of a key from the
*current event* (a context variable). Inside ``stream.take_events()`` that is
whichever event arrived last, so reading or writing user A's state while the
current event belongs to user B looks in, and writes to, B's partition.

``acting_on(event)`` makes a given event current for the duration of a block,
so each user's state is read from and written to the partition its own event
came from: the one that owns the user.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def acting_on(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)

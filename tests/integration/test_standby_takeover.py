"""Two workers with a standby replica each; SIGKILL one: the survivor takes over without a full replay.

After the kill every user gets one more event; the survivor must come to answer
every user with exactly the offline reference after that event (the lost
partitions included), and its recovery of the lost partitions must read only
the changelog tail its standby had not seen, not the whole changelog.

Also a measurement (no timed assertion): ``-s`` prints the seconds from the kill
until the survivor answered every user fresh, and the changelog records it read
to restore the partitions it took over, against a full replay of them::

    python -m pytest tests/integration/test_standby_takeover.py -s -q
"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

import pytest

from core.topics import changelog_topic
from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import http_get
from ops.replay import replay, synthetic_events
from streams.restore import LOG_MARKER
from tests.support.reference import Reference, answer_mismatch

pytestmark = [pytest.mark.integration, pytest.mark.crash]

USERS = 300
EVENTS = 9_000


def test_survivor_takes_over_from_its_standby_without_a_full_replay(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=8)
    setup_topics(s)
    events = list(synthetic_events(USERS, EVENTS, seed=31, live_time=False))
    users = sorted({str(e["user_id"]) for e in events})
    after = [{**events[-1], "user_id": u, "event_id": f"after-kill-{u}"} for u in users]
    survivor, victim = WorkerProcess.member(s, "survivor"), WorkerProcess.member(s, "victim")
    try:
        for w in (survivor, victim):  # join together: neither held the other's partitions before
            w.start(ready_timeout_s=None)
        for w in (survivor, victim):
            w.wait_ready(180)
        replay(s, events, progress=False)
        # before the kill a user the workers have not reached yet is unknown (404); after it, never
        _wait_fresh(survivor.url, Reference(s, events), users, timeout_s=300, unknown_ok=True)
        time.sleep(5)  # standbys follow the changelog continuously; give them a moment to reach its end
        log_mark = len(survivor.log_text())

        victim.kill()
        killed_at = time.monotonic()
        replay(s, after, progress=False)
        _wait_fresh(survivor.url, Reference(s, events + after), users, timeout_s=300)
        takeover_s = time.monotonic() - killed_at
    finally:
        survivor.stop()
        victim.stop()

    log = survivor.log_text()
    taken, read, full = _takeover_replay(log[:log_mark], log[log_mark:], changelog_topic(s.kafka))
    print(f"\nstandby takeover: every user fresh on the survivor {takeover_s:.1f} s after SIGKILL; restoring the "
          f"{len(taken)} partitions it took over read {read} changelog records, a full replay {full}")
    assert taken and full > 0, "the survivor logged no takeover of the lost worker's user-state partitions"
    assert read < full / 2, f"takeover read {read} of {full} changelog records: the standby did not spare a replay"


def _wait_fresh(url: str, reference: Reference, users: list[str], timeout_s: float, unknown_ok: bool = False) -> None:
    """Until ``url`` answers every user with exactly the reference after all their events.

    ``unknown_ok``: a 404 (no event of that user consumed yet) is a wait, not a failure; only while the
    first replay is still being consumed. After the kill every user had a state, so a 404 is a loss."""
    want = reference.final()
    pending = set(users)
    deadline = time.monotonic() + timeout_s
    while pending:
        for user in sorted(pending):
            status, body = http_get(f"{url}/users/{urllib.parse.quote(user)}/vector")
            if status == 200 and body.get("events_seen") == want[user].events_seen:
                why = answer_mismatch(body, want[user])
                assert why is None, f"{user}: {why}"
                pending.discard(user)
            else:
                assert status in ((200, 503, 404) if unknown_ok else (200, 503)), f"{user}: HTTP {status} {body}"
        if pending:
            assert time.monotonic() < deadline, f"{len(pending)} users not fresh after {timeout_s:.0f}s"
            time.sleep(0.2)


def _takeover_replay(before: str, after: str, topic: str) -> tuple[list[int], int, int]:
    """(partitions taken over, changelog records their restore read, records a full replay reads).

    Faust logs, per recovery, the highwater of each active changelog partition and the
    offset its own reading starts at (-1: from the beginning, no local state). The bulk
    restore (streams.restore) reads before that and logs the records it read per topic;
    all of it counts as read, also what it read of partitions not taken over (it can only
    overstate). The partitions taken over are those active in the last recovery but not
    in the one before the kill.
    """
    own = _last_table(before, "Highwater - Active", topic)
    highwaters = _last_table(after, "Highwater - Active", topic)
    starts = _last_table(after, "Reading Starts At - Active", topic)
    taken = sorted(set(highwaters) - set(own))
    bulk = sum(int(m.group(1)) for m in re.finditer(rf"{LOG_MARKER} {re.escape(topic)}: \d+ partitions, (\d+) records",
                                                    after))
    read = bulk + sum(max(0, highwaters[p] - starts.get(p, -1)) for p in taken)
    full = sum(highwaters[p] + 1 for p in taken)
    return taken, read, full


def _last_table(log: str, title: str, topic: str) -> dict[int, int]:
    """{partition: value} of ``topic`` in the last Faust log table titled ``title``."""
    at = log.rfind(title)
    if at < 0:
        return {}
    out: dict[int, int] = {}
    current = None
    rows = [line.strip() for line in log[at:].splitlines()[1:]]
    for line in rows[2:]:  # after the header row and its rule
        if not line.startswith("|"):
            break  # the closing rule
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] != "〃":
            current = cells[0]
        if current == topic and len(cells) == 3 and re.fullmatch(r"-?\d+", cells[2]):
            out[int(cells[1])] = int(cells[2])
    return out

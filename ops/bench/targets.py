"""The freshness and throughput targets of issue 15, each judged met or missed with its margin.

Pure functions of the result document's parts, so the verdicts are unit-tested and
the report only renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

P99_OVER_FLOOR_MAX = 1.25  # worker p99 ≤ 1.25 × floor p99 at the same load
P50_OVER_FLOOR_MAX_MS = 5.0  # worker p50 − floor p50 ≤ 5 ms
DRAIN_OVER_A_MIN = 0.5  # worker drain ≥ 0.5 × ceiling A
TARGET_LOADS = (10.0, 25.0)


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, what was measured, whether it was met and by how much (positive = to spare)."""

    target: str
    measured: str
    met: bool
    margin: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "measured": self.measured, "met": self.met, "margin": self.margin}


def verdicts(parts: dict[str, Any]) -> list[Verdict]:
    """Every target whose parts ran (sweep at 10 % and 25 %; ceiling A with the worker)."""
    out: list[Verdict] = []
    for row in parts.get("sweep", {}).get("loads", []):
        if row["load_percent"] in TARGET_LOADS:
            out += _latency_verdicts(row)
    drain = _drain_verdict(parts)
    if drain:
        out.append(drain)
    return out


def _median(row: dict[str, Any], side: str, q: str) -> float | None:
    cell = row[side]["receive_minus_ts_ms"].get(q)
    return None if cell is None else float(cell["median"])


def _latency_verdicts(row: dict[str, Any]) -> list[Verdict]:
    load = f"{row['load_percent']:g} %"
    out = []
    w99, f99 = _median(row, "worker", "p99"), _median(row, "floor", "p99")
    if w99 is not None and f99 is not None:
        limit = P99_OVER_FLOOR_MAX * f99
        out.append(Verdict(
            f"at {load} load: worker receive − ts p99 ≤ {P99_OVER_FLOOR_MAX:g} × floor p99 (medians over reps)",
            f"{w99:,.1f} ms vs {limit:,.1f} ms (floor {f99:,.1f} ms; {_x(w99, f99)} × floor)",
            w99 <= limit, _ms_margin(limit - w99),
        ))
    w50, f50 = _median(row, "worker", "p50"), _median(row, "floor", "p50")
    if w50 is not None and f50 is not None:
        gap = w50 - f50
        out.append(Verdict(
            f"at {load} load: worker p50 − floor p50 ≤ {P50_OVER_FLOOR_MAX_MS:g} ms (medians over reps)",
            f"{w50:,.1f} − {f50:,.1f} = {gap:,.1f} ms",
            gap <= P50_OVER_FLOOR_MAX_MS, _ms_margin(P50_OVER_FLOOR_MAX_MS - gap),
        ))
    return out


def _drain_verdict(parts: dict[str, Any]) -> Verdict | None:
    a = parts.get("ceiling-a", {}).get("events_per_s")
    w = parts.get("worker", {}).get("incremental", {}).get("events_per_s")
    if not a or not w:
        return None
    ratio = w / a
    pairs = parts["worker"].get("over_a_pairs")
    pair_text = f"; per-pair ratio median {pairs['median']} ({pairs['min']}–{pairs['max']})" if pairs else ""
    return Verdict(
        f"worker drain ≥ {DRAIN_OVER_A_MIN:g} × A (medians of the repetitions)",
        f"{w:,.0f} / {a:,.0f} events/s = {ratio:.3f} × A{pair_text}",
        ratio >= DRAIN_OVER_A_MIN, f"{ratio - DRAIN_OVER_A_MIN:+.3f} × A",
    )


def _ms_margin(spare_ms: float) -> str:
    return f"{spare_ms:+,.1f} ms"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "—"

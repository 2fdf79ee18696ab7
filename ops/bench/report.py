"""The markdown table of one ``dupn bench`` result document (pasted into BENCHMARKS.md as generated)."""

from __future__ import annotations

from typing import Any

from ops.bench.common import ratio


def markdown(doc: dict[str, Any]) -> str:
    p = doc["parts"]
    m = doc["machine"]
    lines = [
        "```bash",
        doc["command"],
        "```",
        "",
        f"{doc['stream']['events']:,} events over {doc['stream']['users']:,} users (seed {doc['stream']['seed']}), "
        f"model `{doc['model_version']}`, {doc['config']['partitions']} partitions, "
        f"{m['cpus']} CPUs, load average {m['loadavg_start'][0]} at start / {m['loadavg_end'][0]} at end, "
        f"started {doc['started']}.",
    ]
    rows = _rows(p, doc.get("ratios", {}))
    if rows:  # the sweep and write-cost parts have tables of their own
        lines += ["", "| # | figure | value | ratio |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += _provenance_lines(doc.get("provenance"))
    if "sweep" in p:
        lines += _sweep_lines(p["sweep"])
    if "write-cost" in p:
        lines += _write_cost_lines(p["write-cost"])
    if doc.get("targets"):
        lines += _target_lines(doc["targets"])
    return "\n".join(lines) + "\n"


def _provenance_lines(prov: dict[str, Any] | None) -> list[str]:
    if not prov:
        return []
    dirty = {True: " (uncommitted changes)", False: "", None: ""}[prov.get("git_dirty")]
    versions = ", ".join(f"{k} {v}" for k, v in prov["packages"].items() if v)
    return ["", f"Code at `{prov.get('git_commit') or 'unknown'}`{dirty}; {versions}."]


def _sweep_lines(sw: dict[str, Any]) -> list[str]:
    """Per load: worker and floor per-event receive − ts, median [min–max] over reps, and idle CPU."""
    lines = [
        "",
        f"### Load sweep: per-event freshness against load ({sw['drain_rate_source']}: "
        f"{_n(sw['drain_rate_events_per_s'])} events/s = 100 %)",
        "",
        f"Each point: {sw['warmup_s']:g} s warm-up, then {sw['steady_s']:g} s measured; every event sent in that "
        "window counts once, at the first vector with `events_seen` ≥ its index (receive − its ts). One worker and "
        f"one floor hop ({sw['floor_path']}){' (and the model hop, below)' if 'model_hop_path' in sw else ''} each "
        f"run every point in turn, draining and resting {sw['gap_s']:g} s in between. Cells: median [min–max] over "
        "the reps, ms.",
        "",
        "| load | events/s | reps | worker p50 | worker p99 | worker p999 | floor p50 | floor p99 | floor p999 "
        "| worker publish − ts p50 / p99 | idle CPU worker / floor | uncovered worker / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sw["loads"]:
        w, f = row["worker"], row["floor"]
        cells = [f"{row['load_percent']:g} %", _n(row["target_events_per_s"]), str(row["reps"])]
        cells += [_cell(w["receive_minus_ts_ms"].get(q)) for q in ("p50", "p99", "p999")]
        cells += [_cell(f["receive_minus_ts_ms"].get(q)) for q in ("p50", "p99", "p999")]
        pub = w["publish_minus_ts_ms"]
        cells.append(f"{_cell(pub.get('p50'))} / {_cell(pub.get('p99'))}")
        cells.append(f"{_idle(w['idle_cpu_percent'])} / {_idle(f['idle_cpu_percent'])}")
        cells.append(f"{w['events_uncovered']:,} / {f['events_uncovered']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    if any("model_hop" in row for row in sw["loads"]):
        lines += _model_hop_lines(sw)
    if any("spin_hop" in row for row in sw["loads"]):
        lines += _spin_hop_lines(sw)
    return lines


def _spin_hop_lines(sw: dict[str, Any]) -> list[str]:
    """Per load: floor, spin hop and model hop p50, and how much of the model hop's distance the spin explains."""
    lines = [
        "",
        f"Spin hop at every point ({sw['spin_hop_path']}; FIXED,PER_EVENT = {sw['spin_hop_us']} µs), run right "
        "after the floor in each pass. p50 receive − ts, median [min–max] over the reps, ms; differences of the "
        "medians.",
        "",
        "| load | floor p50 | spin hop p50 | model hop p50 | spin hop − floor | model hop − spin hop "
        "| idle CPU floor / spin hop |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sw["loads"]:
        if "spin_hop" not in row:
            continue
        f, sp = (row[k]["receive_minus_ts_ms"].get("p50") for k in ("floor", "spin_hop"))
        m = row["model_hop"]["receive_minus_ts_ms"].get("p50") if "model_hop" in row else None
        cells = [f"{row['load_percent']:g} %", _cell(f), _cell(sp), _cell(m)]
        cells.append(_ms(sp["median"] - f["median"]) if f and sp else "—")
        cells.append(_ms(m["median"] - sp["median"]) if m and sp else "—")
        cells.append(f"{_idle(row['floor']['idle_cpu_percent'])} / {_idle(row['spin_hop']['idle_cpu_percent'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _model_hop_lines(sw: dict[str, Any]) -> list[str]:
    """Per load: floor, model hop and worker p50 side by side, and the worker's extra p50 split in two."""
    lines = [
        "",
        f"Model hop at every point ({sw['model_hop_path']}), run between the floor and the worker in each pass. "
        "p50 receive − ts, median [min–max] over the reps, ms; the splits are of the medians.",
        "",
        "| load | floor p50 | model hop p50 | worker p50 | model hop − floor | worker − model hop "
        "| model hop publish − ts p50 | idle CPU model hop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sw["loads"]:
        if "model_hop" not in row:
            continue
        f, m, w = (row[k]["receive_minus_ts_ms"].get("p50") for k in ("floor", "model_hop", "worker"))
        split = (
            [_ms(m["median"] - f["median"]), _ms(w["median"] - m["median"])] if f and m and w else ["—", "—"]
        )
        cells = [f"{row['load_percent']:g} %", _cell(f), _cell(m), _cell(w), *split]
        hop = row["model_hop"]
        cells += [_cell(hop["publish_minus_ts_ms"].get("p50")), _idle(hop["idle_cpu_percent"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "—"
    if s["n"] == 1:
        return _ms(s["median"])
    return f"{_ms(s['median'])} [{_ms(s['min'])}–{_ms(s['max'])}]"


def _idle(s: dict[str, float] | None) -> str:
    return "—" if s is None else f"{s['median']:g} %"


def _write_cost_lines(wc: dict[str, Any]) -> list[str]:
    """The changelog write cost per event (another part's figures), live and draining, against its baseline."""
    rows = [("live (paced load)", "live_bytes_per_event", "baseline_live_bytes_per_event"),
            ("drain (backlog)", "drain_bytes_per_event", "baseline_drain_bytes_per_event")]
    lines = ["", "### Changelog write cost (`write-cost`)", "", "| case | bytes/event | baseline | now / baseline |",
             "|---|---|---|---|"]
    for label, now, base in rows:
        lines.append(f"| {label} | {_n(wc.get(now))} | {_n(wc.get(base))} | {ratio(wc.get(now), wc.get(base)) or ''} |")
    live, drain = wc.get("live_vector_bytes_per_event"), wc.get("drain_vector_bytes_per_event")
    if live:  # runs before the binary encodings measured JSON only (json_vector_bytes_per_event)
        lines += ["", "`user-vectors` bytes per event by `DUPN_VECTOR_ENCODING` (the value; json = contract v1):", "",
                  "| case | " + " | ".join(live) + " |", "|---|" + "---|" * len(live)]
        for label, per in (("live (paced load)", live), ("drain (backlog)", drain or {})):
            lines.append(f"| {label} | " + " | ".join(_n(per.get(enc)) for enc in live) + " |")
    return lines


def _target_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["", "### Targets (issue 15)", "", "| target | measured | status | margin |", "|---|---|---|---|"]
    for v in targets:
        status = "met" if v["met"] else "**missed**"
        lines.append(f"| {v['target']} | {v['measured']} | {status} | {v['margin']} |")
    return lines


def _rows(p: dict[str, Any], r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    if "ceiling-a" in p:
        rows.append(("1", "A: bare aiokafka consume → JSON → produce" + _reps(p["ceiling-a"]), _rate(p["ceiling-a"]),
                     "1"))
    if "ceiling-b" in p:
        rows.append(("2", "B: Faust agent, same work, the worker's Faust settings", _rate(p["ceiling-b"]),
                     _r("B / A", r.get("b_over_a"))))
    if "worker" in p:
        rows.extend(_worker_rows(p["worker"], r))
    if "freshness" in p:
        rows.extend(_freshness_rows(p["freshness"]))
    if "encoder" in p:
        rows.extend(_encoder_rows(p["encoder"]))
    if "state" in p or "recovery" in p:
        rows.extend(_state_rows(p.get("state"), p.get("recovery", {}).get("state")))
    if "recovery" in p:
        rows.extend(_recovery_rows(p["recovery"]))
    if "query" in p:
        q = p["query"]
        rows.append(("8", f"GET /users/{{id}}/vector, {q['target_requests_per_s']:g} requests/s open loop, "
                     f"{q['requests']:,} requests, {q['errors']} errors: p50 / p99",
                     f"{_ms(q['latency_ms']['p50'])} / {_ms(q['latency_ms']['p99'])} ms",
                     f"achieved {q['achieved_requests_per_s']:g} requests/s"))
    if "scaling" in p:
        s = p["scaling"]
        split = " + ".join(f"{w.get('events_applied', 0):,.0f}" for w in s["workers_2"]["per_worker"])
        rows.append(("9", f"1 vs 2 workers on {s['partitions']} partitions (events applied per worker: {split})",
                     f"{_n(s['workers_1']['events_per_s'])} / {_n(s['workers_2']['events_per_s'])} events/s",
                     _r("2 / 1", s.get("two_over_one"))))
    return rows


def _worker_rows(w: dict[str, Any], r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    inc = w["incremental"]
    pairs = w.get("over_a_pairs")
    per_pair = f"; per pair 3 / A median {pairs['median']} ({pairs['min']}–{pairs['max']})" if pairs else ""
    rows = [
        ("3", f"worker, incremental (R = {inc['reanchor_every']}), roles {inc['roles']}{_reps(inc)}", _rate(inc),
         "; ".join(x for x in (_r("3 / A", r.get("worker_incremental_over_a")) + per_pair,
                               _r("3 / B", r.get("worker_incremental_over_b"))) if x)),
        ("3", "worker, exact", _rate(w["exact"]), _r("incremental / exact", w.get("incremental_over_exact"))),
    ]
    ev = w.get("evicting")
    if ev:
        rows.append(("3", f"{ev['users']:,} users (windows fill and evict): incremental / exact",
                     f"{_n(ev['incremental']['events_per_s'])} / {_n(ev['exact']['events_per_s'])} events/s",
                     _r("incremental / exact", ev.get("incremental_over_exact"))))
    return rows


def _freshness_rows(f: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    head = (f"at {_n(f['target_events_per_s'])} events/s ({f['rate_source']}), {f['steady_s']:g} s after "
            f"{f['warmup_s']:g} s warm-up, {f['events_measured']:,} events ({f['events_uncovered']:,} never covered)")
    pace = (f"achieved {_n(f['achieved_events_per_s'])} events/s = {f['achieved_over_target']} × target; "
            f"producer at most {_ms(f['producer_max_behind_ms'])} ms behind; idle CPU {_pc(f.get('idle_cpu_percent'))}")
    return [
        ("4", f"freshness per event {head}: receive − event ts, p50 / p99 / p999", _pct(f.get("receive_minus_ts_ms")),
         pace),
        ("4", "same events: publish (updated_at) − event ts, p50 / p99 / p999", _pct(f.get("publish_minus_ts_ms")),
         ""),
        *_floor_rows(f),
    ]


def _floor_rows(f: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    floor = f.get("floor")
    if not floor:
        return []
    over = f.get("receive_minus_ts_over_floor") or {}
    return [(
        "4",
        "floor, same load through one bare aiokafka hop, one document per user per batch "
        f"(ops.bench_apps hop), per event ({floor['events_uncovered']:,} never covered): receive − event ts, "
        "p50 / p99 / p999",
        _pct(floor.get("receive_minus_ts_ms")),
        f"worker / floor = {over.get('p50')} / {over.get('p99')} / {over.get('p999')}; "
        f"idle CPU {_pc(floor.get('idle_cpu_percent'))}",
    )]


def _encoder_rows(e: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    observed = ", ".join(f"{k} {v:g}" for k, v in e.get("batches_observed_in_worker", {}).items())
    for row in e["rows"]:
        rows.append((
            "5",
            f"encoder, batch {row['batch']}: incremental step / step + re-pool / exact 100-window / bare torch cell",
            f"{row['incremental_step_us_per_event']} / {row['incremental_step_and_repool_us_per_event']} / "
            f"{row['exact_recompute_us_per_event']} / {row['bare_torch_cell_us_per_event']} µs per event",
            f"exact / step = {row['exact_over_step']}; exact / (step + re-pool) = {row['exact_over_step_and_repool']}",
        ))
    if observed:
        rows.append(("5", "events per encoder batch the worker reported (mean)", observed, ""))
    return rows


def _state_rows(state: dict[str, Any] | None, worker: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    rows = []
    if state:
        rows.append(("6", f"state per user, encoded (in process, {state['events']:,} events over "
                     f"{state['users']:,} users)", f"{_n(state['state_bytes_per_user_mean'])} bytes", ""))
        rows.append(("6", "full-state bytes written per event, in process (local RocksDB; the changelog's own "
                     "figure is under write-cost)",
                     f"{_n(state['changelog_bytes_per_event'])} bytes",
                     f"{state['changelog_bytes_per_event_over_state']} × a user's state"))
    if worker:
        rows.append(("6", "worker: RocksDB dir per user (after stop) / changelog per user after compaction",
                     f"{_n(worker['rocksdb_dir_bytes_per_user'])} / "
                     f"{_n(worker['changelog_bytes_per_user_after_compaction'])} bytes", ""))
        rows.append(("6", f"worker: changelog bytes written per event ({worker['changelog_records']:,} records)",
                     f"{_n(worker['changelog_bytes_written_per_event'])} bytes",
                     f"{worker.get('changelog_records_per_event', '–')} records per event"))
    return rows


def _recovery_rows(rec: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    restore = f"{rec['restore_s']:g} s" if rec.get("restore_s") is not None else "not found in the log"
    return [
        ("7", f"recovery into an empty data dir, {rec['users']:,} users: restore phase (bulk + Faust, worker log)",
         f"{restore} = {_n(rec.get('users_per_s_restore'))} users/s ({_n(rec.get('records_per_s_restore'))} "
         "records/s)", _r("restore / drain time", rec.get("restore_over_drain_time"))),
        ("7", "same: process start → /healthz 200",
         f"{rec['start_to_ready_s']:g} s = {_n(rec['users_per_s_start_to_ready'])} users/s",
         f"users served with their last event after the restore: {rec['recovered_users']:,} of {rec['users']:,}"),
        *_read_floor_rows(rec),
    ]


def _read_floor_rows(rec: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    floor = rec.get("read_floor")
    if not floor:
        return []
    return [(
        "7", "floor: the same changelog read by bare aiokafka (last value per key, nothing written)",
        f"{floor['seconds']:g} s = {_n(floor['users_per_s'])} users/s ({_n(floor['records_per_s'])} records/s)",
        _r("restore / floor time", rec.get("restore_over_read_floor_time")),
    )]


def _reps(part: dict[str, Any]) -> str:
    """', median of N runs (min–max)' when the figure was repeated."""
    s = part.get("spread")
    if not s or s["n"] < 2:
        return ""
    return f", median of {s['n']} interleaved runs ({_n(s['min'])}–{_n(s['max'])})"


def _rate(part: dict[str, Any]) -> str:
    return f"{_n(part['events_per_s'])} events/s"


def _n(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _ms(x: float) -> str:
    return f"{x:,.1f}"


def _pct(p: dict[str, float] | None) -> str:
    return "— (no event covered)" if p is None else f"{_ms(p['p50'])} / {_ms(p['p99'])} / {_ms(p['p999'])} ms"


def _pc(x: float | None) -> str:
    return "—" if x is None else f"{x:g} %"


def _r(label: str, value: float | None) -> str:
    return f"{label} = {value}" if value is not None else ""

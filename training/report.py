"""The evaluation report: per-seed results aggregated across seeds, the talk's claims checked.

Aggregation (k seeds): a metric is reported as the mean over seeds ± its standard error across
seeds, s/√k (s the sample standard deviation of the k per-seed values). A paired difference
a − b is the mean of the per-seed differences; its standard error is the larger of the
across-seed SE and the pooled per-seed user-bootstrap SE, √(mean(se_i²)/k). A difference
within two such SEs is a tie. Nothing in the prose is generated from the outcome beyond
stating which way each measured comparison went.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoder.explain import AGE_BUCKET_LABELS, AttentionTable
from training.metrics import BASELINE_NAMES, FOUR_TASKS, METRIC_OF, N_BOOT, comparison_text, outcome_of
from training.served import OFFLINE_UNKNOWN, SERVED, SERVED_UNKNOWN
from training.simulator import EVENT_TYPES

ORACLE, ORACLE_STATIC = "oracle", "oracle (static effects only)"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error across seeds (NaN SE for one seed)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not len(x):
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


@dataclass(frozen=True)
class Diff:
    """a − b on one task, aggregated across seeds."""

    a: str
    b: str
    task: str
    a_value: float
    b_value: float
    delta: float
    se: float  # max(across-seed SE, pooled bootstrap SE)
    se_seeds: float
    se_boot: float
    seeds: int

    @property
    def outcome(self) -> str:
        return outcome_of(self.delta, self.se)

    def text(self) -> str:
        return comparison_text(self.a, self.a_value, self.b, self.b_value, self.delta, self.se)


def aggregate_diffs(per_seed: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Diff]:
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in per_seed:
        for c in run["comparisons"]:
            groups[(c["a"], c["b"], c["task"])].append(c)
    out = {}
    for key, cs in groups.items():
        k = len(cs)
        delta, se_seeds = mean_se([c["delta"] for c in cs])
        se_boot = math.sqrt(float(np.mean([c["se"] ** 2 for c in cs])) / k)
        se = max(se_boot, se_seeds) if not math.isnan(se_seeds) else se_boot
        a_val = float(np.mean([c["a_value"] for c in cs]))
        b_val = float(np.mean([c["b_value"] for c in cs]))
        out[key] = Diff(*key, a_val, b_val, delta, se, se_seeds, se_boot, k)
    return out


def aggregate_rows(per_seed: Sequence[Mapping[str, Any]], section: str = "models") -> dict[str, dict[str, Any]]:
    """{row: {metric: (mean, se across seeds, mean bootstrap se)}} over the seeds that have the row."""
    names: list[str] = []
    for run in per_seed:
        names += [n for n in run[section] if n not in names]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for t in (*FOUR_TASKS, "shop"):
            m = METRIC_OF[t]
            vals = [run[section][name][m] for run in per_seed if name in run[section] and m in run[section][name]]
            if vals:
                boots = [
                    run[section][name][m + "_se"]
                    for run in per_seed
                    if name in run[section] and m in run[section][name]
                ]
                row[m] = (*mean_se(vals), float(np.mean(boots)))
        secs = [run[section][name].get("train_seconds") for run in per_seed if name in run[section]]
        if secs and secs[0] is not None:
            row["train_seconds"] = float(np.mean([s for s in secs if s is not None]))
        out[name] = row
    return out


def _cell(v: tuple[float, float, float] | None) -> str:
    if v is None:
        return "–"
    mean, se, boot = v
    if math.isnan(se):
        return f"{mean:.4f} (boot ± {boot:.4f})"
    return f"{mean:.4f} ± {se:.4f}"


def _status(outcomes: Sequence[str], ok: tuple[str, ...] = ("higher",)) -> str:
    """agrees: every comparison goes the talk's way; partly: the rest tie; differs: any goes against it."""
    if not outcomes or "n/a" in outcomes:
        return "not run"
    if any(o not in (*ok, "tie") for o in outcomes):
        return "differs"
    if all(o in ok for o in outcomes):
        return "agrees"
    return "partly (rest tied)" if any(o in ok for o in outcomes) else "tie"


def claims(
    diffs: Mapping[tuple[str, str, str], Diff],
    attention: Mapping[str, Any] | None,
    per_seed: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, str]]:
    """The talk's claims (§四), each with its status on these numbers."""
    out: list[dict[str, str]] = []

    def add(exp: str, text: str, keys: Sequence[tuple[str, str, str]], ok: tuple[str, ...] = ("higher",)) -> None:
        found = [diffs[k] for k in keys if k in diffs]
        status = _status([d.outcome for d in found], ok) if len(found) == len(keys) else "not run"
        out.append({"experiment": exp, "claim": text, "status": status, "numbers": "; ".join(d.text() for d in found)})

    for t in FOUR_TASKS:
        m = METRIC_OF[t]
        add("models", f"DUPN-all beats every baseline ({m})", [("DUPN-all", b, t) for b in BASELINE_NAMES])
        add("models", f"CNN-max is the best baseline ({m})", [("CNN-max", "Wide", t), ("CNN-max", "Wide&Deep", t)])
        add("models", f"behavior properties help: bplstm and bpatt beat nobp ({m})",
            [("DUPN-bplstm", "DUPN-nobp", t), ("DUPN-bpatt", "DUPN-nobp", t)])  # fmt: skip
        add(
            "models",
            f"DUPN-all is the best DUPN variant ({m})",
            [("DUPN-all", f"DUPN-{v}", t) for v in ("nobp", "bplstm", "bpatt")],
        )
        add("multitask", f"multi-task beats single-task on {t} ({m})", [("DUPN-all", f"DUPN-all single-{t}", t)])
    add("transfer", "FT has the highest final shop AUC", [("FT", m, "shop") for m in ("RS", "RA", "RT")])
    if attention is not None:
        out.append(attention_claim(attention, per_seed))
    return out


def attention_means(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Attention by type × age bucket pooled over seeds (count-weighted mean of α × window length)."""
    sums = np.zeros((len(EVENT_TYPES), len(AGE_BUCKET_LABELS)))
    counts = np.zeros_like(sums)
    for run in per_seed:
        mean, cnt = np.asarray(run["attention"]["mean"]), np.asarray(run["attention"]["counts"], dtype=np.float64)
        sums += np.where(cnt > 0, mean * cnt, 0.0)
        counts += cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        by_type = sums.sum(1) / np.maximum(counts.sum(1), 1)
    return {"mean": mean, "counts": counts, "by_type": dict(zip(EVENT_TYPES, by_type.tolist(), strict=True))}


def attention_table(per_seed: Sequence[Mapping[str, Any]]) -> AttentionTable:
    """The pooled attention as an ``encoder.explain.AttentionTable`` (for the figure)."""
    att = attention_means(per_seed)
    counts = att["counts"].astype(np.int64)
    return AttentionTable(
        sums=np.nan_to_num(att["mean"]) * counts, counts=counts, users=sum(r["attention"]["users"] for r in per_seed)
    )


def attention_claim(att: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Buys weigh most: per seed, buy's mean normalised attention minus the highest other type's,
    averaged over seeds ± SE across seeds; agrees if > 2 SE, differs if < -2 SE."""
    margins = []
    for run in per_seed:
        one = attention_means([run])["by_type"]
        margins.append(one["buy"] - max(v for k, v in one.items() if k != "buy"))
    m, se = mean_se(margins)
    status = "tie" if math.isnan(se) or abs(m) <= 2 * se else ("agrees" if m > 0 else "differs")
    nums = ", ".join(f"{k} {v:.2f}" for k, v in att["by_type"].items())
    return {"experiment": "attention", "claim": "buys get the most attention", "status": status,
            "numbers": f"mean α × window length by type (1 = uniform): {nums}; buy − next type per seed: "
                       f"{m:+.3f} ± {se:.3f}"}  # fmt: skip


def headroom(rows: Mapping[str, Mapping[str, Any]], per_seed: Sequence[Mapping[str, Any]]) -> list[str]:
    """Fraction of the chance-to-oracle gap each model closes: (m − chance) / (oracle − chance)."""
    chance = {"ctr": 0.5, "l2r": 0.5, "talent": 0.5, "ppp": float(np.mean([r["ppp_majority_acc"] for r in per_seed]))}
    lines = [
        "| model | " + " | ".join(f"{t}: of oracle gap | {t}: of static-oracle gap" for t in FOUR_TASKS) + " |",
        "|---|" + "---|---|" * len(FOUR_TASKS),
    ]
    names = [n for n in (*BASELINE_NAMES, "DUPN-all", SERVED) if n in rows]
    for name in names:
        cells = []
        for t in FOUR_TASKS:
            m = METRIC_OF[t]
            for o in (ORACLE, ORACLE_STATIC):
                if m in rows[name] and m in rows.get(o, {}):
                    gap = rows[o][m][0] - chance[t]
                    cells.append(f"{(rows[name][m][0] - chance[t]) / gap:.1%}" if gap > 0 else "–")
                else:
                    cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    oracle_cells = []
    for t in FOUR_TASKS:
        m = METRIC_OF[t]
        oracle_cells += [f"{rows[o][m][0]:.4f}" if m in rows.get(o, {}) else "–" for o in (ORACLE, ORACLE_STATIC)]
    lines.append("| *oracle value* | " + " | ".join(oracle_cells) + " |")
    lines.append("| *chance* | " + " | ".join(f"{chance[t]:.4f} | {chance[t]:.4f}" for t in FOUR_TASKS) + " |")
    return lines


def targets(diffs: Mapping[tuple[str, str, str], Diff], res: Mapping[str, Any]) -> list[str]:
    """The issue's acceptance targets, each met or missed with the margin."""
    lines = ["| target | status | measured |", "|---|---|---|"]
    seeds = len(res["seeds"])
    lines.append(f"| ≥ 3 seeds | {'met' if seeds >= 3 else 'missed'} | {seeds} |")
    for t in ("ctr", "talent", "ppp"):
        ds = [diffs[("DUPN-all", b, t)] for b in BASELINE_NAMES if ("DUPN-all", b, t) in diffs]
        worst = min(ds, key=lambda d: d.delta - 2 * d.se) if ds else None
        if worst is None:
            continue
        ok = all(d.delta > 2 * d.se for d in ds)
        margin = worst.delta - 2 * worst.se
        lines.append(
            f"| DUPN-all ahead of every baseline on {METRIC_OF[t]} by > 2 SE | {'met' if ok else 'missed'} | "
            f"closest: {worst.text()}; Δ − 2 SE = {margin:+.4f} |"
        )
    behind = [
        t for t in FOUR_TASKS if (d := diffs.get(("DUPN-all", f"DUPN-all single-{t}", t))) and d.outcome == "lower"
    ]
    lines.append(
        f"| multi-task not behind single-task on ≥ 3 of 4 tasks | {'met' if len(behind) <= 1 else 'missed'} | "
        f"behind (> 2 SE) on: {', '.join(behind) or 'none'} |"
    )
    for t in FOUR_TASKS:
        d = diffs.get((SERVED, "DUPN-all", t))
        if d is None:
            continue
        within = abs(d.delta) <= d.se
        lines.append(
            f"| served-path row within 1 SE of the offline row ({METRIC_OF[t]}) | {'met' if within else 'missed'} | "
            f"{d.text()}; |Δ| − SE = {abs(d.delta) - d.se:+.4f} |"
        )
    return lines


def _header(
    res: Mapping[str, Any], plan: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]], k: int
) -> list[str]:
    tr, sim, fr = plan["train"], plan["sim"], plan["fractions"]
    first = per_seed[0]
    return [
        f"Seeds: {res['seeds']} · quick: {res['quick']} · wall time: {res['wall_seconds']:.0f} s · "
        f"torch threads: {res['threads']}  ",
        f"World per seed: {sim['n_users']} users ({fr[0]:.0%} train / {fr[1]:.0%} validation / {fr[2]:.0%} test, "
        f"disjoint), window {plan['window']}, {tr['steps']} steps × {tr['batch_size']} user windows per task.  ",
        f"Training settings (every model): weighting `{tr['weighting']}`, gradients `{tr['grad_mode']}`, schedule "
        f"`{tr['schedule']}`, profile dropout {tr['profile_dropout']}, lr {tr['lr']} / {tr['embedding_lr']} (ids).  ",
        f"DUPN runs its LSTM over the incremental policy's anchored runs (R = {plan['reanchor']}; baselines see the "
        f"same last-{plan['window']} window); query in DUPN's representation: {plan['query_in_rep']}; "
        f"encoder changes (every model): {_encoder_changes(plan)}.  ",
        f"Test sizes (seed {first['seed']}): examples {first['sizes']['test_examples']}, "
        f"users {first['sizes']['test_users']}.  ",
        f"Cells: mean over {k} seeds ± standard error across seeds. Differences: mean paired difference ± "
        "max(across-seed SE, pooled per-seed user-bootstrap SE); |Δ| ≤ 2 SE is a tie. Protocol: docs/eval.md.",
    ]


def render_markdown(res: Mapping[str, Any]) -> str:
    per_seed = res["per_seed"]
    rows = aggregate_rows(per_seed)
    single = aggregate_rows(per_seed, "single")
    diffs = aggregate_diffs(per_seed)
    att = attention_means(per_seed)
    plan = res["plan"]
    k = len(res["seeds"])
    out = [
        "# DUPN offline evaluation (simulated data)",
        "",
        f"Command: `{res['command']}`  ",
        *_header(res, plan, per_seed, k),
        "",
        "## 1. Models (multi-task on 4 tasks), oracles and the served path",
        "",
        "| model | " + " | ".join(METRIC_OF[t] for t in FOUR_TASKS) + " | train s |",
        "|---|" + "---|" * (len(FOUR_TASKS) + 1),
    ]
    for name, row in rows.items():
        secs = f"{row['train_seconds']:.0f}" if "train_seconds" in row else "–"
        out.append(f"| {name} | " + " | ".join(_cell(row.get(METRIC_OF[t])) for t in FOUR_TASKS) + f" | {secs} |")
    out += [
        "",
        f"*{SERVED}*: vectors produced by `streams.updater.VectorUpdater` (default policy: incremental, R = "
        f"{plan['reanchor']}) over the test users' events, each event carrying its user's profile (the events "
        "contract's optional `profile`), re-pooled with the query and the user's profile as "
        "`GET /users/{id}/vector?query=` does, as of the example's time; the heads of DUPN-all on top. "
        f"*{SERVED_UNKNOWN}*: the same worker states re-pooled with the profile unknown (a producer that sends "
        f"no profile). *{OFFLINE_UNKNOWN}*: the training code path with every profile set to unknown. "
        "*oracle*: the simulator's "
        "planted probabilities (click: the multinomial logit of the slate; talent: the follow affinity; "
        "PPP: the latent "
        "level itself, so 1.0 by construction); *static effects only*: without click momentum, buy suppression and the "
        "wishlist (cart/fav) re-shows.",
        "",
        "## 2. Oracle headroom",
        "",
        "Share of the chance-to-oracle gap each model closes, (model − chance) / (oracle − chance), seed means.",
        "",
        *headroom(rows, per_seed),
        "",
        "## 3. Multi-task vs single-task (equal steps per task)",
        "",
        "| model | task | single-task | multi-task | multi − single |",
        "|---|---|---|---|---|",
    ]
    for key, d in diffs.items():
        if key[1].endswith(f"single-{key[2]}"):
            out.append(
                f"| {d.a} | {d.task} | {d.b_value:.4f} | {d.a_value:.4f} | {d.delta:+.4f} ± {d.se:.4f} ({d.outcome}) |"
            )
    out += ["", "## 4. Served path vs offline", "", "| task | comparison | Δ ± SE | outcome |", "|---|---|---|---|"]
    for key, d in diffs.items():
        if key[0] in (SERVED, SERVED_UNKNOWN):
            out.append(f"| {d.task} | {d.a} − {d.b} | {d.delta:+.4f} ± {d.se:.4f} | {d.outcome} |")
    out += [
        "",
        "## 5. Targets of issue 13",
        "",
        *targets(diffs, res),
        "",
        f"Served-vs-trained cosine (`dupn drift` on seed {per_seed[0]['seed']}'s DUPN-all): results/drift.md.",
        "",
    ]
    out += ["## 6. Claims of the talk", "", "| experiment | claim | status | numbers |", "|---|---|---|---|"]
    for c in claims(diffs, att, per_seed):
        out.append(f"| {c['experiment']} | {c['claim']} | {c['status']} | {c['numbers']} |")
    out += [
        "",
        _not_run_note(plan),
        "",
        "## 7. Attention by behavior type × age (DUPN-all, test users, every seed)",
        "",
        "Mean of α × window length per behavior (1.00 = uniform), each user as of their last behavior, no query, "
        "the user's window (`encoder.explain.attention_report`); figure: results/attention.png.",
        "",
        "| type | " + " | ".join(AGE_BUCKET_LABELS) + " | all ages |",
        "|---|" + "---|" * (len(AGE_BUCKET_LABELS) + 1),
    ]
    for i, name in enumerate(EVENT_TYPES):
        cells = ["·" if np.isnan(x) else f"{x:.2f}" for x in att["mean"][i]]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {att['by_type'][name]:.2f} |")
    out.append(
        "| behaviors | " + " | ".join(str(int(c)) for c in att["counts"].sum(0)) + f" | {int(att['counts'].sum())} |"
    )
    if single:
        out += ["", "## Single-task rows", "", "| model | task | metric |", "|---|---|---|"]
        for name, row in single.items():
            for t in FOUR_TASKS:
                if METRIC_OF[t] in row:
                    out.append(f"| {name} | {t} | {_cell(row[METRIC_OF[t]])} |")
    return "\n".join(out) + "\n"


def _not_run_note(plan: Mapping[str, Any]) -> str:
    """Why a claim says *not run*, read from the plan (the quick plan switches both off; ``--set`` can too)."""
    off = []
    if not plan.get("variants"):
        off.append("the DUPN ablations (`variants` false)")
    if not plan.get("transfer_steps"):
        off.append("the transfer experiment (`transfer_steps` 0)")
    if not off:
        return "*not run*: none of this plan's experiments is switched off."
    return ("*not run*: that experiment is not part of this command's plan: " + " and ".join(off)
            + " are switched off, to fit 3 seeds at window 100 on 2 cores.")


def write_report(res: Mapping[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out_dir / "eval.md").write_text(render_markdown(res))


def render_validation(runs: Sequence[Mapping[str, Any]], command: str) -> str:
    """results/validation.md: DUPN-all's validation metrics under each training choice (one seed)."""
    rows: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        rows.update(run["rows"])
    head = [
        "# Training choices on the validation users",
        "",
        f"Command: `{command}`  ",
        "DUPN-all, quick world (3000 users, window 100, 250 steps × 64 user windows per task), seed 0, scored on "
        "the validation users only (± user-bootstrap SE, 200 resamples). Every choice after the first also has the "
        "query in DUPN's representation. Final training loss: mean of the last 20 steps.",
        "",
        "| choice | " + " | ".join(METRIC_OF[t] for t in FOUR_TASKS) + " | final train loss | train s |",
        "|---|" + "---|" * (len(FOUR_TASKS) + 2),
    ]
    for name, row in rows.items():
        cells = [
            f"{row[METRIC_OF[t]]:.4f} ± {row[METRIC_OF[t] + '_se']:.4f}" if METRIC_OF[t] in row else "–"
            for t in FOUR_TASKS
        ]
        loss = ", ".join(f"{t} {v:.3f}" for t, v in row.get("final_train_loss", {}).items())
        head.append(f"| {name} | " + " | ".join(cells) + f" | {loss} | {row.get('train_seconds', '–')} |")
    return "\n".join(head) + "\n"


# -- results/budget.md: learning curves on the validation users ---------------------------


def _pm(value: float, se: float) -> str:
    return f"{value:.4f} ± {se:.4f}"


def _z(delta: float, se: float) -> str:
    return f"{delta / se:+.1f}" if se > 0 and not math.isnan(se) else "–"


def _beyond(delta: float, se: float) -> str:
    o = outcome_of(delta, se)
    return "n/a" if o == "n/a" else ("no" if o == "tie" else "yes")


def _budget_best(rows: Mapping[tuple[str, int], Mapping[str, Any]], step: int, task: str) -> str | None:
    """The baseline with the highest validation metric on ``task`` at ``step`` (None: no baseline scored)."""
    m = METRIC_OF[task]
    cands = [b for b in BASELINE_NAMES if (b, step) in rows]
    return max(cands, key=lambda b: rows[(b, step)][m]) if cands else None


def budget_facts(res: Mapping[str, Any]) -> list[str]:
    """The measured-facts lines of results/budget.md: numbers and > 2 SE flags, no outcome-picked prose."""
    rows = {(r["model"], r["step"]): r for r in res["rows"]}
    comps = {(c["kind"], c["a"], c["b"], c["a_step"], c["task"]): c for c in res["comparisons"]}
    steps = sorted({s for _, s in rows})
    models = list(dict.fromkeys(m for m, _ in rows))
    out: list[str] = []
    for t in FOUR_TASKS:
        parts = []
        for s in steps:
            best = _budget_best(rows, s, t)
            c = comps.get(("vs baseline", "DUPN-all", best, s, t)) if best else None
            if c is None:
                continue
            parts.append(
                f"{s}: {c['delta']:+.4f} ± {c['se']:.4f} vs {best} ({_z(c['delta'], c['se'])} SE, "
                f"beyond 2 SE: {_beyond(c['delta'], c['se'])})"
            )
        if parts:
            out.append(f"- **{METRIC_OF[t]}, DUPN-all − best baseline** at step " + "; ".join(parts) + ".")
    first, last = (steps[0], steps[-1]) if steps else (0, 0)
    for t in FOUR_TASKS:
        parts = []
        for m in models:
            c = comps.get(("last vs first", m, m, last, t))
            if c is not None:
                parts.append(f"{m} {c['delta']:+.4f} ± {c['se']:.4f} ({_beyond(c['delta'], c['se'])})")
        if parts and first != last:
            out.append(f"- **{METRIC_OF[t]}, step {last} − step {first}** (beyond 2 SE?): " + ", ".join(parts) + ".")
    oracle = res.get("oracle", {}).get("oracle", {})
    static = res.get("oracle", {}).get("oracle (static effects only)", {})
    if oracle and steps:
        full, stat = oracle["ctr_auc"], static.get("ctr_auc", float("nan"))
        shares = []
        for m in models:
            if (m, last) in rows:
                v = rows[(m, last)]["ctr_auc"]
                shares.append(f"{m} {v:.4f} ({(v - 0.5) / (full - 0.5):.0%} of the chance-to-oracle gap, "
                              f"{(v - 0.5) / (stat - 0.5):.0%} of the chance-to-static-oracle gap)")
        out.append(
            f"- **Oracle on these validation users:** CTR AUC {full:.4f} (static effects only {stat:.4f}); "
            f"at step {last}: " + "; ".join(shares) + "."
        )
    for t in FOUR_TASKS:
        m = METRIC_OF[t]
        peaks = []
        for name in models:
            curve = [(s, rows[(name, s)][m]) for s in steps if (name, s) in rows]
            if len(curve) > 1:
                peaks.append(f"{name} {max(curve, key=lambda x: x[1])[0]}")
        if peaks:
            out.append(f"- **{m}, checkpoint with the highest value:** " + ", ".join(peaks) + ".")
    contexts = res.get("sizes", {}).get("train_contexts", {})
    if contexts and steps:
        batch = res["train"]["batch_size"]
        passes = "; ".join(
            f"step {s}: " + ", ".join(f"{t} {s * batch / contexts[t]:.1f}" for t in FOUR_TASKS if t in contexts)
            for s in dict.fromkeys((first, last))
        )
        out.append(
            f"- **Passes over the training contexts** ({batch} per task and step, the same training users "
            f"throughout): {passes}."
        )
    unfinished = [m for m, e in res.get("models", {}).items() if res["steps"] not in e.get("checkpoints_done", [])]
    if unfinished:
        out.append(f"- **Not finished** (rows so far only): {', '.join(unfinished)}.")
    return out


def render_budget(res: Mapping[str, Any]) -> str:
    """results/budget.md from ``dupn validate --curve``'s JSON (:func:`training.experiments.run_curve`)."""
    rows = {(r["model"], r["step"]): r for r in res["rows"]}
    steps = sorted({s for _, s in rows})
    models = list(dict.fromkeys(m for m, _ in rows))
    train, sim = res["train"], res["plan"]["sim"]
    comps = {(c["kind"], c["a"], c["b"], c["a_step"], c["task"]): c for c in res["comparisons"]}
    val_users = res["sizes"]["users"]["val"]
    lines = [
        "# Learning curves on the validation users: does the step budget hold DUPN back?",
        "",
        "Commands (wall time each):",
        "",
        *[f"- `{i['command']}` ({i['wall_seconds']:.0f} s)" for i in res["invocations"]],
        *[line for n in res.get("notes", []) for line in ("", str(n))],
        "",
        f"{'Quick' if res.get('quick', True) else 'Full'} world ({sim['n_users']} users, window "
        f"{res['plan']['window']}, {train['batch_size']} user windows "
        f"per task and step), seed {res['seed']}. Every model trained once for {res['steps']} steps and scored on "
        f"the {val_users} validation users every {res['every']} steps (scoring in eval mode without gradients, "
        "outside training's RNG stream: the weights are those of an unhooked run). Settings: results/eval.md's, "
        f"the CHOICES row \"{res['choice']}\" (weighting `{train['weighting']}`, profile dropout "
        f"{train['profile_dropout']}, query in the representation; DUPN trains on anchored runs "
        f"R = {train['anchor_every']}, the baselines on the window as in `run_seed`; encoder changes: "
        f"{_encoder_changes(res['plan'])}); only the step count differs "
        f"from the eval (250). ± is the user-bootstrap SE ({N_BOOT} resamples of the validation "
        "users). Train loss: mean over the 20 steps up to the checkpoint (training mode: dropout and profile "
        "dropout on). The test users are not touched.",
        "",
        "## Validation metrics by checkpoint",
        "",
        "| model | step | " + " | ".join(METRIC_OF[t] for t in FOUR_TASKS) + " | train loss, last 20 steps | train s |",
        "|---|---|" + "---|" * (len(FOUR_TASKS) + 2),
    ]
    for m in models:
        for s in steps:
            r = rows.get((m, s))
            if r is None:
                continue
            cells = [_pm(r[METRIC_OF[t]], r[METRIC_OF[t] + "_se"]) for t in FOUR_TASKS]
            loss = ", ".join(f"{t} {v:.3f}" for t, v in r["train_loss_last20"].items())
            lines.append(f"| {m} | {s} | " + " | ".join(cells) + f" | {loss} | {r['train_seconds']:.0f} |")
    for label, r in res.get("oracle", {}).items():
        lines.append(f"| {label} | – | " + " | ".join(_pm(r[METRIC_OF[t]], r[METRIC_OF[t] + "_se"])
                                                       for t in FOUR_TASKS) + " | – | – |")
    lines += [
        "",
        "## DUPN-all − each baseline, per checkpoint",
        "",
        "Δ ± SE of the difference from a *paired* user bootstrap (both models' scores on the same resamples of "
        "the validation users); **bold** where |Δ| > 2 SE.",
        "",
        "| task | step | " + " | ".join(f"− {b}" for b in BASELINE_NAMES) + " | best baseline |",
        "|---|---|" + "---|" * (len(BASELINE_NAMES) + 1),
    ]
    for t in FOUR_TASKS:
        for s in steps:
            cells = []
            for b in BASELINE_NAMES:
                c = comps.get(("vs baseline", "DUPN-all", b, s, t))
                if c is None:
                    cells.append("–")
                    continue
                txt = f"{c['delta']:+.4f} ± {c['se']:.4f}"
                cells.append(f"**{txt}**" if _beyond(c["delta"], c["se"]) == "yes" else txt)
            best = _budget_best(rows, s, t)
            if all(c == "–" for c in cells):
                continue
            lines.append(f"| {METRIC_OF[t]} | {s} | " + " | ".join(cells) + f" | {best or '–'} |")
    lines += [
        "",
        "\"Best baseline\" is picked per task and checkpoint on these same validation numbers.",
        "",
        "## Measured facts",
        "",
        *budget_facts(res),
        "",
    ]
    per_model = [
        f"{m} {e.get('train_seconds', e.get('wall_seconds', float('nan'))):.0f} s training + "
        f"{e.get('score_seconds', 0.0):.0f} s scoring"
        for m, e in res.get("models", {}).items()
    ]
    lines += [f"Cost per model ({res.get('threads', 1)} torch thread): " + "; ".join(per_model) + ".", ""]
    return "\n".join(lines)


def write_budget_report(res: Mapping[str, Any], path: Path) -> Path:
    path.write_text(render_budget(res))
    return path


def _encoder_changes(plan: Mapping[str, Any]) -> str:
    """The plan's EncoderConfig changes as `field=value` (older JSON: its interaction_dim), or "none"."""
    changes = dict(plan.get("encoder") or {})
    if plan.get("interaction_dim"):
        changes["interaction_dim"] = plan["interaction_dim"]
    return ", ".join(f"`{k}={v}`" for k, v in sorted(changes.items())) or "none"

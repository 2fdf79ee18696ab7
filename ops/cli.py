"""`dupn`: the one command-line entry point."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings
from ops.logs import configure_logging

Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    settings: Settings | None = None
    try:
        settings = load_settings(**_overrides(args))
        configure_logging(settings)
        return int(args.run(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            raise
        if settings is not None and settings.worker.log_format == "json":
            logging.getLogger("dupn").error("dupn: error: %s", message)  # one JSON line like every other
        else:
            print(f"dupn: error: {message}", file=sys.stderr)
        return 1


def error_message(exc: BaseException) -> str | None:
    """One line for an error a user can fix (the message names the fix); None for a bug (traceback)."""
    from kafka.errors import KafkaError

    if isinstance(exc, KafkaError):
        return f"Kafka: {exc!r} — check DUPN_BROKER and the DUPN_KAFKA_* security settings"
    if isinstance(exc, OSError | LookupError | TimeoutError | ValueError | RuntimeError):
        return str(exc) or type(exc).__name__
    return None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("broker", "home", "data_dir", "model_path", "web_host", "web_port", "partitions",
             "update_mode", "reanchor_every", "worker_urls", "log_format", "roles")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _version() -> str:
    """The installed distribution's version (what a bug report needs), or the source tree's marker."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dupn-stream")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dupn", description="Streaming DUPN user-vector updater")
    p.add_argument("--broker", help="Kafka bootstrap, e.g. kafka://127.0.0.1:9092 (env DUPN_BROKER)")
    p.add_argument("--home", help="state dir for broker pid/logs, data, demo model (env DUPN_HOME; default var)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(title="commands")
    _broker_parser(sub)
    _topics_parser(sub)
    _worker_parser(sub)
    _worker_parser(sub, "ppp-worker", "run a worker with only the purchasing-power agent", roles="ppp")
    _replay_parser(sub)
    _vector_parser(sub)
    _ppp_parser(sub)
    _rank_parser(sub)
    _bench_scoring_parser(sub)
    _demo_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)
    _validate_parser(sub)
    _drift_parser(sub)
    _bench_parser(sub)
    _explain_parsers(sub)
    _dashboards_parser(sub)
    return p


# -- broker / topics -----------------------------------------------------------------------
def _broker_parser(sub: Any) -> None:
    bp = sub.add_parser("broker", help="the embedded Kafka-protocol broker (Tansu)")
    bsub = bp.add_subparsers(title="actions", required=True)
    for action, help_ in (("start", "start it (idempotent)"), ("stop", "stop it"), ("status", "is it up?")):
        ap = bsub.add_parser(action, help=help_)
        ap.set_defaults(run=_broker, action=action)


def _broker(args: argparse.Namespace, s: Settings) -> int:
    from ops.broker import EmbeddedBroker

    host, port = s.kafka.broker_host_port
    broker = EmbeddedBroker(s.home_path / "broker", host, port)
    if args.action == "start":
        print(broker.start().describe())
    elif args.action == "stop":
        print("broker stopped" if broker.stop() else "no broker started from this state dir was running")
    else:
        status = broker.status()
        print(status.describe())
        return 0 if status.running else 3
    return 0


def _topics_parser(sub: Any) -> None:
    tp = sub.add_parser("topics", help="topic management")
    tsub = tp.add_subparsers(title="actions", required=True)
    cp = tsub.add_parser("create", help="create all topics with the configured partition count")
    cp.add_argument("--partitions", type=int, help="partitions per topic (env DUPN_PARTITIONS; default 8)")
    cp.set_defaults(run=_topics_create)


def _topics_create(args: argparse.Namespace, s: Settings) -> int:
    from ops.topics import create_topics

    for name, what in create_topics(s).items():
        print(f"{name}: {what}")
    return 0


# -- worker --------------------------------------------------------------------------------
def _worker_parser(
    sub: Any, name: str = "worker", help_: str = "run a stream worker (Faust)", roles: str | None = None
) -> None:
    wp = sub.add_parser(name, help=help_)
    wp.add_argument("--data-dir", help="RocksDB dir (env DUPN_DATA_DIR)")
    wp.add_argument("--web-host", help="HTTP bind/host (env DUPN_WEB_HOST; default 127.0.0.1)")
    wp.add_argument("--web-port", type=int, help="HTTP port (env DUPN_WEB_PORT; default 6066)")
    wp.add_argument("--model", dest="model_path", help="checkpoint dir (env DUPN_MODEL_PATH)")
    wp.add_argument("--mode", dest="update_mode", choices=("exact", "incremental"), help="env DUPN_UPDATE_MODE")
    wp.add_argument("--reanchor-every", type=int, help="incremental re-anchor period (env DUPN_REANCHOR_EVERY)")
    wp.add_argument("--loglevel", help="log level (env DUPN_LOG_LEVEL; default info)")
    wp.set_defaults(run=_worker, roles=roles)


def _worker(args: argparse.Namespace, s: Settings) -> int:
    from encoder.checkpoint import load_checkpoint
    from ops.topics import admin_client

    load_checkpoint(s.model_dir)  # fail here, clearly, rather than inside Faust
    admin_client(s).close()  # likewise for an unreachable broker
    from faust.worker import Worker as FaustWorker

    from ops.logs import logging_config
    from streams.runtime import tune_gc_for_worker
    from streams.worker import create_app

    s = s.replace(log_level=args.loglevel)
    app = create_app(s).app
    tune_gc_for_worker()
    json_logs = s.worker.log_format == "json"  # every line a JSON object: no banner, Faust logs through our formatter
    FaustWorker(
        app, loglevel=s.worker.log_level, quiet=json_logs, logging_config=logging_config(s) if json_logs else None
    ).execute_from_commandline()
    return 0


# -- replay / vector -----------------------------------------------------------------------
def _replay_parser(sub: Any) -> None:
    rp = sub.add_parser("replay", help="produce behavior events")
    src = rp.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="simulated users (live timestamps)")
    src.add_argument("--jsonl", type=Path, help="a file of contract events, one JSON object per line")
    src.add_argument("--taobao", type=Path, help="Taobao UserBehavior CSV (user,item,category,behavior,ts)")
    rp.add_argument("--users", type=int, default=1000)
    rp.add_argument("--events", type=int, default=100_000)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--rate", type=float, help="events/s (default: as fast as possible)")
    rp.add_argument("--no-progress", action="store_true")
    rp.add_argument("--no-profile", action="store_true",
                    help="--synthetic: leave the users' profiles out of the events (vectors use the unknown profile)")
    rp.set_defaults(run=_replay)


def _replay(args: argparse.Namespace, s: Settings) -> int:
    from ops import replay as r

    total: int | None = None
    if args.synthetic:
        events = r.synthetic_events(args.users, args.events, seed=args.seed, with_profile=not args.no_profile)
        total = args.events
    elif args.jsonl:
        events = r.jsonl_events(args.jsonl)
    else:
        events = r.taobao_events(args.taobao)
    stats = r.replay(s, events, rate=args.rate, total=total, progress=not args.no_progress)
    print(f"sent {stats.events} events in {stats.seconds:.1f}s ({stats.rate:.0f}/s) to {s.kafka.events_topic}")
    return 0


def _vector_parser(sub: Any) -> None:
    vp = sub.add_parser("vector", help="print a user's current vector (asks a worker)")
    vp.add_argument("user_id")
    vp.add_argument("--json", action="store_true", help="the full JSON answer")
    vp.add_argument("--at", help="'now' re-pools attention with ages relative to now")
    vp.add_argument("--url", dest="worker_urls", help="worker URL(s) (env DUPN_WORKER_URLS)")
    vp.set_defaults(run=_vector)


def _vector(args: argparse.Namespace, s: Settings) -> int:
    from clients.vectors import fetch_vector

    body = fetch_vector(s, args.user_id, at=args.at)
    if args.json:
        print(json.dumps(body))
        return 0
    vec = body.get("vector", [])
    now = int(time.time() * 1000)
    head = ", ".join(f"{x:+.3f}" for x in vec[:8])
    print(f"user           {body['user_id']}")
    print(f"model_version  {body['model_version']}")
    print(f"events_seen    {body['events_seen']}")
    print(f"last_event     {body['last_event_id']} at {_iso(body['last_event_ts'])}")
    print(f"updated_at     {_iso(body['updated_at'])} (age {(now - body['updated_at']) / 1000:.1f}s)")
    print(f"vector[{len(vec)}]    [{head}, ...] |v|={sum(x * x for x in vec) ** 0.5:.3f}")
    return 0


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


# -- downstream readers: purchasing power, ranking -----------------------------------------
def _ppp_parser(sub: Any) -> None:
    pp = sub.add_parser("ppp", help="print a user's purchasing-power level (asks a worker)")
    pp.add_argument("user_id")
    pp.add_argument("--json", action="store_true", help="the full JSON answer")
    pp.add_argument("--url", dest="worker_urls", help="worker URL(s) (env DUPN_WORKER_URLS)")
    pp.set_defaults(run=_ppp)


def _ppp(args: argparse.Namespace, s: Settings) -> int:
    from clients.vectors import fetch_purchasing_power

    body = fetch_purchasing_power(s, args.user_id)
    if args.json:
        print(json.dumps(body))
        return 0
    probs = " ".join(f"{p:.2f}" for p in body["probabilities"])
    print(f"user           {body['user_id']}")
    print(f"level          {body['level']} of 7")
    print(f"probabilities  {probs}")
    print(f"model_version  {body['model_version']}")
    print(f"vector_at      {_iso(body['vector_updated_at'])}")
    return 0


def _rank_parser(sub: Any) -> None:
    rp = sub.add_parser("rank", help="rank items for a user with the CTR/L2R heads (split user part)")
    rp.add_argument("user_id")
    rp.add_argument("--items", required=True, help="comma-separated item ids")
    rp.add_argument("--query", help="category or query string: use the worker's query-aware vector")
    rp.add_argument("--model", dest="model_path", help="checkpoint dir (env DUPN_MODEL_PATH)")
    rp.add_argument("--url", dest="worker_urls", help="worker URL(s), for --query (env DUPN_WORKER_URLS)")
    rp.add_argument("--timeout", type=float, default=30.0, help="s to wait for the vector cache to bootstrap")
    rp.set_defaults(run=_rank)


def _rank(args: argparse.Namespace, s: Settings) -> int:
    from clients.ranker import Ranker
    from clients.vector_cache import VectorCache

    items = [{"item_id": i.strip()} for i in args.items.split(",") if i.strip()]
    cache = None if args.query else VectorCache(s)
    try:
        if cache is not None and not cache.wait_bootstrapped(args.timeout):
            raise TimeoutError(f"vector cache not bootstrapped from {s.kafka.vectors_topic} after {args.timeout:.0f}s")
        ranked = Ranker(s.model_dir, cache, s).score(args.user_id, items, query=args.query)
    finally:
        if cache is not None:
            cache.close()
    print(f"{'rank':>4}  {'item':<24} {'ctr':>8} {'l2r':>8}")
    for k, (item, ctr, l2r) in enumerate(ranked, 1):
        print(f"{k:>4}  {item:<24} {ctr:8.4f} {l2r:8.4f}")
    return 0


def _bench_scoring_parser(sub: Any) -> None:
    bp = sub.add_parser("bench-scoring", help="score N candidates for one user: split vs unsplit heads")
    bp.add_argument("--candidates", type=int, default=1000)
    bp.add_argument("--repeats", type=int, default=7, help="repetitions per path (median reported)")
    bp.set_defaults(run=_bench_scoring)


def _bench_scoring(args: argparse.Namespace, s: Settings) -> int:
    from ops.bench_scoring import bench_scoring

    print(bench_scoring(s.model_dir, n=args.candidates, repeats=max(5, args.repeats)).render())
    return 0


# -- demo / train / eval -------------------------------------------------------------------
def _demo_parser(sub: Any) -> None:
    dp = sub.add_parser("demo", help="broker + topics + model + worker + synthetic replay, live progress")
    dp.add_argument("--users", type=int, default=1000)
    dp.add_argument("--events", type=int,
                    help="events to send (default: an endless live stream; 20000 with --burst or --exit)")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--rate", type=float, help="events/s of the live stream (default 300)")
    dp.add_argument("--burst", action="store_true", help="send the events as fast as possible (a backlog)")
    dp.add_argument("--exit", action="store_true", help="exit when every user's vector is up to date")
    dp.add_argument("--timeout", type=float, default=600.0, help="with --exit: give up after this many s")
    dp.set_defaults(run=_demo)


def _demo(args: argparse.Namespace, s: Settings) -> int:
    from ops.demo import LIVE_RATE, run_demo

    if args.burst and args.rate:
        raise ValueError("--burst sends as fast as possible: leave out --rate")
    events = args.events if args.events is not None else (20_000 if args.burst or args.exit else None)
    rate = None if args.burst else (args.rate or LIVE_RATE)
    return run_demo(
        s, users=args.users, events=events, seed=args.seed, rate=rate, exit_when_done=args.exit,
        timeout_s=args.timeout,
    )


def _taobao_sample_args(p: Any) -> None:
    p.add_argument("--max-rows", type=int,
                   help="--taobao: read at most this many CSV lines (default: all; --quick 200000)")
    p.add_argument("--user-sample", type=float,
                   help="--taobao: keep this fraction of users, chosen by a hash of the user id (e.g. 0.01)")


def _days(text: str) -> tuple[int, int]:
    first, _, end = text.partition(":")
    try:
        return (int(first), int(end)) if end else (int(first), int(first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or FIRST:END (days), got {text!r}") from None


def _train_parser(sub: Any) -> None:
    tp = sub.add_parser("train", help="train a DUPN checkpoint (AdaGrad, dropout, L2, multi-task)")
    tp.add_argument("--out", type=Path, help="checkpoint dir (default: the configured model path)")
    tp.add_argument("--init-from", type=Path,
                    help="continue from this checkpoint, weights and optimizer state (daily incremental training)")
    tp.add_argument("--taobao", type=Path, help="train on a Taobao UserBehavior CSV (ctr, l2r tasks)")
    tp.add_argument("--quick", action="store_true", help="the small demo-sized run (also with --taobao)")
    tp.add_argument("--seed", type=int, default=0,
                    help="simulated world seed (with --day, the same seed is the same world continuing)")
    tp.add_argument("--day", type=_days, dest="days", metavar="N|FIRST:END",
                    help="train on day N (or days FIRST..END-1) of the seed's world, report metrics on the next day; "
                         "without it the world is new and split 80/20 by time")
    tp.add_argument("--steps", type=int, help="training steps")
    tp.add_argument("--batch-size", type=int, help="user windows per task and step (see training.train presets)")
    _taobao_sample_args(tp)
    tp.set_defaults(run=_train)


def _train(args: argparse.Namespace, s: Settings) -> int:
    import dataclasses

    from training import daily as t

    out = args.out or s.model_dir
    changes = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size}.items() if v is not None}
    if args.taobao:
        from training.taobao_eval import taobao_plan

        plan = taobao_plan(args.quick, seed=args.seed, **changes)
        version = t.train_taobao(args.taobao, out, plan.train, init_from=args.init_from, quick=args.quick,
                                 max_rows=args.max_rows, user_sample=args.user_sample)
    else:
        sim = dataclasses.replace(t.DEMO_SIM_QUICK if args.quick else t.DEMO_SIM_FULL, seed=args.seed)
        cfg = dataclasses.replace(t.DEMO_TRAIN_QUICK if args.quick else t.DEMO_TRAIN_FULL, **changes)
        version = t.train_and_save(out, sim, cfg, init_from=args.init_from, days=args.days)
    print(f"wrote checkpoint {out} (model_version {version})")
    return 0


def _eval_parser(sub: Any) -> None:
    ep = sub.add_parser("eval", help="the paper's experiments on simulator data, several seeds -> results/eval.md "
                                     "(--taobao FILE: DUPN vs baselines on that file -> results/taobao_eval.md)")
    ep.add_argument("--quick", action="store_true", help="smaller world and budget (3000 users, 250 steps)")
    ep.add_argument("--out", type=Path, default=Path("results"))
    ep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2; --taobao: the first)")
    ep.add_argument("--model-out", type=Path, help="save the first seed's DUPN-all here (for `dupn drift`)")
    ep.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (1 torch thread each)")
    ep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a training setting of the plan (e.g. weighting=norm); repeatable")
    ep.add_argument("--taobao", type=Path,
                    help="a Taobao UserBehavior CSV: ctr and l2r, DUPN vs Wide, Wide&Deep, CNN-max")
    ep.add_argument("--steps", type=int, help="--taobao: training steps per model")
    ep.add_argument("--batch-size", type=int, help="--taobao: user windows per task and step")
    ep.add_argument("--note", help="--taobao: a line shown at the top of the report (e.g. that the file is synthetic)")
    _taobao_sample_args(ep)
    ep.set_defaults(run=_eval)


def _eval(args: argparse.Namespace, s: Settings) -> int:
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.taobao:
        from training.taobao_eval import run_taobao_eval, taobao_plan

        tplan = taobao_plan(args.quick, steps=args.steps, batch_size=args.batch_size, max_rows=args.max_rows,
                            user_sample=args.user_sample, seed=seeds[0])
        tcommand = "dupn " + shlex.join(sys.argv[1:]) if "eval" in sys.argv[1:] else ""
        run_taobao_eval(args.taobao, tplan, args.out, command=tcommand, synthetic_note=args.note)
        print(f"wrote {args.out / 'taobao_eval.md'} and {args.out / 'taobao_eval.json'}")
        return 0

    from training.experiments import plan_for, run_eval

    overrides = _plan_overrides(args.set, plan_for(args.quick, seeds[0]))
    command = "dupn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None
    res = run_eval(
        args.quick, args.out, seeds, command=command, model_out=args.model_out, plan_overrides=overrides or None,
        jobs=args.jobs,
    )
    from ops.plots import write_heatmap_png
    from training.report import attention_table

    png = write_heatmap_png(args.out / "attention.png", attention_table(res["per_seed"]),
                            f"DUPN-all attention by type × age (test users, seeds {args.seeds})")
    print(f"wrote {args.out / 'eval.md'}, {args.out / 'eval.json'} and {png}")
    return 0


def _validate_parser(sub: Any) -> None:
    vp = sub.add_parser("validate", help="DUPN-all under training choices, scored on the validation users")
    vp.add_argument("--choices", default="", help="'|'-separated names of training.experiments.CHOICES")
    vp.add_argument("--singles", default="", help="comma-separated tasks for single-task references")
    vp.add_argument("--seed", type=int, default=0)
    vp.add_argument("--out", type=Path, required=True, help="JSON file, rewritten after every row")
    vp.add_argument("--curve", action="store_true",
                    help="learning curves instead: each of --models trained once for --steps steps, scored on the "
                         "validation users every --every steps (JSON rewritten after every checkpoint; an existing "
                         "--out with the same settings is merged); also writes the report (--report)")
    vp.add_argument("--steps", type=int, help="--curve: training steps per model (default 1000)")
    vp.add_argument("--every", type=int, help="--curve: score every this many steps (default 250)")
    vp.add_argument("--models", help="--curve: comma-separated, trained in this order "
                                     "(default DUPN-all,Wide,Wide&Deep,CNN-max)")
    vp.add_argument("--choice", default=None,
                    help="--curve: the CHOICES row giving every model's training settings "
                         "(default: results/eval.md's, 'norm + anchored R=25 + profile dropout 0.2')")
    vp.add_argument("--full", action="store_true", help="--curve: the full plan's world (6000 users), not the quick")
    vp.add_argument("--report", type=Path, help="--curve: the markdown report (default: --out with .md)")
    vp.add_argument("--render-only", action="store_true", help="--curve: re-render --report from --out, no training")
    vp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="--curve: override a setting of the plan, TrainConfig or EncoderConfig "
                         "(e.g. interaction_dim=64); the --choice row's settings still apply on top")
    vp.set_defaults(run=_validate)


def _validate(args: argparse.Namespace, s: Settings) -> int:
    from training.experiments import run_validation

    if args.curve:
        return _validate_curve(args)
    curve_only = ("render_only", "full", "steps", "every", "models", "choice", "report", "set")
    if any(getattr(args, k) not in (None, False, []) for k in curve_only):
        raise SystemExit(
            "--steps, --every, --models, --choice, --full, --report, --set and --render-only go with --curve"
        )
    choices = [c for c in args.choices.split("|") if c]
    singles = [t for t in args.singles.split(",") if t]
    run_validation(True, choices, seed=args.seed, out=args.out, singles=singles)
    print(f"wrote {args.out}")
    return 0


def _plan_overrides(items: list[str], plan: Any) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items as :func:`dataclasses.replace` changes of an ``EvalPlan``: a plan
    field directly, a TrainConfig field (e.g. weighting) into ``train``, an EncoderConfig field
    (e.g. interaction_dim) into ``encoder``."""
    import dataclasses

    from encoder.config import EncoderConfig

    train_changes: dict[str, Any] = {}
    encoder_changes: dict[str, Any] = dict(plan.encoder)
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        value = _literal(raw)
        if key in {f.name for f in dataclasses.fields(plan)} and key not in ("sim", "train", "encoder"):
            overrides[key] = value
        elif key in {f.name for f in dataclasses.fields(plan.train)}:
            train_changes[key] = value
        elif key in {f.name for f in dataclasses.fields(EncoderConfig)} and key not in ("window", "query_in_rep"):
            encoder_changes[key] = value
        else:
            raise SystemExit(f"--set {key}: not a setting of the evaluation plan, TrainConfig or EncoderConfig")
    if train_changes:
        overrides["train"] = dataclasses.replace(plan.train, **train_changes)
    if encoder_changes:
        EncoderConfig(**encoder_changes)  # a bad value fails here, not after the first seed's training
        overrides["encoder"] = encoder_changes
    return overrides


def _validate_curve(args: argparse.Namespace) -> int:
    import dataclasses

    from training.experiments import CHOICES, EVAL_CHOICE, plan_for, run_curve

    if args.choices or args.singles:
        raise SystemExit("--curve trains --models under one --choice; --choices/--singles are for the grid")
    if any(item.partition("=")[0] == "query_in_rep" for item in args.set or []):  # run_curve sets it from the choice
        raise SystemExit("--set query_in_rep: a learning curve takes query_in_rep from its --choice; pick the choice")
    report = args.report or args.out.with_suffix(".md")
    if not args.render_only:
        choice = args.choice or EVAL_CHOICE
        if choice not in CHOICES:
            raise SystemExit(f"--choice {choice!r}: not one of {sorted(CHOICES)}")
        models = [m for m in (args.models or "DUPN-all,Wide,Wide&Deep,CNN-max").split(",") if m]
        command = "dupn " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["validate"] else None
        try:
            steps = 1000 if args.steps is None else args.steps
            every = 250 if args.every is None else args.every
            base = plan_for(not args.full, args.seed)
            plan = dataclasses.replace(base, **_plan_overrides(args.set, base)) if args.set else None
            run_curve(models, steps, every, seed=args.seed, out=args.out, choice=choice, command=command,
                      quick=not args.full, plan=plan)  # fmt: skip
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
    from training.report import write_budget_report

    res = json.loads(args.out.read_text())
    written = [write_budget_report(res, report)]
    if res["rows"]:
        from ops.plots import write_curve_png

        written.append(write_curve_png(report.with_suffix(".png"), res))
    print(f"wrote {args.out} and " + " and ".join(map(str, written)))
    return 0


def _literal(raw: str) -> Any:
    """A --set value: None, true/false, an int, a float, or the string itself."""
    if raw in ("None", "none"):
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _drift_parser(sub: Any) -> None:
    dp = sub.add_parser("drift", help="incremental vs exact: cosine drift and cost, per re-anchor period")
    dp.add_argument("--users", type=int, default=300)
    dp.add_argument("--events-per-user", type=int, default=250)
    dp.add_argument("--reanchor", default="10,25,50,100,200", help="comma-separated periods R")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--model", dest="model_path", type=Path, help="checkpoint dir (default: the settings' model dir)")
    dp.add_argument("--json", action="store_true")
    dp.set_defaults(run=_drift)


def _drift(args: argparse.Namespace, s: Settings) -> int:
    from ops.drift import measure_drift, render_table

    periods = [int(x) for x in args.reanchor.split(",") if x.strip()]
    model_dir = args.model_path or s.model_dir
    rows = measure_drift(str(model_dir), args.users, args.events_per_user, periods, seed=args.seed)
    print(json.dumps(rows, indent=2) if args.json else render_table(rows))
    return 0


def _bench_parser(sub: Any) -> None:
    bp = sub.add_parser("bench", help="the performance figures on fresh embedded brokers (BENCHMARKS.md)")
    bp.add_argument("--part", default="all", help="all (default), a comma-separated list of ceiling-a, ceiling-b, "
                    "worker, freshness, sweep, encoder, state, recovery, query, scaling, write-cost; "
                    "or drain (one worker run configured by --intake/--roles/--mode)")
    bp.add_argument("--users", type=int, help="users in the stream (default 10000; --quick 200)")
    bp.add_argument("--events", type=int, help="events in the stream (default 200000; --quick 2000)")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--quick", action="store_true", help="smoke-test sizes and durations (numbers mean nothing)")
    bp.add_argument("--rate", type=float, help="freshness: events/s (default: half the incremental drain rate)")
    bp.add_argument("--evicting-users", type=int, help="worker: users of the evicting stream (default users/20; "
                    "0 skips it)")
    bp.add_argument("--out", type=Path, help="write the JSON here and the markdown table next to it (.md); "
                    "default results/bench.json for --part all")
    bp.add_argument("--reps", type=int, help="ceiling-a and worker: incremental drain repetitions, interleaved "
                    "A, W, A, W, ... (default 3; --quick 1)")
    bp.add_argument("--drain-rate", type=float, help="sweep: 100 %% load in events/s when the worker part does "
                    "not run in the same command")
    bp.add_argument("--sweep-loads", type=_percentages, help="sweep: loads in %% of the drain rate "
                    "(default 5,10,25,50,75; --quick 5,25)")
    bp.add_argument("--sweep-reps", type=int, help="sweep: repetitions of the 10 %% and 25 %% points, the "
                    "others run once (default 3; --quick 1)")
    bp.add_argument("--sweep-model-hop", action="store_true", help="sweep: also run the model hop at every point "
                    "(the floor plus the worker's VectorUpdater in line: no Faust, RocksDB or changelog)")
    bp.add_argument("--sweep-spin-hop", metavar="FIXED_US,PER_EVENT_US", type=_spin,
                    help="sweep: also run the floor hop with a busy wait of FIXED + PER_EVENT x events µs per "
                    "fetched batch (the model's CPU time, without the model) at every point")
    bp.add_argument("--warmup-s", type=float, help="sweep: seconds of warm-up per point (default 5)")
    bp.add_argument("--steady-s", type=float, help="sweep: seconds measured per point (default 30)")
    bp.add_argument("--intake", choices=("lean", "stream"), default="lean", help="drain only")
    bp.add_argument("--roles", default="vectors", help="drain only")
    bp.add_argument("--mode", dest="bench_mode", choices=("exact", "incremental"), default="incremental",
                    help="drain only")
    bp.set_defaults(run=_bench)


def _bench(args: argparse.Namespace, s: Settings) -> int:
    from ops.bench import PARTS, BenchConfig, drain, make_stream, markdown, run_parts

    sizes = {k: v for k, v in (("users", args.users), ("events", args.events)) if v is not None}
    opts = {"partitions": s.kafka.partitions, "seed": args.seed, "freshness_rate": args.rate,
            "evicting_users": args.evicting_users, "throughput_reps": args.reps, "drain_rate": args.drain_rate,
            "sweep_loads": args.sweep_loads, "sweep_reps": args.sweep_reps, "sweep_warmup_s": args.warmup_s,
            "sweep_steady_s": args.steady_s, "sweep_model_hop": args.sweep_model_hop or None,
            "sweep_spin_hop": args.sweep_spin_hop, **sizes}
    opts = {k: v for k, v in opts.items() if v is not None}
    cfg = BenchConfig.quick(s.model_dir, **opts) if args.quick else BenchConfig(s.model_dir, **opts)
    if args.part == "drain":
        res = drain(cfg, make_stream(cfg.users, cfg.events, cfg.seed), intake=args.intake, roles=args.roles,
                    update_mode=args.bench_mode)
        print(json.dumps(res.to_json(), indent=2))
        return 0
    parts = list(PARTS) if args.part == "all" else [p.strip() for p in args.part.split(",") if p.strip()]
    doc = run_parts(cfg, parts, _bench_command(args, cfg))
    out = args.out or (Path("results/bench.json") if args.part == "all" else None)
    text = json.dumps(doc, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text(markdown(doc))
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
        if "sweep" in doc["parts"]:
            from ops.plots import write_sweep_png

            png = write_sweep_png(out.with_name(f"{out.stem}-sweep.png"), doc["parts"]["sweep"]["loads"])
            print(f"wrote {png}", file=sys.stderr)
    return 0


def _percentages(text: str) -> tuple[float, ...]:
    """'5,10,25' -> (5.0, 10.0, 25.0): loads in % of the drain rate, each in (0, 100]."""
    try:
        loads = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentages like 5,10,25; got {text!r}") from None
    if not loads or any(not 0 < x <= 100 for x in loads):
        raise argparse.ArgumentTypeError(f"loads are percentages in (0, 100]; got {text!r}")
    return loads


def _spin(text: str) -> str:
    """``FIXED_US,PER_EVENT_US`` checked here (a clear argparse error), passed on as given."""
    from ops.bench_apps import parse_spin

    try:
        parse_spin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _bench_command(args: argparse.Namespace, cfg: Any) -> str:
    """The command that reproduces this run, spelled out (for the generated table)."""
    words = ["dupn bench", f"--part {args.part}", f"--users {cfg.users}", f"--events {cfg.events}"]
    words += [f"--{k} {v}" for k, v in (("seed", args.seed), ("rate", args.rate),
                                         ("evicting-users", args.evicting_users), ("reps", args.reps),
                                         ("drain-rate", args.drain_rate), ("sweep-reps", args.sweep_reps),
                                         ("warmup-s", args.warmup_s), ("steady-s", args.steady_s)) if v]
    if args.sweep_loads:
        words.append("--sweep-loads " + ",".join(f"{x:g}" for x in args.sweep_loads))
    words += ["--sweep-model-hop"] if args.sweep_model_hop else []
    words += [f"--sweep-spin-hop {args.sweep_spin_hop}"] if args.sweep_spin_hop else []
    words += ["--quick"] if args.quick else []
    env = f"DUPN_PARTITIONS={cfg.partitions} " if cfg.partitions != 8 else ""
    return env + " ".join(words)


# -- explain / report: seeing inside a vector ----------------------------------------------
def _explain_parsers(sub: Any) -> None:
    ep = sub.add_parser("explain", help="the attention behind a user's vector, per behavior (asks a worker)")
    ep.add_argument("user_id")
    ep.add_argument("--query", help="explain the query-aware vector for this category/query")
    ep.add_argument("--at", help="'now' or epoch ms: ages and attention as of then (default: last event)")
    ep.add_argument("--json", action="store_true", help="the full JSON answer")
    ep.add_argument("--png", type=Path, help="also draw the heat map and the sequence to this PNG")
    ep.add_argument("--url", dest="worker_urls", help="worker URL(s) (env DUPN_WORKER_URLS)")
    ep.set_defaults(run=_explain)
    rp = sub.add_parser("report", help="mean attention by behavior type × age over a simulated replay (offline)")
    rp.add_argument("--users", type=int, default=500)
    rp.add_argument("--events", type=int, default=50_000)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--min-events", type=int, default=20, help="skip users with fewer behaviors")
    rp.add_argument("--model", dest="model_path", help="checkpoint dir (env DUPN_MODEL_PATH)")
    rp.add_argument("--png", type=Path, help="draw the heat map to this PNG")
    rp.set_defaults(run=_report)


def _explain(args: argparse.Namespace, s: Settings) -> int:
    from clients.vectors import fetch_explain
    from encoder.explain import table_from_behaviors

    body = fetch_explain(s, args.user_id, at=args.at, query=args.query)
    if args.json:
        print(json.dumps(body))
    else:
        print(_explain_text(body))
    if args.png:
        from ops.plots import write_explain_png

        behaviors = body["behaviors"]
        write_explain_png(args.png, table_from_behaviors(behaviors), behaviors, f"user {body['user_id']}")
        print(f"wrote {args.png}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _explain_text(body: dict[str, Any], bar_width: int = 40) -> str:
    """Table of the window, the bar scaled so the largest α fills ``bar_width`` cells."""
    behaviors = body["behaviors"]
    top = max((b["attention"] for b in behaviors), default=0.0) or 1.0
    query = f", query {body['query']!r}" if body.get("query") else ""
    lines = [
        f"user {body['user_id']}  model {body['model_version']}  as of {_iso(body['as_of'])}{query}",
        f"{'pos':>4} {'age':>10} {'bucket':>6} {'type':<5} {'scenario':<9} {'α':>7}",
    ]
    for b in behaviors:
        bar = "█" * max(1, round(bar_width * b["attention"] / top)) if b["attention"] > 0 else ""
        lines.append(
            f"{b['position']:>4} {_age(b['age_ms']):>10} {b['age_bucket']:>6} {b['event_type']:<5} "
            f"{b['scenario']:<9} {b['attention']:7.4f} {bar}"
        )
    return "\n".join(lines)


def _age(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f}{unit}"
    return f"{ms / 1000:.1f}s"


def _report(args: argparse.Namespace, s: Settings) -> int:
    from encoder.checkpoint import load_checkpoint
    from encoder.explain import attention_report
    from encoder.features import records_from_events
    from encoder.streaming import StreamingEncoder
    from training.simulator import SimConfig, Simulator

    ckpt = load_checkpoint(s.model_dir)
    per_user: dict[str, list[dict[str, Any]]] = {}
    for ev in Simulator(SimConfig(n_users=args.users, seed=args.seed)).stream(args.users, args.events):
        per_user.setdefault(str(ev["user_id"]), []).append(dict(ev))
    histories = [records_from_events(evs) for evs in per_user.values()]
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    table = attention_report(encoder, histories, min_events=args.min_events)
    print(f"model {ckpt.model_version}, {args.events} simulated events over {len(per_user)} users (seed {args.seed})")
    print(table.render())
    if args.png:
        from ops.plots import write_heatmap_png

        title = f"mean attention by type × age, {table.users} users (model {ckpt.model_version})"
        print(f"wrote {write_heatmap_png(args.png, table, title)}")
    return 0


# -- dashboards: Grafana, Prometheus scrape config, alert rules -----------------------------
def _dashboards_parser(sub: Any) -> None:
    dp = sub.add_parser("dashboards", help="Grafana dashboard, Prometheus scrape config and alert rules")
    dsub = dp.add_subparsers(title="actions", required=True)
    ep = dsub.add_parser("export", help="write dupn-dashboard.json, prometheus.yml and dupn-alerts.yml")
    ep.add_argument("--out", type=Path, default=Path("dashboards"), help="directory to write to (default dashboards)")
    ep.add_argument("--targets", help="host:port of each worker, comma-separated (default: from DUPN_WORKER_URLS)")
    ep.add_argument("--scrape-interval", default="15s", help="Prometheus scrape and rule interval (default 15s)")
    ep.add_argument("--token-file", help="file holding DUPN_API_TOKEN, for workers that require it")
    ep.set_defaults(run=_dashboards_export)


def _dashboards_export(args: argparse.Namespace, s: Settings) -> int:
    from ops.dashboards import export, targets_from_urls

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else targets_from_urls(
        s.http.worker_urls
    )
    for path in export(args.out, targets, scrape_interval=args.scrape_interval, token_file=args.token_file):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

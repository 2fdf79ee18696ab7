r"""Multi-task training of DUPN (and of the baselines, which share its heads).

Objective (one step; each task's mini-batch is drawn from its own data set):

    L = Σ_{t ∈ tasks} L_t          (default; weighted variants: :class:`LossCombiner`)

    L_ctr    = -1/N Σ_i [y_i log σ(z_i) + (1-y_i) log(1-σ(z_i))]         z = ctr_logit(r_i, e_item)
    L_l2r    = -Σ_i w_i [y_i log σ(z_i) + (1-y_i) log(1-σ(z_i))] / Σ_i w_i  z = MLP₂(r_i)·x_rank
    L_talent = BCE as L_ctr with z = talent_logit(r_i, talent, x_talent)
    L_shop   = BCE as L_ctr with z = shop_logit(r_i, shop, x_shop)     (the transfer task)
    L_ppp    = -1/N Σ_i log softmax(W r_i)_{level_i - 1}

r_i is the user representation after dropout (rate p, training only) and w_i
the L2R behavior weight (a buy counts more than an impression, as in the
talk).  The L2 penalty λ‖θ‖² enters as AdaGrad's ``weight_decay`` (it adds λθ
to every gradient), exactly the paper's "AdaGrad + L2 + dropout" recipe.

No batch normalization anywhere, on purpose: the seed warns that BN's offline
mean/variance, estimated on filtered and re-sampled training data, drift from
the online distribution and hurt online quality even when offline AUC rises.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from encoder.config import EncoderConfig
from encoder.model import DUPN, BehaviorTensors, TaskHeads, UserContext
from training.data import (
    TASKS,
    Batch,
    Example,
    ExampleTable,
    HistoryStore,
    MultiTaskBatches,
    TaskPart,
    build_table,
)


def set_threads() -> int:
    """Use 2 torch threads (``DUPN_TORCH_THREADS`` overrides); returns the count.

    On a shared 2-core machine libgomp's default spin-wait makes a 2-thread
    torch 10-100x slower whenever another process is busy; exporting
    ``GOMP_SPINCOUNT=1000`` before torch loads avoids that (see docs/eval.md).
    """
    n = int(os.environ.get("DUPN_TORCH_THREADS", "2"))
    torch.set_num_threads(n)
    return n


WEIGHTINGS: tuple[str, ...] = ("sum", "norm", "init_norm", "uncertainty")
GRAD_MODES: tuple[str, ...] = ("global", "task_clip", "pcgrad")
SCHEDULES: tuple[str, ...] = ("all", "round_robin")
OPTIMIZERS: tuple[str, ...] = ("adagrad", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    ``batch_size`` counts contexts (user windows) per task and step (see
    training.data); ``epochs``, when set, overrides ``steps`` so that the task
    with the most contexts is seen that many times.

    ``lr`` is AdaGrad's rate for dense weights; ``embedding_lr`` (None = same)
    is the rate for id embedding tables (``nn.Embedding``/``EmbeddingBag``).
    Both are larger than the paper's 0.001 because we take hundreds of steps,
    not billions of examples, and the embeddings get the larger one because an
    id's row only moves on the steps where that id occurs: with one shared
    rate, dense layers blow up before rare rows have learnt anything (measured
    on the simulator: CTR AUC 0.56 with one rate vs 0.63 with 20x for rows).
    ``dropout`` None keeps the model config's rate.  ``max_history`` caps the
    training windows below ``EncoderConfig.window`` (evaluation and serving use
    the config's window).  ``clip_norm`` bounds the global gradient norm.
    ``max_seconds`` is a wall-clock guard (stops early, flagged in the log) for
    the demo paths that promise a time bound.

    Multi-task handling (see :class:`LossCombiner`, :func:`combine_gradients` and :func:`fit`): ``weighting`` is
    ``sum`` (L = Σ_t L_t), ``norm`` (each L_t divided by a running mean of itself) or
    ``uncertainty`` (learned weights, Kendall et al. 2018); ``grad_mode`` is ``global`` (one
    clip of the summed gradient), ``task_clip`` (each task's gradient clipped to ``clip_norm``
    before summing) or ``pcgrad`` (each task's gradient projected off the others it conflicts
    with, Yu et al. 2020); ``schedule`` is ``all`` (every task's mini-batch in every step) or
    ``round_robin`` (one task per step, T× the steps: the same examples, T× the updates).
    ``profile_dropout`` replaces a context's profile by "unknown" with that probability, so
    the unknown row the stream worker serves with is trained.  ``anchor_every`` = R trains on
    the incremental policy's anchored runs (the function the worker serves; see
    ``training.data.run_starts``) instead of zero-state windows.
    """

    tasks: tuple[str, ...] = ("ctr", "l2r", "talent", "ppp")
    steps: int = 2000
    epochs: float | None = None
    batch_size: int = 1024
    lr: float = 0.005
    embedding_lr: float | None = 0.1
    l2: float = 1e-6
    dropout: float | None = None
    seed: int = 0
    variant: str = "all"
    max_history: int = 100
    clip_norm: float = 5.0
    max_seconds: float | None = None
    weighting: str = "sum"
    grad_mode: str = "global"
    schedule: str = "all"
    profile_dropout: float = 0.0
    anchor_every: int | None = None
    task_weight: str = ""  # "task:w,..." multiplies a task's term after ``weighting`` (absent = 1)
    optimizer: str = "adagrad"  # or "adam" (same two groups and rates; see make_optimizer)
    # "task,..." whose gradients reach the encoder through r; the others train only their heads, on r
    # detached ("" = every task). Why: to tell whether a task helps or costs the shared representation
    # apart from whether its head can read what the others put there.
    encoder_tasks: str = ""
    # "tasks;tasks;…", one group per tower of a DUPN with ``EncoderConfig.towers`` = G > 1: tower g learns
    # from the tasks of group g only (each head reads all of r, the other towers' blocks detached); a task
    # in no group trains every tower. "" = every task trains every tower. Models without towers ignore it.
    tower_tasks: str = ""
    # "task,..." whose gradients reach a DUPN's behavior item embedding tables (``DUPN.items``); the other
    # tasks train everything else, through a second encoder pass on the embeddings detached ("" = every
    # task). Models other than DUPN ignore it. Why: the tables are what towers still share.
    embedding_tasks: str = ""

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS or self.grad_mode not in GRAD_MODES or self.schedule not in SCHEDULES:
            raise ValueError(
                f"weighting in {WEIGHTINGS}, grad_mode in {GRAD_MODES}, schedule in {SCHEDULES} required"
            )
        if not 0.0 <= self.profile_dropout <= 1.0 or (self.anchor_every is not None and self.anchor_every < 1):
            raise ValueError("profile_dropout in [0, 1] and anchor_every >= 1 (or None) required")
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        multipliers = self.task_multipliers()
        if set(multipliers) - set(TASKS) or any(w < 0 for w in multipliers.values()):
            raise ValueError(f"task_weight: tasks among {TASKS} with weights >= 0 required, got {self.task_weight!r}")
        if not set(self.encoder_task_set()) <= set(self.tasks):
            raise ValueError(f"encoder_tasks must name tasks among {self.tasks}, got {self.encoder_tasks!r}")
        named = {t.strip() for t in self.tower_tasks.replace(";", ",").split(",") if t.strip()}
        named |= {t.strip() for t in self.embedding_tasks.split(",") if t.strip()}
        if not named <= set(TASKS):
            raise ValueError(
                f"tower_tasks and embedding_tasks must name tasks among {TASKS}, got {self.tower_tasks!r}, "
                f"{self.embedding_tasks!r}"
            )
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.l2 < 0 or self.max_history < 1:
            raise ValueError("steps >= 0, batch_size >= 1, lr > 0, l2 >= 0, max_history >= 1 required")

    def encoder_task_set(self) -> tuple[str, ...]:
        """``encoder_tasks`` parsed: the tasks whose gradients reach the encoder (every task when empty)."""
        named = tuple(t for t in (x.strip() for x in self.encoder_tasks.split(",")) if t)
        return named or tuple(self.tasks)

    def tower_task_groups(self) -> tuple[frozenset[str], ...]:
        """``tower_tasks`` parsed: the tasks that train each tower, among those this run trains (empty when
        unset). A tower none of whose tasks is trained here is trained by every task of the run, so a
        single-task run (multi- vs single-task rows) or a transfer run still trains the whole encoder."""
        if not self.tower_tasks.strip():
            return ()
        named = [frozenset(t.strip() for t in g.split(",") if t.strip()) for g in self.tower_tasks.split(";")]
        return tuple((g & set(self.tasks)) or frozenset(self.tasks) for g in named)

    def task_multipliers(self) -> dict[str, float]:
        """``task_weight`` parsed: {task: w} for the tasks it names."""
        out: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in self.task_weight.split(","))):
            name, _, raw = item.partition(":")
            try:
                out[name] = float(raw)
            except ValueError:
                out[name] = math.nan
            if not math.isfinite(out[name]):
                raise ValueError(f"task_weight item {item!r}: expected task:weight")
        return out


class TaskModel(Protocol):
    """What training needs from a model: DUPN and every baseline provide it."""

    cfg: EncoderConfig
    heads: TaskHeads

    def encode(self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext) -> Tensor: ...
    def item_vectors(self, b: BehaviorTensors) -> Tensor: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def modules(self) -> Iterator[nn.Module]: ...
    def train(self, mode: bool = True) -> Any: ...


@dataclass
class TrainData:
    """Histories (user_id → time-ordered events), users (with ``profile``) and examples per task."""

    histories: Mapping[str, Sequence[dict[str, Any]]]
    users: Sequence[Any]
    examples: Mapping[str, Sequence[Example]]


@dataclass
class Prepared:
    """Encoded histories plus one example table per task (reusable across models)."""

    store: HistoryStore
    tables: dict[str, ExampleTable]


def prepare(data: TrainData, cfg: EncoderConfig, tasks: Sequence[str] | None = None) -> Prepared:
    """Encode histories once and build the tables of the requested tasks (default: all present)."""
    store = HistoryStore.from_users(data.histories, data.users)
    names = [t for t in (tasks or data.examples.keys()) if data.examples.get(t)]
    return Prepared(store, {t: build_table(t, data.examples[t], store, cfg) for t in names})


def with_tables(prep: Prepared, examples: Mapping[str, Sequence[Example]], cfg: EncoderConfig) -> Prepared:
    """Same store, other examples (e.g. the test split)."""
    tables = {t: build_table(t, exs, prep.store, cfg) for t, exs in examples.items() if exs}
    return Prepared(prep.store, tables)


# -- losses -----------------------------------------------------------------------------


def part_logits(model: TaskModel, rep: Tensor, part: TaskPart) -> Tensor:
    """Task head output for one part: (n,) logits, or (n, 7) for ppp."""
    r, h = rep[part.ctx], model.heads
    if part.task == "ctr":
        assert part.items is not None
        return h.ctr_logit(r, model.item_vectors(part.items))
    if part.task == "l2r":
        assert part.features is not None
        return h.l2r_logit(r, part.features)
    if part.task == "ppp":
        return h.ppp_logits(r)
    assert part.target is not None and part.features is not None
    if part.task == "talent":
        return h.talent_logit(r, part.target, part.features)
    return h.shop_logit(r, part.target, part.features)


def part_loss(part: TaskPart, logits: Tensor) -> Tensor:
    """The task's loss (equations in the module docstring)."""
    if part.task == "ppp":
        return F.cross_entropy(logits, part.label.long() - 1)
    if part.task == "l2r":
        per = F.binary_cross_entropy_with_logits(logits, part.label, reduction="none")
        return (per * part.weight).sum() / part.weight.sum().clamp(min=1e-6)
    return F.binary_cross_entropy_with_logits(logits, part.label)


def encode_batch(model: TaskModel, batch: Batch, items: Tensor | None = None) -> Tensor:
    """The model's representation of a batch's contexts.

    DUPN runs its LSTM over ``batch.mask`` (an anchored run may start before the window)
    and pools over ``batch.pool_mask``; the baselines have no state to warm up and see
    only the window (``pool_mask``), so every model sees the same W behaviors.
    """
    if isinstance(model, DUPN):
        return model.encode(batch.behaviors, batch.mask, batch.now, batch.context, batch.pool_mask, items)
    mask = batch.mask if batch.pool_mask is None else batch.pool_mask
    return model.encode(batch.behaviors, mask, batch.now, batch.context)


def drop_profile(ctx: UserContext, rate: float, gen: torch.Generator | None = None) -> UserContext:
    """Profile dropout: each context's age group and gender become "unknown" (-1) with prob ``rate``.

    The stream worker encodes every user with the unknown profile (it has no profile
    source), so that row must be trained; a fully profiled training set gives it no data gradient.
    """
    if rate <= 0 or ctx.age_group is None:
        return ctx
    drop = torch.rand(ctx.age_group.shape, generator=gen) < rate
    unknown = torch.full_like(ctx.age_group, -1)
    gender = None if ctx.gender is None else torch.where(drop, unknown, ctx.gender)
    return dataclasses.replace(ctx, age_group=torch.where(drop, unknown, ctx.age_group), gender=gender)


def batch_losses(
    model: TaskModel, batch: Batch, dropout: float, train_encoder: bool = True,
    encoder_tasks: Sequence[str] | None = None, tower_tasks: Sequence[frozenset[str]] = (),
    embedding_tasks: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Per-task losses of one batch (one encoder pass over its distinct contexts).

    ``encoder_tasks``: the tasks whose loss reaches the encoder through r (None: every task); any other
    task's head reads r detached, so it learns from r without changing it (``TrainConfig.encoder_tasks``).
    ``tower_tasks`` (a DUPN with G towers; ``TrainConfig.tower_task_groups``): a task's head reads
    r = [r_1; …; r_G] with the blocks of the towers whose group does not name it detached, so its
    gradient reaches only its own towers (:func:`encoder.model.tower_masks` keeps the towers apart).
    ``embedding_tasks`` (a DUPN; None: every task): the tasks whose gradient reaches the item embedding
    tables; the others read an r computed on the embeddings detached (a second encoder pass), with the
    same dropout mask."""
    cut = embedding_tasks is not None and isinstance(model, DUPN) and {p.task for p in batch.parts} - set(
        embedding_tasks
    )
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        if cut:
            assert isinstance(model, DUPN)
            e = model.items(batch.behaviors)
            rep, rep_cut = encode_batch(model, batch, e), encode_batch(model, batch, e.detach())
        else:
            rep = rep_cut = encode_batch(model, batch)
    if cut:  # one dropout mask for both
        keep = F.dropout(torch.ones_like(rep), p=dropout, training=dropout > 0)
        rep, rep_cut = rep * keep, rep_cut * keep
    else:
        rep = rep_cut = F.dropout(rep, p=dropout, training=dropout > 0)
    routed = _tower_routing(model, tower_tasks)

    def rep_for(task: str) -> Tensor:
        return _route(rep if embedding_tasks is None or task in embedding_tasks else rep_cut, task)

    def _route(r: Tensor, task: str) -> Tensor:
        detached = r.detach()
        if encoder_tasks is not None and task not in encoder_tasks:
            return detached
        if not routed or all(task not in group for group in tower_tasks):
            return r
        blocks = zip(r.chunk(len(tower_tasks), -1), detached.chunk(len(tower_tasks), -1), strict=True)
        return torch.cat([live if task in group else dead for (live, dead), group in zip(blocks, tower_tasks,
                                                                                          strict=True)], -1)

    return {p.task: part_loss(p, part_logits(model, rep_for(p.task), p)) for p in batch.parts}


def _tower_routing(model: TaskModel, tower_tasks: Sequence[frozenset[str]]) -> bool:
    """Whether ``tower_tasks`` applies to ``model``: a DUPN with as many towers as groups (else an error);
    other models have no towers and ignore it."""
    if not tower_tasks or not isinstance(model, DUPN):
        return False
    if model.towers != len(tower_tasks):
        raise ValueError(f"tower_tasks names {len(tower_tasks)} groups for a model with {model.towers} tower(s)")
    return True


def init_output_biases(model: TaskModel, prep: Prepared, tasks: Sequence[str]) -> None:
    r"""Start each new head's output at its task's base rate (prior log-odds / log-frequencies).

    AdaGrad moves a parameter by at most ≈ 2·lr·√t in t steps, so from a zero
    bias the first few hundred steps would be spent learning only that CTR is
    ≈ 8 %.  Call this for fresh heads only (never when continuing a model):

        b_ctr = b_talent = b_shop = logit(ȳ),   b_ppp,k = log π_k
        b_l2r = logit(ȳ_w) · x̄ / ‖x̄‖²   (the L2R logit is MLP(r)·x, so the bias acts through x̄)
    """
    h = model.heads
    with torch.no_grad():
        for task in tasks:
            table = prep.tables.get(task)
            if table is None or table.n_examples == 0:
                continue
            if task == "ppp":
                freq = np.bincount(table.label.astype(np.int64) - 1, minlength=h.ppp.out_features)
                h.ppp.bias.copy_(torch.from_numpy(np.log((freq + 1.0) / (freq.sum() + len(freq)))))
                continue
            w = table.weight if task == "l2r" else np.ones_like(table.weight)
            rate = float(np.clip((w * table.label).sum() / max(w.sum(), 1e-9), 1e-4, 1 - 1e-4))
            prior = math.log(rate / (1 - rate))
            if task == "l2r":
                assert table.features is not None
                mean_x = torch.from_numpy(table.features.mean(0))
                _last_linear(h.l2r).bias.copy_(prior * mean_x / mean_x.pow(2).sum().clamp(min=1e-6))
            else:
                head = {"ctr": h.ctr_mlp, "talent": h.talent, "shop": h.shop}[task]
                _last_linear(head).bias.fill_(prior)


def _last_linear(seq: nn.Module) -> nn.Linear:
    last = [m for m in seq.modules() if isinstance(m, nn.Linear)][-1]
    assert last.bias is not None
    return last


# -- the loop ---------------------------------------------------------------------------


@dataclass
class FitLog:
    """Per-step losses, optional evaluation curve, wall time, and whether the time guard stopped it."""

    losses: list[dict[str, float]] = dataclasses.field(default_factory=list)
    curve: list[dict[str, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    task_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # ‖g‖ of the summed gradient before the clip, per step (``grad_mode="global"``; empty otherwise): shows
    # how often the one clip acts, and so how much it couples the tasks' step sizes
    grad_norms: list[float] = dataclasses.field(default_factory=list)

    def clipped_share(self, clip_norm: float, last: int) -> float:
        """Share of the last ``last`` steps whose summed gradient the global clip scaled down."""
        tail = self.grad_norms[-last:]
        return float(np.mean([n > clip_norm for n in tail])) if tail else float("nan")

    def mean_loss(self, task: str, first: int | None = None, last: int | None = None) -> float:
        vals = [s[task] for s in self.losses if task in s]
        vals = vals[:first] if first else vals[-last:] if last else vals
        return float(np.mean(vals)) if vals else float("nan")


def make_optimizer(
    model: TaskModel, trainable: Sequence[nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """AdaGrad (or Adam) with L2 (``weight_decay``): one group for id embedding tables, one for the rest.

    Why Adam is offered: AdaGrad divides each step by √(Σ_s g_s²), so a dense weight that gets a
    gradient every step takes steps that shrink as 1/√t (after 250 steps, 1/16 of the first), while
    an id row only accumulates on the steps its id occurs. Adam normalises by a moving average
    instead, so dense layers keep learning at ``lr``.
    """
    tables = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
        for p in m.parameters()
    }
    emb = [p for p in trainable if id(p) in tables]
    dense = [p for p in trainable if id(p) not in tables]
    groups: list[dict[str, Any]] = [{"params": dense}]
    if emb:
        groups.append({"params": emb, "lr": cfg.embedding_lr or cfg.lr})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.l2)
    return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.l2)


def resolve_steps(cfg: TrainConfig, tables: Mapping[str, ExampleTable]) -> int:
    """``steps``, or the step count that shows the task with most contexts ``epochs`` times."""
    if cfg.epochs is None:
        return cfg.steps
    largest = max(t.n_contexts for t in tables.values())
    return max(1, math.ceil(cfg.epochs * largest / cfg.batch_size))


class LossCombiner(nn.Module):
    r"""How the task losses become one objective.

    - ``sum``:         L = Σ_t L_t
    - ``norm``:        L = Σ_t L_t / L̄_t, L̄_t an exponential moving average (0.9) of L_t,
                        detached (every task contributes ≈ 1 whatever its loss scale: PPP's
                        7-way cross-entropy starts near 1.9, CTR's BCE near 0.35)
    - ``init_norm``:   L = Σ_t L_t / L⁰_t, L⁰_t the mean of L_t over its first ``INIT_STEPS``
                        steps (a running mean until then), then fixed: the tasks' scales are equalised
                        as in ``norm``, but a task whose training loss collapses (PPP memorising the
                        training users' levels: results/budget.md) keeps its starting weight instead
                        of ``norm``'s 1/L̄_t, which grows as L̄_t → 0 (×50 at L̄ = 0.02)
    - ``uncertainty``: L = Σ_t ½ (exp(-s_t) L_t + s_t), s_t = log σ_t² learned
                        (Kendall, Gal & Cipolla 2018); at the optimum exp(-s_t) = 1/L_t
    """

    INIT_STEPS = 20

    def __init__(self, tasks: Sequence[str], mode: str) -> None:
        super().__init__()
        self.mode, self.tasks = mode, tuple(tasks)
        self.log_var = nn.Parameter(torch.zeros(len(self.tasks))) if mode == "uncertainty" else None
        self.running: dict[str, float] = {}
        self.seen: dict[str, int] = {}

    def weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each task's term of L (their sum is the objective)."""
        if self.mode == "sum":
            return dict(losses)
        if self.mode == "norm":
            out = {}
            for t, v in losses.items():
                prev = self.running.get(t)
                cur = float(v.detach())
                self.running[t] = cur if prev is None else 0.9 * prev + 0.1 * cur
                out[t] = v / max(self.running[t], 1e-6)
            return out
        if self.mode == "init_norm":
            out = {}
            for t, v in losses.items():
                k = self.seen.get(t, 0)
                if k < self.INIT_STEPS:  # the mean of the first INIT_STEPS losses, then frozen
                    self.running[t] = (self.running.get(t, 0.0) * k + float(v.detach())) / (k + 1)
                    self.seen[t] = k + 1
                out[t] = v / max(self.running[t], 1e-6)
            return out
        assert self.log_var is not None
        lv = self.log_var
        return {t: 0.5 * (torch.exp(-lv[i]) * losses[t] + lv[i]) for i, t in enumerate(self.tasks) if t in losses}

    def weights(self) -> dict[str, float]:
        """Current multiplier of each task's loss (for the log)."""
        if self.mode == "uncertainty" and self.log_var is not None:
            return {t: 0.5 * float(torch.exp(-self.log_var[i].detach())) for i, t in enumerate(self.tasks)}
        if self.mode in ("norm", "init_norm"):
            return {t: 1.0 / max(v, 1e-6) for t, v in self.running.items()}
        return dict.fromkeys(self.tasks, 1.0)


def combine_gradients(
    terms: Mapping[str, Tensor], params: Sequence[nn.Parameter], mode: str, clip_norm: float, seed: int
) -> None:
    r"""Per-task gradients g_t = ∇_θ L_t, combined into ``p.grad``.

    - ``task_clip``: g = Σ_t g_t · min(1, c / ‖g_t‖)  (no task's step exceeds the clip alone)
    - ``pcgrad``:    for each t, for each other u (random order) with g_t·g_u < 0:
                     g_t ← g_t − (g_t·g_u / ‖g_u‖²) g_u;  then g = Σ_t g_t, clipped to c
    Costs one backward pass per task (the graph is kept between them).
    """
    grads: list[Tensor] = []
    names = list(terms)
    for i, t in enumerate(names):
        gs = torch.autograd.grad(terms[t], params, retain_graph=i < len(names) - 1, allow_unused=True)
        flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs, strict=True)]
        grads.append(torch.cat(flat))
    total = torch.zeros_like(grads[0])
    if mode == "task_clip":
        for g in grads:
            total += g * min(1.0, clip_norm / (float(g.norm()) + 1e-12))
    else:
        rng = np.random.default_rng(seed)
        projected = []
        for i, g in enumerate(grads):
            g = g.clone()
            for j in rng.permutation(len(grads)).tolist():
                if j == i:
                    continue
                dot = float(g @ grads[j])
                if dot < 0:
                    g -= dot / (float(grads[j] @ grads[j]) + 1e-12) * grads[j]
            projected.append(g)
        for g in projected:
            total += g
        norm = float(total.norm())
        if norm > clip_norm:
            total = total * (clip_norm / norm)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total[offset : offset + n].view_as(p).clone()
        offset += n


def fit(
    model: TaskModel,
    prep: Prepared,
    cfg: TrainConfig,
    *,
    params: Sequence[nn.Parameter] | None = None,
    train_encoder: bool = True,
    progress: bool = True,
    desc: str = "train",
    eval_every: int = 0,
    on_eval: Callable[[int], dict[str, float]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    log: FitLog | None = None,
) -> FitLog:
    """AdaGrad on the combined task losses for ``cfg.tasks``; returns the log.

    ``params`` restricts what is optimised (RT: the shop head only), and
    ``train_encoder=False`` then also skips the encoder's backward pass.
    ``optimizer`` (default: a fresh ``make_optimizer``) lets a daily run resume
    yesterday's optimizer state (``training.daily``) and save it afterwards.
    One step (``schedule="all"``): a mini-batch of every task, L = combine(L_t) (see
    :class:`LossCombiner`), gradients summed (``global``: clipped once) or combined per task
    (:func:`combine_gradients`), one AdaGrad update.  ``round_robin``: each step one task's
    mini-batch, cycling, for T × ``steps`` steps.

    ``on_eval(step)`` is called every ``eval_every`` steps and after the last one (its result
    goes to ``log.curve``) without disturbing training (:func:`_isolated_eval`): the same
    weights come out with or without it. ``log`` (default: a fresh one) lets the caller read
    the losses so far from inside ``on_eval``.
    """
    missing = [t for t in cfg.tasks if t not in prep.tables]
    if missing:
        raise ValueError(f"no training examples for task(s) {missing}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tables = {t: prep.tables[t] for t in cfg.tasks}
    batches = MultiTaskBatches(
        prep.store, tables, model.cfg, cfg.batch_size, cfg.seed, cfg.max_history, cfg.anchor_every
    )
    trainable = list(params) if params is not None else list(model.parameters())
    combiner = LossCombiner(cfg.tasks, cfg.weighting)
    opt = optimizer if optimizer is not None else make_optimizer(model, trainable, cfg)
    if combiner.log_var is not None:  # learned task weights: never part of a saved (per-parameter) state
        opt.add_param_group({"params": [combiner.log_var], "lr": cfg.embedding_lr or cfg.lr, "weight_decay": 0.0})
    dropout = model.cfg.dropout if cfg.dropout is None else cfg.dropout
    steps, start = resolve_steps(cfg, tables), time.perf_counter()
    log = log if log is not None else FitLog()
    n_tasks = len(cfg.tasks)
    multipliers = cfg.task_multipliers()
    encoder_tasks = cfg.encoder_task_set()  # every task when ``encoder_tasks`` is empty
    tower_groups = cfg.tower_task_groups()
    embedding_tasks = tuple(t.strip() for t in cfg.embedding_tasks.split(",") if t.strip()) or None
    _tower_routing(model, tower_groups)  # a group count that does not fit the model fails before step 1
    if cfg.schedule == "round_robin":
        steps *= n_tasks
    model.train()
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        batch = next(batches) if cfg.schedule == "all" else batches.one_task((step - 1) % n_tasks)
        batch.context = drop_profile(batch.context, cfg.profile_dropout, gen)
        losses = batch_losses(model, batch, dropout, train_encoder, encoder_tasks, tower_groups, embedding_tasks)
        terms = combiner.weighted(losses)
        terms = {t: v * multipliers[t] if t in multipliers else v for t, v in terms.items()}
        total = torch.stack(list(terms.values())).sum()
        opt.zero_grad(set_to_none=True)
        if cfg.grad_mode == "global" or len(terms) == 1:
            total.backward()  # type: ignore[no-untyped-call]
            log.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_norm)))
        else:
            lv = combiner.log_var
            lv_grad = torch.autograd.grad(total, [lv], retain_graph=True)[0] if lv is not None else None
            combine_gradients(terms, trainable, cfg.grad_mode, cfg.clip_norm, cfg.seed + step)
            if lv is not None:
                lv.grad = lv_grad
        opt.step()
        log.losses.append({t: float(v.detach()) for t, v in losses.items()})
        bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        if on_eval is not None and eval_every and (step % eval_every == 0 or step == steps):
            log.curve.append({"step": float(step), **_isolated_eval(on_eval, step)})
            model.train()
        if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
            log.stopped_early = True
            break
    model.train(False)
    log.task_weights = {t: w * multipliers.get(t, 1.0) for t, w in combiner.weights().items()}
    log.seconds = time.perf_counter() - start
    return log


def _isolated_eval(on_eval: Callable[[int], dict[str, float]], step: int) -> dict[str, float]:
    """Run an evaluation hook outside training: no autograd graph, and the global RNG streams
    training draws from (torch's for dropout; numpy's, should anything use it) put back as they were,
    whatever the hook draws. The optimizer, the batch sampler and the profile-dropout generator are
    never handed to the hook. ``fit`` puts the model back in train mode afterwards."""
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    try:
        with torch.no_grad():
            return on_eval(step)
    finally:
        torch.set_rng_state(torch_rng)
        np.random.set_state(np_rng)


def train(
    model: DUPN | None,
    train_cfg: TrainConfig,
    enc_cfg: EncoderConfig | None,
    data: TrainData | Prepared | tuple[Any, Any, Any],
    progress: bool = True,
) -> DUPN:
    """Train ``model`` (or a fresh DUPN of ``enc_cfg.variant(train_cfg.variant)``) on ``data``.

    ``data`` is (histories, users, examples by task) — a tuple or ``TrainData`` —
    or a ``Prepared``, which avoids re-encoding histories when models share data.
    """
    fresh = model is None
    if model is None:
        model = DUPN((enc_cfg or EncoderConfig()).variant(train_cfg.variant))
    if isinstance(data, tuple):
        data = TrainData(*data)
    prep = data if isinstance(data, Prepared) else prepare(data, model.cfg, train_cfg.tasks)
    if fresh:
        init_output_biases(model, prep, train_cfg.tasks)
    fit(model, prep, train_cfg, progress=progress, desc=f"DUPN-{train_cfg.variant}")
    return model

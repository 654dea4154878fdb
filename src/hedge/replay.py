"""`hedge replay`: a route's real serving path, run over a recorded multi-model data set.

This module owns the replay harness and its report. The route is served by the production code,
unchanged: the config is loaded with `hedge.config`, the `Gateway` is built from it, and each
recorded prompt goes through `Gateway.chat` (fail-over, cascade stages, voters, validators,
retries and breakers included). Only the deployments differ: they are `kind: replay`
deployments (`hedge.backends.replay`), which answer with a recorded model's response. Each
answer is then scored with the recording's `correct` for the model whose answer was returned,
and priced from the trace's attempts with `hedge.accounting.cost_usd`, exactly as the
gateway's own accounting prices live calls.

Where the recording cannot provide a validator's signal, the replay refuses instead of
simulating it: a judge (no judge outputs are recorded), any validator on a prompt whose answer
text is not recorded (e.g. MBPP code, MMLU), json_schema on tasks that have no JSON answers, and
any deployment that is not a replay of the same recording (it would call a real upstream).
Agreement is allowed: the voters' recorded answers are the real signal.

The report math is pure and lives here too: accuracy, total cost, cost per successful outcome
(total cost / number correct), the same for every single model straight from the recording
(no gateway), the oracle (cheapest correct model per prompt), the cost/accuracy Pareto
frontier, and the choice of a configuration on the train split. Prompts are split by the
recording's own split (`split_routerdc`) when it has one, else by a stable hash of prompt_id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from hedge import config as hedge_config
from hedge.accounting import cost_usd
from hedge.backends.replay import (
    RecordedOutcome,
    RecordedPrompt,
    Recording,
    RecordingError,
    load_recording,
)
from hedge.config import LedgerSettings, Prices, ReplayDeployment, Route, Settings
from hedge.errors import HedgeError
from hedge.gateway import Gateway
from hedge.trace import Trace
from hedge.types import ChatRequest
from hedge.validators import JsonSchemaCheck, JudgeCheck, PythonTestsCheck

Split = Literal["train", "test", "all"]
SPLITS: tuple[Split, ...] = ("train", "test", "all")
DEFAULT_TEST_FRACTION = 0.5


class ReplayRefused(Exception):
    """The route cannot be replayed honestly on this recording; the message says why."""


# ---- the recording, for the harness ----------------------------------------------------------


def recorded_outcome(
    recording: Recording | str | Path, prompt_id: str, model: str
) -> RecordedOutcome | None:
    """The recorded row (with its `correct`) of `model` on `prompt_id`, or None. For scoring
    only: replay backends never put `correct` into an answer."""
    rec = recording if isinstance(recording, Recording) else load_recording(recording)
    return rec.outcome(prompt_id, model)


def split_of(prompt: RecordedPrompt, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """'train' or 'test': the recording's own split when it has one, else a stable hash of the
    prompt_id (the first 8 bytes of its SHA-256 as a fraction of 2^64, below `test_fraction`
    is test), so the same prompt always lands on the same side."""
    if prompt.split in ("train", "test"):
        return prompt.split
    h = int.from_bytes(hashlib.sha256(prompt.prompt_id.encode()).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


@dataclass(frozen=True, slots=True)
class Selection:
    prompt_ids: tuple[str, ...]
    excluded: dict[str, int]  # reason -> number of prompts left out


def select_prompts(
    recording: Recording,
    *,
    split: Split = "all",
    tasks: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    models: Iterable[str] = (),
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Selection:
    """The prompts to replay, in recording order: in `split`, in one of `tasks` and `datasets`
    (None: all), and scored for every one of `models` (prompts where one of them has no scored
    row are left out and counted, so that every figure is over the same prompts)."""
    task_set = None if tasks is None else set(tasks)
    dataset_set = None if datasets is None else set(datasets)
    needed = tuple(dict.fromkeys(models))
    kept: list[str] = []
    excluded: Counter[str] = Counter()
    for p in recording.prompts.values():
        if split != "all" and split_of(p, test_fraction) != split:
            continue
        if task_set is not None and p.task not in task_set:
            continue
        if dataset_set is not None and p.dataset not in dataset_set:
            continue
        missing = [
            m
            for m in needed
            if (o := recording.outcome(p.prompt_id, m)) is None or o.correct is None
        ]
        if missing:
            excluded[f"no scored row for {', '.join(missing)}"] += 1
            continue
        kept.append(p.prompt_id)
    return Selection(tuple(kept), dict(excluded))


# ---- figures (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    """Accuracy and cost of one policy over `n` prompts."""

    name: str
    n: int
    correct: float  # the number of successful outcomes (a sum of scores in [0, 1])
    cost_usd: float  # total

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def cost_per_success(self) -> float:
        """Total cost / number of successful outcomes (inf when nothing succeeded)."""
        return self.cost_usd / self.correct if self.correct else math.inf

    @property
    def cost_per_query(self) -> float:
        return self.cost_usd / self.n if self.n else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "total_cost_usd": self.cost_usd,
            "cost_per_query_usd": self.cost_per_query,
            "cost_per_success_usd": (
                None if math.isinf(self.cost_per_success) else self.cost_per_success
            ),
        }


def row_cost(outcome: RecordedOutcome, prices: Prices | None) -> float:
    """A recorded call's cost: its tokens at `prices` (as the gateway prices a replayed call),
    else the recording's own cost_usd."""
    if prices is not None:
        return cost_usd(outcome.usage, prices)
    if outcome.cost_usd is not None:
        return outcome.cost_usd
    raise ReplayRefused(
        f"no price for model '{outcome.model}': the recording has no cost_usd and no replay "
        "deployment of the config records this model with prices. Fix: add one, or pass prices."
    )


def _row(recording: Recording, prompt_id: str, model: str) -> RecordedOutcome:
    o = recording.outcome(prompt_id, model)
    if o is None or o.correct is None:
        raise ReplayRefused(f"model '{model}' has no scored row for prompt '{prompt_id}'")
    return o


def single_model(
    recording: Recording, prompt_ids: Sequence[str], model: str, prices: Prices | None
) -> Figures:
    """Always calling `model`, straight from the recording (no gateway needed)."""
    rows = [_row(recording, pid, model) for pid in prompt_ids]
    return Figures(
        model,
        len(rows),
        sum(o.correct or 0.0 for o in rows),
        sum(row_cost(o, prices) for o in rows),
    )


def oracle(
    recording: Recording,
    prompt_ids: Sequence[str],
    models: Sequence[str],
    prices: Mapping[str, Prices],
    name: str = "oracle",
) -> tuple[Figures, dict[str, int]]:
    """Per prompt, the cheapest model among those with the best score (the cheapest correct
    one; the cheapest of all when none is correct). Returns the figures and how often each
    model was picked."""
    correct = cost = 0.0
    picks: Counter[str] = Counter()
    for pid in prompt_ids:
        options = [
            (-(o.correct or 0.0), row_cost(o, prices.get(m)), m)
            for m in models
            for o in (_row(recording, pid, m),)
        ]
        best = min(options)
        correct -= best[0]
        cost += best[1]
        picks[best[2]] += 1
    return Figures(name, len(prompt_ids), correct, cost), dict(picks.most_common())


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    kind: str  # "route", "model", "oracle", "config", ...
    cost_per_query: float
    accuracy: float


def pareto_front(points: Sequence[Point], *, with_oracle: bool = False) -> list[Point]:
    """The points no other point beats on both cost and accuracy, cheapest first. The oracle
    is left out unless asked for: it knows the answers, so it bounds the frontier rather than
    being on it."""
    front: list[Point] = []
    usable = [p for p in points if with_oracle or p.kind != "oracle"]
    for p in sorted(usable, key=lambda p: (p.cost_per_query, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy:
            front.append(p)
    return front


def choose(
    candidates: Sequence[Figures], reference: Figures, min_accuracy_ratio: float = 0.99
) -> Figures | None:
    """The candidate with the lowest cost per success among those reaching
    `min_accuracy_ratio` x the reference's accuracy (ties: higher accuracy, then name)."""
    floor = min_accuracy_ratio * reference.accuracy
    eligible = [c for c in candidates if c.accuracy >= floor - 1e-12]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (c.cost_per_success, -c.accuracy, c.name))


def ratios(figures: Figures, reference: Figures) -> dict[str, float | None]:
    """Accuracy and cost per success relative to a reference policy (e.g. GPT-4 alone)."""

    def div(a: float, b: float) -> float | None:
        return None if b == 0 or math.isinf(a) or math.isinf(b) else a / b

    return {
        "accuracy": div(figures.accuracy, reference.accuracy),
        "cost_per_success": div(figures.cost_per_success, reference.cost_per_success),
        "cost_per_query": div(figures.cost_per_query, reference.cost_per_query),
    }


# ---- what a route needs from the recording ---------------------------------------------------


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def refusals(
    settings: Settings, route_name: str, recording: Recording, prompt_ids: Sequence[str]
) -> list[str]:
    """Every reason the route cannot be replayed honestly on these prompts (empty: it can)."""
    cfg = settings.config
    route = cfg.routes.get(route_name)
    if route is None:
        return [f"no route '{route_name}' in {settings.source} (routes: {', '.join(cfg.routes)})"]
    reasons: list[str] = []
    if not prompt_ids:
        reasons.append("no prompt is selected (check --split and --task)")
    if route.cascade is not None and importlib.util.find_spec("hedge.compose.cascade") is None:
        reasons.append("the route is a cascade, and this build has no cascade executor")
    stages = route.cascade.stages if route.cascade else ()
    judges = [
        (i + 1, v.deployment)
        for i, st in enumerate(stages)
        for v in st.validators
        if isinstance(v, JudgeCheck)
    ]
    for stage, judge in judges:
        reasons.append(
            f"stage {stage} has a judge validator ({judge}): no judge outputs are recorded, "
            "so its verdicts cannot be replayed"
        )
    names = list(dict.fromkeys([*route.deployments, *(j for _, j in judges)]))
    for name in names:
        dep = cfg.deployments[name]
        if not isinstance(dep, ReplayDeployment):
            reasons.append(
                f"deployment '{name}' is kind '{dep.kind}', not a replay: it would call a real "
                "upstream"
            )
        elif not _same_file(dep.recording, recording.path):
            reasons.append(
                f"deployment '{name}' replays {dep.recording}, not {recording.path}: every "
                "deployment must replay the recording being scored"
            )
        elif dep.recorded_model not in recording.models:
            reasons.append(
                f"deployment '{name}': recorded_model '{dep.recorded_model}' is not in the "
                f"recording (recorded: {', '.join(recording.models)})"
            )
    if reasons:
        return reasons
    silent_deployments: set[str] = set()
    for name in route.deployments:
        dep = cfg.deployments[name]
        assert isinstance(dep, ReplayDeployment)
        rows = [recording.outcome(pid, dep.recorded_model) for pid in prompt_ids]
        unscored = [pid for pid, o in zip(prompt_ids, rows, strict=True) if o is None]
        if unscored:
            reasons.append(
                f"deployment '{name}' ({dep.recorded_model}) has no recorded answer for "
                f"{len(unscored)} selected prompts (e.g. {unscored[0]})"
            )
        silent = Counter(o.task or "?" for o in rows if o is not None and o.response is None)
        if silent:
            silent_deployments.add(name)
            top = sorted(silent.items(), key=lambda tn: (-tn[1], tn[0]))
            what = ", ".join(f"{t}: {n}" for t, n in top[:5])
            what += f" and {len(top) - 5} more tasks" if len(top) > 5 else ""
            reasons.append(
                f"deployment '{name}' ({dep.recorded_model}): the answer text is not recorded "
                f"for {sum(silent.values())} selected prompts ({what}), only their scores; "
                "the answer and any validator's signal on it cannot be replayed. Fix: leave "
                "those tasks out (--task)."
            )
    for i, st in enumerate(stages):
        for v in st.validators:
            models = [
                d.recorded_model
                for name in st.deployments
                if isinstance(d := cfg.deployments[name], ReplayDeployment)
            ]
            if isinstance(v, PythonTestsCheck) and silent_deployments & set(st.deployments):
                reasons.append(
                    f"stage {i + 1} runs python_tests, which needs the recorded code answers "
                    "(see above: they are not in the recording)"
                )
            if isinstance(v, JsonSchemaCheck):
                tasks: dict[str, bool] = {}
                for pid in prompt_ids:
                    for m in models:
                        o = recording.outcome(pid, m)
                        if o is not None and o.response is not None:
                            task = o.task or "?"
                            tasks[task] = tasks.get(task, False) or _is_json(o.response)
                no_json = sorted(t for t, any_json in tasks.items() if not any_json)
                if no_json:
                    reasons.append(
                        f"stage {i + 1} checks json_schema, but no recorded answer of its "
                        f"models on task(s) {', '.join(no_json)} is JSON: the check would only "
                        "measure the task's format"
                    )
    return reasons


def model_prices(settings: Settings) -> dict[str, Prices]:
    """Each recorded model's prices, from the config's replay deployments that record it
    (so that single models and the oracle are priced like the replayed calls)."""
    out: dict[str, Prices] = {}
    for dep in settings.config.deployments.values():
        if isinstance(dep, ReplayDeployment):
            out.setdefault(dep.recorded_model, dep.prices)
    return out


# ---- running a route -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptResult:
    prompt_id: str
    task: str | None
    deployment: str | None  # whose answer was returned
    model: str | None  # the recorded model behind it
    stage: int | None  # cascade stage (1-based) whose answer was returned
    correct: float
    cost_usd: float
    calls: int
    failed_calls: int
    error: str | None = None


def _scored_model(
    settings: Settings,
    route: Route,
    recording: Recording,
    prompt_id: str,
    answered_by: str | None,
    content: str | None,
) -> str:
    """The recorded model whose answer the gateway returned: the deployment that answered,
    checked against the recorded text (any route deployment with that exact text otherwise)."""
    deps = settings.config.deployments

    def model_of(name: str) -> str:
        dep = deps[name]
        assert isinstance(dep, ReplayDeployment)
        return dep.recorded_model

    order = ([answered_by] if answered_by in route.deployments else []) + list(route.deployments)
    for name in order:
        assert name is not None
        o = recording.outcome(prompt_id, model_of(name))
        if o is not None and o.response == content:
            return o.model
    raise ReplayRefused(
        f"prompt '{prompt_id}': the answer returned by the gateway is no deployment's recorded "
        "answer, so it cannot be scored"
    )


async def replay_route(
    gateway: Gateway,
    settings: Settings,
    route_name: str,
    recording: Recording,
    prompt_ids: Sequence[str],
    *,
    concurrency: int = 64,
) -> list[PromptResult]:
    """Serve every prompt through `gateway.chat` on `route_name` and score the answers."""
    route = settings.config.routes[route_name]
    deps = settings.config.deployments
    gate = asyncio.Semaphore(concurrency)

    async def one(pid: str) -> PromptResult:
        request = ChatRequest.model_validate(
            {
                "model": route_name,
                "messages": [{"role": "user", "content": recording.request_text(pid)}],
            }
        )
        trace = Trace(route=route_name)
        error: str | None = None
        model: str | None = None
        correct = 0.0
        async with gate:
            try:
                response = await gateway.chat(request, trace)
            except HedgeError as e:
                error = e.message
            else:
                model = _scored_model(
                    settings,
                    route,
                    recording,
                    pid,
                    trace.answered_by,
                    response.choices[0].content if response.choices else None,
                )
                correct = _row(recording, pid, model).correct or 0.0
        cost = sum(
            cost_usd(a.usage, deps[a.deployment].prices)
            for a in trace.attempts
            if a.usage is not None
        )
        return PromptResult(
            pid,
            recording.prompts[pid].task,
            trace.answered_by if error is None else None,
            model,
            trace.stage if error is None else None,
            correct,
            cost,
            len(trace.attempts),
            sum(1 for a in trace.attempts if a.error is not None),
            error,
        )

    # One task per prompt: each gets its own copy of the context, so its Trace stays its own.
    return list(await asyncio.gather(*(asyncio.create_task(one(pid)) for pid in prompt_ids)))


@dataclass(slots=True)
class ReplayReport:
    recording: str
    config: str
    route: str
    split: Split
    tasks: list[str] | None
    prompts: int
    excluded: dict[str, int]
    route_figures: Figures
    by_stage: dict[str, int]
    by_model: dict[str, int]
    errors: dict[str, int]  # error message -> prompts
    failed_calls: int
    singles: dict[str, Figures]
    oracle: Figures
    oracle_picks: dict[str, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    results: list[PromptResult] = field(default_factory=list, repr=False)

    def points(self) -> list[Point]:
        pts = [Point(f"route {self.route}", "route", *self._xy(self.route_figures))]
        pts += [Point(m, "model", *self._xy(f)) for m, f in self.singles.items()]
        pts.append(Point("oracle", "oracle", *self._xy(self.oracle)))
        return pts

    @staticmethod
    def _xy(f: Figures) -> tuple[float, float]:
        return f.cost_per_query, f.accuracy

    def as_dict(self, with_prompts: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "recording": self.recording,
            "config": self.config,
            "route": self.route,
            "split": self.split,
            "tasks": self.tasks,
            "prompts": self.prompts,
            "excluded_prompts": self.excluded,
            "route_figures": self.route_figures.as_dict(),
            "answered_by_stage": self.by_stage,
            "answered_by_model": self.by_model,
            "errors": self.errors,
            "failed_calls": self.failed_calls,
            "single_models": {m: f.as_dict() for m, f in self.singles.items()},
            "oracle": self.oracle.as_dict(),
            "oracle_picks": self.oracle_picks,
            "pareto_front": [p.name for p in pareto_front(self.points())],
            "seconds": self.seconds,
            "notes": self.notes,
        }
        if with_prompts:
            out["per_prompt"] = [dataclasses.asdict(r) for r in self.results]
        return out


def _settings(config: str | Path | Settings) -> Settings:
    settings = config if isinstance(config, Settings) else hedge_config.load(str(config))
    # A replay must never write the production ledger.
    cfg = settings.config.model_copy(update={"ledger": LedgerSettings(backend="none")})
    return dataclasses.replace(settings, config=cfg)


async def replay(
    outcomes_path: str | Path,
    config: str | Path | Settings,
    route: str,
    *,
    split: Split = "all",
    tasks: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    concurrency: int = 64,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    prices: Mapping[str, Prices] | None = None,
) -> ReplayReport:
    """Replay `route` of `config` over the recording (see the module docstring).

    `models`: the single models (and the oracle's choices) to report; default every recorded
    model. `prices`: per recorded model, overriding the config's (for models no deployment
    records). Raises ReplayRefused with every reason when the route cannot be replayed."""
    t0 = time.perf_counter()
    settings = _settings(config)
    try:
        recording = await asyncio.to_thread(load_recording, outcomes_path)
    except RecordingError as e:
        raise ReplayRefused(str(e)) from None
    route_cfg = settings.config.routes.get(route)
    route_models = [
        d.recorded_model
        for name in (route_cfg.deployments if route_cfg is not None else ())
        if isinstance(d := settings.config.deployments[name], ReplayDeployment)
    ]
    report_models = list(recording.models if models is None else models)
    unknown = [m for m in report_models if m not in recording.models]
    if unknown:
        raise ReplayRefused(f"model(s) {', '.join(unknown)} are not in {recording.path}")
    task_list = None if tasks is None else list(tasks)
    selection = select_prompts(
        recording,
        split=split,
        tasks=task_list,
        datasets=datasets,
        models=[*route_models, *report_models],
        test_fraction=test_fraction,
    )
    ids = selection.prompt_ids
    reasons = refusals(settings, route, recording, ids)
    if reasons:
        raise ReplayRefused(
            f"cannot replay route '{route}' on {recording.path}:\n"
            + "\n".join(f"  - {r}" for r in reasons)
        )
    route_deps = route_cfg.deployments if route_cfg is not None else []
    price_list = {**model_prices(settings), **(prices or {})}
    notes = [
        f"deployment '{name}' has no prices configured: its calls cost 0"
        for name in route_deps
        if settings.config.deployments[name].prices == Prices()
    ]
    gateway = Gateway.from_settings(settings)
    try:
        await gateway.start(wait=True)
        down = {
            name: s.detail
            for name in route_deps
            if (s := gateway.breakers[name].status()).state != "ready"
        }
        if down:
            raise ReplayRefused(
                "deployments not ready: " + "; ".join(f"{n}: {d}" for n, d in down.items())
            )
        results = await replay_route(
            gateway, settings, route, recording, ids, concurrency=concurrency
        )
    finally:
        await gateway.aclose()
    figures = Figures(
        f"route {route}",
        len(results),
        sum(r.correct for r in results),
        sum(r.cost_usd for r in results),
    )
    singles = {m: single_model(recording, ids, m, price_list.get(m)) for m in report_models}
    best, picks = oracle(recording, ids, report_models, price_list)
    errors = Counter(r.error for r in results if r.error is not None)
    if errors:
        notes.append(f"{sum(errors.values())} prompts ended in an error and count as failures")
    return ReplayReport(
        recording=str(recording.path),
        config=settings.source,
        route=route,
        split=split,
        tasks=task_list,
        prompts=len(ids),
        excluded=selection.excluded,
        route_figures=figures,
        by_stage=dict(
            sorted(Counter(str(r.stage) for r in results if r.stage is not None).items())
        ),
        by_model=dict(Counter(r.model for r in results if r.model is not None).most_common()),
        errors=dict(errors),
        failed_calls=sum(r.failed_calls for r in results),
        singles=singles,
        oracle=best,
        oracle_picks=picks,
        seconds=time.perf_counter() - t0,
        notes=notes,
        results=results,
    )


def run_replay(
    outcomes_path: str | Path,
    config: str | Path | Settings,
    route: str,
    *,
    split: Split = "all",
    tasks: Iterable[str] | None = None,
    datasets: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    concurrency: int = 64,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    prices: Mapping[str, Prices] | None = None,
) -> ReplayReport:
    """`replay` from synchronous code (its own event loop)."""
    return asyncio.run(
        replay(
            outcomes_path,
            config,
            route,
            split=split,
            tasks=tasks,
            datasets=datasets,
            models=models,
            concurrency=concurrency,
            test_fraction=test_fraction,
            prices=prices,
        )
    )

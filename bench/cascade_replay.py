"""Cascades replayed on recorded multi-model data: what agreement cascades buy against GPT-4 alone.

Run it from the repository root with one command:

    .venv/bin/python bench/cascade_replay.py

It reads the recorded data sets in ../shared/data (relative to the repository root; `--data`
to change it; nothing from them is copied into the repository), writes
`bench/results/cascade_replay.json` and two PNG plots of cost per query against accuracy with
the Pareto frontier (`bench/results/cascade_replay_routerbench.png`,
`bench/results/cascade_replay_gsm8k.png`), and prints the tables. It is a measurement, not a
test. Every cascade figure comes from `hedge.replay`, i.e. from the production serving path:
a generated hedge.yaml of `kind: replay` deployments, `hedge.config.load`, `Gateway`, the
cascade executor, the validators and `hedge.accounting.cost_usd`. Single models and the oracle
come straight from the recording (no gateway).

A. RouterBench (routerbench_subset), ARC-Challenge + Winogrande. MBPP is left out: its code
   answers are not in the recording (only their scores), so no validator can be replayed on
   it, and `hedge replay` refuses it. The split is the recording's own (RouterDC's
   train/test). Prompts where one of the 11 models has no score are left out (and counted).
   - Grid (explicit, searched on TRAIN): stage 1 = agreement of k of n cheap models, every
     subset of {mixtral-8x7b, Yi-34B, gpt-3.5-turbo-1106, WizardLM-13B, llama-2-70b} with
     n >= 2 and every k in 2..n, normalize choice_letter; stage 2 = gpt-4-1106-preview.
     GPT-4 alone is a candidate too. 49 cascades + GPT-4.
   - Choice: among candidates reaching >= 99% of GPT-4's TRAIN accuracy, the lowest TRAIN
     cost per successful outcome (total cost / number correct).
   - Then on TEST: the chosen config, two unanimous-agreement baselines (3 of 3 of mixtral,
     Yi and llama-2-70b; 5 of 5 of all five), GPT-4 alone, every single model and the oracle
     (cheapest correct model per prompt). Target: >= 0.99x GPT-4's accuracy at <= 0.5x its
     cost per successful outcome.
B. RouteLLM (routellm), MMLU + GSM8K, Mixtral-8x7B-Instruct vs GPT-4-1106. The data has no
   prices: RouterBench's implied prices for the same two models are used (mixtral $0.6/$0.6,
   gpt-4 $10/$30 per 1M tokens). It has no split either: prompts are split 50/50 by a stable
   hash of prompt_id (`hedge.replay.split_of`).
   - MMLU stores no answers (only correctness), so no cascade can be replayed on it: the
     refusal is recorded, and only single models and the oracle are reported.
   - GSM8K stores both models' full answers. With two models, agreement needs both as voters,
     so stage 1 pays GPT-4 every time; what is left are format validators on mixtral's
     answer. Grid on TRAIN: mixtral -> gpt-4 gated by (a) the GSM8K answer format (a regex for
     a final `#### <number>` line), (b) that format plus the refusal check, (c) agreement of
     mixtral and gpt-4 on the final number; and GPT-4 alone. Same choice rule, reported on
     TEST.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from hedge import config as hedge_config
from hedge.backends.replay import Recording, load_recording
from hedge.config import Prices, Settings
from hedge.replay import (
    Figures,
    Point,
    ReplayRefused,
    ReplayReport,
    Split,
    choose,
    oracle,
    ratios,
    recorded_outcome,
    replay,
    select_prompts,
    single_model,
)
from hedge.replay_report import figures_table, plot_frontier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"

GPT4 = "gpt-4-1106-preview"
RB_MODELS = {  # deployment name: RouterBench model
    "gpt4": GPT4,
    "mixtral": "mistralai/mixtral-8x7b-chat",
    "yi34b": "zero-one-ai/Yi-34B-Chat",
    "gpt35": "gpt-3.5-turbo-1106",
    "wizardlm13b": "WizardLM/WizardLM-13B-V1.2",
    "llama70b": "meta/llama-2-70b-chat",
    "mistral7b": "mistralai/mistral-7b-chat",
    "codellama34b": "meta/code-llama-instruct-34b-chat",
    "claude_instant": "claude-instant-v1",
    "claude1": "claude-v1",
    "claude2": "claude-v2",
}
CHEAP = ("mixtral", "yi34b", "gpt35", "wizardlm13b", "llama70b")
BASELINES = {
    "unanimous 3/3 mixtral+yi34b+llama70b": ("mixtral", "yi34b", "llama70b"),
    "unanimous 5/5 all five": CHEAP,
}
RB_TASKS = ("arc-challenge", "winogrande")
RL_MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GSM8K_FORMAT = r"####\s*\$?-?[\d,]*\.?\d+\s*$"
TARGET_ACCURACY, TARGET_COST = 0.99, 0.5


def _deployment(recording: Path, model: str, prices: Prices) -> dict[str, Any]:
    return {
        "kind": "replay",
        "recording": str(recording),
        "recorded_model": model,
        "prices": {"input": prices.input, "output": prices.output},
    }


def _cascade(stage1: list[str], validators: list[dict[str, Any]], final: str) -> dict[str, Any]:
    return {
        "cascade": {
            "stages": [
                {"deployments": stage1, "validators": validators},
                {"deployments": [final]},
            ]
        },
        "max_attempts": 12,
    }


def _agreement_route(members: tuple[str, ...], k: int) -> tuple[str, dict[str, Any]]:
    name = f"agree {k}/{len(members)} {'+'.join(members)}"
    check = {"kind": "agreement", "k": k, "normalize": "choice_letter"}
    return name, _cascade(list(members), [check], "gpt4")


def _write_config(tmp: Path, name: str, body: dict[str, Any]) -> Settings:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return hedge_config.load(str(path))


def _implied_prices(data: Path) -> dict[str, Prices]:
    raw = orjson.loads((data / "routerbench_subset" / "prices_implied.json").read_bytes())
    return {
        m: Prices(
            input=float(p["usd_per_1m_input_tokens"]), output=float(p["usd_per_1m_output_tokens"])
        )
        for m, p in raw["prices"].items()
    }


async def _run(
    outcomes: Path,
    settings: Settings,
    routes: list[str],
    split: Split,
    tasks: tuple[str, ...] | None,
    datasets: tuple[str, ...] | None,
    test_fraction: float = 0.5,
) -> dict[str, ReplayReport]:
    out: dict[str, ReplayReport] = {}
    for route in routes:
        out[route] = await replay(
            outcomes,
            settings,
            route,
            split=split,
            tasks=tasks,
            datasets=datasets,
            test_fraction=test_fraction,
            concurrency=64,
        )
    return out


def _entry(name: str, train: Figures | None, test: Figures, ref_test: Figures) -> dict[str, Any]:
    r = ratios(test, ref_test)
    return {
        "name": name,
        "train": None if train is None else train.as_dict(),
        "test": test.as_dict(),
        "test_vs_gpt4": r,
    }


def _verdict(test: Figures, ref: Figures) -> dict[str, Any]:
    r = ratios(test, ref)
    acc, cost = r["accuracy"] or 0.0, r["cost_per_success"]
    return {
        "accuracy_x_gpt4": acc,
        "cost_per_success_x_gpt4": cost,
        "accuracy_target_met": acc >= TARGET_ACCURACY,
        "cost_target_met": cost is not None and cost <= TARGET_COST,
    }


def _by_stage(report: ReplayReport, rec: Recording) -> dict[str, Any]:
    """Per cascade stage: how many prompts it answered, how many of them right, and how many
    GPT-4 alone gets right on the same prompts (where the accuracy is lost or won)."""
    out: dict[str, Any] = {}
    for stage in sorted({r.stage for r in report.results if r.stage is not None}):
        rs = [r for r in report.results if r.stage == stage]
        ref = [recorded_outcome(rec, r.prompt_id, GPT4) for r in rs]
        out[str(stage)] = {
            "prompts": len(rs),
            "share": len(rs) / len(report.results),
            "correct": sum(r.correct for r in rs),
            "gpt4_correct_on_the_same_prompts": sum((o.correct or 0.0) if o else 0.0 for o in ref),
            "cost_usd": sum(r.cost_usd for r in rs),
        }
    return out


def _stage_desc(route: dict[str, Any]) -> list[dict[str, Any]]:
    if "cascade" not in route:
        return [{"deployments": route["deployments"]}]
    return list(route["cascade"]["stages"])


def routerbench(data: Path, tmp: Path) -> tuple[dict[str, Any], str]:
    outcomes = (data / "routerbench_subset" / "outcomes.jsonl").resolve()
    rec = load_recording(outcomes)
    prices = _implied_prices(data)
    routes: dict[str, dict[str, Any]] = {"gpt4 alone": {"deployments": ["gpt4"]}}
    grid: list[str] = []
    for n in range(2, len(CHEAP) + 1):
        for members in itertools.combinations(CHEAP, n):
            for k in range(2, n + 1):
                name, body = _agreement_route(members, k)
                routes[name] = body
                grid.append(name)
    for label, members in BASELINES.items():
        name, _ = _agreement_route(members, len(members))
        assert name in routes, label
    settings = _write_config(
        tmp,
        "routerbench",
        {
            "ledger": {"backend": "none"},
            "deployments": {d: _deployment(outcomes, m, prices[m]) for d, m in RB_MODELS.items()},
            "routes": routes,
        },
    )
    t0 = time.perf_counter()
    candidates = ["gpt4 alone", *grid]
    train = asyncio.run(_run(outcomes, settings, candidates, "train", RB_TASKS, None))
    train_s = time.perf_counter() - t0
    ref_train = train["gpt4 alone"].route_figures
    pick = choose([train[c].route_figures for c in candidates], ref_train, TARGET_ACCURACY)
    assert pick is not None  # GPT-4 alone always qualifies
    chosen = pick.name.removeprefix("route ")
    t0 = time.perf_counter()
    test = asyncio.run(_run(outcomes, settings, candidates, "test", RB_TASKS, None))
    test_s = time.perf_counter() - t0
    ref_test = test["gpt4 alone"].route_figures
    base = test["gpt4 alone"]
    # MBPP: show the refusal on real data rather than only saying it.
    try:
        asyncio.run(replay(outcomes, settings, grid[0], split="test", tasks=["mbpp"]))
        mbpp_refusal = "not refused (unexpected)"
    except ReplayRefused as e:
        mbpp_refusal = str(e)

    def named(route: str, label: str | None = None) -> dict[str, Any]:
        e = _entry(label or route, train[route].route_figures, test[route].route_figures, ref_test)
        e["route"] = route
        e["stages"] = _stage_desc(routes[route])
        e["test_by_stage"] = _by_stage(test[route], rec)
        e["verdict"] = _verdict(test[route].route_figures, ref_test)
        return e

    baselines = {
        label: named(_agreement_route(m, len(m))[0], label) for label, m in BASELINES.items()
    }
    result = {
        "tasks": list(RB_TASKS),
        "left_out_tasks": {"mbpp": mbpp_refusal},
        "prompts": {
            "train": train["gpt4 alone"].prompts,
            "test": base.prompts,
            "left_out_train": train["gpt4 alone"].excluded,
            "left_out_test": base.excluded,
        },
        "prices_usd_per_1m": {m: prices[m].model_dump() for m in RB_MODELS.values()},
        "choice_rule": (
            f"lowest train cost per success among candidates with train accuracy >= "
            f"{TARGET_ACCURACY} x GPT-4's train accuracy"
        ),
        "gpt4_train": ref_train.as_dict(),
        "chosen": named(chosen),
        "baselines": baselines,
        "gpt4_test": ref_test.as_dict(),
        "test_single_models": {
            m: {**f.as_dict(), "vs_gpt4": ratios(f, ref_test)} for m, f in base.singles.items()
        },
        "test_oracle": {**base.oracle.as_dict(), "vs_gpt4": ratios(base.oracle, ref_test)},
        "test_oracle_picks": base.oracle_picks,
        "grid": [
            {
                "route": c,
                "train": train[c].route_figures.as_dict(),
                "test": test[c].route_figures.as_dict(),
            }
            for c in candidates
        ],
        "failed_calls": sum(r.failed_calls for r in [*train.values(), *test.values()]),
        "errors": sum(sum(r.errors.values()) for r in [*train.values(), *test.values()]),
        "seconds": {"train_grid": train_s, "test_grid": test_s},
    }
    points = [
        Point(m.split("/")[-1], "model", f.cost_per_query, f.accuracy)
        for m, f in base.singles.items()
    ]
    points.append(Point("oracle", "oracle", base.oracle.cost_per_query, base.oracle.accuracy))
    points += [
        Point(c, "config", test[c].route_figures.cost_per_query, test[c].route_figures.accuracy)
        for c in grid
        if c != chosen and c not in {b["route"] for b in baselines.values()}
    ]
    points += [
        Point(
            label,
            "baseline",
            test[b["route"]].route_figures.cost_per_query,
            test[b["route"]].route_figures.accuracy,
        )
        for label, b in baselines.items()
        if b["route"] != chosen
    ]
    cf = test[chosen].route_figures
    also = [label for label, b in baselines.items() if b["route"] == chosen]
    chosen_label = ("chosen on train (= baseline): " if also else "chosen on train: ") + chosen
    points.append(Point(chosen_label, "route", cf.cost_per_query, cf.accuracy))
    plot = OUT / "cascade_replay_routerbench.png"
    plot_frontier(
        points,
        plot,
        "RouterBench ARC-Challenge + Winogrande, TEST split: cost per query vs accuracy\n"
        "(grey: the agreement grid; red: the config chosen on train)",
    )
    result["plot"] = str(plot.relative_to(ROOT))
    rows = [
        dataclasses.replace(test[chosen].route_figures, name=f"chosen: {chosen}"),
        *[
            dataclasses.replace(test[b["route"]].route_figures, name=f"baseline: {label}")
            for label, b in baselines.items()
        ],
        base.oracle,
        *sorted(base.singles.values(), key=lambda f: f.cost_per_query),
    ]
    table = (
        f"A. RouterBench ARC-Challenge + Winogrande, TEST ({base.prompts} prompts); "
        f"chosen on TRAIN ({train['gpt4 alone'].prompts} prompts): {chosen}\n"
        + figures_table(rows, ref_test)
    )
    return result, table


def _routellm_from_recording(rec: Recording, prices: dict[str, Prices]) -> dict[str, Any]:
    """Single models and the oracle on the TEST half, from the recording alone."""
    both = (RL_MIXTRAL, GPT4)
    out: dict[str, Any] = {}
    for label, ds in (
        ("mmlu", ("routellm_mmlu",)),
        ("gsm8k", ("routellm_gsm8k",)),
        ("mmlu+gsm8k", ("routellm_mmlu", "routellm_gsm8k")),
    ):
        ids = select_prompts(rec, split="test", datasets=ds, models=both).prompt_ids
        singles = {m: single_model(rec, ids, m, prices[m]) for m in both}
        best, picks = oracle(rec, ids, both, prices)
        ref = singles[GPT4]
        out[label] = {
            "test_prompts": len(ids),
            "single_models": {
                m: {**f.as_dict(), "vs_gpt4": ratios(f, ref)} for m, f in singles.items()
            },
            "oracle": {**best.as_dict(), "vs_gpt4": ratios(best, ref)},
            "oracle_picks": picks,
        }
    return out


def routellm(data: Path, tmp: Path) -> tuple[dict[str, Any], str]:
    outcomes = (data / "routellm" / "outcomes.jsonl").resolve()
    implied = _implied_prices(data)
    prices = {RL_MIXTRAL: implied["mistralai/mixtral-8x7b-chat"], GPT4: implied[GPT4]}
    fmt = {"kind": "regex", "pattern": GSM8K_FORMAT}
    routes: dict[str, dict[str, Any]] = {
        "gpt4 alone": {"deployments": ["gpt4"]},
        "mixtral alone": {"deployments": ["mixtral"]},
        "mixtral [gsm8k format] -> gpt4": _cascade(["mixtral"], [fmt], "gpt4"),
        "mixtral [gsm8k format, refusal] -> gpt4": _cascade(
            ["mixtral"], [fmt, {"kind": "refusal"}], "gpt4"
        ),
        "agree 2/2 mixtral+gpt4 [number] -> gpt4": _cascade(
            ["mixtral", "gpt4"], [{"kind": "agreement", "k": 2, "normalize": "number"}], "gpt4"
        ),
    }
    settings = _write_config(
        tmp,
        "routellm",
        {
            "ledger": {"backend": "none"},
            "deployments": {
                "gpt4": _deployment(outcomes, GPT4, prices[GPT4]),
                "mixtral": _deployment(outcomes, RL_MIXTRAL, prices[RL_MIXTRAL]),
            },
            "routes": routes,
        },
    )
    candidates = list(routes)
    gsm = ("routellm_gsm8k",)
    train = asyncio.run(_run(outcomes, settings, candidates, "train", None, gsm))
    test = asyncio.run(_run(outcomes, settings, candidates, "test", None, gsm))
    ref_train = train["gpt4 alone"].route_figures
    ref_test = test["gpt4 alone"].route_figures
    pick = choose([train[c].route_figures for c in candidates], ref_train, TARGET_ACCURACY)
    assert pick is not None
    chosen = pick.name.removeprefix("route ")
    try:
        asyncio.run(
            replay(
                outcomes,
                settings,
                "mixtral [gsm8k format] -> gpt4",
                split="test",
                datasets=["routellm_mmlu"],
            )
        )
        mmlu_refusal = "not refused (unexpected)"
    except ReplayRefused as e:
        mmlu_refusal = " ".join(line.strip() for line in str(e).splitlines())

    rec = load_recording(outcomes)
    from_recording = _routellm_from_recording(rec, prices)

    def named(route: str) -> dict[str, Any]:
        e = _entry(route, train[route].route_figures, test[route].route_figures, ref_test)
        e["stages"] = _stage_desc(routes[route])
        e["test_by_stage"] = _by_stage(test[route], rec)
        e["verdict"] = _verdict(test[route].route_figures, ref_test)
        return e

    base = test["gpt4 alone"]
    agree = "agree 2/2 mixtral+gpt4 [number] -> gpt4"
    s1 = _by_stage(test[agree], rec).get("1", {})
    agreement_note = (
        f"'{agree}' accepts at stage 1 on {s1.get('prompts', 0)} test prompts, where mixtral "
        f"and gpt-4 give the same final number, and returns mixtral's answer (the first "
        f"agreeing voter): {s1.get('correct', 0):g} are graded right, against "
        f"{s1.get('gpt4_correct_on_the_same_prompts', 0):g} for gpt-4's own answer to the same "
        "prompts. The difference is RouteLLM's grading, not better answers: where both final "
        "numbers agree, gpt-4 often writes them as e.g. '#### $20.00' or in prose and is "
        "graded wrong with the right number. And this cascade pays gpt-4 on every prompt."
    )
    result = {
        "prices_note": (
            "RouteLLM records no prices; RouterBench's implied prices for the same two models "
            "are used: mixtral $0.6/$0.6, gpt-4-1106-preview $10/$30 per 1M tokens"
        ),
        "split_note": (
            "no recorded split: 50/50 by a stable hash of prompt_id (hedge.replay.split_of)"
        ),
        "mmlu": {
            "cascade": (
                "not replayable: MMLU records only correctness, no answer text, so no validator "
                "(agreement included) has a signal. hedge replay refuses: " + mmlu_refusal
            ),
            **from_recording["mmlu"],
        },
        "mmlu+gsm8k_from_recording": from_recording["mmlu+gsm8k"],
        "gsm8k": {
            "possible_cascades": (
                "two models only: agreement needs both as voters (stage 1 pays GPT-4 on every "
                "prompt, so it cannot be cheaper than GPT-4 alone); the cheap gates are format "
                "checks on mixtral's answer (regex for a final '#### <number>' line; refusal)."
            ),
            "prompts": {"train": train["gpt4 alone"].prompts, "test": base.prompts},
            "gpt4_train": ref_train.as_dict(),
            "chosen": named(chosen),
            "candidates": {c: named(c) for c in candidates},
            "agreement_note": agreement_note,
            "test_single_models": {
                m: {**f.as_dict(), "vs_gpt4": ratios(f, ref_test)} for m, f in base.singles.items()
            },
            "test_oracle": {**base.oracle.as_dict(), "vs_gpt4": ratios(base.oracle, ref_test)},
        },
        "failed_calls": sum(r.failed_calls for r in [*train.values(), *test.values()]),
        "errors": sum(sum(r.errors.values()) for r in [*train.values(), *test.values()]),
    }
    points = [
        Point(m.split("/")[-1], "model", f.cost_per_query, f.accuracy)
        for m, f in base.singles.items()
    ]
    points.append(Point("oracle", "oracle", base.oracle.cost_per_query, base.oracle.accuracy))
    for c in candidates:
        if "alone" in c:
            continue
        f = test[c].route_figures
        kind = "route" if c == chosen else "candidate"
        points.append(
            Point(c if c != chosen else f"chosen on train: {c}", kind, f.cost_per_query, f.accuracy)
        )
    plot = OUT / "cascade_replay_gsm8k.png"
    plot_frontier(
        points,
        plot,
        "RouteLLM GSM8K (mixtral vs gpt-4), TEST half: cost per query vs accuracy",
        highlight=candidates,
    )
    result["plot"] = str(plot.relative_to(ROOT))
    rows = [
        dataclasses.replace(test[c].route_figures, name=("chosen: " if c == chosen else "") + c)
        for c in candidates
        if "alone" not in c or c == chosen
    ]
    rows += [base.oracle, *sorted(base.singles.values(), key=lambda f: f.cost_per_query)]
    table = (
        f"B. RouteLLM GSM8K, TEST half ({base.prompts} prompts); chosen on TRAIN: {chosen}\n"
        + figures_table(rows, ref_test)
        + "\n   MMLU: no cascade can be replayed (no answer text recorded); from the recording, "
        + "TEST half: "
        + ", ".join(
            f"{m.split('/')[-1]} acc {v['accuracy']:.4f} "
            f"cost/success ${v['cost_per_success_usd']:.6f}"
            for m, v in from_recording["mmlu"]["single_models"].items()
        )
        + f", oracle acc {from_recording['mmlu']['oracle']['accuracy']:.4f}"
    )
    return result, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=OUT / "cascade_replay.json")
    parser.add_argument("--skip-routellm", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "benchmark": "cascade_replay",
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "targets": {
            "accuracy_x_gpt4_at_least": TARGET_ACCURACY,
            "cost_per_success_x_gpt4_at_most": TARGET_COST,
        },
        "notes": [
            "Cascade figures come from hedge.replay: the real Gateway, cascade executor, "
            "validators and accounting over kind: replay deployments.",
            "Single models and the oracle come from the recording; the oracle is the cheapest "
            "correct model per prompt (the cheapest model when none is correct).",
            "cost per successful outcome = total cost / number correct.",
            "These are early-2024 models and prices: compare policies, not current costs.",
        ],
    }
    tables = []
    with tempfile.TemporaryDirectory(prefix="hedge-cascade-replay-") as tmp:
        rb, table = routerbench(args.data, Path(tmp))
        results["routerbench"] = rb
        tables.append(table)
        if not args.skip_routellm:
            rl, table = routellm(args.data, Path(tmp))
            results["routellm"] = rl
            tables.append(table)
    results["total_seconds"] = time.perf_counter() - t0
    results["table"] = "\n\n".join(tables)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(results["table"])
    chosen = rb["chosen"]["verdict"]
    print(
        f"\nRouterBench target (>= {TARGET_ACCURACY}x GPT-4 accuracy at <= {TARGET_COST}x its "
        f"cost per success): accuracy {chosen['accuracy_x_gpt4']:.4f}x "
        f"({'met' if chosen['accuracy_target_met'] else 'MISSED'}), cost per success "
        f"{chosen['cost_per_success_x_gpt4']:.3f}x "
        f"({'met' if chosen['cost_target_met'] else 'MISSED'})"
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

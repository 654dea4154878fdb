"""What each `hedge eval` form does, once hedge.evaluation.cli has parsed and checked the
command line: run a suite, show a run, compare two runs, recommend a route, list runs and
suites. Imported only when `hedge eval` runs, so other commands do not pay for it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from hedge import config
from hedge.evaluation import report_html
from hedge.evaluation import suite as suites
from hedge.evaluation.cli import UsageError, names
from hedge.evaluation.figures import by_candidate, paired
from hedge.evaluation.progress import Progress
from hedge.evaluation.recommend import recommend, snippet
from hedge.evaluation.report_text import (
    Comparison,
    RunView,
    date,
    render_comparison,
    render_run,
    table,
)
from hedge.evaluation.runner import (
    Runner,
    candidates_for,
    gateway_settings,
    judge_routes,
    new_run_id,
    pending,
    select_cases,
)
from hedge.evaluation.store import EvalStore, RunInfo
from hedge.evaluation.targets import InProcessTarget, RemoteTarget, Target, known_prices


def _load_run(store: EvalStore, run_id: str) -> RunInfo:
    found = store.run(run_id)
    if found is None:
        known = [r.run_id for r, _ in store.runs()][-5:]
        hint = f" (latest: {', '.join(known)})" if known else " (no runs yet)"
        raise UsageError(
            f"no evaluation run '{run_id}' in {store.where}{hint}. Fix: see hedge eval runs."
        )
    return found


def _suite_of(run: RunInfo) -> suites.Suite:
    return suites.parse(run.suite_text, run.suite_source)


# ---- hedge eval SUITE ------------------------------------------------------------------------


def _plan_run(
    args: argparse.Namespace, words: list[str], settings: config.Settings, store: EvalStore
) -> tuple[RunInfo, suites.Suite]:
    """The run to execute: a stored one to continue, or a new one, stored now."""
    run_id = args.resume or args.run_id
    existing = store.run(run_id) if run_id else None
    if args.resume and existing is None:
        _load_run(store, args.resume)  # raises with the known runs
    if existing is not None:
        suite = _suite_of(existing)
        if words:
            given = suites.resolve(words[0])
            if given.sha256 != existing.suite_sha256:
                raise UsageError(
                    f"run '{existing.run_id}' was made with a different version of suite "
                    f"'{existing.suite}' ({existing.suite_source}); its cases may have changed. "
                    "Fix: resume it without naming the suite (its stored copy is used), or "
                    "start a new run."
                )
        if args.routes or args.deployments:
            wanted = candidates_for(settings.config, names(args.routes), names(args.deployments))
            if [c.name for c in wanted] != [c.name for c in existing.candidates]:
                raise UsageError(
                    f"run '{existing.run_id}' evaluates "
                    f"{', '.join(c.label for c in existing.candidates)}; a resumed run keeps its "
                    "candidates. Fix: leave out --routes/--deployments, or start a new run."
                )
        print(f"hedge eval: resuming run {existing.run_id}", file=sys.stderr)
        return existing, suite
    if args.url and args.deployments:
        raise UsageError(
            "--deployments runs in-process only (each deployment gets a route of its own). "
            "Fix: with --url, pass --routes of that gateway."
        )
    suite = suites.resolve(words[0])
    candidates = candidates_for(settings.config, names(args.routes), names(args.deployments))
    cases = select_cases(suite, args.limit, names(args.tags) or None)
    now = time.time()
    run = RunInfo(
        run_id=run_id or new_run_id(suite, now),
        created=now,
        suite=suite.name,
        suite_source=suite.source,
        suite_sha256=suite.sha256,
        suite_text=suite.text,
        mode="url" if args.url else "in-process",
        target=args.url.rstrip("/") if args.url else settings.source,
        candidates=tuple(candidates),
        case_ids=tuple(c.id for c in cases),
        options={
            "hedge": _version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "python": platform.python_version(),
            "config": settings.source,
            "limit": args.limit,
            "tags": names(args.tags),
        },
    )
    store.create_run(run)
    return run, suite


def run_suite(
    args: argparse.Namespace, words: list[str], settings: config.Settings, store: EvalStore
) -> int:
    run, suite = _plan_run(args, words, settings, store)
    stored = store.results(run.run_id)
    todo = pending(run, suite, stored, args.retry_errors)
    url = args.url or (run.target if run.mode == "url" else None)
    target: Target
    if url:
        target = RemoteTarget(url, known_prices(settings.config), args.timeout)
    else:
        from hedge.gateway import Gateway

        narrowed = gateway_settings(settings, run.candidates, judge_routes(suite), args.db)
        for warning in narrowed.warnings:
            print(f"hedge eval: warning: {warning}", file=sys.stderr)
        target = InProcessTarget(Gateway.from_settings(narrowed), known_prices(narrowed.config))
    again = {(c.name, k.id) for c, k in todo}
    covered = set(run.case_ids)
    kept = [r for r in stored if r.case_id in covered and (r.candidate, r.case_id) not in again]
    enabled = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    progress = Progress(
        run.suite,
        len(run.case_ids) * len(run.candidates),
        already=len(kept),
        already_passed=sum(r.passed for r in kept),
        already_errors=sum(r.status == "error" for r in kept),
        stream=sys.stderr,
        enabled=enabled,
    )
    runner = Runner(
        run,
        suite,
        target,
        store,
        concurrency=args.concurrency,
        retries=args.retries,
        progress=progress,
    )
    try:
        asyncio.run(_execute(runner, target, todo, url))
    except KeyboardInterrupt:
        progress.close()
        print(
            f"\nhedge eval: interrupted; what finished is stored. Continue with: "
            f"hedge eval --resume {run.run_id}",
            file=sys.stderr,
        )
        return 130
    except _Unreachable as e:
        progress.close()
        print(f"hedge eval: {e}", file=sys.stderr)
        return 1
    progress.close()
    return _show(args, run, store.results(run.run_id))


class _Unreachable(Exception):
    pass


async def _execute(runner: Runner, target: Target, todo: Sequence[Any], url: str | None) -> None:
    if url:
        await _check_reachable(url)
    await target.start()
    try:
        await runner.execute(todo)
    finally:
        await target.aclose()


async def _check_reachable(url: str) -> None:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{url.rstrip('/')}/healthz") as resp,
        ):
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise _Unreachable(
            f"no gateway answers at {url} ({type(e).__name__}). Fix: start it (hedge serve) "
            "or leave out --url to run in-process."
        ) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hedge")
    except PackageNotFoundError:
        return "unknown"


# ---- reports ----------------------------------------------------------------------------------


def build_view(run: RunInfo, results: Sequence[Any]) -> RunView:
    from hedge.evaluation.figures import figures

    wanted = set(run.case_ids)
    grouped = by_candidate(r for r in results if r.case_id in wanted)
    rows = [figures(c.name, c.label, grouped.get(c.name, [])) for c in run.candidates]
    pairs = []
    cands = list(run.candidates)
    if len(cands) <= 6:
        for i, a in enumerate(cands):
            for b in cands[i + 1 :]:
                pairs.append(
                    paired(a.name, grouped.get(a.name, []), b.name, grouped.get(b.name, []))
                )
    missing = len(run.case_ids) * len(cands) - sum(len(v) for v in grouped.values())
    return RunView(run, rows, pairs, missing)


def view_json(view: RunView) -> dict[str, Any]:
    labels = {c.name: c.label for c in view.run.candidates}
    return {
        "run_id": view.run.run_id,
        "suite": view.run.suite,
        "suite_sha256": view.run.suite_sha256,
        "mode": view.run.mode,
        "target": view.run.target,
        "created": view.run.created,
        "cases": len(view.run.case_ids),
        "missing": view.missing,
        "candidates": [
            {
                **dataclasses.asdict(f),
                "accuracy": f.accuracy,
                "cost_per_success_usd": f.cost_per_success,
                "latency_per_success_s": f.latency_per_success_s,
            }
            for f in view.rows
        ],
        "paired": [
            {
                "a": labels.get(p.a, p.a),
                "b": labels.get(p.b, p.b),
                "n": p.n,
                "both": p.both,
                "neither": p.neither,
                "only_a": list(p.only_a),
                "only_b": list(p.only_b),
                "p_value": p.p_value,
            }
            for p in view.pairs
        ],
        "pareto_axis": view.axis,
        "pareto_frontier": [labels.get(n, n) for n in view.frontier],
    }


def _show(args: argparse.Namespace, run: RunInfo, results: Sequence[Any]) -> int:
    view = build_view(run, results)
    if args.json:
        print(orjson.dumps(view_json(view), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_run(view))
    if not args.no_html:
        path = Path(args.html or f"hedge-eval-{run.run_id}.html")
        try:
            path.write_text(report_html.render(view, results), encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write the HTML report to {path}: {e.strerror}") from None
        print(f"HTML report: {path}", file=sys.stderr)
    return 0 if not view.missing else 1


def report(args: argparse.Namespace, words: list[str], store: EvalStore) -> int:
    run = _load_run(store, words[0])
    return _show(args, run, store.results(run.run_id))


def list_runs(store: EvalStore) -> int:
    rows = [
        [
            r.run_id,
            date(r.created),
            r.suite,
            ", ".join(c.label for c in r.candidates),
            f"{n}/{len(r.case_ids) * len(r.candidates)}",
            r.mode,
        ]
        for r, n in store.runs()
    ]
    if not rows:
        print(f"No evaluation runs in {store.where} yet.")
        return 0
    print(table(["run", "started", "suite", "candidates", "results", "mode"], rows, left=6))
    return 0


def list_suites() -> int:
    rows = []
    for name in suites.builtin_names():
        s = suites.resolve(name)
        rows.append([name, str(len(s.cases)), s.header.description or ""])
    print(table(["suite", "cases", "description"], rows, left=3))
    return 0


# ---- compare ---------------------------------------------------------------------------------


def compare(args: argparse.Namespace, words: list[str], store: EvalStore) -> int:
    before, after = (_load_run(store, w) for w in words)
    if before.suite != after.suite:
        raise UsageError(
            f"run {before.run_id} is of suite '{before.suite}' and run {after.run_id} of "
            f"'{after.suite}': only runs of one suite compare case by case."
        )
    if args.candidate:
        # A run of one candidate compares that one; a run of several, the one named.
        a, b = (
            r.candidate(args.candidate) or (r.candidates[0] if len(r.candidates) == 1 else None)
            for r in (before, after)
        )
        if a is None or b is None:
            missing = before if a is None else after
            raise UsageError(
                f"run {missing.run_id} has no candidate '{args.candidate}' (it has "
                f"{', '.join(c.label for c in missing.candidates)})."
            )
    elif len(before.candidates) == 1 and len(after.candidates) == 1:
        a, b = before.candidates[0], after.candidates[0]
    else:
        common = [c for c in before.candidates if after.candidate(c.label) is not None]
        if len(common) != 1:
            raise UsageError(
                "a run has several candidates; name the one to compare with --candidate "
                f"(in both runs: {', '.join(c.label for c in common) or 'none'})."
            )
        a, b = common[0], after.candidate(common[0].label)
    assert a is not None and b is not None
    old = [r for r in store.results(before.run_id) if r.candidate == a.name]
    new = [r for r in store.results(after.run_id) if r.candidate == b.name]
    result = paired(a.name, old, b.name, new)
    old_by, new_by = {r.case_id: r for r in old}, {r.case_id: r for r in new}
    reasons = {i: (old_by[i], new_by[i]) for i in (*result.only_a, *result.only_b)}
    comparison = Comparison(before, after, a.label, b.label, result, reasons)
    print(render_comparison(comparison))
    return 1 if args.fail_on_regression and comparison.regressions else 0


# ---- recommend -------------------------------------------------------------------------------


def recommend_route(args: argparse.Namespace, words: list[str], store: EvalStore) -> int:
    run = _load_run(store, words[0])
    suite = _suite_of(run)
    rec = recommend(
        run, suite, store.results(run.run_id), args.min_accuracy, lower_bound=args.lower_bound
    )
    command = "hedge eval recommend " + shlex.join(
        [run.run_id, "--min-accuracy", f"{args.min_accuracy:g}"]
        + (["--lower-bound"] if args.lower_bound else [])
        + (["--route-name", args.route_name] if args.route_name else [])
    )
    text = snippet(rec, run, args.route_name or run.suite, command)
    print(text, end="")
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror}") from None
    return 0 if rec.chosen is not None else 1

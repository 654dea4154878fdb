"""`hedge eval`: run a suite, report a run, compare two runs, recommend a route.

    hedge eval SUITE --routes a,b | --deployments d1,d2 [--url URL] [options]
    hedge eval --resume RUN_ID
    hedge eval report RUN [--html PATH] [--json]
    hedge eval compare RUN1 RUN2 [--candidate NAME] [--fail-on-regression]
    hedge eval recommend RUN --min-accuracy X [--lower-bound] [--route-name NAME] [--out FILE]
    hedge eval runs | suites

One parser serves every form (argparse cannot put a positional SUITE beside sub-commands), and
`run` refuses options that do not belong to the form used, then hands over to
hedge.evaluation.commands (imported only then). Bad input is reported with what to fix and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

VERBS = ("report", "compare", "recommend", "runs", "suites")
# The options each form accepts (beyond --config and --db, which all accept).
_RUN_OPTIONS = {
    "routes", "deployments", "url", "concurrency", "retries", "limit", "tags", "run_id",
    "resume", "retry_errors", "progress", "html", "no_html", "json", "timeout",
}  # fmt: skip
_ALLOWED = {
    "run": _RUN_OPTIONS,
    "report": {"html", "json"},
    "compare": {"candidate", "fail_on_regression"},
    "recommend": {"min_accuracy", "lower_bound", "route_name", "out"},
    "runs": set(),
    "suites": set(),
}
_DEFAULTS = {
    "routes": None, "deployments": None, "url": None, "concurrency": 2, "retries": 2,
    "limit": None, "tags": None, "run_id": None, "resume": None, "retry_errors": False,
    "progress": None, "html": None, "no_html": False, "json": False, "timeout": 600.0,
    "candidate": None, "fail_on_regression": False, "min_accuracy": None, "lower_bound": False,
    "route_name": None, "out": None,
}  # fmt: skip


class UsageError(Exception):
    """The command line is wrong; the message says how to fix it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = "Evaluate routes or deployments on a suite of cases, through the gateway."
    parser.epilog = (
        "forms:\n"
        "  hedge eval SUITE --routes a,b | --deployments d1,d2 [--url URL] [options]\n"
        "  hedge eval --resume RUN_ID               continue a run that stopped\n"
        "  hedge eval report RUN [--html PATH]      show a stored run again\n"
        "  hedge eval compare RUN1 RUN2             regressions and improvements, case by case\n"
        "  hedge eval recommend RUN --min-accuracy X  a route for hedge.yaml, with its evidence\n"
        "  hedge eval runs                          the runs in the database\n"
        "  hedge eval suites                        the built-in suites\n"
        "SUITE is a suite file (a YAML header, then one JSON case per line) or a built-in\n"
        "suite: arithmetic, json-extraction, python-functions. Results are kept in the ledger's\n"
        "database (ledger.path in hedge.yaml, or --db)."
    )
    parser.add_argument("words", nargs="*", metavar="SUITE | VERB ARGS", help="see forms below")
    parser.add_argument("--config", help="hedge.yaml (default as for serve)")
    parser.add_argument(
        "--db",
        help="a SQLite file for the results (default: the ledger's database); in-process, "
        "the ledger is kept there too",
    )
    run = parser.add_argument_group("running a suite")
    run.add_argument("--routes", help="comma-separated routes to evaluate")
    run.add_argument(
        "--deployments", help="comma-separated deployments, each evaluated alone (in-process)"
    )
    run.add_argument("--url", help="a running hedge to send the requests to (default: in-process)")
    run.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    run.add_argument("--retries", type=int, default=2, help="retries of a retryable failure")
    run.add_argument("--limit", type=int, help="only the first N cases")
    run.add_argument("--tags", help="only cases with one of these comma-separated tags")
    run.add_argument("--run-id", help="name the run (running again with it resumes it)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue a stored run")
    run.add_argument(
        "--retry-errors", action="store_true", help="when resuming, run failed cases again"
    )
    run.add_argument("--timeout", type=float, default=600.0, help="seconds per request (--url)")
    progress = run.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", action="store_true", default=None, help="show progress (default: on a TTY)"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    run.add_argument("--html", help="where to write the HTML report (default: hedge-eval-RUN.html)")
    run.add_argument("--no-html", action="store_true", help="write no HTML report")
    run.add_argument("--json", action="store_true", help="print the figures as JSON")
    other = parser.add_argument_group("compare and recommend")
    other.add_argument(
        "--candidate", help="compare: the candidate to compare, in each run that has several"
    )
    other.add_argument(
        "--fail-on-regression", action="store_true", help="compare: exit 1 on any regression"
    )
    other.add_argument("--min-accuracy", type=float, help="recommend: the accuracy floor (0-1)")
    other.add_argument(
        "--lower-bound",
        action="store_true",
        help="recommend: hold the 95%% CI's lower bound to the floor, not the estimate",
    )
    other.add_argument("--route-name", help="recommend: the route's name (default: the suite's)")
    other.add_argument("--out", help="recommend: write the snippet to this file too")


def run(args: argparse.Namespace) -> int:
    from hedge import config
    from hedge.errors import ConfigError
    from hedge.evaluation import commands
    from hedge.evaluation.runner import PlanError
    from hedge.evaluation.store import StoreError, store_for
    from hedge.evaluation.suite import SuiteError

    try:
        verb, rest = _form(args)
        if verb == "suites":
            return commands.list_suites()
        settings = config.load(config.find_config(args.config))
        store = store_for(settings, args.db)
        store.open()
        try:
            if verb == "run":
                return commands.run_suite(args, rest, settings, store)
            if verb == "report":
                return commands.report(args, rest, store)
            if verb == "compare":
                return commands.compare(args, rest, store)
            if verb == "recommend":
                return commands.recommend_route(args, rest, store)
            return commands.list_runs(store)
        finally:
            store.close()
    except (UsageError, SuiteError, PlanError, StoreError, ConfigError) as e:
        print(f"hedge eval: {e}", file=sys.stderr)
        return 2


def _form(args: argparse.Namespace) -> tuple[str, list[str]]:
    words: list[str] = list(args.words)
    verb = words[0] if words and words[0] in VERBS else "run"
    rest = words[1:] if verb != "run" else words
    wrong = [
        key
        for key, default in _DEFAULTS.items()
        if key not in _ALLOWED[verb] and getattr(args, key) != default
    ]
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        where = "hedge eval SUITE" if verb == "run" else f"hedge eval {verb}"
        raise UsageError(f"{flags} does not apply to {where}. Fix: leave it out.")
    expected = {"report": 1, "compare": 2, "recommend": 1, "runs": 0, "suites": 0}
    if verb != "run" and len(rest) != expected[verb]:
        shapes = {
            "report": "hedge eval report RUN",
            "compare": "hedge eval compare RUN1 RUN2",
            "recommend": "hedge eval recommend RUN --min-accuracy X",
            "runs": "hedge eval runs",
            "suites": "hedge eval suites",
        }
        raise UsageError(f"usage: {shapes[verb]}")
    if verb == "run" and len(rest) > 1:
        raise UsageError(
            f"one suite per run (got {', '.join(rest)}). Fix: run each suite on its own."
        )
    if verb == "run" and not rest and not args.resume:
        from hedge.evaluation.suite import builtin_names

        raise UsageError(
            "name a suite (a file, or one of "
            f"{', '.join(builtin_names())}), or --resume RUN_ID. See hedge eval --help."
        )
    for key in ("concurrency", "limit"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UsageError(f"--{key} must be at least 1 (got {value}).")
    if args.retries < 0:
        raise UsageError(f"--retries must not be negative (got {args.retries}).")
    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise UsageError(f"--min-accuracy is a fraction from 0 to 1 (got {args.min_accuracy}).")
    if verb == "recommend" and args.min_accuracy is None:
        raise UsageError("recommend needs --min-accuracy X (a fraction from 0 to 1).")
    return verb, rest


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]

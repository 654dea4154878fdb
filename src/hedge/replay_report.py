"""`hedge replay` for people: the figures as tables, the cost/accuracy plot, the command line.

hedge.replay runs a route over a recording and computes the figures; this module only shows
them and parses arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from hedge.errors import ConfigError
from hedge.replay import (
    DEFAULT_TEST_FRACTION,
    SPLITS,
    Figures,
    Point,
    ReplayRefused,
    ReplayReport,
    pareto_front,
    ratios,
    run_replay,
)

# ---- rendering -------------------------------------------------------------------------------


def _usd(x: float) -> str:
    return "-" if math.isinf(x) else f"${x:.6f}"


def figures_table(rows: Sequence[Figures], reference: Figures | None = None) -> str:
    """A plain-text table of figures, with ratios to `reference` when given."""
    head = ["policy", "n", "accuracy", "total cost", "cost/query", "cost/success"]
    if reference is not None:
        head += ["acc x ref", "cost/success x ref"]
    body = []
    for f in rows:
        cells = [
            f.name,
            str(f.n),
            f"{f.accuracy:.4f}",
            f"${f.cost_usd:.4f}",
            _usd(f.cost_per_query),
            _usd(f.cost_per_success),
        ]
        if reference is not None:
            r = ratios(f, reference)
            cells += [
                "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                "-" if r["cost_per_success"] is None else f"{r['cost_per_success']:.3f}",
            ]
        body.append(cells)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def render(report: ReplayReport, reference_model: str | None = None) -> str:
    ref = report.singles.get(reference_model) if reference_model else None
    singles = sorted(report.singles.values(), key=lambda f: f.cost_per_query)
    lines = [
        f"route '{report.route}' replayed on {report.recording}",
        f"split {report.split}, tasks {', '.join(report.tasks) if report.tasks else 'all'}: "
        f"{report.prompts} prompts ({report.seconds:.1f}s)",
    ]
    for why, n in report.excluded.items():
        lines.append(f"  left out: {n} prompts ({why})")
    lines += [
        "",
        figures_table([report.route_figures, report.oracle, *singles], ref),
        "",
        "answered by stage: " + (", ".join(f"{k}: {v}" for k, v in report.by_stage.items()) or "-"),
        "answered by model: " + (", ".join(f"{k}: {v}" for k, v in report.by_model.items()) or "-"),
        "pareto front (cost/query vs accuracy, oracle aside): "
        + ", ".join(p.name for p in pareto_front(report.points())),
    ]
    if report.failed_calls:
        lines.append(f"failed upstream calls: {report.failed_calls}")
    for msg, n in report.errors.items():
        lines.append(f"error on {n} prompts: {msg}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def plot_frontier(
    points: Sequence[Point], path: str | Path, title: str, highlight: Iterable[str] = ()
) -> None:
    """A PNG of cost per query (log scale) against accuracy, with the Pareto frontier.
    Needs matplotlib (`pip install matplotlib`), which hedge does not depend on."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReplayRefused("plotting needs matplotlib: pip install matplotlib") from None
    styles = {  # kind: (marker, colour)
        "model": ("o", "tab:blue"),
        "oracle": ("*", "tab:green"),
        "route": ("D", "tab:red"),
        "config": (".", "tab:gray"),
        "baseline": ("s", "tab:orange"),
        "candidate": ("s", "tab:purple"),
    }
    chosen = set(highlight)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for kind, (marker, colour) in styles.items():
        pts = [p for p in points if p.kind == kind]
        if pts:
            ax.scatter(
                [p.cost_per_query for p in pts],
                [p.accuracy for p in pts],
                marker=marker,
                c=colour,
                s=70 if kind != "config" else 18,
                label=kind,
                zorder=3,
            )
    front = pareto_front(points)
    ax.step(
        [p.cost_per_query for p in front],
        [p.accuracy for p in front],
        where="post",
        color="black",
        linewidth=1,
        label="Pareto frontier (oracle aside)",
        zorder=2,
    )
    # One label per spot (policies that land on the same point share it); labels of points
    # in the right quarter of the plot go to their left so that they stay inside it.
    spots: dict[tuple[float, float], list[Point]] = {}
    for p in points:
        if p.kind != "config" or p.name in chosen:
            spots.setdefault((round(p.cost_per_query, 9), round(p.accuracy, 6)), []).append(p)
    logs = [math.log10(p.cost_per_query) for p in points if p.cost_per_query > 0]
    low, high = (min(logs), max(logs)) if logs else (0.0, 1.0)
    for (x, y), here in spots.items():
        text = " = ".join(p.name.split("/")[-1] if p.kind == "model" else p.name for p in here)
        right = x > 0 and high > low and (math.log10(x) - low) / (high - low) > 0.75
        dy = -12 if any(p.kind == "route" for p in here) else -3
        dy = 12 if any(p.kind in ("baseline", "candidate") for p in here) else dy
        ax.annotate(
            text,
            (x, y),
            fontsize=7,
            xytext=(-6 if right else 6, dy),
            ha="right" if right else "left",
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("cost per query (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line (wired into `hedge replay` by hedge.cli) -----------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outcomes", help="outcomes.jsonl of a recorded data set")
    parser.add_argument("--config", required=True, help="hedge.yaml with replay deployments")
    parser.add_argument("--route", required=True, help="the route to replay")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--task", action="append", help="recorded task (repeatable)")
    parser.add_argument("--dataset", action="append", help="recorded dataset (repeatable)")
    parser.add_argument("--model", action="append", help="single model to report (repeatable)")
    parser.add_argument("--reference", help="recorded model to compare against (ratios)")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the frontier")


def main(args: argparse.Namespace) -> int:
    """`hedge replay`: prints the report; 2 when the route cannot be replayed honestly."""
    try:
        report = run_replay(
            args.outcomes,
            args.config,
            args.route,
            split=args.split,
            tasks=args.task,
            datasets=args.dataset,
            models=args.model,
            concurrency=args.concurrency,
            test_fraction=args.test_fraction,
        )
        print(render(report, args.reference))
        if args.json:
            Path(args.json).write_bytes(
                orjson.dumps(report.as_dict(with_prompts=True), option=orjson.OPT_INDENT_2)
            )
        if args.plot:
            plot_frontier(report.points(), args.plot, f"route {report.route}, {report.split}")
    except (ReplayRefused, ConfigError) as e:
        print(f"hedge replay: {e}", file=sys.stderr)
        return 2
    return 0

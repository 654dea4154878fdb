"""Precision of the semantic cache on a labelled set of prompt pairs.

Run it from the repository root (about 30 seconds):

    .venv/bin/python bench/semantic_cache.py

The set, `bench/data/paraphrase_pairs.jsonl`, was written for this project: 30 prompts, each
with one paraphrase (same answer) and one near miss that shares most of its words but asks
something else (France/Spain, Celsius->Fahrenheit/Fahrenheit->Celsius, by key/by value...).
Near misses are the hard case by design: a semantic cache is only as safe as its worst one.

A. End to end: `hedge serve` with a semantic route (all-MiniLM-L6-v2 in-process as the
   embedder, the default threshold) in front of an echoing loopback upstream. The 30 prompts
   are asked first (misses, stored), then the 60 second members. A `semantic-hit` whose echoed
   answer is the pair's own prompt is a true hit on a paraphrase, any hit on a near miss (or on
   the wrong prompt) a false one. precision = true hits / hits, recall = true hits / 30.
B. The threshold sweep, with hedge's guards (same numbers, not the same words reordered) and
   without: the same prompts embedded by the same model and searched with hedge's own
   SemanticIndex, so each row's precision and recall come from one set of vectors.

Writes `bench/results/semantic_cache.json`. A measurement, not a test.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import run_gateway  # noqa: E402
from tests.fakes.openai_fake import fake_openai  # noqa: E402

from hedge.backends.embedded_embeddings import bundled_model_dir, load_model  # noqa: E402
from hedge.cache import SemanticSettings  # noqa: E402
from hedge.cache.semantic import SemanticIndex, compatible, unit  # noqa: E402

PAIRS = ROOT / "bench/data/paraphrase_pairs.jsonl"
RESULT = ROOT / "bench/results/semantic_cache.json"
DEFAULT = SemanticSettings().threshold

CONFIG = """\
deployments:
  up: {{kind: openai_compat, base_url: "{url}", upstream_model: echo, hosting: hosted}}
  minilm: {{kind: embedded_embeddings, model: all-minilm-l6-v2, bundled: all-minilm-l6-v2}}
routes:
  semantic:
    deployments: [up]
    cache: {{enabled: true, semantic: {{enabled: true, embedder: minilm}}}}
"""


def load_pairs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def score(outcomes: list[tuple[bool, bool]], positives: int) -> dict[str, Any]:
    """outcomes: (was a hit, was the right hit) per query."""
    hits = sum(h for h, _ in outcomes)
    true = sum(h and right for h, right in outcomes)
    return {
        "hits": hits,
        "true_hits": true,
        "false_hits": hits - true,
        "precision": true / hits if hits else None,
        "recall": true / positives,
    }


def end_to_end(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    prompts = list(dict.fromkeys(p["a"] for p in pairs))
    outcomes: list[tuple[bool, bool]] = []
    wrong: list[str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_openai() as fake,
        run_gateway(CONFIG.format(url=fake.url), Path(tmp)) as gw,
    ):
        while True:  # the embedder serves no route: wait for it to load
            with urllib.request.urlopen(f"{gw.url}/readyz", timeout=10) as r:
                if json.loads(r.read())["deployments"]["minilm"]["state"] == "ready":
                    break
            time.sleep(0.2)
        api = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60)

        def ask(text: str) -> tuple[str, str]:
            raw = api.chat.completions.with_raw_response.create(
                model="semantic",
                messages=[{"role": "user", "content": text}],
                temperature=0,
            )
            return raw.headers["x-hedge-cache"], raw.parse().choices[0].message.content or ""

        for text in prompts:
            ask(text)
        for pair in pairs:
            state, answer = ask(pair["b"])
            hit = state == "semantic-hit"
            right = hit and pair["same"] and answer == f"echo: {pair['a']}"
            outcomes.append((hit, right))
            if hit and not right:
                wrong.append(f"{pair['b']!r} answered as {answer!r}")
    return {
        "threshold": DEFAULT,
        **score(outcomes, sum(p["same"] for p in pairs)),
        "false": wrong,
    }


def sweep(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = load_model(bundled_model_dir("all-minilm-l6-v2"))
    prompts = list(dict.fromkeys(p["a"] for p in pairs))
    index = SemanticIndex(max_entries=1000)
    for text, vector in zip(prompts, model.encode(prompts), strict=True):
        index.add("scope", unit(vector), text, text)
    queries = model.encode([p["b"] for p in pairs])
    nearest = [index.nearest("scope", unit(q)) for q in queries]
    rows = []
    for guarded in (True, False):
        for threshold in (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97):
            outcomes = []
            for pair, near in zip(pairs, nearest, strict=True):
                hit = (
                    near is not None
                    and near[2] >= threshold
                    and (not guarded or compatible(pair["b"], near[1]))
                )
                right = hit and pair["same"] and near is not None and near[0] == pair["a"]
                outcomes.append((hit, right))
            positives = sum(p["same"] for p in pairs)
            rows.append({"threshold": threshold, "guards": guarded, **score(outcomes, positives)})
    return rows


def main() -> None:
    pairs = load_pairs()
    e2e = end_to_end(pairs)
    rows = sweep(pairs)
    print(f"{len(pairs)} pairs ({sum(p['same'] for p in pairs)} paraphrases), all-MiniLM-L6-v2")
    print(
        f"through hedge at the default threshold {DEFAULT}: precision "
        f"{e2e['precision']:.3f}, recall {e2e['recall']:.3f} "
        f"({e2e['true_hits']} right hits, {e2e['false_hits']} wrong)"
    )
    for line in e2e["false"]:
        print(f"  wrong hit: {line}")
    print(f"{'guards':>6} {'threshold':>9} {'hits':>5} {'wrong':>5} {'precision':>9} {'recall':>6}")
    for r in rows:
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(
            f"{'on' if r['guards'] else 'off':>6} {r['threshold']:>9.2f} {r['hits']:>5} "
            f"{r['false_hits']:>5} {precision:>9} {r['recall']:>6.3f}"
        )
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                "command": "python bench/semantic_cache.py",
                "pairs": len(pairs),
                "end_to_end": e2e,
                "sweep": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()

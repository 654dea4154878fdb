"""The ledger through the running gateway: what a client was answered is recorded, survives a
SIGKILL (up to the last flush interval), takes feedback, and adds up in `hedge costs`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import HEDGE, run_gateway
from tests.fakes.openai_fake import fake_openai

FLUSH_S = 0.2

CONFIG = """\
ledger: {{backend: sqlite, path: {db}, flush_interval_s: {flush}}}
deployments:
  cheap:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-cheap
    hosting: hosted
    prices: {{input: 1.0, output: 2.0}}
  strong:
    kind: openai_compat
    base_url: {url}
    upstream_model: echo-strong
    hosting: hosted
    prices: {{input: 10.0, output: 30.0}}
routes:
  chat:
    deployments: [cheap]
  compacted:
    deployments: [cheap]
    cache: {{enabled: true}}
    compaction: {{enabled: true}}
  cascade:
    cascade:
      stages:
        - deployments: [cheap]
          validators: [{{kind: regex, pattern: "^never$"}}]
        - deployments: [strong]
"""


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def chat(v1: str, route: str, text: str = "hello there") -> tuple[int, dict[str, str], Any]:
    return post(
        f"{v1}/chat/completions", {"model": route, "messages": [{"role": "user", "content": text}]}
    )


def test_requests_are_recorded_with_costs_feedback_and_a_summary(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(db=db, flush=FLUSH_S, url=fake.url), tmp_path) as gw,
    ):
        status, headers, body = chat(gw.v1, "chat")
        assert status == 200
        rid = headers["x-request-id"]
        # feedback right after the answer finds the request (recorded before it was sent)
        status, _, fb = post(f"{gw.v1}/feedback", {"request_id": rid, "success": True})
        assert status == 200 and fb == {"request_id": rid, "recorded": True}
        status, _, missing = post(f"{gw.v1}/feedback", {"request_id": "nope", "success": True})
        assert status == 404 and missing["error"]["code"] == "request_not_found"
        status, _, bad = post(f"{gw.v1}/feedback", {"request_id": rid, "success": "yes"})
        assert status == 400 and bad["error"]["param"] == "success"
        status, cascade_headers, _ = chat(gw.v1, "cascade")
        assert status == 200 and cascade_headers["x-hedge-stage"] == "2"
        # The same long system text twice: compaction collapses it, and the ledger says
        # how many prompt tokens that saved; the second ask is a cache hit.
        system = {"role": "system", "content": "Answer as briefly as you can. " * 20}
        messages = [system, system, {"role": "user", "content": "hi"}]
        agent = {"model": "compacted", "temperature": 0, "messages": messages}
        compacted = [post(f"{gw.v1}/chat/completions", agent)[1]["x-request-id"] for _ in "ab"]
        time.sleep(FLUSH_S * 3)
        usage = body["usage"]
    # the gateway is stopped (SIGTERM): the ledger was flushed on the way out
    con = sqlite3.connect(db)
    row = con.execute(
        "SELECT route, answered_by, status, success, cost_usd FROM requests WHERE request_id=?",
        (rid,),
    ).fetchone()
    expected_cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert row[:4] == ("chat", "cheap", 200, 1)
    assert abs(row[4] - expected_cost) < 1e-12
    attempts = con.execute(
        "SELECT a.deployment FROM attempts a JOIN requests r USING (request_id)"
        " WHERE r.route = 'cascade' ORDER BY a.seq"
    ).fetchall()
    assert [a[0] for a in attempts] == ["cheap", "strong"]  # the rejected draft is an attempt
    saved = con.execute(
        "SELECT request_id, cache, prompt_tokens_saved FROM requests WHERE route = 'compacted'"
    ).fetchall()
    assert sorted(saved) == sorted(
        [(compacted[0], "miss", saved[0][2]), (compacted[1], "hit", saved[0][2])]
    )
    assert saved[0][2] > 100, "a 20-sentence system message sent twice, collapsed to one"
    assert con.execute("SELECT cache FROM requests WHERE request_id = ?", (rid,)).fetchone() == (
        None,
    )
    # metadata only: no prompt text anywhere in the database
    dump = "\n".join(con.iterdump())
    assert "hello there" not in dump and "echo: hello" not in dump
    cfg = tmp_path / "costs.yaml"
    cfg.write_text(CONFIG.format(db=db, flush=FLUSH_S, url="http://127.0.0.1:9/v1"))
    out = subprocess.run(
        [*HEDGE, "costs", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["chat"]["requests"] == 1 and rows["chat"]["successes"] == 1
    assert abs(rows["chat"]["cost_per_success_usd"] - expected_cost) < 1e-12
    assert rows["cascade"]["all_to_strongest"] == "strong"
    assert "saving_vs_strongest_usd" in rows["cascade"]


async def _load(v1: str, answered: list[tuple[str, float]], stop: asyncio.Event) -> None:
    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(
                    f"{v1}/chat/completions",
                    json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                ) as r:
                    await r.read()
                    if r.status == 200:
                        answered.append((r.headers["x-request-id"], time.monotonic()))
            except aiohttp.ClientError:
                return  # the gateway was killed

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))


def test_a_sigkill_mid_load_loses_nothing_older_than_a_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    answered: list[tuple[str, float]] = []
    with (
        fake_openai() as fake,
        run_gateway(CONFIG.format(db=db, flush=FLUSH_S, url=fake.url), tmp_path) as gw,
    ):

        async def main() -> float:
            stop = asyncio.Event()
            load = asyncio.create_task(_load(gw.v1, answered, stop))
            await asyncio.sleep(3.0)
            killed_at = time.monotonic()
            os.kill(gw.proc.pid, signal.SIGKILL)
            stop.set()
            await asyncio.wait_for(load, 10)
            return killed_at

        killed_at = asyncio.run(main())
    assert len(answered) > 50, "the load generator got answers before the kill"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {r[0] for r in con.execute("SELECT request_id FROM requests")}
    old = [rid for rid, at in answered if at < killed_at - (FLUSH_S + 0.5)]
    assert old, "some answers are older than a flush interval"
    lost = [rid for rid in old if rid not in stored]
    assert not lost, f"{len(lost)} of {len(old)} answered requests lost"
    # no half-written request: every stored request has its attempts
    orphans = con.execute(
        "SELECT COUNT(*) FROM requests r WHERE NOT EXISTS"
        " (SELECT 1 FROM attempts a WHERE a.request_id = r.request_id)"
    ).fetchone()
    assert orphans == (0,)

"""Evaluation results in the ledger's PostgreSQL database (a throwaway cluster, tests/pg.py):
the same store contract as SQLite, and a run whose results join the ledger's rows there."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hedge.evaluation.store import CaseResult, PostgresEvalStore, StoreError
from tests import pg
from tests.conftest import HEDGE
from tests.fakes.openai_fake import fake_openai
from tests.unit.test_eval_reports import results, run_info


@pytest.fixture(scope="module")
def postgres() -> Iterator[pg.Postgres]:
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are not installed; run scripts/system-deps.sh")
    with pg.throwaway_postgres(bin_dir) as server:
        yield server


def test_store_round_trip(postgres: pg.Postgres) -> None:
    dsn = postgres.create_database()
    store = PostgresEvalStore(dsn)
    store.open()
    run = run_info()
    store.create_run(run)
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(run)
    for r in results():
        store.put(run.run_id, r)
    fixed = CaseResult("big", "c0", True, "retried", output="ok", ts=99.0)
    store.put(run.run_id, fixed)
    got = store.results(run.run_id)
    assert len(got) == 12
    assert next(r for r in got if (r.candidate, r.case_id) == ("big", "c0")) == fixed
    assert sorted(got, key=lambda r: (r.candidate, r.case_id)) == sorted(
        [r for r in results() if (r.candidate, r.case_id) != ("big", "c0")] + [fixed],
        key=lambda r: (r.candidate, r.case_id),
    )
    assert store.run(run.run_id) == run
    assert [(r.run_id, n) for r, n in store.runs()] == [(run.run_id, 12)]
    store.close()
    again = PostgresEvalStore(dsn)
    again.open()  # opening twice keeps the tables and their version
    again.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM eval_schema").fetchall() == [(1,)]
        conn.execute("UPDATE eval_schema SET version = 7")
    with pytest.raises(StoreError, match="schema version 7"):
        PostgresEvalStore(dsn).open()


def test_a_run_stores_beside_the_postgres_ledger(postgres: pg.Postgres, tmp_path: Path) -> None:
    dsn = postgres.create_database()
    suite = tmp_path / "s.jsonl"
    suite.write_text(
        "---\nname: s\nscorers: [{kind: numeric}]\n---\n"
        + "".join(
            json.dumps({"id": f"c{i}", "prompt": f"{i} + 0? Answer {i}", "expected": i}) + "\n"
            for i in range(3)
        )
    )
    with fake_openai() as fake:
        cfg = tmp_path / "hedge.yaml"
        cfg.write_text(
            "ledger: {backend: postgres, flush_interval_s: 0.1}\n"
            "deployments:\n"
            f"  echo: {{kind: openai_compat, base_url: '{fake.url}', upstream_model: echo,"
            " hosting: hosted, prices: {input: 1, output: 1}}\n"
            "routes:\n  r: {deployments: [echo]}\n"
        )
        out = subprocess.run(
            [*HEDGE, "eval", str(suite), "--routes", "r", "--config", str(cfg), "--no-html",
             "--json"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "HEDGE_LEDGER_URL": dsn},
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        joined = conn.execute(
            "SELECT e.case_id, e.passed, r.answered_by FROM eval_results e"
            " JOIN requests r ON r.request_id = e.request_id WHERE e.run_id = %s"
            " ORDER BY e.case_id",
            (run_id,),
        ).fetchall()
    assert joined == [("c0", 1, "echo"), ("c1", 1, "echo"), ("c2", 1, "echo")]

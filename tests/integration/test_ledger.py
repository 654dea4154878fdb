"""Crash safety of the ledger: SIGKILL a process mid-load and look at what survived.

The property (from the issue): a crash of the gateway loses no attempt that was answered to a
client before the last flush interval, and never corrupts the database. The driver below
stands in for the gateway: it records requests through BatchingLedger on SQLite as fast as a
busy gateway would, and prints each request id, with the time, only after `record()` returned
(the moment a gateway answers its client). The test kills it with SIGKILL at a random moment,
then checks that every id printed more than one flush interval (plus a margin for a loaded
machine) before the kill is in the database with all of its attempts, that no request was
half written, that `PRAGMA integrity_check` is ok, and that a new ledger opens the file and
keeps writing. Three kills in a row, on the same file.

Run as a script (`python test_ledger.py drive DB INTERVAL PREFIX`), this file is the driver.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

FLUSH_INTERVAL_S = 0.2
# Beyond the flush interval: the batch write itself, and scheduling on a busy CI machine.
MARGIN_S = 0.8


def attempts_for(request_id: str) -> int:
    """How many attempts the driver gives a request (1 to 3), known from its id alone."""
    return int(request_id.rsplit("-", 1)[1]) % 3 + 1


async def drive(db: str, interval: float, prefix: str) -> None:
    from hedge.ledger import AttemptRecord, BatchingLedger, RequestRecord
    from hedge.store.sqlite import SqliteStore

    # A batch size the load never reaches in one interval: the timer alone decides when
    # records are written, which is the path the property is about.
    ledger = BatchingLedger(SqliteStore(db), flush_interval_s=interval, batch_size=100_000)
    await ledger.start()
    print("ready", flush=True)
    n = 0
    while True:
        lines = []
        for _ in range(20):
            request_id = f"{prefix}-{n}"
            n += 1
            now = time.time()
            attempts = [
                AttemptRecord(request_id, seq, f"dep-{seq}", None, 120, 40, 0, 0, 0.001, 80.0,
                              None if seq == attempts_for(request_id) - 1 else "503", now)
                for seq in range(attempts_for(request_id))
            ]  # fmt: skip
            ledger.record(
                RequestRecord(request_id, now, "chat", "key-1", attempts[-1].deployment, None,
                              200, None, None, 0.001 * len(attempts), 250.0, attempts)
            )  # fmt: skip
            # Printed only once record() has returned: from here on the client has its answer.
            lines.append(f"{request_id} {time.time():.6f}\n")
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        await asyncio.sleep(0.005)


def run_and_kill(db: Path, prefix: str, tmp: Path) -> tuple[float, list[tuple[str, float]]]:
    """Start the driver, SIGKILL it after a random while; the kill time and what it printed."""
    err = (tmp / f"{prefix}.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, __file__, "drive", str(db), str(FLUSH_INTERVAL_S), prefix],
        stdout=subprocess.PIPE,
        stderr=err,
    )
    printed: list[tuple[str, float]] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode().split()
            if line == ["ready"]:
                ready.set()
            elif len(line) == 2:
                printed.append((line[0], float(line[1])))
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "the driver did not start"
        assert proc.poll() is None, (tmp / f"{prefix}.err").read_text()
        time.sleep(random.uniform(1.0, 2.0))
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == -signal.SIGKILL
    return killed_at, printed


def check_database(db: Path) -> dict[str, int]:
    """integrity_check ok and no half-written request; request id -> its attempt count."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = dict(
            conn.execute(
                "SELECT r.request_id, COUNT(a.seq) FROM requests r"
                " LEFT JOIN attempts a ON a.request_id = r.request_id GROUP BY r.request_id"
            ).fetchall()
        )
        orphans = conn.execute(
            "SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS"
            " (SELECT 1 FROM requests r WHERE r.request_id = a.request_id)"
        ).fetchone()[0]
    assert orphans == 0
    half_written = {i: n for i, n in counts.items() if n != attempts_for(i)}
    assert not half_written
    return counts


def test_sigkill_mid_load_loses_nothing_older_than_a_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    for round_ in range(3):
        prefix = f"round{round_}"
        killed_at, printed = run_and_kill(db, prefix, tmp_path)
        assert len(printed) > 500, "the driver was not under load"
        stored = check_database(db)
        answered_in_time = [i for i, t in printed if t < killed_at - FLUSH_INTERVAL_S - MARGIN_S]
        assert answered_in_time, "nothing was answered early enough to be checked"
        lost = [i for i in answered_in_time if i not in stored]
        assert not lost, f"{len(lost)} of {len(answered_in_time)} lost, first {lost[:5]}"
        # For the log: how close to the kill the oldest lost record was answered (the
        # property holds when this is under the flush interval plus one write).
        lost_ages = [killed_at - t for i, t in printed if i not in stored]
        print(
            f"{prefix}: {len(printed)} answered, {len(printed) - len(lost_ages)} stored, "
            f"oldest lost {max(lost_ages, default=0):.3f}s before the kill"
        )

    # A new ledger opens the same file and keeps writing.
    from hedge.ledger import BatchingLedger
    from hedge.store.sqlite import SqliteStore
    from tests.unit.test_ledger_sqlite import numbered

    async def after() -> None:
        ledger = BatchingLedger(SqliteStore(db), flush_interval_s=0.05, batch_size=100)
        await ledger.start()
        for r in numbered(10, "after-crash"):
            ledger.record(r)
        await ledger.aclose()

    asyncio.run(after())
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT COUNT(*) FROM requests WHERE request_id LIKE 'after-crash-%'"
        ).fetchone() == (10,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


if __name__ == "__main__" and sys.argv[1:2] == ["drive"]:
    asyncio.run(drive(sys.argv[2], float(sys.argv[3]), sys.argv[4]))

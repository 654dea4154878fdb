"""Hot-path benchmark: hedge against a fast upstream, next to direct calls and the LiteLLM proxy.

Run it from the repository root with one command:

    .venv/bin/python bench/hot_path.py            # about 8 minutes on 2 cores
    .venv/bin/python bench/hot_path.py --quick    # about 2 minutes, to try it

It prints a table and the ratios the issue asks for, and writes every figure, the machine's
facts, the versions and the command to `bench/results/hot_path.json`. It is a measurement, not a
test: it passes or fails nothing, and states each target as measured next to wanted.

What runs, all on 127.0.0.1:
- the upstream: nginx (Debian's package; installed with apt-get when missing and run as root)
  from a generated config, 1 worker process, answering POST /v1/chat/completions with a canned
  chat completion and POST /stream/v1/chat/completions with a canned 12-event SSE stream;
- the load generator: wrk (Debian's package, installed likewise), one thread, keep-alive
  connections, a Lua script that POSTs the chat body; its latency percentiles and error counts
  (socket errors and non-2xx statuses) are read from its `done` hook;
- the candidates, each configured with one OpenAI-compatible model (and a streaming one)
  pointing at nginx and with request logging off:
  - `direct`: wrk straight to nginx (the floor);
  - `hedge-1`: `hedge serve` with 1 worker;
  - `hedge-1+ledger`: the same with hedge's default SQLite ledger on;
  - `hedge-N`: `hedge serve --workers N`, N = the usable cores;
  - `litellm`: the LiteLLM proxy, 1 worker, installed by this script into its own virtual
    environment (~/.cache/hedge/bench/litellm-venv, a pinned version), never a dependency of
    hedge. It needs no database: with none, it keeps no spend logs.
  Equivalent configuration: LiteLLM without a database keeps no spend logs, so `hedge-1` and
  `hedge-N` run with `ledger: {backend: none}`; `hedge-1+ledger` shows what hedge's default
  ledger (SQLite, one record per request, batched off the hot path) costs on top.

Figures per candidate: requests/s at concurrency 1, 32 and 256 (wrk, non-streamed), latency
p50/p99 and added latency (candidate - direct at the same concurrency), requests/s of the
stream at concurrency 32, peak RSS of the server (the sum over its processes, sampled from
/proc every 0.2 s while it is measured), and time to first byte of a stream (a raw-socket
client at concurrency 1: request written -> first byte of the first `data:` event).

CPU placement (2 cores; `--no-pin` turns it off): nginx and wrk run on the last usable core;
`hedge-1` and `litellm` on the first, so that a one-worker server has one whole core and the
load it serves does not compete with it; `hedge-N` may use every core, and therefore shares
one with nginx and wrk. With 2 cores the N-worker figure is bounded by that sharing: the JSON
also reports requests per CPU-second of each server (from /proc), which says whether a worker
loses efficiency when there are several, independent of how many cores are left over for it.

Rounds: every server starts first and stays up (idle while another is measured); each round
measures every candidate in turn (the order reversed every other round), `--rounds` times
(default 2). A figure is the round with the most requests/s (for time to first byte, the
lowest p50), for every candidate alike, so that a busy spell on a shared machine does not
decide a ratio; every round stays in the JSON. Each measurement also records the share of the
CPUs that processes outside the benchmark took meanwhile ("others CPU %", from /proc): the
table shows the largest per candidate.

Every loop is bounded by a request count and a time limit; the whole run is bounded by the
number of measurements times `--seconds` plus start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_core import (  # bench/ is not a package: imported from beside this file
    CANNED_COMPLETION,
    CpuMeter,
    canned_sse,
    command_output,
    cpu_busy_percent,
    ensure_tools,
    free_port,
    nginx_string,
    percentile,
    table,
    tail,
    the_command,
    tool,
    version,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "hot_path.json"
LITELLM_VERSION = "1.100.5"  # the newest whose dependencies resolve from the index, 2026-11-23
LITELLM_VENV = Path.home() / ".cache" / "hedge" / "bench" / "litellm-venv"
CONCURRENCIES = (1, 32, 256)
STREAM_CONCURRENCY = 32

# ---- configs -------------------------------------------------------------------------------


def nginx_config(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {nginx_string(orjson.dumps(CANNED_COMPLETION))};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            return 200 {nginx_string(canned_sse())};
        }}
    }}
}}
"""


def hedge_config(tmp: Path, nginx_port: int, port: int, ledger: bool = False) -> str:
    """hedge with one route per canned answer. `ledger`: its default SQLite ledger (one
    record per request, batched off the hot path); without it `backend: none`, the
    equivalent of the LiteLLM proxy without a database (which keeps no spend logs)."""
    upstream = f"http://127.0.0.1:{nginx_port}"
    book = f'{{backend: sqlite, path: "{tmp}/ledger-{port}.db"}}' if ledger else "{backend: none}"
    return f"""
server: {{host: 127.0.0.1, port: {port}, log_level: warning, data_dir: "{tmp}/data"}}
ledger: {book}
deployments:
  nginx-canned:
    kind: openai_compat
    hosting: self-hosted
    provider: generic
    base_url: {upstream}/v1
    upstream_model: canned-model
  nginx-canned-stream:
    kind: openai_compat
    hosting: self-hosted
    provider: generic
    base_url: {upstream}/stream/v1
    upstream_model: canned-model
routes:
  canned: {{deployments: [nginx-canned]}}
  canned-stream: {{deployments: [nginx-canned-stream]}}
"""


def litellm_config(nginx_port: int) -> str:
    upstream = f"http://127.0.0.1:{nginx_port}"
    return f"""
model_list:
  - model_name: canned
    litellm_params:
      model: openai/canned-model
      api_base: {upstream}/v1
      api_key: sk-unused
  - model_name: canned-stream
    litellm_params:
      model: openai/canned-model
      api_base: {upstream}/stream/v1
      api_key: sk-unused
litellm_settings:
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  drop_params: true
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


# Request logging off: uvicorn's access log and LiteLLM's own loggers at WARNING/ERROR.
LITELLM_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "uvicorn.access": {"level": "WARNING", "propagate": False, "handlers": []},
        "uvicorn.error": {"level": "WARNING"},
        "LiteLLM": {"level": "ERROR"},
        "LiteLLM Proxy": {"level": "ERROR"},
        "LiteLLM Router": {"level": "ERROR"},
    },
}

LITELLM_ENV = {
    # Use the cost map shipped in the package: never fetch it from the network.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
}

# ---- processes -----------------------------------------------------------------------------


def pin(cpus: list[int] | None) -> list[str]:
    """A `taskset` prefix placing a command on `cpus` (nothing when not pinning)."""
    if not cpus or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", ",".join(map(str, cpus))]


def wait_http_ok(port: int, path: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until GET `path` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            status, _ = http_request(port, "GET", path, b"", timeout_s=2)
            if status == 200:
                return
            last = str(status)
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(f"GET {path} on port {port} not 200 after {timeout_s:g}s ({last})")


def http_request(
    port: int, method: str, path: str, body: bytes, timeout_s: float = 10
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a new connection; (status, body). Enough for checks."""
    with socket.create_connection(("127.0.0.1", port), timeout_s) as s:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer sk-unused\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        s.sendall(head + body)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    head_end = raw.find(b"\r\n\r\n")
    status = int(raw.split(b" ", 2)[1])
    headers, payload = raw[:head_end].lower(), raw[head_end + 4 :]
    if b"transfer-encoding: chunked" in headers:
        payload = dechunk(payload)
    return status, payload


def dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


@dataclass
class Server:
    """A candidate server: a process tree on a port, with its RSS and CPU watched."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None  # None: nginx itself ("direct")
    log: Path | None = None
    model: str = "canned"
    stream_model: str = "canned-stream"
    path: str = "/v1/chat/completions"
    stream_path: str = "/v1/chat/completions"
    peak_rss_kib: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    processes: int = 0


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            after = stat[stat.rindex(")") + 2 :].split()
            total += int(after[11]) + int(after[12])
    return total / tick


class RssWatch:
    """Samples the RSS of a process tree every `interval_s` in a thread while active."""

    def __init__(self, root: int, interval_s: float = 0.2) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peak_kib = 0
        self.samples: list[tuple[float, int]] = []
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        pids = descendants(self.root)
        total = sum(rss_kib(p) for p in pids)
        self.max_processes = max(self.max_processes, len(pids))
        self.peak_kib = max(self.peak_kib, total)
        self.samples.append((round(time.monotonic() - self._t0, 2), total))
        return total

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def running(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (in its own session, so its whole tree can be signalled) for the
    duration of the block; SIGTERM then SIGKILL afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ---- LiteLLM -------------------------------------------------------------------------------


def litellm_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def ensure_litellm() -> str | None:
    """The LiteLLM proxy at LITELLM_VERSION in its own venv; None when ready, else why not."""
    py = litellm_python()
    if installed_litellm() == LITELLM_VERSION:
        return None
    print(f"bench: installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV}...")
    try:
        if not py.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300
            )
        result = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"could not create its virtual environment: {e}"
    if result.returncode != 0:
        return "pip install failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    return None if installed_litellm() == LITELLM_VERSION else "installed version differs"


def installed_litellm() -> str | None:
    py = litellm_python()
    if not py.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None if out.returncode == 0 else None


# ---- load: wrk -----------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-unused"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.3f,' ..
    '"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


def body_for(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def run_wrk(
    url: str, body: bytes, concurrency: int, seconds: float, tmp: Path, cpus: list[int] | None
) -> dict[str, Any]:
    script = tmp / f"wrk-{abs(hash((url, body)))}.lua"
    script.write_text(WRK_LUA.format(body=body.decode()))
    wrk = tool("wrk")
    assert wrk is not None
    duration = max(1, round(seconds))
    cmd = [*pin(cpus), wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s"]
    cmd += ["-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    raw = orjson.loads(line.removeprefix("BENCHJSON "))
    elapsed = raw["duration_us"] / 1e6
    socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "concurrency": concurrency,
        "requests": raw["requests"],
        "seconds": round(elapsed, 3),
        "rps": raw["requests"] / elapsed,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non_2xx": raw["status"],
        "socket_errors": socket_errors,
        "errors": raw["status"] + socket_errors,
    }


# ---- time to first byte: a raw-socket client -----------------------------------------------


async def read_stream(reader: asyncio.StreamReader) -> tuple[int, bytes, float | None]:
    """One response on a keep-alive connection: (status, body, when the first `data:` byte
    arrived). Handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lowered = head.lower()
    length = 0
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    first: float | None = None
    seen = b""
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            seen += data[:-2]
            if first is None and b"data:" in seen:
                first = time.perf_counter()
    else:
        while len(seen) < length:
            data = await reader.read(length - len(seen))
            if not data:
                raise ConnectionError("connection closed mid-body")
            seen += data
            if first is None and b"data:" in seen:
                first = time.perf_counter()
    return status, seen, first


async def ttfb_samples(
    port: int, path: str, body: bytes, count: int, time_limit_s: float
) -> dict[str, Any]:
    """Sequential streamed requests on one keep-alive connection: the time from writing the
    request to reading the first byte of the first `data:` event, and to the end of the
    stream. Every stream must end with `data: [DONE]`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-unused\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    first: list[float] = []
    whole: list[float] = []
    errors = 0
    deadline = time.monotonic() + time_limit_s
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            writer.write(request)
            status, seen, t_first = await read_stream(reader)
            t_end = time.perf_counter()
            if status != 200 or t_first is None or not seen.rstrip().endswith(b"data: [DONE]"):
                errors += 1
                continue
            first.append((t_first - t0) * 1000)
            whole.append((t_end - t0) * 1000)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return {
        "n": len(first),
        "errors": errors,
        "ttfb_p50_ms": percentile(first, 50),
        "ttfb_p99_ms": percentile(first, 99),
        "stream_p50_ms": percentile(whole, 50),
        "stream_p99_ms": percentile(whole, 99),
    }


# ---- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    rounds: int = 2  # every candidate measured this many times, in turns
    seconds: float = 6.0  # per wrk measurement
    warmup_s: float = 2.0  # wrk at c=32 before a candidate's first measurement
    ttfb_requests: int = 2000
    ttfb_time_limit_s: float = 12.0
    ttfb_warmup: int = 100


QUICK = Plan(
    rounds=1, seconds=3.0, warmup_s=1.0, ttfb_requests=300, ttfb_time_limit_s=4.0, ttfb_warmup=30
)


def check_candidate(server: Server) -> None:
    """One plain and one streamed request, checked for a real answer before measuring."""
    status, payload = http_request(server.port, "POST", server.path, body_for(server.model, False))
    try:
        content = orjson.loads(payload)["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        content = None
    if status != 200 or not content:
        raise RuntimeError(f"{server.name}: bad answer {status}: {payload[:300]!r}")
    status, payload = http_request(
        server.port, "POST", server.stream_path, body_for(server.stream_model, True)
    )
    if status != 200 or not payload.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{server.name}: bad stream {status}: {payload[-300:]!r}")


def measure_candidate(
    server: Server, plan: Plan, tmp: Path, load_cpus: list[int] | None, meter: CpuMeter
) -> dict[str, Any]:
    """One round of every figure for one candidate. Each row carries `others_cpu_pct`: the
    share of all CPUs that processes outside the benchmark took meanwhile."""
    check_candidate(server)
    base = f"http://127.0.0.1:{server.port}"
    url, stream_url = base + server.path, base + server.stream_path
    plain, streamed = body_for(server.model, False), body_for(server.stream_model, True)
    out: dict[str, Any] = {"throughput": {}}
    root = server.proc.pid if server.proc is not None else None
    print(f"bench: {server.name}: warm-up", file=sys.stderr)
    run_wrk(url, plain, 32, plan.warmup_s, tmp, load_cpus)
    for c in CONCURRENCIES:
        print(f"bench: {server.name}: c={c}", file=sys.stderr)
        pids = descendants(root) if root else []
        cpu0 = cpu_seconds(pids)
        row, others = meter.measure(partial(run_wrk, url, plain, c, plan.seconds, tmp, load_cpus))
        row["others_cpu_pct"] = others
        if root:
            used = cpu_seconds(pids) - cpu0
            row["server_cpu_s"] = round(used, 2)
            row["requests_per_server_cpu_s"] = row["requests"] / used if used else None
        out["throughput"][str(c)] = row
    print(f"bench: {server.name}: stream c={STREAM_CONCURRENCY}", file=sys.stderr)
    out["stream"], others = meter.measure(
        partial(run_wrk, stream_url, streamed, STREAM_CONCURRENCY, plan.seconds, tmp, load_cpus)
    )
    out["stream"]["others_cpu_pct"] = others
    print(f"bench: {server.name}: time to first byte", file=sys.stderr)
    out["ttfb"], others = meter.measure(partial(run_ttfb, server, plan, load_cpus))
    out["ttfb"]["others_cpu_pct"] = others
    return out


def best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A candidate's figures over its rounds: per measurement, the round with the most
    requests/s (for time to first byte, the lowest p50); every round stays in `rounds`."""
    out: dict[str, Any] = {
        "throughput": {
            c: max((r["throughput"][c] for r in rounds), key=lambda row: row["rps"])
            for c in rounds[0]["throughput"]
        },
        "stream": max((r["stream"] for r in rounds), key=lambda row: row["rps"]),
        "ttfb": min((r["ttfb"] for r in rounds), key=lambda row: row["ttfb_p50_ms"]),
        "rounds": rounds,
    }
    return out


def run_ttfb(server: Server, plan: Plan, cpus: list[int] | None) -> dict[str, Any]:
    body = body_for(server.stream_model, True)
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        asyncio.run(ttfb_samples(server.port, server.stream_path, body, plan.ttfb_warmup, 5))
        return asyncio.run(
            ttfb_samples(
                server.port, server.stream_path, body, plan.ttfb_requests, plan.ttfb_time_limit_s
            )
        )
    finally:
        os.sched_setaffinity(0, before)


def hedge_command() -> list[str]:
    beside = Path(sys.executable).parent / "hedge"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hedge")
    if found is None:
        sys.exit("bench: the `hedge` command is not installed in this environment")
    return [found]


def start_nginx(stack: contextlib.ExitStack, tmp: Path, cpus: list[int] | None) -> Server:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port))
    nginx = tool("nginx")
    assert nginx is not None
    cmd = [*pin(cpus), nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
    proc = stack.enter_context(running(cmd, tmp / "nginx.log"))
    wait_port(port, proc, 10)
    return Server(
        "direct",
        port,
        None,
        model="canned-model",
        stream_model="canned-model",
        stream_path="/stream/v1/chat/completions",
    )


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:g}s")


@contextlib.contextmanager
def hedge_server(
    name: str,
    tmp: Path,
    nginx_port: int,
    workers: int,
    cpus: list[int] | None,
    ledger: bool = False,
) -> Iterator[Server]:
    port = free_port()
    cfg = tmp / f"hedge-{port}.yaml"
    cfg.write_text(hedge_config(tmp, nginx_port, port, ledger))
    cmd = [*pin(cpus), *hedge_command(), "serve", "--config", str(cfg), "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    log = tmp / f"{name}.log"
    with running(cmd, log, {"PYTHONUNBUFFERED": "1"}) as proc:
        try:
            wait_http_ok(port, "/readyz", proc, 60)
        except RuntimeError:
            print(f"bench: {name} did not start; its log ends with:\n{tail(log)}", file=sys.stderr)
            raise
        yield Server(name, port, proc, log)


@contextlib.contextmanager
def litellm_server(tmp: Path, nginx_port: int, cpus: list[int] | None) -> Iterator[Server]:
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(litellm_config(nginx_port))
    exe = LITELLM_VENV / "bin" / "litellm"
    cmd = [*pin(cpus), str(exe), "--config", str(cfg), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--num_workers", "1", "--telemetry", "False"]
    logging_cfg = tmp / "litellm-logging.json"
    logging_cfg.write_bytes(orjson.dumps(LITELLM_LOGGING))
    cmd += ["--log_config", str(logging_cfg)]
    log = tmp / "litellm.log"
    with running(cmd, log, LITELLM_ENV) as proc:
        try:
            wait_http_ok(port, "/health/liveliness", proc, 180)
        except RuntimeError:
            print(f"bench: litellm did not start; its log ends with:\n{tail(log)}", file=sys.stderr)
            raise
        yield Server("litellm", port, proc, log)


def placement(no_pin: bool) -> dict[str, list[int] | None]:
    cores = sorted(os.sched_getaffinity(0))
    if no_pin or len(cores) < 2 or not shutil.which("taskset"):
        return {"load": None, "one_worker": None, "n_workers": None}
    return {"load": cores[-1:], "one_worker": cores[:1], "n_workers": cores}


def run(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    cpus = placement(args.no_pin)
    workers = args.workers or len(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "placement": {
            "nginx_and_wrk_and_ttfb_client": cpus["load"],
            "hedge-1": cpus["one_worker"],
            "hedge-1+ledger": cpus["one_worker"],
            "litellm": cpus["one_worker"],
            f"hedge-{workers}": cpus["n_workers"],
            "how": "taskset -c (None: not pinned)",
        },
        "workers": workers,
        "candidates": {},
        "skipped": {},
    }
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only or name.partition("-")[0] in only

    with tempfile.TemporaryDirectory(prefix="hedge-hot-") as tmp_name, contextlib.ExitStack() as st:
        tmp = Path(tmp_name)
        servers = [start_nginx(st, tmp, cpus["load"])]
        # Every server runs for the whole benchmark (idle while another is measured), so the
        # rounds can take turns and a busy spell on the machine does not hit one candidate.
        if wanted("hedge-1"):
            servers.append(
                st.enter_context(
                    hedge_server("hedge-1", tmp, servers[0].port, 1, cpus["one_worker"])
                )
            )
        if wanted("hedge-1+ledger"):
            srv = hedge_server("hedge-1+ledger", tmp, servers[0].port, 1, cpus["one_worker"], True)
            servers.append(st.enter_context(srv))
        if wanted(f"hedge-{workers}") and workers > 1:
            srv = hedge_server(f"hedge-{workers}", tmp, servers[0].port, workers, cpus["n_workers"])
            servers.append(st.enter_context(srv))
        if wanted("litellm") and not args.skip_litellm:
            why = ensure_litellm()
            if why is None:
                servers.append(
                    st.enter_context(litellm_server(tmp, servers[0].port, cpus["one_worker"]))
                )
            else:
                print(f"bench: LiteLLM skipped: {why}", file=sys.stderr)
                report["skipped"]["litellm"] = why
        roots = [s.proc.pid for s in servers if s.proc is not None]
        meter = CpuMeter([p for r in roots for p in descendants(r)])
        watches = {s.name: RssWatch(s.proc.pid) for s in servers if s.proc is not None}
        rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        with contextlib.ExitStack() as watching:
            for w in watches.values():
                watching.enter_context(w)
            for r in range(plan.rounds):
                print(f"bench: round {r + 1} of {plan.rounds}", file=sys.stderr)
                order = servers if r % 2 == 0 else servers[:1] + servers[:0:-1]
                for srv in order:
                    figures = measure_candidate(srv, plan, tmp, cpus["load"], meter)
                    rounds[srv.name].append(figures)
        for srv in servers:
            report["candidates"][srv.name] = best_of(rounds[srv.name])
            if srv.name in watches:
                report["candidates"][srv.name]["peak_rss_mib"] = round(
                    watches[srv.name].peak_kib / 1024, 1
                )
                report["candidates"][srv.name]["processes"] = watches[srv.name].max_processes
    return report


# ---- report --------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = round(int(first.split()[1]) / 1024 / 1024, 1)
    wrk, nginx = tool("wrk"), tool("nginx")
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_percent_before_start": cpu_busy_percent(),
        "python": platform.python_version(),
        "versions": {
            "hedge": version("hedge"),
            "uvicorn": version("uvicorn"),
            "uvloop": version("uvloop"),
            "httptools": version("httptools"),
            "aiohttp": version("aiohttp"),
            "orjson": version("orjson"),
            "pydantic": version("pydantic"),
            "litellm": installed_litellm(),
            "nginx": command_output([nginx, "-v"]) if nginx else None,
            "wrk": command_output([wrk, "-v"]) if wrk else None,
        },
        "git_commit": command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or None,
        "git_tree_modified": bool(
            command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
        ),
    }


def render(report: dict[str, Any]) -> str:
    cands: dict[str, Any] = report["candidates"]
    direct = cands["direct"]
    names = list(cands)
    rows = []
    for name in names:
        c = cands[name]
        tp = c["throughput"]
        row = [name]
        row += [f"{tp[str(k)]['rps']:.0f}" for k in CONCURRENCIES]
        row += [f"{c['stream']['rps']:.0f}"]
        for k in (1, 32):
            p50 = tp[str(k)]["p50_ms"]
            row.append(f"{p50:.3f}")
            if name != "direct":
                row[-1] += f" (+{p50 - direct['throughput'][str(k)]['p50_ms']:.3f})"
        p99 = tp["1"]["p99_ms"]
        row.append(f"{p99:.3f}")
        if name != "direct":
            row[-1] += f" (+{p99 - direct['throughput']['1']['p99_ms']:.3f})"
        t = c["ttfb"]
        row.append(f"{t['ttfb_p50_ms']:.3f}")
        if name != "direct":
            row[-1] += f" (+{t['ttfb_p50_ms'] - direct['ttfb']['ttfb_p50_ms']:.3f})"
        row.append(f"{c.get('peak_rss_mib', float('nan')):.0f}" if "peak_rss_mib" in c else "-")
        errs = sum(
            sum(r["errors"] for r in one["throughput"].values())
            + one["stream"]["errors"]
            + one["ttfb"]["errors"]
            for one in c["rounds"]
        )
        row.append(str(errs))
        busy = [r.get("others_cpu_pct") for r in (*tp.values(), c["stream"], t)]
        row.append(f"{max((b for b in busy if b is not None), default=float('nan')):.0f}")
        rows.append(row)
    headers = ["candidate", "rps c=1", "rps c=32", "rps c=256", "stream rps c=32"]
    headers += ["p50 c=1 ms (added)", "p50 c=32 ms (added)", "p99 c=1 ms (added)"]
    headers += ["TTFB p50 ms (added)", "peak RSS MiB", "errors", "others CPU %"]
    lines = [table(headers, rows)]
    ratios = compute_ratios(report)
    report["ratios"] = ratios
    lines.append("")
    lines.append("Targets (measured in this run):")
    for key, value in ratios.items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def compute_ratios(report: dict[str, Any]) -> dict[str, Any]:
    cands = report["candidates"]
    direct = cands["direct"]
    out: dict[str, Any] = {}
    one = cands.get("hedge-1")
    many_name = f"hedge-{report['workers']}"
    many = cands.get(many_name)
    lite = cands.get("litellm")
    if one and lite:
        r = one["throughput"]["32"]["rps"] / lite["throughput"]["32"]["rps"]
        out["hedge-1 / litellm requests/s at c=32 (target >= 30)"] = round(r, 1)
        for c in ("1", "256"):
            r = one["throughput"][c]["rps"] / lite["throughput"][c]["rps"]
            out[f"hedge-1 / litellm requests/s at c={c}"] = round(r, 1)
        r = one["stream"]["rps"] / lite["stream"]["rps"]
        out["hedge-1 / litellm stream requests/s at c=32"] = round(r, 1)
    booked = cands.get("hedge-1+ledger")
    if booked and lite:
        r = booked["throughput"]["32"]["rps"] / lite["throughput"]["32"]["rps"]
        out["hedge-1+ledger / litellm requests/s at c=32"] = round(r, 1)
    if one:
        added = one["throughput"]["1"]["p50_ms"] - direct["throughput"]["1"]["p50_ms"]
        out["hedge-1 added p50 latency at c=1, ms (target <= 0.5)"] = round(added, 3)
        added = one["ttfb"]["ttfb_p50_ms"] - direct["ttfb"]["ttfb_p50_ms"]
        out["hedge-1 added time to first byte p50, ms (target < 1)"] = round(added, 3)
    if one and many:
        n = report["workers"]
        for c in ("32", "256"):
            r = many["throughput"][c]["rps"] / one["throughput"][c]["rps"]
            out[f"{many_name} / hedge-1 requests/s at c={c} (target >= {0.8 * n:g})"] = round(r, 2)
        e1 = one["throughput"]["256"].get("requests_per_server_cpu_s")
        en = many["throughput"]["256"].get("requests_per_server_cpu_s")
        if e1 and en:
            out[f"{many_name} / hedge-1 requests per server CPU-second at c=256"] = round(
                en / e1, 2
            )
    errors = {
        name: sum(
            sum(r["errors"] for r in one["throughput"].values())
            + one["stream"]["errors"]
            + one["ttfb"]["errors"]
            for one in c["rounds"]
        )
        for name, c in cands.items()
    }
    out["errors per candidate (target 0)"] = errors
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run to try the script")
    parser.add_argument("--seconds", type=float, help="seconds per wrk measurement")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 2)")
    parser.add_argument("--workers", type=int, help="N for hedge-N (default: usable cores)")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--only", help="comma-separated candidates (hedge-1, hedge, litellm)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds)
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    started = time.monotonic()
    ensure_tools()
    if not tool("wrk"):
        sys.exit("bench: wrk is missing; install it (apt-get install wrk) and rerun")
    report: dict[str, Any] = {
        "benchmark": "hot_path",
        "command": the_command(),
        "machine": machine_facts(),
        "plan": dataclasses.asdict(plan),
    }
    report.update(run(args, plan))
    report["machine"]["versions"]["litellm"] = installed_litellm()
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - started, 1)
    text = render(report)
    m = report["machine"]
    header = (
        f"hedge hot_path benchmark, {m['date_utc']}: {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"Python {m['python']}, {report['total_seconds']:.0f} s\ncommand: {report['command']}\n"
        f"placement (taskset CPUs): {orjson.dumps(report['placement']).decode()}"
    )
    report["table"] = header + "\n\n" + text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(report["table"])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

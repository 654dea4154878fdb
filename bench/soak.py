"""Memory soak: steady load on one hedge worker for minutes, its RSS sampled throughout.

    .venv/bin/python bench/soak.py                  # 10 minutes of load, about 11 in all
    .venv/bin/python bench/soak.py --minutes 2      # a shorter try

nginx answers canned completions and streams (as in bench/hot_path.py); `hedge serve` (one
worker, with its default SQLite ledger on, so the ledger's buffers are soaked too) routes to
it; wrk keeps 32 connections busy for the whole
run, each request alternating between a plain and a streamed completion (a Lua `request`
hook), so both paths and the ledger run all along. The server's RSS (the sum over its
processes, from /proc) is sampled every `--interval` seconds. The first `--warmup` fraction of
the run (default 10%, at least 30 s) is warm-up; the figure is the growth from the RSS at the
end of warm-up to the RSS at the end, and the maximum over the whole steady part, against the
issue's target of at most 10%. It also reports requests served and errors (every one must
be a 2xx). Writes `bench/results/soak.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hot_path import (  # bench/ is not a package: imported from beside this file
    ROOT,
    RssWatch,
    body_for,
    ensure_tools,
    hedge_server,
    machine_facts,
    pin,
    placement,
    start_nginx,
    the_command,
    tool,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"

SOAK_LUA = """
local bodies = {{ [==[{plain}]==], [==[{stream}]==] }}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, bodies[n % 2 + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    ensure_tools()
    wrk = tool("wrk")
    if wrk is None:
        sys.exit("bench: wrk is missing; install it (apt-get install wrk) and rerun")
    seconds = max(10, round(args.minutes * 60))
    warmup_s = max(30.0, seconds * args.warmup) if seconds > 60 else seconds * args.warmup
    cpus = placement(args.no_pin)
    report: dict[str, Any] = {
        "benchmark": "soak",
        "command": the_command(),
        "machine": machine_facts(),
        "settings": {
            "seconds": seconds,
            "warmup_s": warmup_s,
            "interval_s": args.interval,
            "connections": args.connections,
            "traffic": "alternating plain and streamed chat completions (12-event stream)",
            "placement": {"hedge": cpus["one_worker"], "nginx_and_wrk": cpus["load"]},
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="hedge-soak-") as tmp_name,
        contextlib.ExitStack() as st,
    ):
        tmp = Path(tmp_name)
        nginx = start_nginx(st, tmp, cpus["load"])
        script = tmp / "soak.lua"
        plain = body_for("canned", False).decode()
        stream = body_for("canned-stream", True).decode()
        script.write_text(SOAK_LUA.format(plain=plain, stream=stream))
        with hedge_server("hedge-1", tmp, nginx.port, 1, cpus["one_worker"], ledger=True) as srv:
            assert srv.proc is not None
            url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
            cmd = [*pin(cpus["load"]), wrk, "-t1", f"-c{args.connections}", f"-d{seconds}s"]
            cmd += ["--timeout", "10s", "-s", str(script), url]
            print(f"bench: soak for {seconds} s, sampling RSS every {args.interval:g} s...")
            with RssWatch(srv.proc.pid, args.interval) as watch:
                load = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=seconds + 120, check=False
                )
            line = next((x for x in load.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
            if load.returncode != 0 or line is None:
                raise RuntimeError(f"wrk failed ({load.returncode}): {load.stdout}{load.stderr}")
            raw = orjson.loads(line.removeprefix("BENCHJSON "))
            samples = watch.samples
    report["wrk"] = raw
    report["samples"] = [{"t_s": t, "rss_mib": round(k / 1024, 1)} for t, k in samples]
    report["result"] = summarise(samples, warmup_s, raw)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    for key, value in report["result"].items():
        print(f"{key}: {value}")
    print(f"\nwrote {args.out}")
    return 0


def summarise(samples: list[tuple[float, int]], warmup_s: float, raw: dict[str, Any]) -> Any:
    steady = [(t, k / 1024) for t, k in samples if t >= warmup_s]
    if len(steady) < 2:
        raise RuntimeError("too few samples after warm-up: run longer")
    # A median of the first and last minute's samples (or fewer), so one sample that
    # catches a buffer mid-flush does not decide the figure.
    window = max(1, min(12, len(steady) // 4))
    start = statistics.median(v for _, v in steady[:window])
    end = statistics.median(v for _, v in steady[-window:])
    peak = max(v for _, v in steady)
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    seconds = raw["duration_us"] / 1e6
    return {
        "rss_after_warmup_mib": round(start, 1),
        "rss_at_end_mib": round(end, 1),
        "rss_peak_after_warmup_mib": round(peak, 1),
        "growth_end_vs_warmup_pct": round(100 * (end - start) / start, 2),
        "growth_peak_vs_warmup_pct": round(100 * (peak - start) / start, 2),
        "target": "growth within 10% after warm-up",
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "errors": errors,
        "latency_p50_ms": raw["p50_us"] / 1000,
        "latency_p99_ms": raw["p99_us"] / 1000,
        "samples": len(samples),
    }


if __name__ == "__main__":
    sys.exit(main())

"""`hedge serve --workers N`: N worker processes on one machine behind one port.

The supervisor (the process the user started) binds the port and starts N workers, each a
fresh `hedge serve` that inherits a listening socket and runs its own event loop and gateway.
Where the system has SO_REUSEPORT (Linux), each worker gets a socket of its own on the same
port and the kernel spreads new connections evenly across them; with one shared socket,
whichever worker woke first accepted a burst of them (under load, 32 connections opened at
once split 26/6 between two workers, leaving one saturated and the other half idle). A
worker's socket stays open in the supervisor, so connections that arrive while that worker
restarts wait for it rather than being refused. Elsewhere, all workers share one socket. The
supervisor never serves a request. It:
- reports a port it cannot bind, or a worker that exits before it is ready, and exits 1;
- restarts a worker that dies after start-up (with a growing pause when a slot keeps failing,
  and gives up with exit 1 after `MAX_FAILED_STARTS` restarts in a row never became ready);
- forwards SIGTERM and SIGINT to every worker as SIGTERM (a graceful stop: requests in flight
  finish, ledgers flush), waits for them, and exits 0.

Each worker tells the supervisor it is ready by writing one byte to a pipe, and watches
another pipe whose write end only the supervisor holds: when the supervisor dies, however it
dies, the worker sees end-of-file and stops gracefully instead of serving on as an orphan.

State is per worker: circuit breakers, the in-memory response cache, plans and revocations
live in each worker's memory (shared state across workers and machines is the Redis layer's
job). The SQLite ledger is one file written by every worker: WAL mode and a busy timeout let
their batched transactions take turns.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

MAX_FAILED_STARTS = 5
RESTART_PAUSE_S = (0.0, 0.5, 1.0, 2.0, 5.0)  # before the k-th restart in a row of one slot
POLL_S = 0.2


def log(message: str) -> None:
    print(f"hedge: {message}", file=sys.stderr, flush=True)


def bind(host: str, port: int, backlog: int = 2048, reuse_port: bool = False) -> socket.socket:
    """A listening socket workers inherit. Raises OSError with the reason."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_all(host: str, port: int, count: int) -> list[socket.socket]:
    """One socket per worker on host:port where SO_REUSEPORT exists, else one shared one."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return [bind(host, port)]
    # A plain socket first: it fails if anything listens there, including another hedge's
    # SO_REUSEPORT group, which this supervisor would otherwise silently join.
    with bind(host, port, backlog=1) as probe:
        port = probe.getsockname()[1]  # port 0 asks for any free port
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(bind(host, port, reuse_port=True))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


@dataclass
class Worker:
    """One slot: the process filling it now and how its starts went."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of the worker's ready pipe
    parent_fd: int | None = None  # write end of the pipe the worker watches for our death
    ready: bool = False
    failed_starts: int = 0  # restarts in a row that never became ready
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        worker_args: Sequence[str],
        socks: Sequence[socket.socket],
        count: int,
        grace_s: float,
    ) -> None:
        self.worker_args = list(worker_args)
        self.socks = list(socks)  # one per worker, or one for all
        self.workers = [Worker(i + 1) for i in range(count)]
        self.grace_s = grace_s
        self.stopping = False

    # -- signals --

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log(f"{signal.Signals(signum).name} received: stopping the workers gracefully")
        self.stopping = True

    # -- one worker --

    def _spawn(self, w: Worker) -> None:
        ready_r, ready_w = os.pipe()
        parent_r, parent_w = os.pipe()
        sock = self.socks[(w.index - 1) % len(self.socks)]
        fds = f"{sock.fileno()},{ready_w},{parent_r}"
        cmd = [sys.executable, "-m", "hedge.cli", "serve", *self.worker_args]
        cmd += ["--worker-fds", fds, "--worker-index", str(w.index)]
        try:
            w.proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(), ready_w, parent_r))
        finally:
            os.close(ready_w)
            os.close(parent_r)
        w.ready_fd, w.parent_fd, w.ready, w.restart_at = ready_r, parent_w, False, None

    def _reap(self, w: Worker) -> int | None:
        """The exit code of the worker's process if it has ended (its pipes closed), else
        None."""
        if w.proc is None:
            return None
        code = w.proc.poll()
        if code is None:
            return None
        w.exits.append(code)
        w.proc = None
        for fd in (w.ready_fd, w.parent_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        w.ready_fd = w.parent_fd = None
        return code

    def _check_ready(self, timeout_s: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers if w.ready_fd is not None and not w.ready}
        if not waiting:
            time.sleep(timeout_s)
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], timeout_s)
        except InterruptedError:
            return
        for fd in readable:
            w = waiting[fd]
            with contextlib.suppress(OSError):
                if os.read(fd, 1) == b"1":
                    w.ready, w.failed_starts = True, 0
                    assert w.proc is not None
                    log(f"worker {w.index} ready (pid {w.proc.pid})")
            # b"" (end of file) means it exited before it was ready: _reap sees the exit.

    # -- the whole --

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            for sock in self.socks:
                sock.close()

    def _run(self) -> int:
        for w in self.workers:
            self._spawn(w)
        # Start-up: every worker must become ready; any exit now is a configuration or
        # environment problem that a restart would only repeat.
        while not self.stopping and not all(w.ready for w in self.workers):
            self._check_ready(POLL_S)
            for w in self.workers:
                if not w.ready and (code := self._reap(w)) is not None:
                    log(
                        f"worker {w.index} exited with {_describe(code)} before it was ready; "
                        "its output is above. Stopping."
                    )
                    return 1
        if self.stopping:
            return 0
        pids = ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None)
        log(f"{len(self.workers)} workers serving (pids {pids})")
        while not self.stopping:
            now = time.monotonic()
            for w in self.workers:
                code = self._reap(w)
                if code is not None and self.stopping:
                    break  # a signal to the process group: the workers are stopping too
                if code is not None:
                    if not w.ready:
                        w.failed_starts += 1
                    if w.failed_starts >= MAX_FAILED_STARTS:
                        log(
                            f"worker {w.index} failed to start {w.failed_starts} times in a "
                            f"row (last: {_describe(code)}). Stopping."
                        )
                        return 1
                    pause = RESTART_PAUSE_S[min(w.failed_starts, len(RESTART_PAUSE_S) - 1)]
                    log(f"worker {w.index} exited with {_describe(code)}; restarting it")
                    w.ready, w.restart_at = False, now + pause
                if w.proc is None and w.restart_at is not None and now >= w.restart_at:
                    self._spawn(w)
            self._check_ready(POLL_S)
        return 0

    def _stop_all(self) -> None:
        alive = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in alive:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for w in alive:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"worker {w.index} did not stop within {self.grace_s + 5:g}s: killing it")
                w.proc.kill()
                w.proc.wait()
        for w in self.workers:
            self._reap(w)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit status {code}"


def supervise(worker_args: Sequence[str], host: str, port: int, count: int, grace_s: float) -> int:
    """Bind host:port, run `count` workers until SIGTERM/SIGINT; the process exit status."""
    try:
        socks = bind_all(host, port, count)
    except OSError as e:
        log(f"cannot listen on {host}:{port}: {e.strerror or e}")
        return 1
    # Each worker writes its metric samples here; whichever one answers /metrics sums them all
    # (prometheus_client's multiprocess mode). A fresh directory per run: samples of a previous
    # run must not be added in.
    metrics_dir = tempfile.mkdtemp(prefix="hedge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return Supervisor(worker_args, socks, count, grace_s).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def parse_worker_fds(value: str) -> tuple[int, int, int]:
    sock, ready, parent = (int(x) for x in value.split(","))
    return sock, ready, parent


def run_worker(config: Any, fds: tuple[int, int, int]) -> None:
    """Serve on the inherited socket until told to stop (or until the supervisor is gone)."""
    import asyncio

    import uvicorn

    sock_fd, ready_fd, parent_fd = fds

    class WorkerServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            asyncio.get_running_loop().add_reader(parent_fd, self._supervisor_gone)

        def _supervisor_gone(self) -> None:
            asyncio.get_running_loop().remove_reader(parent_fd)
            self.should_exit = True

    sock = socket.socket(fileno=sock_fd)
    WorkerServer(config).run(sockets=[sock])

"""A throwaway Redis server for tests: `redis-server` on a free loopback port, its working
directory a temp dir, no persistence, stopped (by its pid) and removed at the end.

The binary comes from $REDIS_SERVER, the PATH or /usr/bin; scripts/system-deps.sh installs
Debian's `redis-server`. Redis runs fine as root, so no user switching is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def find_redis_server() -> Path | None:
    for candidate in (os.environ.get("REDIS_SERVER"), shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    fallback = Path("/usr/bin/redis-server")
    return fallback if os.access(fallback, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.root / "redis.log"

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP), for tests that poke the server directly."""
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            data = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def throwaway_redis(binary: Path, *, maxmemory: str = "64mb") -> Iterator[RedisServer]:
    """A running server, stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="hedge-redis-"))
    port = free_port()
    args = [
        str(binary),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(root),
        "--logfile",
        str(root / "redis.log"),
        # A test server: nothing is written to disk.
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxmemory",
        maxmemory,
        "--maxmemory-policy",
        "allkeys-lru",
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    server = RedisServer(port, root, proc)
    try:
        deadline = time.monotonic() + 20
        while not _ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()}):\n{log}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()  # this helper's own child, by its pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

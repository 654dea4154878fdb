"""Run a short Python program that a model wrote, with limits, and report what happened.

Used by the `python_tests` cascade validator. This is **defence in depth against code a model
wrote by mistake** (an infinite loop, a memory blow-up, a stray `os.remove` or network call), NOT
a security boundary against a determined attacker: there are no namespaces, no seccomp filter,
no separate user. What it does:

- A fresh interpreter (`sys.executable -I -S -B`: isolated mode, no site-packages, no bytecode
  writes) in a fresh temporary directory as its working directory, with an empty environment,
  stdin on /dev/null, only fds 0-2 inherited, in its own session so the whole process group can
  be killed.
- A wall-clock timeout enforced by the parent (SIGKILL to the process group), and stdout/stderr
  drained concurrently and capped (the last 64 KiB of each is kept).
- Resource limits, set by a small bootstrap inside the child before the untrusted code is even
  compiled (rather than in `preexec_fn`, which is unsafe in a multi-threaded parent such as the
  gateway): RLIMIT_AS = memory_mb, RLIMIT_CPU = ceil(timeout_s), RLIMIT_NPROC = 0 (no new
  processes or threads, for non-root users), RLIMIT_NOFILE = 32, RLIMIT_FSIZE = 0, RLIMIT_CORE = 0.
- A `sys.addaudithook` hook, installed by the bootstrap after it has read the source and before
  the untrusted code runs, that refuses: `open` of anything except reading files under the
  interpreter's own standard-library directories (so imports still work); listing other
  directories; every network operation (only AF_UNIX socket creation is allowed, because asyncio
  makes itself a socketpair; connect/bind/getaddrinfo... are refused); process creation
  (`subprocess.Popen`, `os.system`, `os.exec*`, `os.spawn*`, `os.posix_spawn*`, `os.fork`, and
  `_posixsubprocess.fork_exec`, which raises no audit event and is replaced by a stub); signals to
  other processes (`os.kill`, `os.killpg`); file-system changes (`os.remove`, `os.rename`,
  `os.mkdir`, `os.rmdir`, `shutil.*`, `os.chmod`...); `ctypes` and a few extension modules that
  reach the OS without audit events (`_posixshmem`, `_dbm`, `_gdbm`, sub-interpreters, the test
  modules); sqlite files other than ":memory:"; raising resource limits; and replacing the hook's
  own code or defaults. The hook uses only values captured at install time, so monkeypatching
  modules or builtins does not change its decisions.
- The bootstrap ends the child with `os._exit`, so no user finaliser runs after the interpreter
  clears its audit hooks at shutdown.

Known limits: audit hooks cannot stop code that corrupts the interpreter's memory (crafted
bytecode via `code.replace`, which the standard library itself uses and so stays allowed), nor
C extensions already importable from the standard library that make system calls without audit
events; a process running as root ignores RLIMIT_NPROC; existing symlinks inside the standard
library directories are followed; a regular expression or big-integer computation still burns
CPU until the timeout; RLIMIT_AS counts address space, of which the interpreter itself takes
about 15 MiB, so a very small memory_mb leaves the code little room. Run hedge as an
unprivileged user, and put a real sandbox (a container, gVisor, nsjail) around it if the code
may be adversarial.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO

OUTPUT_CAP_BYTES = 64 * 1024
NOFILE_LIMIT = 32
_DRAIN_WAIT_S = 1.0  # after the group is killed, its pipes close at once

# The child's bootstrap, compiled under the file name _BOOT_FILENAME so that the hook can tell
# its own function apart. argv: [-c, bootstrap, source_path, cpu_s, memory_bytes, nofile, name].
# Everything the audit hook consults is bound as a default argument at definition time, so user
# code that rebinds module attributes or builtins cannot change the hook's decisions.
_BOOTSTRAP = r"""
import sys


def _boot():
    import linecache
    import os
    import resource
    import traceback
    import types

    import _posixsubprocess

    source_path, cpu_s, memory_bytes, nofile, module_name = sys.argv[2:7]
    with open(source_path, encoding="utf-8") as f:
        source = f.read()
    filename = "solution.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)

    for limit, value in (
        (resource.RLIMIT_AS, int(memory_bytes)),
        (resource.RLIMIT_CPU, int(cpu_s)),
        (resource.RLIMIT_NPROC, 0),
        (resource.RLIMIT_NOFILE, int(nofile)),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        soft = value
        if limit == resource.RLIMIT_CPU and (hard == resource.RLIM_INFINITY or hard > value):
            value += 1  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.setrlimit(limit, (soft, value))

    def _no_fork_exec(*args, **kwargs):
        raise PermissionError("hedge sandbox: creating processes is not allowed")

    _posixsubprocess.fork_exec = _no_fork_exec

    roots = []
    for entry in sys.path:
        if entry and os.path.isabs(entry):
            for root in (os.path.normpath(entry), os.path.realpath(entry)):
                if root + "/" not in roots:
                    roots.append(root + "/")

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def _hook(
        event,
        args,
        _type=type,
        _str=str,
        _bytes=bytes,
        _int=int,
        _function=types.FunctionType,
        _error=PermissionError,
        _roots=tuple(roots),
        _write_flags=write_flags,
        _deny=frozenset((
            "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove",
            "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate",
            "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.lchmod", "os.utime",
            "os.putenv", "os.unsetenv", "os.setxattr", "os.removexattr",
            "os.add_dll_directory", "os.startfile", "subprocess.Popen", "pty.spawn",
            "resource.setrlimit", "resource.prlimit", "webbrowser.open",
            "sqlite3.enable_load_extension", "sqlite3.load_extension",
        )),
        _deny_prefixes=(
            "os.exec", "os.spawn", "os.posix_spawn", "shutil.", "ctypes.", "syslog.",
            "_winapi.", "winreg.", "msvcrt.",
        ),
        _deny_modules=frozenset((
            "ctypes", "_ctypes", "_ctypes_test", "_posixsubprocess", "_posixshmem", "_dbm",
            "_gdbm", "_xxsubinterpreters", "_xxinterpchannels", "_testcapi",
            "_testinternalcapi", "_testmultiphase", "_testbuffer", "_testimportmultiple",
            "_testclinic", "_xxtestfuzz", "_tkinter",
        )),
        _own_code=frozenset(("__code__", "__defaults__", "__kwdefaults__")),
    ):
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = args[0]
            if _type(path) is _int:
                return
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            if event == "open":
                mode, flags = args[1], args[2]
                if _type(flags) is not _int or flags & _write_flags:
                    raise _error("hedge sandbox: writing files is not allowed")
                if mode is not None and (
                    _type(mode) is not _str
                    or "w" in mode or "a" in mode or "x" in mode or "+" in mode
                ):
                    raise _error("hedge sandbox: writing files is not allowed")
            if (
                _type(path) is not _str
                or not path.startswith("/")
                or ".." in path.split("/")
                or not (path + "/").startswith(_roots)
            ):
                raise _error("hedge sandbox: only the standard library may be read")
            return
        if event == "import":
            name = args[0]
            if _type(name) is not _str or name.partition(".")[0] in _deny_modules:
                raise _error("hedge sandbox: this module may not be imported")
            return
        if event == "object.__setattr__":
            target = args[0]
            if (
                args[1] in _own_code
                and _type(target) is _function
                and target.__code__.co_filename == "<hedge-sandbox>"
            ):
                raise _error("hedge sandbox: the sandbox hook may not be changed")
            return
        if event.startswith("socket."):
            if event == "socket.__new__" and _type(args[1]) is _int and args[1] == 1:
                return  # AF_UNIX: asyncio's self-pipe; connect/bind are refused below
            raise _error("hedge sandbox: network access is not allowed")
        if event == "sqlite3.connect":
            if not (_type(args[0]) is _str and args[0] == ":memory:"):
                raise _error("hedge sandbox: only in-memory sqlite databases are allowed")
            return
        if event in _deny or event.startswith(_deny_prefixes):
            raise _error("hedge sandbox: '" + event + "' is not allowed")

    module = types.ModuleType(module_name)
    module.__dict__["__file__"] = filename
    sys.modules[module_name] = module
    sys.argv = [filename]
    stdout, stderr = sys.stdout, sys.stderr
    print_exception, exit_now = traceback.print_exception, os._exit
    del source_path, f

    sys.addaudithook(_hook)
    status = 0
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except SystemExit as exc:
        if exc.code is None:
            status = 0
        elif type(exc.code) is int:
            status = exc.code
        else:
            stderr.write(str(exc.code) + "\n")
            status = 1
    except BaseException as exc:
        try:
            print_exception(exc, file=stderr)
        except BaseException:
            pass
        status = 1
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    exit_now(status & 0xFF if status >= 0 else 1)


_boot()
"""


_LAUNCHER = "import sys; exec(compile(sys.argv[1], '<hedge-sandbox>', 'exec'))"


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What happened. `exit_code` is negative when a signal ended the process (-9: SIGKILL).
    `stdout`/`stderr` hold at most the last OUTPUT_CAP_BYTES of each stream."""

    ok: bool
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None


class _Tail:
    """Drains one pipe in a thread, keeping only the last `cap` bytes."""

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        self._stream = stream
        self._cap = cap
        self._buf = bytearray()
        self.dropped = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # closed under us after the wait gave up
                return
            if not chunk:
                return
            self._buf += chunk
            excess = len(self._buf) - self._cap
            if excess > 0:
                del self._buf[:excess]
                self.dropped += excess

    def text(self, wait_s: float) -> str:
        self._thread.join(wait_s)
        body = bytes(self._buf).decode("utf-8", "replace")
        if self.dropped:
            return f"[... {self.dropped} bytes dropped ...]\n{body}"
        return body


def _signal_reason(code: int) -> str | None:
    if code >= 0:
        return None
    signum = -code
    if signum == signal.SIGXCPU:
        return "CPU time limit exceeded (SIGXCPU)"
    if signum == signal.SIGXFSZ:
        return "file size limit exceeded (SIGXFSZ)"
    if signum == signal.SIGKILL:
        return "killed by SIGKILL (CPU hard limit or the kernel's OOM killer)"
    try:
        return f"killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"killed by signal {signum}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait until the child has exited (leaving it a zombie) or the deadline passes."""
    pause = 0.001
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def run_python(
    source: str, *, timeout_s: float, memory_mb: int, module_name: str = "__main__"
) -> SandboxResult:
    """Run `source` in a limited child interpreter (see the module docstring) and wait for it,
    at most `timeout_s` seconds of wall-clock time. Blocking: call it from a worker thread.
    `module_name` is the `__name__` the code runs under ("__main__" runs `if __name__ ==
    "__main__":` blocks)."""
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    if memory_mb <= 0:
        raise ValueError("memory_mb must be positive")
    with tempfile.TemporaryDirectory(prefix="hedge-sandbox-") as workdir:
        source_path = os.path.join(workdir, "solution.py")
        with open(source_path, "w", encoding="utf-8") as f:
            f.write(source)
        argv = [
            sys.executable,
            "-I",
            "-S",
            "-B",
            "-X",
            "utf8",
            "-c",
            _LAUNCHER,
            _BOOTSTRAP,
            source_path,
            str(max(1, math.ceil(timeout_s))),
            str(memory_mb * 1024 * 1024),
            str(NOFILE_LIMIT),
            module_name,
        ]
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={},
            close_fds=True,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out = _Tail(proc.stdout, OUTPUT_CAP_BYTES)
        err = _Tail(proc.stderr, OUTPUT_CAP_BYTES)
        # Wait without reaping (WNOWAIT), so the process group id stays ours while the rest of
        # the group (nothing should be left: fork is refused) is killed.
        try:
            timed_out = not _wait_exit(proc.pid, started + timeout_s)
        finally:
            _kill_group(proc.pid)
            proc.wait()
        stdout, stderr = out.text(_DRAIN_WAIT_S), err.text(_DRAIN_WAIT_S)
        proc.stdout.close()
        proc.stderr.close()
    code = proc.returncode
    if timed_out:
        reason: str | None = f"wall-clock timeout after {timeout_s:g}s"
    else:
        reason = _signal_reason(code)
        if reason is None and code != 0 and _last_line(stderr).startswith("MemoryError"):
            reason = f"memory limit of {memory_mb} MiB exceeded (MemoryError)"
    return SandboxResult(
        ok=code == 0 and not timed_out,
        exit_code=code,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        killed_reason=reason,
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""

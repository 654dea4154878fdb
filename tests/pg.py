"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, serve it on a free loopback
port with its unix socket in the same dir, create databases on it, and remove it all at the end.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
`postgres` system user the Debian package creates (or, failing that, a dedicated system user
created for the purpose). Server binaries come from $PG_BIN, the PATH, or
/usr/lib/postgresql/<version>/bin; scripts/system-deps.sh installs them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NEEDED = ("initdb", "pg_ctl", "createdb")
SUPERUSER = "hedge"  # the cluster's superuser; trust auth on loopback only
SERVICE_USERS = ("postgres", "hedge-pg")


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and createdb, newest version first, or None."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in candidates:
        if all((d / name).is_file() and os.access(d / name, os.X_OK) for name in NEEDED):
            return d
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    # Root, and no postgres user (server binaries installed by hand): make a dedicated one.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "hedge-pg"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("hedge-pg")


@dataclass
class Postgres:
    bin_dir: Path
    root: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its DSN."""
        name = f"{prefix}_{next(self._names)}"
        subprocess.run(
            [
                str(self.bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                name,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.dsn(name)


def _run(args: list[str], user: pwd.struct_passwd | None, timeout: float) -> None:
    # `user=`/`group=` drop privileges in the child; HOME and LC_ALL keep initdb from
    # looking at root's environment or a locale the machine lacks.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        env["HOME"] = str(tempfile.gettempdir())
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


@contextlib.contextmanager
def throwaway_postgres(bin_dir: Path) -> Iterator[Postgres]:
    """A running cluster, stopped and deleted on exit."""
    user = _service_user()
    # Not pytest's tmp_path: that lives under a 0700 directory of root's that the server's
    # own user could not enter.
    root = Path(tempfile.mkdtemp(prefix="hedge-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = Postgres(bin_dir, root, free_port())
    try:
        try:
            _run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(server.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                user,
                timeout=120,
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} "
                # A test cluster: the durability of the server itself is not under test.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(server.data_dir),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(server.log),
                    "-o",
                    options,
                ],
                user,
                timeout=90,
            )
        except RuntimeError as e:
            log = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
            raise RuntimeError(f"{e}\nserver log:\n{log}") from None
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            _stop(server, user)
        shutil.rmtree(root, ignore_errors=True)


def _stop(server: Postgres, user: pwd.struct_passwd | None) -> None:
    try:
        _run(
            [
                str(server.bin_dir / "pg_ctl"),
                "stop",
                "-D",
                str(server.data_dir),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
            ],
            user,
            timeout=45,
        )
    except (RuntimeError, subprocess.TimeoutExpired):
        # pg_ctl could not stop it: end the postmaster this helper started, by its pid.
        pid_file = server.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

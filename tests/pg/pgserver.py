"""A private PostgreSQL server for tests and benchmarks, started from the installed binaries.

The server listens only on a unix socket in its own temporary directory (no
TCP port), trusts local connections and is stopped and removed afterwards.
initdb refuses to run as root, so when the caller is root the server runs as
the ``postgres`` system user through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SEARCH_DIRS = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
)
SERVER_USER = "postgres"


def find_binary(name: str) -> str:
    """Return the path of a PostgreSQL program, from PATH or Debian's versioned directory."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"PostgreSQL program {name!r} not found on PATH or in {', '.join(SEARCH_DIRS)}; "
        "install Debian's postgresql package (scripts/setup.sh does)"
    )


@dataclass
class PostgresServer:
    root: Path
    user: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def _command(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["runuser", "-u", self.user, "--", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(*args), check=check, capture_output=True, text=True, timeout=120
        )

    def start(self, settings: dict[str, str] | None = None) -> None:
        options = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "300",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        self.run(
            find_binary("initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        with (self.data_dir / "postgresql.conf").open("a") as config:
            for key, value in options.items():
                config.write(f"{key} = {value}\n")
        self.run(
            find_binary("pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self.run(
            find_binary("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop", check=False
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self.run(
            find_binary("psql"),
            "-h",
            str(self.socket_dir),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy asyncpg URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"


def start_server(settings: dict[str, str] | None = None) -> PostgresServer:
    """Start a private server in a new temporary directory; stop it with ``stop_server``."""
    root = Path(tempfile.mkdtemp(prefix="lw-pg-"))
    user = SERVER_USER if os.geteuid() == 0 else None
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        root.chmod(0o755)
    server = PostgresServer(root=root, user=user)
    server.run("mkdir", "-p", str(server.socket_dir))
    try:
        server.start(settings)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def stop_server(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)

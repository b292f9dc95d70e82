"""One place that turns settings into a running Postgres and connection parameters.

Every component (psycopg2, asyncpg, dlt, dbt) gets its connection from here, so the
embedded default and an external server behave the same.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

import psycopg2
import psycopg2.extensions

from mdp.settings import Settings, load_settings

EMBEDDED_DATABASE = "mdp"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class ConnectionParams:
    host: str  # a hostname, or a directory holding the Unix socket
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str | None = None  # libpq's (?sslmode= in the URL); None: the client's default

    @classmethod
    def from_url(cls, url: str) -> ConnectionParams:
        parsed = urlparse(url)
        if parsed.scheme not in ("postgres", "postgresql"):
            raise ValueError(
                f"MDP_DATABASE_URL must start with postgresql://, got scheme {parsed.scheme!r}"
            )
        query = parse_qs(parsed.query)
        host = query.get("host", [parsed.hostname or "127.0.0.1"])[0]
        sslmode = query.get("sslmode", [None])[0]
        if sslmode is not None and sslmode not in SSL_MODES:
            raise ValueError(f"MDP_DATABASE_URL: sslmode must be one of {SSL_MODES}")
        return cls(
            host=host,
            port=int(query.get("port", [parsed.port or 5432])[0]),
            user=unquote(query.get("user", [parsed.username or "postgres"])[0]),
            # `?password=` as libpq takes it too; dlt refuses credentials without a password
            # even where the server trusts us
            password=unquote(parsed.password or "") or query.get("password", [""])[0] or "postgres",
            dbname=unquote((parsed.path or "/postgres").lstrip("/")) or "postgres",
            sslmode=sslmode,
        )

    def dsn(self, dbname: str | None = None) -> str:
        # make_dsn quotes what needs it (a space or quote in a password broke the plain join)
        return psycopg2.extensions.make_dsn(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            sslmode=self.sslmode,
        )

    def url(self) -> str:
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        query = {"sslmode": self.sslmode} if self.sslmode else {}
        if self.host.startswith("/"):
            query = {"host": self.host, "port": str(self.port), **query}
            return f"postgresql://{auth}@/{quote(self.dbname, safe='')}?{urlencode(query, quote_via=quote)}"
        tail = f"?{urlencode(query, quote_via=quote)}" if query else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.dbname, safe='')}{tail}"

    def dlt_credentials(self) -> dict[str, object] | str:
        if self.host.startswith("/") or self.sslmode:
            # dlt builds a URL from the parts; a socket directory and sslmode only survive in
            # its query
            query = {"host": self.host} if self.host.startswith("/") else {}
            if self.sslmode:
                query["sslmode"] = self.sslmode
            host = "localhost" if self.host.startswith("/") else self.host
            auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            return (
                f"postgresql://{auth}@{host}:{self.port}/{quote(self.dbname, safe='')}"
                f"?{urlencode(query, quote_via=quote)}"
            )
        return {
            "database": self.dbname,
            "username": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
        }

    def dbt_env(self) -> dict[str, str]:
        """Environment variables read by dbt_project/profiles.yml."""
        return {
            "MDP_PG_HOST": self.host,
            "MDP_PG_PORT": str(self.port),
            "MDP_PG_USER": self.user,
            "MDP_PG_PASSWORD": self.password,
            "MDP_PG_DATABASE": self.dbname,
            "MDP_PG_SSLMODE": self.sslmode or "prefer",
        }


def start_embedded(settings: Settings) -> ConnectionParams:
    """Start (or find running) the embedded Postgres; it keeps running after we exit."""
    import warnings

    settings.pgdata_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver keeps a lock file in the user's runtime folder; without XDG_RUNTIME_DIR
        # (a container, a cron job) it uses /tmp, and says so on every command
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

        server = pgserver.get_server(settings.pgdata_dir, cleanup_mode=None)
    params = ConnectionParams.from_url(server.get_uri())
    ensure_database(params, EMBEDDED_DATABASE)
    return ConnectionParams(
        params.host, params.port, params.user, params.password, EMBEDDED_DATABASE
    )


def stop_embedded(settings: Settings, timeout: float = 30.0) -> bool:
    """Fast-shutdown the embedded Postgres if it runs; returns whether one was stopped."""
    import signal
    import time

    pid = _postmaster_pid(settings.pgdata_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)  # SIGINT is Postgres' "fast" shutdown
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def embedded_running(pgdata_dir: Path) -> bool:
    """Whether the embedded Postgres of this data folder runs (its postmaster is alive)."""
    pid = _postmaster_pid(pgdata_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _postmaster_pid(pgdata_dir: Path) -> int | None:
    """The pid in the data folder's postmaster.pid; None without a readable one."""
    try:
        return int((pgdata_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_database(params: ConnectionParams, dbname: str) -> None:
    with contextlib.closing(psycopg2.connect(params.dsn())) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{dbname}"')


_resolved: dict[str, ConnectionParams] = {}


def connection_params(settings: Settings | None = None) -> ConnectionParams:
    """Connection parameters for the configured database, starting the embedded one if needed."""
    settings = settings or load_settings()
    cache_key = settings.database_url or str(settings.pgdata_dir)
    if cache_key not in _resolved:
        if settings.database_url:
            _resolved[cache_key] = ConnectionParams.from_url(settings.database_url)
        else:
            _resolved[cache_key] = start_embedded(settings)
    return _resolved[cache_key]


# Opening a connection costs ~3 ms, more than most statements we run: reuse them per process.
_POOL_SIZE = 16
# (connection, when it was checked in)
_pools: dict[tuple[int, str], list[tuple[psycopg2.extensions.connection, float]]] = {}
_pools_lock = threading.Lock()
# A connection idle this long is pinged before it is handed out: the server may have gone
# away meanwhile (a restart, a terminated backend), which psycopg2 learns only on first use.
# Connections reused at once (an import's many statements) are not pinged.
_PING_AFTER_IDLE_SECONDS = 30.0


def _checkout(dsn: str) -> psycopg2.extensions.connection:
    while True:
        with _pools_lock:
            idle = _pools.setdefault((os.getpid(), dsn), [])
            if not idle:
                break
            conn, since = idle.pop()
        if conn.closed:
            continue
        if time.monotonic() - since < _PING_AFTER_IDLE_SECONDS or _alive(conn):
            return conn
        conn.close()
    return psycopg2.connect(dsn)


def _alive(conn: psycopg2.extensions.connection) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
        return True
    except psycopg2.Error:
        return False


def _checkin(dsn: str, conn: psycopg2.extensions.connection) -> None:
    """Back to the pool only in a clean state: no transaction, no session advisory locks."""
    try:
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock_all()")
    except psycopg2.Error:
        conn.close()
        return
    with _pools_lock:
        idle = _pools.setdefault((os.getpid(), dsn), [])
        if len(idle) < _POOL_SIZE:
            idle.append((conn, time.monotonic()))
            return
    conn.close()


@contextlib.contextmanager
def connect(
    params: ConnectionParams | None = None, autocommit: bool = False
) -> Iterator[psycopg2.extensions.connection]:
    """A pooled psycopg2 connection that commits on success and rolls back on error."""
    dsn = (params or connection_params()).dsn()
    conn = _checkout(dsn)
    conn.autocommit = autocommit
    healthy = True
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException as exc:
        healthy = not isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        if not autocommit and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
        raise
    finally:
        if healthy and not conn.closed:
            _checkin(dsn, conn)
        else:
            conn.close()

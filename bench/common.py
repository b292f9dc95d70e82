"""What every benchmark shares: a throwaway platform (database, SFTP server, env), servers
started as subprocesses, and how a figure is printed next to its target.

Nothing here imports platform modules at import time: `setup_env` must set the environment
first (settings are read from it at call time, and a few modules cache what they read).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PARTNER = "acme_corp"
PLATFORM_USER, PLATFORM_PASSWORD = "mdp_platform", "bench-platform-pw"
PARTNER_PASSWORD = "bench-partner-pw"


def phase(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Figure:
    """One measured number, optionally with a target (`op` is ">=" or "<=")."""

    section: str
    name: str
    value: float | None
    unit: str = ""
    target: float | None = None
    op: str = ">="
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "MISS"
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": None if self.target is None else f"{self.op} {self.target:g}",
            "verdict": self.verdict or None,
            "note": self.note or None,
        }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2g}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "target", "", "note")]
    section = None
    lines: list[str] = []
    for f in figures:
        target = "" if f.target is None else f"{f.op} {fmt(f.target)} {f.unit}".rstrip()
        rows.append((f.name, f"{fmt(f.value)} {f.unit}".rstrip(), target, f.verdict, f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for index, row in enumerate(rows):
        if index and figures[index - 1].section != section:
            section = figures[index - 1].section
            lines.append(f"\n{section}")
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        lines.append("  " + "  ".join(cells + [row[4]]).rstrip())
    return "\n".join(lines)


@dataclass
class Bench:
    """The running platform the benchmarks use: one database, one SFTP inbox, one state dir."""

    root: Path
    params: Any  # mdp.database.ConnectionParams
    settings: Any  # mdp.settings.Settings
    config: Any  # the acme_corp PartnerConfig
    sftp_port: int
    database: str  # "embedded (pgserver)" or the external server, for the report
    env: dict[str, str] = field(default_factory=dict)

    def upload(self, local: Path, name: str) -> None:
        """Upload as the partner does: paramiko, into its own SFTP home's inbound/."""
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.sftp_port,
            username=PARTNER,
            password=PARTNER_PASSWORD,
            allow_agent=False,
            look_for_keys=False,
        )
        try:
            sftp = client.open_sftp()
            sftp.put(str(local), f"/inbound/{name}")
        finally:
            client.close()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        from mdp.database import connect

        with connect(self.params) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []


def setup_env(root: Path) -> None:
    """The environment tests/conftest.py's `platform` fixture sets, before platform imports."""
    os.environ.update(
        {
            "MDP_STATE_DIR": str(root / "state"),
            "MDP_SFTP_USERNAME": PLATFORM_USER,
            "MDP_SFTP_PASSWORD": PLATFORM_PASSWORD,
            "MDP_PII_HASH_KEY": "bench-hash-key",
            "MDP_SETTLE_SECONDS": "0.2",
            "DAGSTER_HOME": str(root / "state" / "dagster"),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
        }
    )


@contextlib.contextmanager
def database(root: Path) -> Iterator[tuple[Any, str]]:
    """A fresh database: `mdp_bench_<random>` on MDP_BENCH_DATABASE_URL / MDP_DATABASE_URL
    (dropped afterwards), else an embedded Postgres (pgserver) in the temp dir (stopped)."""
    import psycopg2

    from mdp.database import ConnectionParams, start_embedded, stop_embedded
    from mdp.settings import load_settings

    url = os.environ.get("MDP_BENCH_DATABASE_URL") or os.environ.get("MDP_DATABASE_URL")
    if not url:
        settings = load_settings()  # state_dir is the temp dir: pgdata goes there
        try:
            yield start_embedded(settings), "embedded Postgres (pgserver)"
        finally:
            stop_embedded(settings)
        return
    server = ConnectionParams.from_url(url)
    name = f"mdp_bench_{uuid.uuid4().hex[:10]}"

    def admin(sql: str) -> None:
        with contextlib.closing(psycopg2.connect(server.dsn())) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)

    admin(f'create database "{name}"')
    try:
        yield (
            ConnectionParams(server.host, server.port, server.user, server.password, name),
            f"{server.host}:{server.port}",
        )
    finally:
        admin(f'drop database if exists "{name}" with (force)')


@contextlib.contextmanager
def bench_platform() -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="mdp_bench_"))
    setup_env(root)
    saved_url = os.environ.get("MDP_DATABASE_URL")
    try:
        with database(root) as (params, where):
            # every process (dlt, dbt, the API, import children) uses this one database
            os.environ["MDP_DATABASE_URL"] = params.url()
            from ingestion.partners import ensure_raw_tables
            from ingestion.partners.config import load_partner_configs
            from mdp.settings import load_settings
            from sandbox.sftp_server import SftpServerThread, ensure_partner_home

            sftp_root = root / "sftp"
            ensure_partner_home(sftp_root, PARTNER)
            users = {
                PLATFORM_USER: {"password": PLATFORM_PASSWORD, "home": ""},
                PARTNER: {"password": PARTNER_PASSWORD, "home": PARTNER},
            }
            with SftpServerThread(sftp_root, users, host_key_path=root / "host_key") as sftp:
                os.environ["MDP_SFTP_PORT"] = str(sftp.port)
                settings = load_settings()
                ensure_raw_tables(params, settings.state_dir / "dlt")
                config = load_partner_configs(settings.partner_config_dir).configs[PARTNER]
                yield Bench(root, params, settings, config, sftp.port, where)
    finally:
        if saved_url is None:
            os.environ.pop("MDP_DATABASE_URL", None)
        else:
            os.environ["MDP_DATABASE_URL"] = saved_url
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def http_server(
    app: str,
    env: dict[str, str] | None = None,
    factory: bool = False,
    ready_path: str = "/healthz",
    timeout: float = 60,
    extra_flags: tuple[str, ...] = (),
) -> Iterator[str]:
    """`uvicorn APP` (one worker) as a subprocess on a free port; yields its base URL."""
    port = free_port()
    flags = "--host 127.0.0.1 --workers 1 --no-access-log --log-level warning".split()
    cmd = [sys.executable, "-m", "uvicorn", app, "--port", str(port), *flags, *extra_flags]
    if factory:
        cmd.insert(4, "--factory")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited with {proc.returncode} before answering")
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app} did not answer {ready_path} within {timeout}s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settle(bench: Bench) -> None:
    """Untimed: finish the background work the big loads left (autovacuum, dirty buffers),
    so it does not run during one of the measurements and not the other."""
    from mdp.database import connect

    with connect(bench.params, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("vacuum analyze")
        cur.execute("checkpoint")

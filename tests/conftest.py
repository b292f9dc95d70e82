"""Shared fixtures: a fresh database on a real Postgres and real SFTP servers (asyncssh).

The Postgres server is MDP_TEST_DATABASE_URL (CI: the machine's TCP server); each test session
gets its own database, dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import paramiko
import psycopg2
import pytest

from ingestion.partners.config import PartnerConfig, load_partner_configs
from mdp.database import ConnectionParams
from mdp.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Property tests check answers, not speed: hypothesis' 200 ms per-example deadline failed a
# test on a busy 2-core machine (speed is measured in bench/, not asserted in tests)
hypothesis.settings.register_profile("mdp", deadline=None)
hypothesis.settings.load_profile("mdp")


def server_params() -> ConnectionParams:
    return ConnectionParams.from_url(os.environ.get("MDP_TEST_DATABASE_URL", DEFAULT_SERVER))


@contextlib.contextmanager
def fresh_database(prefix: str = "mdp_test") -> Iterator[ConnectionParams]:
    base = server_params()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(base.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'create database "{name}"')
    conn.close()
    try:
        yield ConnectionParams(base.host, base.port, base.user, base.password, name)
    finally:
        conn = psycopg2.connect(base.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')
        conn.close()


@dataclass
class Platform:
    """A running platform for one test module: database, SFTP servers, settings, env."""

    settings: Settings
    params: ConnectionParams
    configs: dict[str, PartnerConfig]
    sftp_root: Path
    pull_root: Path
    partner_passwords: dict[str, str]

    def sftp(self, username: str, port: int | None = None) -> paramiko.SFTPClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=port or self.settings.sftp_port,
            username=username,
            password=self.partner_passwords[username],
            allow_agent=False,
            look_for_keys=False,
        )
        sftp = client.open_sftp()
        sftp._owner = client  # keep the transport alive as long as the SFTP client
        return sftp

    def upload(
        self, partner_id: str, filename: str, content: bytes, folder: str = "/inbound"
    ) -> None:
        """Upload as the partner does: through SFTP, with paramiko, into its own home."""
        sftp = self.sftp(partner_id)
        try:
            with sftp.open(f"{folder}/{filename}", "wb") as handle:
                handle.write(content)
        finally:
            sftp._owner.close()

    def upload_to_pull_server(self, partner_id: str, filename: str, content: bytes) -> None:
        location = self.configs[partner_id].inbound.location
        assert location is not None
        sftp = self.sftp(partner_id, port=self.settings.pull_sftp_port)
        try:
            with sftp.open(f"{location.path}/{filename}", "wb") as handle:
                handle.write(content)
        finally:
            sftp._owner.close()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with contextlib.closing(psycopg2.connect(self.params.dsn())) as conn:
            with conn, conn.cursor() as cur:  # `with conn` commits a write
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    from sandbox.sftp_server import SftpServerThread, ensure_partner_home

    state = tmp_path_factory.mktemp("state")
    configs = load_partner_configs(REPO / "partner_configs").configs
    passwords = {pid: f"pw-{pid}" for pid in configs} | {"mdp_platform": "pw-platform"}
    sftp_root, pull_root = state / "sftp" / "platform", state / "sftp" / "partner_servers"
    platform_users = {"mdp_platform": {"password": passwords["mdp_platform"], "home": ""}}
    pull_users = {}
    for pid, config in configs.items():
        ensure_partner_home(sftp_root, pid)
        platform_users[pid] = {"password": passwords[pid], "home": pid}
        if config.inbound.location is not None:
            (pull_root / pid / config.inbound.location.path.strip("/")).mkdir(parents=True)
            pull_users[pid] = {"password": passwords[pid], "home": pid}
    saved_env = dict(os.environ)
    with (
        fresh_database() as params,
        SftpServerThread(sftp_root, platform_users, host_key_path=state / "host_key") as ours,
        SftpServerThread(pull_root, pull_users, host_key_path=state / "pull_host_key") as theirs,
    ):
        os.environ.update(
            {
                "MDP_DATABASE_URL": params.url(),
                "MDP_STATE_DIR": str(state),
                "MDP_SFTP_PORT": str(ours.port),
                "MDP_SFTP_PASSWORD": passwords["mdp_platform"],
                "MDP_PULL_SFTP_PORT": str(theirs.port),
                "MDP_SETTLE_SECONDS": "0.3",
                "MDP_PII_HASH_KEY": "test-hash-key",
                "DAGSTER_HOME": str(state / "dagster"),
                "INITECH_SFTP_HOST": "127.0.0.1",
                "INITECH_SFTP_PORT": str(theirs.port),
                "INITECH_SFTP_USERNAME": "initech",
                "INITECH_SFTP_PASSWORD": passwords["initech"],
            }
        )
        try:
            settings = load_settings()
            from ingestion.partners import ensure_raw_tables

            ensure_raw_tables(params, settings.state_dir / "dlt")
            yield Platform(settings, params, configs, sftp_root, pull_root, passwords)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)

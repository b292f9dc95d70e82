"""Settings from the environment (12-factor). Nothing here reads a file a user edits.

With no `MDP_DATABASE_URL` the platform uses an embedded Postgres (pgserver) under the
state folder; with it, the same code runs against any Postgres 14+.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    project_root: Path
    state_dir: Path
    database_url: str | None  # None: embedded Postgres under state_dir/pgdata
    partner_config_dir: Path
    archive_dir: Path
    dbt_project_dir: Path
    sftp_host: str
    sftp_port: int
    sftp_username: str
    sftp_password: str
    pull_sftp_port: int
    api_host: str
    api_port: int
    settle_seconds: float
    fitbit_emulator_port: int

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def pgdata_dir(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def sftp_root(self) -> Path:
        return self.state_dir / "sftp" / "platform"

    @property
    def pull_sftp_root(self) -> Path:
        return self.state_dir / "sftp" / "partner_servers"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


def _port(name: str, default: str) -> int:
    """A port from the environment; a bad one names its variable (ValueError)."""
    value = _env(name, default)
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be a port number from 1 to 65535, not {value!r}")
    return port


def load_settings() -> Settings:
    root = Path(_env("MDP_PROJECT_ROOT", str(PROJECT_ROOT)))
    state = Path(_env("MDP_STATE_DIR", str(root / ".mdp"))).resolve()
    return Settings(
        project_root=root,
        state_dir=state,
        database_url=_env("MDP_DATABASE_URL"),
        partner_config_dir=Path(_env("MDP_PARTNER_CONFIG_DIR", str(root / "partner_configs"))),
        archive_dir=Path(_env("MDP_ARCHIVE_DIR", str(state / "archive"))),
        dbt_project_dir=root / "dbt_project",
        sftp_host=_env("MDP_SFTP_HOST", "127.0.0.1"),
        sftp_port=_port("MDP_SFTP_PORT", "2222"),
        sftp_username=_env("MDP_SFTP_USERNAME", "mdp_platform"),
        sftp_password=_env("MDP_SFTP_PASSWORD") or local_secret(state, "MDP_SFTP_PASSWORD"),
        pull_sftp_port=_port("MDP_PULL_SFTP_PORT", "2223"),
        api_host=_env("MDP_API_HOST", "127.0.0.1"),
        api_port=_port("MDP_API_PORT", "8000"),
        settle_seconds=float(_env("MDP_SETTLE_SECONDS", "2")),
        fitbit_emulator_port=_port("MDP_FITBIT_EMULATOR_PORT", "8011"),
    )


def secret(name: str, settings: Settings | None = None) -> str:
    """A secret from the environment; on a local stack, a generated one kept in the state folder."""
    value = _env(name)
    if value:
        return value
    settings = settings or load_settings()
    return local_secret(settings.state_dir, name)


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (made so if it exists): the archive, the partners'
    SFTP homes and the load packages hold members' names, birth dates and SSNs in clear."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def protect_state(state_dir: Path) -> None:
    """Everything in the state folder owner-only, except the embedded Postgres' data folder
    (Postgres keeps it 0700 itself). The state folder itself stays enterable: run as root,
    pgserver runs Postgres as its own user, which must pass through it to its data (pgserver
    opens it up on every start; closed, Postgres stopped the next time it checked)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for child in state_dir.iterdir():
        if child.name == "pgdata" or child.is_symlink():
            continue
        if child.is_dir():
            private_dir(child)
        elif child.stat().st_mode & 0o077:
            child.chmod(0o600)


def local_secret(state_dir: Path, name: str) -> str:
    """Generated once per local state folder (mode 0600) so a fresh clone needs no set-up.

    Production sets every secret in the environment; this file exists only for the local stack.
    """
    path = state_dir / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    private_dir(path.parent)
    value = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value

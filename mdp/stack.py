"""The local stack: embedded Postgres, sandbox SFTP servers and the eligibility API.

Processes run detached with pid files under `<state>/run` and logs under `<state>/logs`,
so `make demo` can leave them answering and `mdp stack down` can stop them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ingestion.partners.config import load_partner_configs
from mdp.database import connection_params, embedded_running, stop_embedded
from mdp.settings import Settings, local_secret, protect_state

STACK_ENV = "stack.env"
MASKED = "***"


class StackError(RuntimeError):
    """A local service could not start: its port is taken, it exited, or it never answered."""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    command: list[str]
    env: dict[str, str] | None = None  # added to ours: secrets go here, never in `command`


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def running_pid(settings: Settings, name: str) -> int | None:
    """The service's pid while the process its pid file names is still the one started. A pid
    file outlives its process (a reboot, a kill -9), and the pid may be another program's
    by now: such a file is removed, and that pid is never signalled."""
    path = _pid_file(settings, name)
    if not path.exists():
        return None
    recorded = path.read_text().split()
    try:
        pid = int(recorded[0])
    except (IndexError, ValueError):
        pid = 0
    if pid <= 0 or not _same_process(pid, recorded[1] if len(recorded) > 1 else None):
        path.unlink(missing_ok=True)
        return None
    return pid


def _same_process(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    now = _start_time(pid)
    if now is None:  # no /proc: the pid is all there is to go by
        return True
    if started is not None:
        return now == started
    # a pid file written before start times were recorded: one of our service modules
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(part in cmdline for part in (b"sandbox.", b"serving.", b"uvicorn"))


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks after boot, /proc/PID/stat's 22nd field): with
    the pid, it names one process, where the pid alone is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def start_service(
    settings: Settings, service: Service, host: str = "127.0.0.1", timeout: float = 60
) -> int:
    """Start detached unless already running; wait until its port answers."""
    pid = running_pid(settings, service.name)
    if pid:
        return pid
    if _port_open(host, service.port):
        raise StackError(f"{service.name}: port {service.port} is already taken by another program")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{service.name}.log", "ab") as log:
        proc = subprocess.Popen(
            service.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=settings.project_root,
            env={**os.environ, **service.env} if service.env else None,
        )
    _pid_file(settings, service.name).write_text(f"{proc.pid} {_start_time(proc.pid) or ''}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{service.name} exited with {proc.returncode}; see {log_dir / (service.name + '.log')}"
            )
        if _port_open(host, service.port):
            return proc.pid
        time.sleep(0.2)
    raise StackError(f"{service.name} did not open port {service.port} within {timeout:.0f}s")


def stop_service(settings: Settings, name: str, timeout: float = 15) -> bool:
    pid = running_pid(settings, name)
    if not pid:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _exited(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own meanwhile
    _pid_file(settings, name).unlink(missing_ok=True)
    return True


def _exited(pid: int) -> bool:
    """Whether the process is gone. One this process started (`stack up`, then `stack down` in
    the same process) stays a zombie, which signal 0 still reaches, until it is reaped."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not our child: another process started it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def partner_sftp_password(settings: Settings, partner_id: str) -> str:
    return local_secret(settings.state_dir, f"SFTP_PASSWORD_{partner_id}")


def _read_users(path: Path) -> dict[str, dict[str, str]]:
    try:
        users = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return users if isinstance(users, dict) else {}


def _write_users(path: Path, users: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(users, handle)


def pull_partner_env(settings: Settings) -> dict[str, str]:
    """Env vars that point pull partners' configs at the sandbox's stand-in servers."""
    env: dict[str, str] = {}
    for partner_id, config in load_partner_configs(settings.partner_config_dir).configs.items():
        location = config.inbound.location
        if config.inbound.transport != "sftp_pull" or location is None:
            continue
        if location.port_env:
            env[location.host_env] = "127.0.0.1"
            env[location.port_env] = str(settings.pull_sftp_port)
        else:  # a config with a fixed port: the port rides in the host variable
            env[location.host_env] = f"127.0.0.1:{settings.pull_sftp_port}"
        env[location.username_env] = partner_id
        if location.password_env:
            env[location.password_env] = partner_sftp_password(settings, partner_id)
    return env


def sftp_services(settings: Settings) -> list[Service]:
    from sandbox.sftp_server import ensure_partner_home

    loaded = load_partner_configs(settings.partner_config_dir)
    configs = loaded.configs
    platform_users = {settings.sftp_username: {"password": settings.sftp_password, "home": ""}}
    pull_users: dict[str, dict[str, str]] = {}
    sandbox_dir = settings.state_dir / "sandbox"
    # a partner whose file stopped validating keeps its logins (as the API keeps its last
    # good config): a typo in, say, its rate limit must not stop its file deliveries
    broken = {problem.file.stem for problem in loaded.problems} - set(configs)
    for users, name in ((platform_users, "platform_users.json"), (pull_users, "pull_users.json")):
        users.update(
            {p: spec for p, spec in _read_users(sandbox_dir / name).items() if p in broken}
        )
    for partner_id, config in configs.items():
        ensure_partner_home(settings.sftp_root, partner_id)
        platform_users[partner_id] = {
            "password": partner_sftp_password(settings, partner_id),
            "home": partner_id,
        }
        if config.inbound.transport == "sftp_pull" and config.inbound.location:
            home = settings.pull_sftp_root / partner_id
            (home / config.inbound.location.path.strip("/")).mkdir(parents=True, exist_ok=True)
            pull_users[partner_id] = {
                "password": partner_sftp_password(settings, partner_id),
                "home": partner_id,
            }
    _write_users(sandbox_dir / "platform_users.json", platform_users)
    _write_users(sandbox_dir / "pull_users.json", pull_users)
    settings.pull_sftp_root.mkdir(parents=True, exist_ok=True)

    def server(name: str, root: Path, port: int, users: str) -> Service:
        return Service(
            name,
            port,
            [
                sys.executable,
                "-m",
                "sandbox.sftp_server",
                "--root",
                str(root),
                "--port",
                str(port),
                "--users-file",
                str(sandbox_dir / users),
                "--host-key",
                str(sandbox_dir / f"{name}_host_key"),
            ],
        )

    return [
        server("sftp", settings.sftp_root, settings.sftp_port, "platform_users.json"),
        server("partner_sftp", settings.pull_sftp_root, settings.pull_sftp_port, "pull_users.json"),
    ]


# how the API is served (the bench serves it the same way): uvicorn's protocol with a
# deadline on the request head (see serving.http_protocol)
API_SERVER_FLAGS = (
    "--http",
    "serving.http_protocol:HeadDeadlineProtocol",
    "--no-access-log",
    "--log-level",
    "warning",
)


def api_service(settings: Settings) -> Service:
    return Service(
        "api",
        settings.api_port,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "serving.app:create_app",
            "--factory",
            "--host",
            settings.api_host,
            "--port",
            str(settings.api_port),
            *API_SERVER_FLAGS,
            *proxy_flags(),
        ],
    )


def proxy_flags() -> list[str]:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local client could
    pass as another address (to the failed-auth throttle, to the audit log). Only a proxy
    named in MDP_FORWARDED_ALLOW_IPS (uvicorn's --forwarded-allow-ips) is believed."""
    allowed = os.environ.get("MDP_FORWARDED_ALLOW_IPS", "").strip()
    return ["--forwarded-allow-ips", allowed] if allowed else ["--no-proxy-headers"]


def fitbit_emulator_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.fitbit_emulator_port}"


def fitbit_emulator_service(settings: Settings) -> Service:
    return Service(
        "fitbit_emulator",
        settings.fitbit_emulator_port,
        [
            sys.executable,
            "-m",
            "sandbox.fitbit_emulator",
            "--port",
            str(settings.fitbit_emulator_port),
            "--client-id",
            FITBIT_SANDBOX_CLIENT_ID,
            "--subscriber-url",
            f"{settings.api_url}/webhooks/fitbit",
        ],
        # not on the command line, which every user on the host can read (`ps`)
        env={"FITBIT_CLIENT_SECRET": local_secret(settings.state_dir, "FITBIT_CLIENT_SECRET")},
    )


FITBIT_SANDBOX_CLIENT_ID = "SANDBOX1"


def device_env(settings: Settings) -> dict[str, str]:
    """Point the Fitbit client at the sandbox emulator (the secret comes from .mdp/secrets)."""
    return {
        "FITBIT_API_BASE_URL": fitbit_emulator_url(settings),
        "FITBIT_CLIENT_ID": FITBIT_SANDBOX_CLIENT_ID,
    }


def port_env(settings: Settings) -> dict[str, str]:
    """The ports the stack was started on: a shell without the exports that chose them
    (`mdp stack status`, `mdp run`) finds the stack where it is, not on the defaults."""
    return {
        "MDP_SFTP_PORT": str(settings.sftp_port),
        "MDP_PULL_SFTP_PORT": str(settings.pull_sftp_port),
        "MDP_API_PORT": str(settings.api_port),
        "MDP_FITBIT_EMULATOR_PORT": str(settings.fitbit_emulator_port),
    }


def write_stack_env(settings: Settings) -> Path:
    path = settings.state_dir / STACK_ENV
    env = {**port_env(settings), **pull_partner_env(settings), **device_env(settings)}
    lines = [f"{k}={v}" for k, v in sorted(env.items())]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


# Names this process took from stack.env: a rewritten stack.env (`stack up` on other ports)
# replaces them, where a stale value would point the run at a port nothing listens on.
_loaded_from_stack_env: set[str] = set()


def load_stack_env(settings: Settings) -> bool:
    """Fill in env vars the local stack provides, never overriding ones the user set;
    whether any changed (settings read before then are stale)."""
    changed = False
    for name, value in stack_env_values(settings).items():
        if not os.environ.get(name) or name in _loaded_from_stack_env:
            changed |= os.environ.get(name) != value
            os.environ[name] = value
            _loaded_from_stack_env.add(name)
    return changed


def stack_env_values(settings: Settings) -> dict[str, str]:
    """What stack.env holds (empty when the stack was never started here)."""
    path = settings.state_dir / STACK_ENV
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name:
            values[name] = value
    return values


def stack_up(settings: Settings, with_api: bool = True) -> dict[str, object]:
    """Start what is not running. A failed start stops what this call started and leaves
    stack.env as it was: the ports it names are the ones the stack listens on."""
    from ingestion.partners import ensure_raw_tables

    protect_state(settings.state_dir)
    _refuse_other_ports(settings)
    params = connection_params(settings)
    ensure_raw_tables(params, settings.state_dir / "dlt")
    env_path = settings.state_dir / STACK_ENV
    previous_env = env_path.read_bytes() if env_path.exists() else None
    write_stack_env(settings)
    load_stack_env(settings)
    services = [*sftp_services(settings), fitbit_emulator_service(settings)]
    started: list[str] = []
    try:
        for service in services:
            if running_pid(settings, service.name) is None:
                started.append(service.name)
            start_service(settings, service)
        if with_api:
            if running_pid(settings, "api") is None:
                started.append("api")
            start_service(settings, api_service(settings), host=settings.api_host)
    except BaseException:
        for name in reversed(started):
            stop_service(settings, name)
        if previous_env is None:
            env_path.unlink(missing_ok=True)
        else:
            env_path.write_bytes(previous_env)
        raise
    protect_state(settings.state_dir)  # and what the services made (SFTP homes, logs)
    return stack_status(settings)


def _refuse_other_ports(settings: Settings) -> None:
    """A running service stays on its port: asking for another would have reported (and
    written to stack.env) a port nothing listens on."""
    recorded = stack_env_values(settings)
    wanted = port_env(settings)
    for service, variable in SERVICE_PORTS.items():
        was = recorded.get(variable)
        if was and was != wanted[variable] and running_pid(settings, service) is not None:
            raise StackError(
                f"{service} is running on port {was}, not {wanted[variable]} ({variable}):"
                " `mdp stack down` first to move it"
            )


SERVICE_PORTS = {
    "sftp": "MDP_SFTP_PORT",
    "partner_sftp": "MDP_PULL_SFTP_PORT",
    "api": "MDP_API_PORT",
    "fitbit_emulator": "MDP_FITBIT_EMULATOR_PORT",
}


def stack_down(settings: Settings) -> list[str]:
    names = ("api", "fitbit_emulator", "partner_sftp", "sftp")
    stopped = [name for name in names if stop_service(settings, name)]
    if settings.embedded and stop_embedded(settings):
        stopped.append("postgres (embedded)")
    return stopped


def sandbox_sftp_credentials() -> bool:
    """Whether the SFTP logins are the sandbox's generated ones, safe to print.

    With MDP_SFTP_HOST or MDP_SFTP_PASSWORD set the platform talks to a real server, whose
    password must not reach a terminal or a log.
    """
    return not (os.environ.get("MDP_SFTP_HOST") or os.environ.get("MDP_SFTP_PASSWORD"))


def stack_status(settings: Settings) -> dict[str, object]:
    show = sandbox_sftp_credentials()
    if settings.embedded:
        database = {
            "mode": "embedded",
            "running": embedded_running(settings.pgdata_dir),  # a pid file a crash left: no
            "socket_dir": str(settings.pgdata_dir),
            "url": f"postgresql://postgres@/mdp?host={settings.pgdata_dir}",
        }
    else:
        database = {"mode": "external", "url": _mask(settings.database_url or "")}
    return {
        "state_dir": str(settings.state_dir),
        "database": database,
        "sftp": {
            "running": running_pid(settings, "sftp") is not None,
            "host": settings.sftp_host,
            "port": settings.sftp_port,
            "platform_user": settings.sftp_username,
            "platform_password": settings.sftp_password if show else MASKED,
            "partner_users": {
                pid: partner_sftp_password(settings, pid) if show else MASKED
                for pid in sorted(load_partner_configs(settings.partner_config_dir).configs)
            },
        },
        "partner_sftp": {
            "running": running_pid(settings, "partner_sftp") is not None,
            "host": "127.0.0.1",
            "port": settings.pull_sftp_port,
        },
        "api": {"running": running_pid(settings, "api") is not None, "url": settings.api_url},
        "fitbit_emulator": {
            "running": running_pid(settings, "fitbit_emulator") is not None,
            "url": fitbit_emulator_url(settings),
        },
        "dagster_home": str(settings.dagster_home),
        "archive_dir": str(settings.archive_dir),
    }


def _mask(url: str) -> str:
    import re
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        url = url.replace(f":{parsed.password}@", ":***@", 1)
    # libpq's `?password=` too
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)

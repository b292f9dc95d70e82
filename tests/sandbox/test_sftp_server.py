from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

from sandbox.sftp_server import SftpConfigError, SftpServer, SftpServerThread, ensure_partner_home

REPO = Path(__file__).resolve().parents[2]
USERS = {
    "mdp_platform": {"password": "platform-secret", "home": ""},
    "acme_corp": {"password": "acme-secret", "home": "acme_corp"},
    "globex_health": {"password": "globex-secret", "home": "globex_health"},
}


@pytest.fixture(scope="module")
def sftp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sftp") / "root"
    for partner in ("acme_corp", "globex_health"):
        ensure_partner_home(root, partner)
    return root


@pytest.fixture(scope="module")
def server(sftp_root: Path) -> Iterator[SftpServerThread]:
    key = sftp_root.parent / "keys" / "host_ed25519"
    with SftpServerThread(sftp_root, USERS, host_key_path=key) as running:
        yield running


@contextmanager
def sftp_session(port: int, username: str, password: str) -> Iterator[paramiko.SFTPClient]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username=username,
        password=password,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


@pytest.fixture
def acme(server: SftpServerThread) -> Iterator[paramiko.SFTPClient]:
    with sftp_session(server.port, "acme_corp", USERS["acme_corp"]["password"]) as sftp:
        yield sftp


@pytest.fixture
def platform(server: SftpServerThread) -> Iterator[paramiko.SFTPClient]:
    with sftp_session(server.port, "mdp_platform", USERS["mdp_platform"]["password"]) as sftp:
        yield sftp


def test_ensure_partner_home_creates_the_three_folders(tmp_path: Path) -> None:
    home = ensure_partner_home(tmp_path, "initech")
    assert home == tmp_path / "initech"
    assert sorted(p.name for p in home.iterdir()) == ["errors", "inbound", "reports"]


def test_partner_sees_only_its_own_folders(acme: paramiko.SFTPClient) -> None:
    assert sorted(acme.listdir("/")) == ["errors", "inbound", "reports"]
    assert acme.normalize(".") == "/"


def test_partner_upload_lands_in_its_inbound_folder(
    acme: paramiko.SFTPClient, sftp_root: Path, tmp_path: Path
) -> None:
    local = tmp_path / "enrollment_20250601_001.csv"
    local.write_bytes(b"Employee ID,First Name\nE0000001,Ann\n")
    acme.put(str(local), "/inbound/enrollment_20250601_001.csv")
    landed = sftp_root / "acme_corp" / "inbound" / "enrollment_20250601_001.csv"
    assert landed.read_bytes() == local.read_bytes()


def test_stat_and_listdir_report_size_and_preserved_mtime(acme: paramiko.SFTPClient) -> None:
    acme.putfo(io.BytesIO(b"x" * 1234), "/inbound/sized.csv")
    acme.utime("/inbound/sized.csv", (1_700_000_000, 1_700_000_000))
    attrs = acme.stat("/inbound/sized.csv")
    assert attrs.st_size == 1234
    assert attrs.st_mtime == 1_700_000_000
    listed = {a.filename: a for a in acme.listdir_attr("/inbound")}
    assert listed["sized.csv"].st_size == 1234
    assert listed["sized.csv"].st_mtime == 1_700_000_000
    assert stat.S_ISREG(listed["sized.csv"].st_mode or 0)


def test_files_can_be_written_read_renamed_and_removed(
    acme: paramiko.SFTPClient, sftp_root: Path, tmp_path: Path
) -> None:
    with acme.open("/inbound/upload.part", "w") as handle:
        handle.write(b"line one\nline two\n")
    acme.rename("/inbound/upload.part", "/inbound/upload.csv")
    assert "upload.part" not in acme.listdir("/inbound")
    with acme.open("/inbound/upload.csv", "r") as handle:
        assert handle.read() == b"line one\nline two\n"
    acme.get("/inbound/upload.csv", str(tmp_path / "copy.csv"))
    assert (tmp_path / "copy.csv").read_bytes() == b"line one\nline two\n"
    acme.mkdir("/inbound/archive")
    assert (sftp_root / "acme_corp" / "inbound" / "archive").is_dir()
    acme.remove("/inbound/upload.csv")
    acme.rmdir("/inbound/archive")
    assert not (sftp_root / "acme_corp" / "inbound" / "upload.csv").exists()


def test_platform_user_sees_every_partner_home(
    acme: paramiko.SFTPClient, platform: paramiko.SFTPClient
) -> None:
    acme.putfo(io.BytesIO(b"hello"), "/inbound/for_platform.csv")
    assert {"acme_corp", "globex_health"} <= set(platform.listdir("/"))
    with platform.open("/acme_corp/inbound/for_platform.csv") as handle:
        assert handle.read() == b"hello"
    platform.putfo(io.BytesIO(b"Line,Errors\n"), "/acme_corp/errors/report.csv")
    assert "report.csv" in acme.listdir("/errors")


def test_partner_cannot_escape_its_home(
    acme: paramiko.SFTPClient, sftp_root: Path, server: SftpServerThread
) -> None:
    assert sorted(acme.listdir("/../..")) == ["errors", "inbound", "reports"]
    assert acme.normalize("../../..") == "/"
    for outside in ("../globex_health", "/../globex_health/inbound", "../../etc/passwd"):
        with pytest.raises(OSError):
            acme.stat(outside)
    with pytest.raises(OSError):
        acme.putfo(io.BytesIO(b"sneaky"), "../globex_health/inbound/sneaky.csv")
    assert not (sftp_root / "globex_health" / "inbound" / "sneaky.csv").exists()


@pytest.mark.parametrize(
    ("username", "password"),
    [("acme_corp", "wrong"), ("acme_corp", ""), ("nobody", "acme-secret")],
)
def test_wrong_credentials_are_refused(
    server: SftpServerThread, username: str, password: str
) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        with sftp_session(server.port, username, password):
            pass


def test_home_outside_the_root_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SftpConfigError, match="outside the server root"):
        SftpServer(tmp_path, {"evil": {"password": "p", "home": "../elsewhere"}})


def test_host_key_is_kept_across_restarts(tmp_path: Path) -> None:
    key_path = tmp_path / "state" / "ssh" / "host_ed25519"
    users = {"u": {"password": "p", "home": ""}}
    fingerprints = []
    for _ in range(2):
        with SftpServerThread(tmp_path / "root", users, host_key_path=key_path) as running:
            transport = paramiko.Transport(("127.0.0.1", running.port))
            try:
                transport.connect(username="u", password="p")
                fingerprints.append(transport.get_remote_server_key().get_fingerprint())
            finally:
                transport.close()
    assert fingerprints[0] == fingerprints[1]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_cli_serves_until_sigterm_without_logging_passwords(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(
        json.dumps({"acme_corp": {"password": "cli-secret", "home": "acme_corp"}})
    )
    command = [
        sys.executable,
        "-m",
        "sandbox.sftp_server",
        "--root",
        str(tmp_path / "root"),
        "--port",
        "0",
        "--users-file",
        str(users_file),
        "--host-key",
        str(tmp_path / "host_key"),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().strip()
        assert ready.startswith("listening on 127.0.0.1:"), ready
        port = int(ready.rsplit(":", 1)[1])
        with sftp_session(port, "acme_corp", "cli-secret") as sftp:
            assert sftp.listdir("/") == []
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "acme_corp" in stderr
    assert "cli-secret" not in stderr


def test_a_user_added_to_the_users_file_can_log_in_without_a_restart(tmp_path):
    # a partner added while the stack ran was listed by `mdp stack status`, but refused
    import time

    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"acme": {"password": "pw-a", "home": "acme"}}))
    server = SftpServerThread(
        tmp_path / "root",
        json.loads(users_file.read_text()),
        host_key_path=tmp_path / "key",
        users_file=users_file,
    )
    with server:
        users_file.write_text(
            json.dumps(
                {
                    "acme": {"password": "pw-a", "home": "acme"},
                    "hooli": {"password": "pw-h", "home": "hooli"},
                }
            )
        )
        later = time.time() + 5
        os.utime(users_file, (later, later))  # a new mtime even on a coarse clock
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=server.port,
            username="hooli",
            password="pw-h",
            allow_agent=False,
            look_for_keys=False,
        )
        try:
            assert client.open_sftp().listdir("/") == []
        finally:
            client.close()


def test_a_partner_whose_config_breaks_keeps_its_sftp_login(tmp_path, monkeypatch):
    # a typo in an API-only setting took the partner out of the users file at the next
    # `mdp run`: its file deliveries were refused while the API kept its last good config
    import shutil

    from mdp.settings import load_settings
    from mdp.stack import sftp_services

    configs = tmp_path / "partner_configs"
    shutil.copytree(REPO / "partner_configs", configs)
    monkeypatch.setenv("MDP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MDP_PARTNER_CONFIG_DIR", str(configs))
    settings = load_settings()
    users_file = settings.state_dir / "sandbox" / "platform_users.json"

    sftp_services(settings)
    before = json.loads(users_file.read_text())
    assert {"acme_corp", "globex_health"} <= set(before)

    globex = configs / "globex_health.yaml"
    globex.write_text(
        globex.read_text().replace("rate_limit_per_minute:", "rate_limit_per_minute: many #")
    )
    (configs / "acme_corp.yaml").unlink()  # a partner removed loses its login
    sftp_services(settings)
    after = json.loads(users_file.read_text())
    assert after["globex_health"] == before["globex_health"]
    assert "acme_corp" not in after

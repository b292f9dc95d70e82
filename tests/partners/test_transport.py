"""SFTP sessions to the platform's server, as imports and error reports open them."""

from __future__ import annotations

import socket

import paramiko
import pytest

from ingestion.partners.transport import SftpEndpoint, platform_endpoint, sftp_session


def test_sessions_send_without_waiting_on_nagle(platform):
    # Nagle's algorithm held every handshake write for a delayed ACK: ~90 ms per session
    with sftp_session(platform_endpoint(platform.settings)) as sftp:
        sock = sftp.get_channel().get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sftp.listdir("/acme_corp") is not None


def test_a_refused_login_raises_the_authentication_error(platform):
    endpoint = platform_endpoint(platform.settings)
    wrong = SftpEndpoint(endpoint.host, endpoint.port, endpoint.username, "not-the-password")
    with pytest.raises(paramiko.AuthenticationException), sftp_session(wrong):
        pass


def test_an_imported_file_that_changed_meanwhile_is_left_for_the_next_poll(platform):
    # an upload that stalled past the settle window was imported half, then removed: the
    # rest of the partner's bytes went nowhere
    from ingestion.partners.transport import list_inbox, remove_with_markers

    with sftp_session(platform_endpoint(platform.settings)) as sftp:
        for name in ("enrollment_growing.csv", "enrollment_done.csv"):
            with sftp.open(f"/acme_corp/inbound/{name}", "wb") as handle:
                handle.write(b"Employee ID,First Name\n")
        files, _ = list_inbox(sftp, "/acme_corp/inbound", "enrollment_*.csv")
        listed = {f.name: f for f in files}
        with sftp.open("/acme_corp/inbound/enrollment_growing.csv", "ab") as handle:
            handle.write(b"E1,Ann\n")

        remove_with_markers(sftp, listed["enrollment_growing.csv"])
        remove_with_markers(sftp, listed["enrollment_done.csv"])

        left = sftp.listdir("/acme_corp/inbound")
        assert "enrollment_growing.csv" in left and "enrollment_done.csv" not in left
        sftp.remove("/acme_corp/inbound/enrollment_growing.csv")


def test_a_partner_without_an_inbox_yet_has_no_files_rather_than_an_error(platform):
    from ingestion.partners.transport import list_inbox

    with sftp_session(platform_endpoint(platform.settings)) as sftp:
        assert list_inbox(sftp, "/pied_piper/inbound", "*.csv") == ([], set())


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("sftp.partner.example", ("sftp.partner.example", 22)),
        ("sftp.partner.example:2222", ("sftp.partner.example", 2222)),
        ("[::1]:2200", ("::1", 2200)),
    ],
)
def test_a_pull_partners_host_variable_may_carry_the_port(monkeypatch, host, expected):
    from ingestion.partners.config import RemoteLocation
    from ingestion.partners.transport import pull_endpoint

    monkeypatch.setenv("P_HOST", host)
    monkeypatch.setenv("P_USER", "them")
    monkeypatch.setenv("P_PASSWORD", "secret")
    location = RemoteLocation(
        host_env="P_HOST", username_env="P_USER", password_env="P_PASSWORD", port=22
    )
    endpoint = pull_endpoint("kramerica", location)
    assert (endpoint.host, endpoint.port) == expected


def test_an_unreachable_server_is_named_and_stays_an_outage():
    # a failed sensor tick said only "[Errno 111] Connection refused"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConnectionRefusedError, match=f"SFTP server 127.0.0.1:{port} unreachable"):
        with sftp_session(SftpEndpoint("127.0.0.1", port, "nobody"), timeout=2):
            pass

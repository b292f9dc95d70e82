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

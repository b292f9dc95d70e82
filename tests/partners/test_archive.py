"""The archive of partner files: immutable, and readable by nobody but the platform's user."""

from __future__ import annotations

import datetime as dt
import io
import stat

from ingestion.partners.archive import archive_stream
from mdp.settings import private_dir


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_archived_files_are_owner_read_only_behind_a_private_folder(tmp_path):
    # the archive holds members' names, birth dates and SSNs in clear: it was world-readable
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o755)
    archive.chmod(0o755)
    content = b"SSN|First\n123-45-6789|Ann\n"
    received = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    stored = archive_stream(io.BytesIO(content), archive, "umbrella_plan", "f.csv", received)
    assert stored.path.read_bytes() == content
    assert _mode(archive) == 0o700
    assert _mode(stored.path) == 0o400


def test_a_private_folder_is_made_so_whether_new_or_there_already(tmp_path):
    fresh = private_dir(tmp_path / "a" / "state")
    assert _mode(fresh) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    loose.chmod(0o777)
    assert _mode(private_dir(loose)) == 0o700


def test_the_state_folder_keeps_its_contents_owner_only_but_stays_enterable(tmp_path):
    # run as root, pgserver runs Postgres as its own user, which must pass through the state
    # folder to its data: closing the folder itself stopped Postgres
    from mdp.settings import protect_state

    state = tmp_path / "state"
    for name in ("sftp", "dagster", "pgdata"):
        (state / name).mkdir(parents=True, mode=0o755)
        (state / name).chmod(0o755)
    (state / "stack.env").write_text("X=1\n")
    (state / "stack.env").chmod(0o644)
    state.chmod(0o755)
    protect_state(state)
    assert (_mode(state / "sftp"), _mode(state / "dagster")) == (0o700, 0o700)
    assert _mode(state / "stack.env") == 0o600
    assert (_mode(state), _mode(state / "pgdata")) == (0o755, 0o755)  # left as they were

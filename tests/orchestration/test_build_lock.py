"""The dbt build lock: builds take turns, and losing the lock's session does not fail one."""

from __future__ import annotations

import logging

from orchestration.defs.transform.assets import BUILD_LOCK, one_build_at_a_time


def test_a_build_whose_lock_session_ended_is_not_failed_for_it(platform, caplog):
    # the build finished; only the unlock met the dead session (a restart, a terminated
    # backend), which used to fail the step and rebuild everything on retry
    log = logging.getLogger("test-build-lock")
    with caplog.at_level(logging.WARNING, logger="test-build-lock"):
        with one_build_at_a_time(platform.params, log):
            terminated = platform.query(
                "select pg_terminate_backend(pid) from pg_locks where locktype = 'advisory'"
                " and objid = hashtext(%s)::oid and granted",
                (BUILD_LOCK,),
            )
            assert terminated == [(True,)]
    assert "session ended during the build" in caplog.text
    # and the lock is free for the next build
    with one_build_at_a_time(platform.params, log):
        pass

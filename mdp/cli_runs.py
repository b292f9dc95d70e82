"""Runs `mdp run` executes in its own process, and the ones such a process left behind.

Dagster watches the runs its launcher started; a run executed in process (`mdp run`) that is
killed, or whose machine restarts, stays STARTED for ever. Two such runs filled the run queue
(`max_concurrent_runs: 2`) and every sensor and schedule run waited behind them. Each run is
tagged with the process that executes it; a STARTED run whose process is gone is marked failed
(at the next `mdp run`, and by the push inbox sensor's next tick).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PID_TAG = "mdp/cli_pid"
HOST_TAG = "mdp/cli_host"


def cli_run_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours, so not the run's
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a reused pid: another program now
        try:
            return b"mdp" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def fail_abandoned_cli_runs(instance) -> list[str]:
    """Mark failed the STARTED runs of `mdp run` processes on this machine that are gone;
    returns their run ids."""
    import dagster as dg

    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: socket.gethostname()},
        )
    )
    failed = []
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            instance.report_run_failed(
                run,
                message=f"the `mdp run` process executing this run (pid {pid}) ended before it"
                " finished (killed, or the machine restarted); its imports roll back and are"
                " retried by the next run",
            )
            failed.append(run.run_id)
    return failed

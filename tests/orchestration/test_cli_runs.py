"""Runs a killed `mdp run` left STARTED are marked failed; the live ones are left alone."""

from __future__ import annotations

import subprocess
import sys
import uuid

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun

from mdp.cli_runs import HOST_TAG, PID_TAG, cli_run_tags, fail_abandoned_cli_runs


def _started_run(instance: dg.DagsterInstance, pid: int) -> str:
    run_id = str(uuid.uuid4())
    tags = {**cli_run_tags(), PID_TAG: str(pid)}
    instance.add_run(
        DagsterRun(job_name="mdp_run", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    return run_id


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_a_run_whose_mdp_run_process_is_gone_is_marked_failed():
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    # a live `mdp ...` process (its command line names mdp), as a running `mdp run` is
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mdp"])
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            abandoned = _started_run(instance, dead_pid)
            running = _started_run(instance, alive.pid)
            elsewhere = _started_run(instance, dead_pid)
            instance.add_run_tags(elsewhere, {HOST_TAG: "another-machine"})

            assert fail_abandoned_cli_runs(instance) == [abandoned]

            assert _status(instance, abandoned) == dg.DagsterRunStatus.FAILURE
            assert _status(instance, running) == dg.DagsterRunStatus.STARTED
            assert _status(instance, elsewhere) == dg.DagsterRunStatus.STARTED  # not ours to judge
            assert fail_abandoned_cli_runs(instance) == []  # once
    finally:
        alive.kill()
        alive.wait()

"""Runs execute their steps in the run's own process.

The default (one process per step) re-imports the code location for every step: dagster,
dagster-dbt and dbt's manifest take ~14 s to load, 30-50 s on two busy cores. A sensor's
partner import (import, dbt, two check steps) spent ~130 s of its 193 s starting processes.
The steps of our jobs run one after another anyway (import, then dbt, then checks), so
nothing is lost by running them in one process; retries work the same.
"""

import dagster as dg


@dg.definitions
def run_executor() -> dg.Definitions:
    return dg.Definitions(executor=dg.in_process_executor)

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.defs.transform.project import dbt_project
from orchestration.resources import FitbitResource, PlatformResource


def _dbt_executable() -> str:
    # The venv's dbt, even when the venv is not activated (e.g. `.venv/bin/mdp run`).
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else (shutil.which("dbt") or "dbt")


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "platform": PlatformResource(),
            "fitbit": FitbitResource(),
            "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=_dbt_executable()),
        }
    )

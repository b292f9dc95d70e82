import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.defs.transform.project import dbt_project
from orchestration.resources import PlatformResource


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "platform": PlatformResource(),
            "dbt": DbtCliResource(project_dir=dbt_project),
        }
    )

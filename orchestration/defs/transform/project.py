"""The dbt project as Dagster sees it. `mdp` prepares the manifest before loading; any other
loader (`dagster dev`, `dagster definitions validate -w workspace.yaml`) on a fresh clone
gets it made here (`dbt parse`, no database needed) rather than a missing-manifest error."""

from pathlib import Path

from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists():
    # in process, as mdp does: the dbt executable need not be on PATH (an unactivated venv)
    from dbt.cli.main import dbtRunner

    dbt_dir = str(DBT_PROJECT_DIR)
    dbtRunner().invoke(["parse", "--project-dir", dbt_dir, "--profiles-dir", dbt_dir, "--quiet"])

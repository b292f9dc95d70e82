"""What dlt keeps on disk: member data lives in Postgres only.

By default dlt keeps every load package's job files (the rows themselves, as insert_values,
CSV or Parquet) under `<pipelines_dir>/<pipeline>/load/loaded/` for good: a plain-file copy
of members' health and enrollment data beside the database, never deleted.
"""

from __future__ import annotations

import dlt


def keep_no_loaded_rows() -> None:
    """Have dlt delete a package's job files once they are loaded (its schema and state stay)."""
    dlt.config["load.delete_completed_jobs"] = True

"""dbt builds the partner marts and the eligibility history from raw partner tables.

Runs the real project (`dbt build`: models, snapshot, data tests and unit tests) against a
throwaway Postgres database, twice: once as loaded, once after a corrected file changed a
member's eligibility end date.
"""

from __future__ import annotations

import contextlib
import os
import select
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from dbt.cli.main import dbtRunner

from ingestion.devices import ensure_raw_tables as ensure_device_raw_tables
from mdp.database import ConnectionParams
from mdp.schema import ensure_schema

PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

MART_ELIGIBILITY_COLUMNS = [
    ("member_id", "text"),
    ("partner_id", "text"),
    ("employee_id", "text"),
    ("date_of_birth", "date"),
    ("program", "text"),
    ("eligibility_start_date", "date"),
    ("eligibility_end_date", "date"),
    ("coverage_status", "text"),
    ("coverage_status_basis", "text"),
    ("refreshed_at", "timestamp with time zone"),
]

# The columns the ingestion pipeline guarantees (created up front, even when all-null).
ENROLLMENT_MEMBERS_DDL = """
create table raw_partners.enrollment_members (
    partner_id              text not null,
    employee_id             text not null,
    first_name              text,
    middle_name             text,
    last_name               text,
    date_of_birth           date,
    gender                  text,
    email                   text,
    phone                   text,
    address_line1           text,
    address_line2           text,
    city                    text,
    state                   text,
    postal_code             text,
    relationship            text,
    group_id                text,
    program                 text,
    eligibility_start_date  date,
    eligibility_end_date    date,
    coverage_status         text,
    ssn_hash                text,
    ssn_last4               text,
    source_file_id          text,
    source_line_number      bigint,
    file_received_at        timestamptz,
    _dlt_load_id            text not null,
    _dlt_id                 text not null,
    primary key (partner_id, employee_id)
)
"""

# globex identifies members by a keyed hash of the SSN, so employee_id is that hash
DIJKSTRA_ID = "9f2c" + "0" * 60
LISKOV_ID = "b7" + "1" * 62
PROGRAM_BY_PARTNER = {"acme_corp": "diabetes", "globex": "weight"}

# (partner, employee_id, last_name, date_of_birth, start, end, coverage_status as sent)
MEMBERS = [
    ("acme_corp", "A1001", "Lovelace", "1985-12-10", "2020-01-01", None, "Active"),
    ("acme_corp", "A1002", "Turing", "1972-06-23", "2020-01-01", "2021-12-31", None),
    ("acme_corp", "A1003", "Hopper", "1990-12-09", "2999-01-01", None, ""),
    ("globex", DIJKSTRA_ID, "Dijkstra", "1960-05-11", "2020-01-01", None, " TERMINATED "),
    ("globex", LISKOV_ID, "Liskov", "1979-11-07", "2020-01-01", "2999-12-31", "on leave"),
]


@dataclass(frozen=True)
class Warehouse:
    params: ConnectionParams
    target_path: Path
    log_path: Path


def _admin_params() -> ConnectionParams:
    url = os.environ.get("MDP_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return ConnectionParams.from_url(url)


def _execute(params: ConnectionParams, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(params.dsn())) as conn, conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def _load_raw_partner_tables(params: ConnectionParams) -> None:
    for line, (partner, employee, last_name, dob, start, end, status) in enumerate(MEMBERS, 1):
        ssn_identified = partner == "globex"
        _execute(
            params,
            """
            insert into raw_partners.enrollment_members (
                partner_id, employee_id, last_name, date_of_birth, program,
                eligibility_start_date, eligibility_end_date, coverage_status,
                ssn_hash, ssn_last4, source_file_id, source_line_number, file_received_at,
                _dlt_load_id, _dlt_id
            ) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                      '2024-03-01 09:00+00', '1709283600.123456', %s)
            """,
            (
                partner,
                employee,
                last_name,
                dob,
                PROGRAM_BY_PARTNER[partner],
                start,
                end,
                status,
                employee if ssn_identified else None,
                "6789" if ssn_identified else None,
                f"{partner}-file-1",
                line,
                uuid.uuid4().hex,
            ),
        )
    _execute(
        params,
        """
        insert into raw_partners.file_imports
            (file_id, partner_id, filename, sha256, status, reason, duplicate_of,
             rows_total, rows_loaded, rows_rejected, received_at)
        values
            ('acme_corp-file-1', 'acme_corp', 'enrollment_1.csv', 'aa', 'loaded', null, null,
             4, 3, 1, '2024-03-01 09:00+00'),
            ('acme_corp-file-2', 'acme_corp', 'enrollment_1_again.csv', 'aa', 'duplicate', null,
             'acme_corp-file-1', null, null, null, '2024-03-01 10:00+00'),
            ('acme_corp-file-3', 'acme_corp', 'enrollment_2.csv', 'bb', 'quarantined',
             'not a CSV file', null, null, null, null, '2024-03-01 11:00+00'),
            ('globex-file-1', 'globex', 'GLOBEX.TXT', 'cc', 'loaded', null, null,
             2, 2, 0, '2024-03-01 09:00+00'),
            -- held (a full file leaving too many out), then loaded by `replay --force`
            ('globex-file-2', 'globex', 'GLOBEX2.TXT', 'dd', 'quarantined', 'held', null,
             null, null, null, '2024-03-01 10:00+00'),
            ('globex-file-3', 'globex', 'GLOBEX2.TXT', 'dd', 'loaded', 'replay of globex-file-2',
             null, 1, 1, 0, '2024-03-01 11:00+00')
        """,
    )


def dbt_build(warehouse: Warehouse) -> None:
    """`dbt build` in-process, with the connection passed the way production passes it."""
    args = [
        "build",
        "--no-use-colors",
        "--project-dir", str(PROJECT_DIR),
        "--profiles-dir", str(PROJECT_DIR),
        "--target-path", str(warehouse.target_path),
        "--log-path", str(warehouse.log_path),
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        for name, value in warehouse.params.dbt_env().items():
            env.setenv(name, value)
        outcome = dbtRunner().invoke(args)
    if outcome.exception is not None:
        raise outcome.exception
    failures = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in (outcome.result or [])
        if str(r.status) not in ("success", "pass")
    ]
    assert outcome.success and not failures, "dbt build failed:\n" + "\n".join(failures)


@contextlib.contextmanager
def _fresh_database() -> Iterator[ConnectionParams]:
    """A new, uniquely named database holding the platform's own tables; dropped after."""
    admin = _admin_params()
    dbname = f"mdp_dbt_test_{uuid.uuid4().hex[:10]}"
    with contextlib.closing(psycopg2.connect(admin.dsn())) as conn:
        conn.autocommit = True
        conn.cursor().execute(f'create database "{dbname}"')
    try:
        params = ConnectionParams(admin.host, admin.port, admin.user, admin.password, dbname)
        ensure_schema(params)  # raw_partners.file_imports, serving.mart_refreshes, devices.*
        # the device models build on empty raw tables
        ensure_device_raw_tables(params, Path(tempfile.mkdtemp(prefix="mdp-dlt-")))
        _execute(params, ENROLLMENT_MEMBERS_DDL)
        yield params
    finally:
        with contextlib.closing(psycopg2.connect(admin.dsn())) as conn:
            conn.autocommit = True
            conn.cursor().execute(f'drop database if exists "{dbname}" with (force)')


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """Raw tables holding two partners' members and files, built once by dbt."""
    tmp = tmp_path_factory.mktemp("dbt")
    with _fresh_database() as params:
        _load_raw_partner_tables(params)
        built = Warehouse(params, tmp / "target", tmp / "logs")
        dbt_build(built)
        yield built


def test_build_succeeds_before_any_partner_file_arrives(tmp_path: Path) -> None:
    with _fresh_database() as params:
        dbt_build(Warehouse(params, tmp_path / "target", tmp_path / "logs"))
        assert _execute(params, "select count(*) from marts.mart_eligibility") == [(0,)]
        assert _execute(
            params, "select mart, version from serving.mart_refreshes order by mart"
        ) == [("eligibility_history", 1), ("int_members_resolved", 1), ("mart_eligibility", 1)]


def test_dates_are_judged_by_the_utc_day_whatever_the_servers_time_zone(tmp_path: Path) -> None:
    # from review: a server set to New York ended a left-out member's coverage a day early,
    # and judged pending/terminated by its own day (the daily build runs at 00:05 UTC)
    with _fresh_database() as params:
        _execute(
            params,
            """
            insert into raw_partners.enrollment_members (
                partner_id, employee_id, date_of_birth, program, eligibility_start_date,
                eligibility_end_date, source_file_id, source_line_number, file_received_at,
                _dlt_load_id, _dlt_id
            ) values ('fullco', 'F_LEFT', '1980-01-01', 'p', '2020-01-01', null, 'ff1', 1,
                      '2024-03-01 09:00+00', '1709283600.5', 'x1');
            insert into raw_partners.absent_members
                (partner_id, employee_id, file_id, absent_since)
                values ('fullco', 'F_LEFT', 'ff2', '2024-05-01 02:00+00')
            """,
        )
        _execute(params, f"alter database \"{params.dbname}\" set timezone = 'America/New_York'")
        dbt_build(Warehouse(params, tmp_path / "target", tmp_path / "logs"))
        assert _execute(
            params,
            "select eligibility_end_date::text, coverage_status from marts.mart_eligibility"
            " where employee_id = 'F_LEFT'",
        ) == [("2024-04-30", "terminated")]
        # the history names the file that ended the coverage, not the one that began it
        assert _execute(
            params,
            "select source_file_id, eligibility_end_date::text from snapshots.eligibility_history"
            " where employee_id = 'F_LEFT'",
        ) == [("ff2", "2024-04-30")]
        # what the marts hold is as of the build of the members they read (a file committed
        # after it is not in them, however late the mart and the snapshot are written)
        stamps = dict(_execute(params, "select mart, refreshed_at from serving.mart_refreshes"))
        assert stamps["eligibility_history"] == stamps["int_members_resolved"]
        assert stamps["mart_eligibility"] == stamps["int_members_resolved"]


def _eligibility(params: ConnectionParams, partner: str, employee: str) -> dict[str, object]:
    rows = _execute(
        params,
        "select * from marts.mart_eligibility where partner_id = %s and employee_id = %s",
        (partner, employee),
    )
    assert len(rows) == 1, f"expected one mart_eligibility row for {partner}/{employee}"
    return dict(zip([name for name, _ in MART_ELIGIBILITY_COLUMNS], rows[0], strict=True))


def test_mart_eligibility_serves_every_member_with_a_normalized_coverage_status(
    warehouse: Warehouse,
) -> None:
    statuses = dict(
        _execute(
            warehouse.params,
            "select partner_id || '/' || left(employee_id, 5), coverage_status"
            " from marts.mart_eligibility",
        )
    )
    assert statuses == {
        "acme_corp/A1001": "active",  # partner said "Active"
        "acme_corp/A1002": "terminated",  # no status, end date passed
        "acme_corp/A1003": "pending",  # blank status, start date ahead
        "globex/9f2c0": "terminated",  # partner said " TERMINATED "
        "globex/b7111": "active",  # unknown word "on leave": dates decide
    }
    ada = _eligibility(warehouse.params, "acme_corp", "A1001")
    assert str(ada["date_of_birth"]) == "1985-12-10"
    assert ada["program"] == "diabetes"
    assert ada["member_id"] == _execute(warehouse.params, "select md5('acme_corp:A1001')")[0][0]


def test_mart_eligibility_exposes_only_what_an_eligibility_check_needs(
    warehouse: Warehouse,
) -> None:
    columns = _execute(
        warehouse.params,
        """
        select column_name, data_type from information_schema.columns
        where table_schema = 'marts' and table_name = 'mart_eligibility'
        order by ordinal_position
        """,
    )
    assert columns == MART_ELIGIBILITY_COLUMNS


def test_mart_eligibility_has_a_unique_index_for_partner_lookups(warehouse: Warehouse) -> None:
    indexes = _execute(
        warehouse.params,
        "select indexdef from pg_indexes where schemaname = 'marts'"
        " and tablename = 'mart_eligibility'",
    )
    assert any(
        "UNIQUE INDEX" in ddl and "(partner_id, employee_id)" in ddl for (ddl,) in indexes
    ), indexes


def test_dim_member_holds_one_current_row_per_member(warehouse: Warehouse) -> None:
    rows = _execute(
        warehouse.params,
        "select partner_id, employee_id, coverage_status, ssn_last4 from marts.dim_member"
        " where last_name = 'Dijkstra'",
    )
    assert rows == [("globex", DIJKSTRA_ID, "terminated", "6789")]
    (count,) = _execute(warehouse.params, "select count(*) from marts.dim_member")[0]
    assert count == len(MEMBERS)


def test_import_report_counts_files_and_rows_per_partner_per_day(warehouse: Warehouse) -> None:
    rows = _execute(
        warehouse.params,
        """
        select partner_id, import_date::text, files_received, files_loaded, files_duplicate,
               files_quarantined, rows_total, rows_loaded, rows_rejected, reject_rate::float
        from marts.rpt_partner_imports order by partner_id
        """,
    )
    assert rows == [
        ("acme_corp", "2024-03-01", 3, 1, 1, 1, 4, 3, 1, 0.25),
        ("globex", "2024-03-01", 2, 2, 0, 0, 3, 3, 0, 0.0),  # the replayed file counts once
    ]


def test_corrected_end_date_is_kept_as_history_in_the_snapshot(warehouse: Warehouse) -> None:
    params = warehouse.params
    member_id = _eligibility(params, "globex", LISKOV_ID)["member_id"]
    (version_before,) = _execute(
        params, "select version from serving.mart_refreshes where mart = 'mart_eligibility'"
    )[0]

    # A corrected file from globex ends Liskov's eligibility earlier (a dlt merge overwrites).
    _execute(
        params,
        """
        update raw_partners.enrollment_members
        set eligibility_end_date = '2030-06-30', source_file_id = 'globex-file-2',
            file_received_at = '2024-04-01 09:00+00', _dlt_load_id = '1711962000.5'
        where partner_id = 'globex' and employee_id = %s
        """,
        (LISKOV_ID,),
    )
    with contextlib.closing(psycopg2.connect(params.dsn())) as listener:
        listener.autocommit = True
        listener.cursor().execute("listen mdp_mart_refreshed")
        dbt_build(warehouse)
        select.select([listener], [], [], 5)
        listener.poll()
        notified = [n.payload for n in listener.notifies]

    history = _execute(
        params,
        """
        select eligibility_end_date::text, source_file_id, dbt_valid_to is not null
        from snapshots.eligibility_history where member_id = %s order by dbt_valid_from
        """,
        (member_id,),
    )
    assert history == [
        ("2999-12-31", "globex-file-1", True),  # closed
        ("2030-06-30", "globex-file-2", False),  # current
    ]
    assert str(_eligibility(params, "globex", LISKOV_ID)["eligibility_end_date"]) == "2030-06-30"
    (version_after,) = _execute(
        params, "select version from serving.mart_refreshes where mart = 'mart_eligibility'"
    )[0]
    assert version_after == version_before + 1
    assert "mart_eligibility" in notified

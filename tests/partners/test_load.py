"""The COPY merge into raw_partners.enrollment_members, against a real Postgres."""

from __future__ import annotations

import datetime as dt

import psycopg2.errors
import pyarrow as pa
import pytest

from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.load import PROBE_ROWS, MemberLoad, joined_lines, stored_ids
from ingestion.partners.pipeline import import_partner_files
from ingestion.partners.validation import MEMBER_ARROW_SCHEMA
from sandbox.generator import generate_partner_file


def _import(platform):
    return import_partner_files(platform.configs["acme_corp"], platform.settings, platform.params)


def test_a_newer_file_replaces_its_members_rows_and_records_a_dlt_load(platform):
    config = platform.configs["acme_corp"]
    first = generate_partner_file(config, rows=40, seed=41, id_offset=1_500_000)
    ids = [m["employee_id"] for m in first.valid_members]
    changed = {ids[0]: {"program": "renamed_program"}, ids[1]: {"last_name": "Newname"}}
    second = generate_partner_file(config, rows=40, seed=41, id_offset=1_500_000, overrides=changed)
    platform.upload("acme_corp", "enrollment_load_1.csv", first.content)
    [one] = _import(platform)
    platform.upload("acme_corp", "enrollment_load_2.csv", second.content)
    [two] = _import(platform)

    rows = platform.query(
        "select employee_id, program, last_name, source_file_id, _dlt_load_id"
        " from raw_partners.enrollment_members where partner_id = 'acme_corp'"
        " and employee_id = any(%s) order by employee_id",
        (ids,),
    )
    assert len(rows) == 40
    by_id = {r[0]: r for r in rows}
    assert by_id[ids[0]][1] == "renamed_program"
    assert by_id[ids[1]][2] == "Newname"
    assert {r[3] for r in rows} == {two.file_id}
    [load_id] = {r[4] for r in rows}
    assert platform.query(
        "select schema_name, status from raw_partners._dlt_loads where load_id = %s", (load_id,)
    ) == [("partner_acme_corp", 0)]
    assert (one.rows_loaded, two.rows_loaded) == (40, 40)


def _members(ids: list[str], program: str, file_id: str, partner_id: str = "load_test") -> pa.Table:
    received = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        {
            "partner_id": partner_id,
            "employee_id": employee_id,
            "last_name": "Doe",
            "date_of_birth": dt.date(1980, 1, 2),
            "program": program,
            "source_file_id": file_id,
            "source_line_number": line,
            "file_received_at": received,
        }
        for line, employee_id in enumerate(ids, start=2)
    ]
    return pa.Table.from_pylist(rows, schema=MEMBER_ARROW_SCHEMA)


def _loaded(platform) -> dict[str, tuple]:
    rows = platform.query(
        "select employee_id, program, date_of_birth, file_received_at, _dlt_load_id"
        " from raw_partners.enrollment_members where partner_id = 'load_test'"
    )
    return {r[0]: r[1:] for r in rows}


def test_chunks_merge_in_one_transaction_and_replace_members_across_chunks(platform):
    with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
        load.add(_members(["A1", "A2"], "first", "f1"))
        load.add(_members(["A3"], "first", "f1"))
        load.add(_members([], "first", "f1"))  # an all-rejected chunk
        assert _loaded(platform) == {}  # nothing visible before the commit
        first_load = load.commit()
    with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
        load.add(_members(["A3"], "second", "f2"))  # a member from the first file's 2nd chunk
        load.add(_members(["A1", "A4"], "second", "f2"))
        second_load = load.commit()

    loaded = _loaded(platform)
    assert {k: v[0] for k, v in loaded.items()} == {
        "A1": "second",
        "A2": "first",
        "A3": "second",
        "A4": "second",
    }
    # types survive the binary COPY: a date, a UTC timestamp, the load id as text
    assert loaded["A2"][1:] == (
        dt.date(1980, 1, 2),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        first_load,
    )
    assert loaded["A4"][3] == second_load
    assert platform.query(
        "select count(*) from raw_partners._dlt_loads where load_id in (%s, %s)",
        (first_load, second_load),
    ) == [(2,)]


def test_small_chunks_probe_their_ids_and_large_ones_use_the_stored_ids_alike(platform):
    # a chunk of up to PROBE_ROWS probes the key's index for each of its ids; a larger one
    # among stored ids reads them: either way, exactly the stored members are replaced and
    # the new ones added
    stored = [f"P{i:05d}" for i in range(3 * PROBE_ROWS)]
    with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
        load.add(_members(stored, "first", "f6"))
        load.commit()
    small = stored[: PROBE_ROWS // 2] + [f"N{i:05d}" for i in range(PROBE_ROWS // 2)]
    large = stored[PROBE_ROWS:] + [f"M{i:05d}" for i in range(PROBE_ROWS)]
    with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
        load.add(_members(small, "second", "f7"))
        load.add(_members(large, "second", "f7"))
        load.commit()

    programs = {k: v[0] for k, v in _loaded(platform).items() if k[0] in "PNM"}
    assert len(programs) == len(set(stored + small + large))
    assert {k for k, p in programs.items() if p == "first"} == set(
        stored[PROBE_ROWS // 2 : PROBE_ROWS]
    )


def test_a_chunk_knows_whether_any_of_its_ids_lies_within_the_stored_range(platform):
    with MemberLoad(platform.params, "range_check", "partner_range_check") as load:
        load.add(_members(["R100", "R300"], "first", "f8", "range_check"))
        load.commit()
    with MemberLoad(platform.params, "range_check", "partner_range_check") as load:
        load._wait()  # the stored range is read

        def within(*ids: str) -> bool:
            return load._any_in_stored_range(pa.chunked_array([pa.array(ids, pa.string())]))

        assert within("R400", "R500") is False  # above the stored ids
        assert within("A1", "B2") is False  # below them
        assert within("R050", "R400") is False  # on either side, none between R100 and R300
        assert within("R050", "R200") is True  # R200 lies between them, though not an id
        assert within("R300") is True
        assert within("Z\n1", "Z2") is True  # ids that cannot be joined in lines: "maybe"


def test_a_large_chunk_outside_the_stored_range_replaces_nobody_and_reads_no_ids(platform):
    stored = [f"T{i:05d}" for i in range(PROBE_ROWS)]
    with MemberLoad(platform.params, "range_test", "partner_range_test") as load:
        load.add(_members(stored, "first", "f9", "range_test"))
        assert load._stored is None  # no stored members: nothing to look up
        load.commit()
    higher = [f"U{i:05d}" for i in range(2 * PROBE_ROWS)]
    among = stored[::2] + [f"T{i:05d}x" for i in range(PROBE_ROWS)]
    with MemberLoad(platform.params, "range_test", "partner_range_test") as load:
        load.add(_members(higher, "second", "f10", "range_test"))
        load._wait()
        assert load._stored is None  # new, higher ids: the stored ids were not read
        load.add(_members(among, "second", "f10", "range_test"))
        load._wait()
        assert load._stored is not None and len(load._stored) == len(stored)
        load.commit()
    programs = dict(
        platform.query(
            "select employee_id, program from raw_partners.enrollment_members"
            " where partner_id = 'range_test'"
        )
    )
    assert len(programs) == len(set(stored + higher + among))
    assert {k for k, p in programs.items() if p == "first"} == set(stored[1::2])


def test_ids_join_in_lines_unless_one_holds_a_line_break():
    assert joined_lines(pa.chunked_array([["a", "b,c"], ['"d"']])) == 'a\nb,c\n"d"'
    assert joined_lines(pa.chunked_array([["a"], ["b\nc"]])) is None
    assert joined_lines(pa.chunked_array([[""]])) == ""


def test_a_load_left_without_commit_changes_nothing(platform):
    before = _loaded(platform)
    with pytest.raises(UnreadableFileError), MemberLoad(platform.params, "load_test", "x") as load:
        load.add(_members(["A1", "B1"], "never", "f3"))
        raise UnreadableFileError("the file's tail is truncated")
    assert _loaded(platform) == before


def test_a_database_error_mid_file_rolls_back_the_chunks_before_it(platform):
    before = _loaded(platform)
    with (
        pytest.raises(psycopg2.errors.UniqueViolation),
        MemberLoad(platform.params, "load_test", "x") as load,
    ):
        load.add(_members(["C2", "A1"], "earlier chunk", "f4"))
        load.add(_members(["C1", "C1"], "twice", "f4"))  # validation would have rejected this
        load.commit()
    assert _loaded(platform) == before


def test_members_whose_ids_need_quoting_are_replaced_too(platform):
    odd = ["Q,1", 'Q"2', "Q\n3", "Q\\4", "Q\t5"]
    for program in ("first", "second"):
        with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
            load.add(_members(odd, program, "f5"))
            load.commit()
    loaded = _loaded(platform)
    assert {k: loaded[k][0] for k in odd} == dict.fromkeys(odd, "second")


def test_stored_ids_come_back_exactly_with_or_without_line_breaks(platform):
    # one joined value normally; ids holding a line break take the COPY path
    plain = ["S1", "S,2", 'S"3', "S\\4", "S\t5", "É6", " S7 "]
    with MemberLoad(platform.params, "ids_test", "partner_ids_test") as load:
        load.add(_members(plain, "p", "f6", "ids_test"))
        load.commit()
    assert sorted(stored_ids(platform.params, "ids_test").to_pylist()) == sorted(plain)

    with MemberLoad(platform.params, "ids_test", "partner_ids_test") as load:
        load.add(_members(["S\n8"], "p", "f7", "ids_test"))
        load.commit()
    assert sorted(stored_ids(platform.params, "ids_test").to_pylist()) == sorted([*plain, "S\n8"])
    assert stored_ids(platform.params, "nobody").to_pylist() == []


def test_two_loads_of_one_partner_at_once_take_turns_instead_of_failing(platform):
    """The import's session lock lives on its own connection: if that backend ends mid-import,
    a second import of the partner can begin. Its load waits for the first one's transaction
    (which holds the partner's load lock), then replaces what the first stored."""
    import threading

    ids = ["T1", "T2", "T3"]
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second_load() -> None:
        try:
            with MemberLoad(platform.params, "load_test", "partner_load_test") as load:
                load.add(_members(ids[1:], "second", "t2"))
                load.commit()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            second_done.set()

    with MemberLoad(platform.params, "load_test", "partner_load_test") as first:
        first.add(_members(ids, "first", "t1"))
        first.wait_for_merges()  # its rows are written, not committed
        second = threading.Thread(target=second_load)
        second.start()
        assert not second_done.wait(1.0), "the second load did not wait for the first"
        first.commit()
    second.join(30)
    assert not errors, errors  # before: UniqueViolation on (partner_id, employee_id)
    loaded = {k: v[0] for k, v in _loaded(platform).items() if k.startswith("T")}
    assert loaded == {"T1": "first", "T2": "second", "T3": "second"}


def test_set_up_waits_for_another_process_setting_up(tmp_path):
    """Every `mdp run` creates the raw tables; two at once shared the dlt pipelines' folder,
    and the second crashed on a load package the first had just finished."""
    import threading

    import psycopg2

    from ingestion.partners import SETUP_LOCK, ensure_raw_tables
    from tests.conftest import fresh_database

    with fresh_database("mdp_setup") as params:
        other = psycopg2.connect(params.dsn())
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext(%s))", (SETUP_LOCK,))
        done = threading.Event()
        setting_up = threading.Thread(
            target=lambda: (ensure_raw_tables(params, tmp_path / "dlt"), done.set())
        )
        setting_up.start()
        try:
            assert not done.wait(1.0), "set-up did not wait for the other one"
        finally:
            other.close()  # its session ends: the lock is released
        setting_up.join(120)
        assert done.is_set()
        with psycopg2.connect(params.dsn()) as conn, conn.cursor() as cur:
            cur.execute("select to_regclass('raw_partners.enrollment_members') is not null")
            assert cur.fetchone()[0]

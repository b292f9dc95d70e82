"""Apple Health: the export reader (real samples, hostile and broken files, memory) and uploads."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.devices.apple_health import (
    EXPORT_SCHEMA,
    UPLOAD_SCHEMA,
    DeviceInfo,
    ExportStats,
    HealthExportError,
    UploadPayloadError,
    UploadProblem,
    iter_export_records,
    natural_key,
    parse_device_string,
    parse_export_to_batches,
    parse_upload_batch,
    units,
)
from ingestion.devices.apple_health.device_string import FIELD_SEPARATOR

SAMPLES = Path("/work/shared/samples/apple_health")
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not mounted")
OUR_TYPES = {
    "HKQuantityTypeIdentifierStepCount": "steps",
    "HKQuantityTypeIdentifierBodyMass": "weight",
    "HKQuantityTypeIdentifierBloodGlucose": "blood_glucose",
}
WATCH = (
    "<<HKDevice: 0x283f1c0a0>, name:Apple Watch, manufacturer:Apple Inc., model:Watch, "
    "hardware:Watch6,1, software:9.0>"
)
IPHONE = (
    "<<HKDevice: 0x281d4e260>, name:iPhone, manufacturer:Apple Inc., model:iPhone, "
    "hardware:iPhone12,8, software:16.5>"
)
DTD = """<!DOCTYPE HealthData [
<!-- a cut-down HealthKit export DTD -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout)*)>
<!ATTLIST HealthData locale CDATA #REQUIRED>
<!ELEMENT Record (MetadataEntry*)>
<!ATTLIST Record
  type CDATA #REQUIRED
  value CDATA #IMPLIED
>
<!ELEMENT Correlation ((MetadataEntry|Record)*)>
]>
"""


def _attr(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def record(
    hk_type: str = "HKQuantityTypeIdentifierStepCount",
    value: str = "120",
    unit: str = "count",
    start: str = "2023-03-01 08:00:00 -0500",
    end: str = "2023-03-01 08:10:00 -0500",
    source: str = "iPhone",
    device: str | None = IPHONE,
) -> str:
    device_attr = f' device="{_attr(device)}"' if device else ""
    return (
        f'<Record type="{hk_type}" sourceName="{_attr(source)}" sourceVersion="16.5"{device_attr} '
        f'unit="{_attr(unit)}" creationDate="{end}" startDate="{start}" endDate="{end}" '
        f'value="{value}"/>'
    )


def export(*body: str, dtd: str = DTD) -> bytes:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        dtd + '<HealthData locale="en_US">',
        ' <ExportDate value="2023-03-02 09:00:00 -0500"/>',
        *(f" {line}" for line in body),
        "</HealthData>",
    ]
    return "\n".join(lines).encode()


def read(data: bytes, stats: ExportStats | None = None) -> list:
    return list(iter_export_records(io.BytesIO(data), stats=stats))


# -- the real samples -----------------------------------------------------------------------


def _expected_from_sample(path: Path) -> tuple[Counter, Counter]:
    """Counts by an independent route: the stdlib tree of the (small, trusted) sample."""
    root = ET.parse(path).getroot()
    kept: Counter = Counter()
    ignored: Counter = Counter()
    for element in root:
        if element.tag == "Record":
            kind = element.get("type")
            if kind in OUR_TYPES:
                kept[OUR_TYPES[kind]] += 1
            else:
                ignored[kind] += 1
        elif element.tag == "Workout":
            kept["workout"] += 1
    return kept, ignored


@needs_samples
@pytest.mark.parametrize(
    "name", ["tdda__export6s3sample.xml", "dogsheep__export.xml", "dogsheep__zip_export.xml"]
)
def test_real_sample_exports_yield_every_record_of_our_types(name):
    path = SAMPLES / name
    kept, ignored = _expected_from_sample(path)
    stats = ExportStats()
    records = list(iter_export_records(path, member_id="m-1", stats=stats))
    assert Counter(r.record_type for r in records) == kept
    assert stats.kept == kept
    assert stats.ignored_types == ignored
    assert stats.completed and stats.rejected == 0
    assert all(r.member_id == "m-1" for r in records)
    assert len({r.natural_key for r in records}) == len(records)


@needs_samples
def test_real_sample_steps_keep_their_values_and_instants():
    path = SAMPLES / "tdda__export6s3sample.xml"
    root = ET.parse(path).getroot()
    expected = sorted(
        (dt.datetime.strptime(e.get("startDate"), "%Y-%m-%d %H:%M:%S %z"), float(e.get("value")))
        for e in root.iter("Record")
        if e.get("type") == "HKQuantityTypeIdentifierStepCount"
    )
    steps = [r for r in iter_export_records(path) if r.record_type == "steps"]
    assert sorted((r.start_at, r.value) for r in steps) == expected
    assert expected and all(r.start_at.tzinfo == dt.UTC for r in steps)
    first = min(steps, key=lambda r: r.start_at)
    assert first.utc_offset_minutes == 60 and first.local_date == dt.date(2014, 9, 13)
    assert first.start_at == dt.datetime(2014, 9, 13, 9, 27, 54, tzinfo=dt.UTC)


@needs_samples
def test_real_sample_workout_distance_in_miles_is_stored_in_km():
    path = SAMPLES / "dogsheep__export.xml"
    workout = ET.parse(path).getroot().find("Workout")
    assert workout.get("totalDistanceUnit") == "mi"
    [parsed] = [r for r in iter_export_records(path) if r.record_type == "workout"]
    assert parsed.total_distance_km == pytest.approx(
        float(workout.get("totalDistance")) * 1.609344, rel=1e-12
    )
    assert parsed.total_energy_kcal == pytest.approx(float(workout.get("totalEnergyBurned")))
    assert parsed.value == pytest.approx(float(workout.get("duration")))
    assert parsed.unit == "min"
    assert parsed.workout_activity_type == "HKWorkoutActivityTypeRunning"


@needs_samples
def test_real_sample_in_a_zip_reads_like_the_plain_file(tmp_path):
    plain = list(iter_export_records(SAMPLES / "tdda__export6s3sample.xml"))
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(SAMPLES / "tdda__export6s3sample.xml", "apple_health_export/export.xml")
        zf.writestr("apple_health_export/export_cda.xml", "<ClinicalDocument/>")
    assert list(iter_export_records(archive)) == plain


# -- units and devices ----------------------------------------------------------------------


def test_weight_in_pounds_is_stored_in_kilograms():
    [weight] = read(export(record("HKQuantityTypeIdentifierBodyMass", "150", "lb")))
    assert weight.record_type == "weight" and weight.unit == "kg"
    assert weight.value == 150 * 0.45359237  # 68.0388555
    assert (weight.original_value, weight.original_unit) == (150.0, "lb")


def test_glucose_in_mmol_per_litre_is_stored_in_mg_per_dl():
    unit = "mmol<180.15588000005408>/L"
    [glucose] = read(export(record("HKQuantityTypeIdentifierBloodGlucose", "5.5", unit)))
    assert glucose.unit == "mg/dL"
    assert glucose.value == pytest.approx(99.08573400003, rel=1e-12)
    assert glucose.original_unit == unit


def test_glucose_already_in_mg_per_dl_is_unchanged():
    [glucose] = read(export(record("HKQuantityTypeIdentifierBloodGlucose", "104", "mg/dL")))
    assert (glucose.value, glucose.unit) == (104.0, "mg/dL")


def test_device_string_fields_are_parsed_and_the_address_dropped():
    device = parse_device_string(WATCH)
    assert device == DeviceInfo(
        name="Apple Watch",
        manufacturer="Apple Inc.",
        model="Watch",
        hardware="Watch6,1",
        software="9.0",
    )
    airpods = parse_device_string(
        "<<HKDevice: 0x3034d64e0>, name:AirPods Pro, manufacturer:Apple Inc., model:0x200e, "
        "localIdentifier:38:EC:0D:BF:32:C6-tacl, creation date:2020-06-01 06:06:25 +0000>"
    )
    assert airpods is not None and airpods.name == "AirPods Pro" and airpods.model == "0x200e"
    assert dict(airpods.other) == {
        "localIdentifier": "38:EC:0D:BF:32:C6-tacl",
        "creation date": "2020-06-01 06:06:25 +0000",
    }
    assert parse_device_string(None) is None
    assert parse_device_string("") is None


def test_record_without_a_device_has_empty_device_columns():
    [steps] = read(export(record(device=None)))
    row = steps.to_row()
    assert steps.device is None
    assert [row[c] for c in ("device_name", "device_model", "device_hardware")] == [None] * 3


_value_text = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 ,.:;-_()'’&/+é")), min_size=1, max_size=20
).filter(lambda v: v == v.strip() and FIELD_SEPARATOR.search(v) is None)


@settings(max_examples=300)
@given(
    fields=st.dictionaries(
        st.sampled_from(["name", "manufacturer", "model", "hardware", "software"]),
        _value_text,
        min_size=1,
    ),
    address=st.integers(min_value=0, max_value=2**48),
)
def test_device_strings_round_trip_whatever_the_values_hold(fields, address):
    text = f"<<HKDevice: {address:#x}>, " + ", ".join(f"{k}:{v}" for k, v in fields.items()) + ">"
    assert parse_device_string(text) == DeviceInfo(**fields)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_any_device_text_parses_without_raising(text):
    result = parse_device_string(text)
    assert result is None or isinstance(result, DeviceInfo)


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(finite)
def test_pounds_convert_to_kilograms_by_the_exact_factor(pounds):
    assert units.to_canonical("weight", pounds, "lb") == (pounds * 0.45359237, "kg")
    assert units.mass_kg(pounds * 1000, "g") == pytest.approx(units.mass_kg(pounds, "kg"))
    assert units.mass_kg(pounds * 16, "oz") == pytest.approx(units.mass_kg(pounds, "lb"))


@given(finite, st.floats(min_value=1, max_value=1000, allow_nan=False))
def test_millimoles_convert_with_the_molar_mass_written_in_the_unit(mmol, molar_mass):
    value, unit = units.to_canonical("blood_glucose", mmol, f"mmol<{molar_mass!r}>/L")
    assert unit == "mg/dL"
    assert value == pytest.approx(mmol * molar_mass / 10, rel=1e-12)


@given(finite)
def test_durations_distances_and_energies_agree_across_units(amount):
    assert units.duration_minutes(amount * 60, "s") == pytest.approx(amount)
    assert units.duration_minutes(amount, "hr") == pytest.approx(amount * 60)
    assert units.distance_km(amount * 1000, "m") == pytest.approx(amount)
    assert units.energy_kcal(amount * 4.184, "kJ") == pytest.approx(amount)


def test_one_millimole_of_glucose_is_18_mg_per_dl():
    assert units.glucose_mg_dl(1, "mmol<180.15588000005408>/L") == pytest.approx(18.015588)
    assert units.glucose_mg_dl(1, "mmol/L") == pytest.approx(18.015588)
    with pytest.raises(units.UnitError, match="not a blood glucose unit"):
        units.glucose_mg_dl(1, "mg")


# -- what real exports contain --------------------------------------------------------------


def test_overlapping_iphone_and_watch_steps_are_kept_as_separate_records():
    both = export(
        record(source="iPhone", device=IPHONE), record(source="Apple Watch", device=WATCH)
    )
    phone, watch = read(both)
    assert (phone.start_at, phone.end_at) == (watch.start_at, watch.end_at)
    assert phone.natural_key != watch.natural_key
    assert (phone.device.hardware, watch.device.hardware) == ("iPhone12,8", "Watch6,1")


def test_records_inside_a_correlation_are_not_counted_twice():
    weight = record("HKQuantityTypeIdentifierBodyMass", "70", "kg")
    pressure = record("HKQuantityTypeIdentifierBloodPressureSystolic", "120", "mmHg")
    data = export(
        weight,
        pressure,
        '<Correlation type="HKCorrelationTypeIdentifierBloodPressure" sourceName="iPhone" '
        'startDate="2023-03-01 08:00:00 -0500" endDate="2023-03-01 08:10:00 -0500">',
        f"  {weight}",
        f"  {pressure}",
        "</Correlation>",
    )
    stats = ExportStats()
    assert [r.record_type for r in read(data, stats)] == ["weight"]
    assert stats.correlation_records_skipped == 2
    assert stats.ignored_types == {"HKQuantityTypeIdentifierBloodPressureSystolic": 1}


def test_newer_workouts_take_their_totals_from_workout_statistics():
    data = export(
        '<Workout workoutActivityType="HKWorkoutActivityTypeCycling" duration="3600" '
        'durationUnit="s" sourceName="Apple Watch" sourceVersion="10.1" '
        f'device="{_attr(WATCH)}" creationDate="2024-05-01 19:05:00 +0200" '
        'startDate="2024-05-01 18:00:00 +0200" endDate="2024-05-01 19:00:00 +0200">',
        '  <MetadataEntry key="HKIndoorWorkout" value="0"/>',
        '  <WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" '
        'startDate="2024-05-01 18:00:00 +0200" endDate="2024-05-01 19:00:00 +0200" '
        'sum="2092" unit="kJ"/>',
        '  <WorkoutStatistics type="HKQuantityTypeIdentifierDistanceCycling" '
        'startDate="2024-05-01 18:00:00 +0200" endDate="2024-05-01 19:00:00 +0200" '
        'sum="18.6" unit="mi"/>',
        '  <WorkoutStatistics type="HKQuantityTypeIdentifierHeartRate" average="131" '
        'startDate="2024-05-01 18:00:00 +0200" endDate="2024-05-01 19:00:00 +0200" unit="count/min"/>',
        "</Workout>",
    )
    [workout] = read(data)
    assert (workout.value, workout.unit) == (60.0, "min")
    assert workout.total_energy_kcal == pytest.approx(500.0)
    assert workout.total_distance_km == pytest.approx(18.6 * 1.609344)
    assert workout.device.hardware == "Watch6,1"
    assert workout.utc_offset_minutes == 120 and workout.local_date == dt.date(2024, 5, 1)


def test_a_bad_record_is_rejected_with_its_line_and_the_rest_kept():
    data = export(
        record(value="12"),
        record("HKQuantityTypeIdentifierBodyMass", "70", "furlongs"),
        record(start="2023-03-01 25:00:00 -0500"),
        record(value="-3"),
        record(value="40"),
    )
    stats = ExportStats()
    assert [r.value for r in read(data, stats)] == [12.0, 40.0]
    assert stats.rejected == 3 and stats.completed
    lines = data.decode().splitlines()
    bad_unit = stats.problems[0]
    assert (bad_unit.field, bad_unit.hk_type) == ("unit", "HKQuantityTypeIdentifierBodyMass")
    assert "furlongs" in lines[bad_unit.line - 1]
    assert [p.field for p in stats.problems] == ["unit", "startDate", "value"]


def test_stray_control_characters_are_removed_and_counted():
    data = export(record(source="Jane\x0bs iPhone\x01"))
    stats = ExportStats()
    [steps] = read(data, stats)
    assert steps.source_name == "Janes iPhone"
    assert stats.control_characters_removed == 2


def test_the_malformed_dtd_of_ios_16_exports_does_not_stop_the_read():
    broken = DTD.replace(
        "<!ELEMENT Correlation",
        "<!ATTLIST VisionPrescription\n  type CDATA #REQUIRED\n<!ELEMENT Correlation",
    )
    with pytest.raises(ET.ParseError):  # what a plain parser makes of it
        ET.fromstring(export(record(), dtd=broken))
    assert [r.value for r in read(export(record(), dtd=broken))] == [120.0]


# -- hostile and broken input ---------------------------------------------------------------

BILLION_LAUGHS = DTD.replace(
    "]>",
    '<!ENTITY lol "lol">\n'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">\n' for i in range(2, 10)).replace(
        "&lol1;", "&lol;"
    )
    + "]>",
)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    # opening a FIFO blocks until a writer comes: the import hung until killed
    fifo = tmp_path / "export.xml"
    os.mkfifo(fifo)
    with pytest.raises(HealthExportError, match="not a regular file"):
        list(parse_export_to_batches(fifo))


def test_billion_laughs_is_refused_before_any_expansion():
    with pytest.raises(HealthExportError, match="declares entity 'lol'") as caught:
        read(export(record(source="&lol9;"), dtd=BILLION_LAUGHS))
    assert caught.value.line == 12


def test_an_external_entity_is_refused():
    xxe = DTD.replace("]>", '<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>')
    with pytest.raises(HealthExportError, match="file:///etc/passwd") as caught:
        read(export(record(source="&xxe;"), dtd=xxe))
    assert "entity" in caught.value.reason and caught.value.line is not None


def test_an_external_dtd_is_refused():
    with pytest.raises(HealthExportError, match="external DTD"):
        read(export(record(), dtd='<!DOCTYPE HealthData SYSTEM "http://example.com/h.dtd">\n'))


def test_the_defused_parser_refuses_entities_the_dtd_check_never_saw():
    # A DOCTYPE that never closes skips the prefilter; defusedxml still refuses the entity.
    with pytest.raises(HealthExportError, match="refused it: EntitiesForbidden"):
        read(b'<!DOCTYPE HealthData [ <!ENTITY a "b"> <!ELEMENT HealthData ANY>')


def test_a_truncated_export_fails_with_line_and_column_after_the_earlier_records():
    data = export(*(record(value=str(n)) for n in range(3)))
    cut = data[: data.rfind(b"<Record") + 70]
    seen = []
    with pytest.raises(HealthExportError, match="truncated") as caught:
        for item in iter_export_records(io.BytesIO(cut)):
            seen.append(item)
    assert [r.value for r in seen] == [0.0, 1.0]
    assert caught.value.line == cut.count(b"\n") + 1 and caught.value.column is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an XML document"),
        (b'{"samples": []}', "not an XML document"),
        ('<?xml version="1.0"?><HealthData/>'.encode("utf-16"), "UTF-16"),
        (b'<?xml version="1.0"?>\n<ClinicalDocument/>', "expected <HealthData>"),
        (b"<HealthData>\n<Record type='x' <oops/></HealthData>", "not well-formed"),
    ],
)
def test_files_that_are_not_exports_are_refused_with_a_reason(data, message):
    with pytest.raises(HealthExportError, match=message):
        read(data)


# -- zips -----------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["apple_health_export/export.xml", "export.xml"])
def test_an_export_zip_is_read_from_either_place(tmp_path, member):
    data = export(record(value="7"))
    archive = _zip(
        tmp_path / "export.zip",
        {
            "__MACOSX/apple_health_export/._export.xml": b"\x00\x05\x16\x07",
            member: data,
            "apple_health_export/export_cda.xml": b"<ClinicalDocument/>",
        },
    )
    stats = ExportStats()
    assert [r.value for r in iter_export_records(archive, stats=stats)] == [7.0]
    assert stats.source == f"export.zip!{member}"
    with open(archive, "rb") as stream:  # an open file works as well as a path
        assert [r.value for r in iter_export_records(stream)] == [7.0]


def test_a_zip_without_export_xml_is_refused_naming_what_it_holds(tmp_path):
    archive = _zip(tmp_path / "export.zip", {"apple_health_export/export_cda.xml": b"<x/>"})
    with pytest.raises(HealthExportError, match="export_cda.xml"):
        list(iter_export_records(archive))


def test_a_damaged_zip_is_refused(tmp_path):
    good = _zip(tmp_path / "good.zip", {"export.xml": export(record())})
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(HealthExportError, match="zip"):
        list(iter_export_records(damaged))


class _Pipe(io.RawIOBase):
    """A stream that cannot seek, like an upload body read as it arrives."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_an_export_streamed_without_seeking_is_read_but_a_zip_needs_a_seekable_file(tmp_path):
    assert [r.value for r in iter_export_records(_Pipe(export(record(value="3"))))] == [3.0]
    archive = _zip(tmp_path / "export.zip", {"export.xml": export(record())})
    with pytest.raises(HealthExportError, match="cannot seek"):
        list(iter_export_records(_Pipe(archive.read_bytes())))


def test_an_unzipped_export_folder_is_read(tmp_path):
    (tmp_path / "apple_health_export").mkdir()
    (tmp_path / "apple_health_export" / "export.xml").write_bytes(export(record()))
    assert len(list(iter_export_records(tmp_path))) == 1


# -- Arrow batches --------------------------------------------------------------------------


def test_batches_are_arrow_tables_with_the_canonical_columns():
    data = export(
        *(record(value=str(n), start=f"2023-03-01 08:{n:02d}:00 -0500") for n in range(7))
    )
    tables = list(parse_export_to_batches(io.BytesIO(data), batch_size=3, member_id="m-9"))
    assert [t.num_rows for t in tables] == [3, 3, 1]
    assert all(t.schema == EXPORT_SCHEMA for t in tables)
    table = pa.concat_tables(tables)
    assert table.column("value").to_pylist() == [float(n) for n in range(7)]
    assert set(table.column("member_id").to_pylist()) == {"m-9"}
    assert table.column("start_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("start_at")[0].as_py() == dt.datetime(2023, 3, 1, 13, tzinfo=dt.UTC)
    assert table.column("local_date")[0].as_py() == dt.date(2023, 3, 1)
    assert table.column("utc_offset_minutes")[0].as_py() == -300


# -- memory ---------------------------------------------------------------------------------


def write_synthetic_export(path: Path, size_bytes: int) -> Counter:
    """A realistic export of about size_bytes, written line by line; returns what it holds."""
    held: Counter = Counter()
    with open(path, "w", encoding="utf-8") as out:
        out.write(
            '<?xml version="1.0" encoding="UTF-8"?>\n' + DTD + '<HealthData locale="en_US">\n'
        )
        day = dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        n = 0
        while out.tell() < size_bytes:
            start = day + dt.timedelta(minutes=n)
            stamp = start.strftime("%Y-%m-%d %H:%M:%S %z")
            end = (start + dt.timedelta(seconds=59)).strftime("%Y-%m-%d %H:%M:%S %z")
            kind = n % 10
            if kind < 4:
                device, source = (IPHONE, "iPhone") if kind % 2 else (WATCH, "Apple Watch")
                out.write(
                    record(value=str(n % 300), start=stamp, end=end, source=source, device=device)
                )
                held["steps"] += 1
            elif kind == 4:
                out.write(record("HKQuantityTypeIdentifierBodyMass", "165.2", "lb", stamp, end))
                held["weight"] += 1
            elif kind == 5:
                unit = "mmol<180.15588000005408>/L"
                out.write(record("HKQuantityTypeIdentifierBloodGlucose", "5.4", unit, stamp, end))
                held["blood_glucose"] += 1
            elif kind == 6:
                out.write(
                    f'<Workout workoutActivityType="HKWorkoutActivityTypeWalking" duration="0.9" '
                    f'durationUnit="min" sourceName="Apple Watch" startDate="{stamp}" '
                    f'endDate="{end}"><MetadataEntry key="HKIndoorWorkout" value="0"/>'
                    f'<WorkoutStatistics type="HKQuantityTypeIdentifierDistanceWalkingRunning" '
                    f'startDate="{stamp}" endDate="{end}" sum="0.08" unit="km"/></Workout>'
                )
                held["workout"] += 1
            else:
                out.write(
                    record("HKQuantityTypeIdentifierHeartRate", "64", "count/min", stamp, end)
                )
            out.write("\n")
            n += 1
        out.write("</HealthData>\n")
    return held


# Measured at about 7.5 MiB (Python objects; Arrow buffers and zlib are not traced). Holding
# the whole 20 MB export's records, or building its 39k rows as Python objects, would not fit.
PEAK_LIMIT = 16 << 20


def _peak_bytes_reading(source: Path, batch_size: int = 50_000) -> tuple[Counter, int]:
    seen: Counter = Counter()
    # Warm up first: pyarrow imports modules on first use, and those are not the reader's.
    list(parse_export_to_batches(io.BytesIO(export(record())), batch_size))
    tracemalloc.start()
    try:
        for table in parse_export_to_batches(source, batch_size):
            for pair in pc.value_counts(table.column("record_type")).to_pylist():
                seen[pair["values"]] += pair["counts"]
        return seen, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_20_mb_zipped_export_is_read_in_less_memory_than_its_own_size(tmp_path):
    xml = tmp_path / "export.xml"
    held = write_synthetic_export(xml, 20 << 20)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(xml, "apple_health_export/export.xml")
    xml.unlink()
    seen, peak = _peak_bytes_reading(archive)
    assert seen == held
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.skipif(
    not os.environ.get("MDP_SLOW_TESTS"), reason="about a minute; set MDP_SLOW_TESTS=1"
)
def test_a_100_mb_export_is_read_in_the_same_memory_as_a_small_one(tmp_path):
    xml = tmp_path / "export.xml"
    held = write_synthetic_export(xml, 100 << 20)
    seen, peak = _peak_bytes_reading(xml)
    assert seen == held
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"


# -- uploads from the member app ------------------------------------------------------------

UUID_A = "6F3C1D2E-0B4A-4C5D-9E8F-1A2B3C4D5E6F"
UUID_B = "0F3C1D2E-0B4A-4C5D-9E8F-1A2B3C4D5E60"


def upload_sample(**changes) -> dict:
    sample = {
        "uuid": UUID_A,
        "type": "HKQuantityTypeIdentifierBodyMass",
        "start": "2024-02-10T07:30:00.250-08:00",
        "end": "2024-02-10T07:30:00.250-08:00",
        "value": 180,
        "unit": "lb",
        "source": "Health Mate",
        "device": {"name": "Body+", "manufacturer": "Withings", "model": "WBS05"},
        "sync_identifier": "withings-123",
        "sync_version": 2,
    }
    sample.update(changes)
    return sample


def test_an_upload_is_normalized_to_the_export_columns():
    batch = parse_upload_batch(
        {"samples": [upload_sample()], "deleted": [UUID_B.lower()]}, member_id="m-2"
    )
    assert batch.problems == []
    [row] = batch.rows
    assert row["value"] == 180 * 0.45359237 and row["unit"] == "kg"
    assert row["uuid"] == UUID_A.lower()
    assert (row["sync_identifier"], row["sync_version"]) == ("withings-123", 2)
    assert row["start_at"] == dt.datetime(2024, 2, 10, 15, 30, 0, 250_000, tzinfo=dt.UTC)
    assert (row["utc_offset_minutes"], row["local_date"]) == (-480, dt.date(2024, 2, 10))
    assert (row["device_model"], row["member_id"]) == ("WBS05", "m-2")
    assert batch.deleted_uuids == [UUID_B.lower()]
    assert batch.to_table().schema == UPLOAD_SCHEMA


def test_an_uploaded_sample_has_the_natural_key_of_the_same_sample_in_an_export():
    steps = dict(
        type="HKQuantityTypeIdentifierStepCount",
        value=120,
        unit="count",
        source="iPhone",
        device=IPHONE,
        start="2023-03-01T08:00:00.731-05:00",
        end="2023-03-01T08:10:00.104-05:00",
    )
    [row] = parse_upload_batch({"samples": [upload_sample(**steps)]}).rows
    [exported] = read(export(record()))
    assert row["natural_key"] == exported.natural_key


def test_bad_upload_samples_are_reported_by_index_and_field_and_the_good_ones_kept():
    samples = [
        upload_sample(),
        upload_sample(uuid="not-a-uuid"),
        upload_sample(uuid=UUID_B, start="2024-02-10T07:30:00"),
        upload_sample(uuid=UUID_B, unit="stone-ish"),
        upload_sample(uuid=UUID_B, value="180"),
        upload_sample(uuid=UUID_B, type="HKQuantityTypeIdentifierHeartRate"),
        upload_sample(uuid=UUID_B, sync_version=None),
        upload_sample(uuid=UUID_B, end="2024-02-10T07:00:00-08:00"),
        "a string",
        upload_sample(),
    ]
    batch = parse_upload_batch({"samples": samples, "deleted": ["nope"]})
    assert len(batch.rows) == 1
    assert [(p.index, p.field) for p in batch.problems] == [
        (1, "uuid"),
        (2, "start"),
        (3, "unit"),
        (4, "value"),
        (5, "type"),
        (6, "sync_version"),
        (7, "end"),
        (8, "sample"),
        (9, "uuid"),
        (0, "deleted"),
    ]
    assert batch.problems[1] == UploadProblem(2, "start", "'2024-02-10T07:30:00' has no UTC offset")


def test_an_uploaded_workout_carries_duration_distance_and_energy():
    workout = upload_sample(
        type="HKWorkoutTypeIdentifier",
        workout_activity_type="HKWorkoutActivityTypeRunning",
        start="2024-02-10T07:00:00Z",
        end="2024-02-10T07:45:00Z",
        value=2700,
        unit="s",
        total_distance=8.2,
        total_distance_unit="km",
        total_energy_burned=2510,
        total_energy_burned_unit="kJ",
        device=WATCH,
        sync_identifier=None,
        sync_version=None,
    )
    [row] = parse_upload_batch({"samples": [workout]}).rows
    assert (row["record_type"], row["value"], row["unit"]) == ("workout", 45.0, "min")
    assert row["total_energy_kcal"] == pytest.approx(2510 / 4.184)
    assert (row["total_distance_km"], row["device_hardware"]) == (8.2, "Watch6,1")


@pytest.mark.parametrize("payload", [[], {"samples": {}}, {"deleted": "x"}])
def test_an_upload_of_the_wrong_shape_is_refused_whole(payload):
    with pytest.raises(UploadPayloadError):
        parse_upload_batch(payload)


def test_natural_key_ignores_sub_second_digits_and_the_offset_of_the_same_instant():
    base = dict(hk_type="t", source_name="s", device_model="m", device_hardware="h")
    a = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    b = dt.datetime(2024, 1, 1, 7, 0, 0, 900_000, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert natural_key(**base, start_at=a, end_at=a) == natural_key(**base, start_at=b, end_at=b)
    assert re.fullmatch(r"[0-9a-f]{64}", natural_key(**base, start_at=a, end_at=a))

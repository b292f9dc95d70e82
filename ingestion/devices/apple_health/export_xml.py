"""Streaming reader for the Health app's "Export All Health Data": export.xml or its zip.

Exports reach gigabytes, so the file is read in 1 MiB chunks (straight from the zip member,
never extracted) and fed to an incremental SAX parser: no element tree is built and memory
stays flat whatever the file size. Before the parser sees the bytes:

- control characters that XML 1.0 forbids (Apple writes stray U+000B into some attributes)
  are removed and counted;
- the internal DTD is blanked out (newlines kept, so line numbers stay true). Records need
  nothing from it, and iOS 16 exports ship a malformed one that stops any XML parser at
  line 156. An entity declaration or an external DTD is refused before that, by name.

The parser is defusedxml's expat driver (entities and external references forbidden), a
second line behind the DTD check. Records nested in a <Correlation> are skipped: the export
also writes each of them at the top level (the DTD says so), and counting both doubles them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler
from xml.sax.xmlreader import AttributesImpl

import pyarrow as pa
from defusedxml.common import DefusedXmlException
from defusedxml.expatreader import DefusedExpatParser

from ingestion.devices.apple_health import units
from ingestion.devices.apple_health.device_string import DeviceInfo, parse_device_string

RECORD_TYPES = {
    "HKQuantityTypeIdentifierStepCount": "steps",
    "HKQuantityTypeIdentifierBodyMass": "weight",
    "HKQuantityTypeIdentifierBloodGlucose": "blood_glucose",
}
WORKOUT_TYPE = "HKWorkoutTypeIdentifier"  # hk_type of workouts (HealthKit's workout type id)
ZIP_MEMBERS = ("apple_health_export/export.xml", "export.xml")
CHUNK_BYTES = 1 << 20
PROLOG_LIMIT = 4 << 20  # Apple's DTD is about 15 KB; a prolog past this is not an export
MAX_PROBLEMS_KEPT = 100
_ARROW_STEP = 4096

_UTC = dt.UTC
# XML 1.0 allows tab, LF and CR below 0x20. In UTF-8 these bytes never occur inside a
# multi-byte sequence, so deleting them from raw bytes cannot split a character.
_CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32)])
_BLANK = bytes(10 if b == 10 else 32 for b in range(256))  # everything but "\n" -> " "
_EXPORT_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_DOCTYPE_NAME = re.compile(rb"\s+[^\s\[>]+\s*")
_DOCTYPE_CLOSE = re.compile(rb"\]\s*>")
_COMMENT = re.compile(rb"<!--.*?-->", re.DOTALL)
_ENTITY_DECL = re.compile(rb"<!ENTITY\s+(?:%\s*)?([^\s>]*)([^>]*)")
_EXTERNAL_ID = re.compile(rb"""(SYSTEM|PUBLIC)\s*(["'][^"']*["'])?""")


class HealthExportError(Exception):
    """The export cannot be read (or is refused). Names the file, and line/column if known."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = message
        self.source = source
        self.line = line
        self.column = column
        where = f"line {line}" if line is not None else ""
        if line is not None and column is not None:
            where += f", column {column}"
        text = f"{source}: {message}" if source else message
        super().__init__(f"{text} ({where})" if where else text)


class InvalidField(ValueError):
    """One field of one record is unusable; the record is rejected, the file is not."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class _Sample:
    record_type: str  # steps | weight | blood_glucose | workout
    hk_type: str
    source_name: str
    source_version: str | None
    device: DeviceInfo | None
    start_at: dt.datetime  # UTC
    end_at: dt.datetime  # UTC
    local_date: dt.date  # start date in the record's own UTC offset
    utc_offset_minutes: int
    value: float  # canonical unit
    unit: str
    original_value: float | None
    original_unit: str | None
    natural_key: str
    creation_at: dt.datetime | None
    member_id: str | None

    def to_row(self) -> dict[str, Any]:
        device = self.device
        return {
            "member_id": self.member_id,
            "record_type": self.record_type,
            "hk_type": self.hk_type,
            "source_name": self.source_name,
            "source_version": self.source_version,
            "device_name": device.name if device else None,
            "device_model": device.model if device else None,
            "device_hardware": device.hardware if device else None,
            "device_manufacturer": device.manufacturer if device else None,
            "start_at": self.start_at,
            "end_at": self.end_at,
            "local_date": self.local_date,
            "utc_offset_minutes": self.utc_offset_minutes,
            "value": self.value,
            "unit": self.unit,
            "original_value": self.original_value,
            "original_unit": self.original_unit,
            "natural_key": self.natural_key,
            "workout_activity_type": None,
            "total_distance_km": None,
            "total_energy_kcal": None,
            "creation_at": self.creation_at,
        }


@dataclass(frozen=True, slots=True)
class HealthRecord(_Sample):
    """A step count, body mass or blood glucose sample, in canonical units."""


@dataclass(frozen=True, slots=True)
class Workout(_Sample):
    """A workout; `value` is its duration in minutes."""

    workout_activity_type: str
    total_distance_km: float | None
    total_energy_kcal: float | None

    def to_row(self) -> dict[str, Any]:
        row = _Sample.to_row(self)
        row["workout_activity_type"] = self.workout_activity_type
        row["total_distance_km"] = self.total_distance_km
        row["total_energy_kcal"] = self.total_energy_kcal
        return row


def _utc_timestamp() -> pa.DataType:
    return pa.timestamp("us", tz="UTC")


EXPORT_SCHEMA = pa.schema(
    [
        pa.field("member_id", pa.string(), nullable=False),  # part of the merge key
        pa.field("record_type", pa.string(), nullable=False),
        pa.field("hk_type", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("source_version", pa.string()),
        pa.field("device_name", pa.string()),
        pa.field("device_model", pa.string()),
        pa.field("device_hardware", pa.string()),
        pa.field("device_manufacturer", pa.string()),
        pa.field("start_at", _utc_timestamp(), nullable=False),
        pa.field("end_at", _utc_timestamp(), nullable=False),
        pa.field("local_date", pa.date32(), nullable=False),
        pa.field("utc_offset_minutes", pa.int16(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("original_value", pa.float64()),
        pa.field("original_unit", pa.string()),
        pa.field("natural_key", pa.string(), nullable=False),
        pa.field("workout_activity_type", pa.string()),
        pa.field("total_distance_km", pa.float64()),
        pa.field("total_energy_kcal", pa.float64()),
        pa.field("creation_at", _utc_timestamp()),
    ]
)


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """A record left out of the load, and why."""

    line: int | None
    element: str
    hk_type: str | None
    field: str
    message: str


@dataclass
class ExportStats:
    """What one read of an export saw; filled in as the records are consumed."""

    source: str = ""
    export_date: str | None = None
    kept: Counter[str] = field(default_factory=Counter)  # by record_type
    ignored_types: Counter[str] = field(default_factory=Counter)  # other Record types
    correlation_records_skipped: int = 0
    rejected: int = 0
    problems: list[RecordProblem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    control_characters_removed: int = 0
    bytes_read: int = 0
    completed: bool = False  # True only once the whole document parsed

    def reject(self, problem: RecordProblem) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)


def shown_problems(stats: ExportStats, limit: int = 10) -> list[str]:
    """The first rejected records as `line N: type field: why`, for the CLI and Dagster: the
    values a message quotes (a weight, a date) are left out, as they are health data."""
    return [
        f"line {p.line if p.line is not None else '?'}: {p.hk_type or p.element} {p.field}:"
        f" {_QUOTED_VALUE.sub('', p.message).strip()}"
        for p in stats.problems[:limit]
    ]


_QUOTED_VALUE = re.compile(r"\s*\([^)]*\)|'[^']*' ?")


# -- values ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _offset(sign: str, hours: str, minutes: str) -> dt.timezone:
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    return dt.timezone(-delta if sign == "-" else delta)


def parse_export_datetime(text: str) -> dt.datetime:
    """`2024-03-10 07:15:00 -0800` -> an aware datetime in that offset (ValueError otherwise)."""
    if len(text) == 25 and text[19] == " " and text[20] in "+-" and text[10] == " ":
        # The hot path (three dates a record): C's fromisoformat, about 4x a regex parse.
        try:
            return dt.datetime.fromisoformat(f"{text[:19]}{text[20:23]}:{text[23:]}")
        except ValueError:
            pass
    match = _EXPORT_DATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not 'YYYY-MM-DD HH:MM:SS +HHMM'")
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    try:
        tz = _offset(sign, off_h, off_m)
        return dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def _key_time(value: dt.datetime) -> str:
    value = value.astimezone(_UTC)
    return (value.replace(microsecond=0) if value.microsecond else value).isoformat()


def natural_key(
    hk_type: str,
    source_name: str,
    device_model: str | None,
    device_hardware: str | None,
    start_at: dt.datetime,
    end_at: dt.datetime,
) -> str:
    """sha256 hex of (type, source, device model, device hardware, start, end).

    Times enter as UTC ISO 8601 cut to the second, so the same sample gets the same key
    whether it came from an export (local time, whole seconds) or from the app (fractions).
    """
    parts = (
        hk_type,
        source_name,
        device_model or "",
        device_hardware or "",
        _key_time(start_at),
        _key_time(end_at),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _check_interval(start: dt.datetime, end: dt.datetime, end_field: str) -> None:
    if start.utcoffset() is None or end.utcoffset() is None:
        raise InvalidField(end_field, "dates need a UTC offset")
    for value, name in ((start, "startDate"), (end, end_field)):
        try:
            value.astimezone(_UTC)
        except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
            raise InvalidField(name, f"{value.isoformat()} is out of range in UTC") from None
    if end < start:
        raise InvalidField(end_field, f"ends ({end.isoformat()}) before it starts")


def _canonical(record_type: str, value: float, unit: str) -> float:
    try:
        canonical, _ = units.to_canonical(record_type, value, unit)
    except units.UnitError as exc:
        raise InvalidField("unit" if math.isfinite(value) else "value", str(exc)) from None
    if record_type == "steps" and canonical < 0:
        raise InvalidField("value", f"a step count cannot be negative ({value})")
    if record_type in ("weight", "blood_glucose") and canonical <= 0:
        raise InvalidField("value", f"must be positive ({value} {unit})")
    return canonical


def _common(
    hk_type: str,
    source_name: str,
    device: DeviceInfo | None,
    start: dt.datetime,
    end: dt.datetime,
    creation: dt.datetime | None,
) -> dict[str, Any]:
    if not source_name or not source_name.strip():
        raise InvalidField("sourceName", "is empty")
    offset = start.utcoffset()
    assert offset is not None  # _check_interval ran first
    return {
        "hk_type": hk_type,
        "source_name": source_name,
        "device": device,
        "start_at": start.astimezone(_UTC),
        "end_at": end.astimezone(_UTC),
        "local_date": start.date(),
        "utc_offset_minutes": int(offset.total_seconds() // 60),
        "natural_key": natural_key(
            hk_type,
            source_name,
            device.model if device else None,
            device.hardware if device else None,
            start,
            end,
        ),
        "creation_at": creation.astimezone(_UTC) if creation is not None else None,
    }


def build_record(
    *,
    record_type: str,
    hk_type: str,
    source_name: str,
    source_version: str | None,
    device: DeviceInfo | None,
    start: dt.datetime,
    end: dt.datetime,
    value: float,
    unit: str,
    creation: dt.datetime | None = None,
    member_id: str | None = None,
) -> HealthRecord:
    """A HealthRecord from parsed parts (aware local datetimes); InvalidField when unusable."""
    _check_interval(start, end, "endDate")
    canonical = _canonical(record_type, value, unit)
    return HealthRecord(
        record_type=record_type,
        source_version=source_version,
        value=canonical,
        unit=units.CANONICAL_UNITS[record_type],
        original_value=value,
        original_unit=unit,
        member_id=member_id,
        **_common(hk_type, source_name, device, start, end, creation),
    )


def _optional_amount(
    value: float | None, unit: str | None, convert: Any, name: str
) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise InvalidField(name, f"must be a non-negative number ({value})")
    if not unit:
        raise InvalidField(f"{name}Unit", "is missing")
    try:
        return convert(value, unit)
    except units.UnitError as exc:
        raise InvalidField(f"{name}Unit", str(exc)) from None


def build_workout(
    *,
    activity_type: str,
    source_name: str,
    source_version: str | None,
    device: DeviceInfo | None,
    start: dt.datetime,
    end: dt.datetime,
    duration: float | None,
    duration_unit: str | None,
    total_distance: float | None = None,
    total_distance_unit: str | None = None,
    total_energy: float | None = None,
    total_energy_unit: str | None = None,
    creation: dt.datetime | None = None,
    member_id: str | None = None,
) -> Workout:
    """A Workout; without a duration, the span from start to end stands in for it."""
    _check_interval(start, end, "endDate")
    if not activity_type:
        raise InvalidField("workoutActivityType", "is missing")
    if duration is None:
        minutes = (end - start).total_seconds() / 60
    else:
        if not math.isfinite(duration) or duration < 0:
            raise InvalidField("duration", f"must be a non-negative number ({duration})")
        try:
            minutes = units.duration_minutes(duration, duration_unit or "min")
        except units.UnitError as exc:
            raise InvalidField("durationUnit", str(exc)) from None
    return Workout(
        record_type="workout",
        source_version=source_version,
        value=minutes,
        unit=units.CANONICAL_UNITS["workout"],
        original_value=duration,
        original_unit=(duration_unit or "min") if duration is not None else None,
        member_id=member_id,
        workout_activity_type=activity_type,
        total_distance_km=_optional_amount(
            total_distance, total_distance_unit, units.distance_km, "totalDistance"
        ),
        total_energy_kcal=_optional_amount(
            total_energy, total_energy_unit, units.energy_kcal, "totalEnergyBurned"
        ),
        **_common(WORKOUT_TYPE, source_name, device, start, end, creation),
    )


def records_to_table(records: Iterable[HealthRecord | Workout]) -> pa.Table:
    """An Arrow table with EXPORT_SCHEMA's columns."""
    names = EXPORT_SCHEMA.names
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for record in records:
        row = record.to_row()
        for name in names:
            columns[name].append(row[name])
    return pa.Table.from_pydict(columns, schema=EXPORT_SCHEMA)


# -- attributes of the export ---------------------------------------------------------------


class _Attrs(Protocol):
    def get(self, name: str, alternative: None = None) -> str | None: ...


def _required(attrs: _Attrs, name: str) -> str:
    value = attrs.get(name)
    if value is None or not value.strip():
        raise InvalidField(name, "is missing")
    return value


def _date(attrs: _Attrs, name: str, required: bool = True) -> dt.datetime | None:
    text = _required(attrs, name) if required else attrs.get(name)
    if text is None or not text.strip():
        return None
    try:
        return parse_export_datetime(text)
    except ValueError as exc:
        raise InvalidField(name, str(exc)) from None


def _number(text: str | None, name: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidField(name, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidField(name, f"{text!r} is not a finite number")
    return value


class _PendingWorkout:
    """A <Workout> between its start and end tags, collecting <WorkoutStatistics>."""

    def __init__(self, attrs: dict[str, str], line: int) -> None:
        self.attrs = attrs
        self.line = line
        self.distance_km: float | None = None
        self.energy_kcal: float | None = None
        self.problem: InvalidField | None = None

    def add_statistics(self, attrs: AttributesImpl) -> None:
        kind = attrs.get("type") or ""
        if kind == "HKQuantityTypeIdentifierActiveEnergyBurned":
            convert, current = units.energy_kcal, self.energy_kcal
        elif kind.startswith("HKQuantityTypeIdentifierDistance"):
            convert, current = units.distance_km, self.distance_km
        else:
            return
        try:
            amount = _optional_amount(
                _number(attrs.get("sum"), "WorkoutStatistics.sum"),
                attrs.get("unit"),
                convert,
                "WorkoutStatistics.sum",
            )
        except InvalidField as exc:
            self.problem = self.problem or exc
            return
        if amount is None:
            return
        if convert is units.energy_kcal:
            self.energy_kcal = amount
        else:  # a multisport workout has one distance statistic per sport
            self.distance_km = amount + (current or 0.0)


class _ExportHandler(ContentHandler):
    def __init__(
        self, parser: DefusedExpatParser, stats: ExportStats, member_id: str | None, label: str
    ) -> None:
        super().__init__()
        self.parser = parser
        self.stats = stats
        self.member_id = member_id
        self.label = label
        self.out: list[HealthRecord | Workout] = []
        self.depth = 0
        self.correlation_depth = 0
        self.workout: _PendingWorkout | None = None
        self.saw_root = False
        # Each attribute value is a new str; sharing repeats keeps a batch of rows small.
        self.strings: dict[str, str] = {}

    def _shared(self, text: str) -> str:
        if len(self.strings) > 10_000:
            self.strings.clear()
        return self.strings.setdefault(text, text)

    def _shared_optional(self, text: str | None) -> str | None:
        return None if text is None else self._shared(text)

    def startElement(self, name: str, attrs: AttributesImpl) -> None:
        self.depth += 1
        depth = self.depth
        if depth == 1:
            if name != "HealthData":
                hint = (
                    " (export_cda.xml is the clinical document)"
                    if name == "ClinicalDocument"
                    else ""
                )
                raise HealthExportError(
                    f"root element is <{name}>, expected <HealthData>{hint}",
                    source=self.label,
                    line=self.parser.getLineNumber(),
                    column=self.parser.getColumnNumber(),
                )
            self.saw_root = True
        elif name == "Record":
            if depth == 2:
                self._record(attrs)
            elif self.correlation_depth:
                self.stats.correlation_records_skipped += 1
        elif name == "Workout" and depth == 2:
            self.workout = _PendingWorkout(dict(attrs.items()), self.parser.getLineNumber())
        elif name == "WorkoutStatistics" and depth == 3 and self.workout is not None:
            self.workout.add_statistics(attrs)
        elif name == "Correlation":
            self.correlation_depth += 1
        elif name == "ExportDate" and depth == 2:
            self.stats.export_date = attrs.get("value")

    def endElement(self, name: str) -> None:
        if name == "Correlation":
            self.correlation_depth -= 1
        elif name == "Workout" and self.depth == 2 and self.workout is not None:
            self._workout(self.workout)
            self.workout = None
        self.depth -= 1

    def _reject(self, line: int | None, element: str, hk_type: str | None, exc: InvalidField):
        self.stats.reject(RecordProblem(line, element, hk_type, exc.field, exc.message))

    def _record(self, attrs: AttributesImpl) -> None:
        hk_type = attrs.get("type") or ""
        record_type = RECORD_TYPES.get(hk_type)
        if record_type is None:
            self.stats.ignored_types[hk_type] += 1
            return
        try:
            start, end = _date(attrs, "startDate"), _date(attrs, "endDate")
            assert start is not None and end is not None
            value = _number(_required(attrs, "value"), "value")
            assert value is not None
            record = build_record(
                record_type=record_type,
                hk_type=self._shared(hk_type),
                source_name=self._shared(_required(attrs, "sourceName")),
                source_version=self._shared_optional(attrs.get("sourceVersion")),
                device=parse_device_string(attrs.get("device")),
                start=start,
                end=end,
                value=value,
                unit=self._shared(_required(attrs, "unit")),
                creation=_date(attrs, "creationDate", required=False),
                member_id=self.member_id,
            )
        except InvalidField as exc:
            self._reject(self.parser.getLineNumber(), "Record", hk_type, exc)
            return
        self.stats.kept[record_type] += 1
        self.out.append(record)

    def _workout(self, pending: _PendingWorkout) -> None:
        attrs = pending.attrs
        try:
            if pending.problem is not None:
                raise pending.problem
            start, end = _date(attrs, "startDate"), _date(attrs, "endDate")
            assert start is not None and end is not None
            distance = _number(attrs.get("totalDistance"), "totalDistance")
            distance_unit = attrs.get("totalDistanceUnit")
            energy = _number(attrs.get("totalEnergyBurned"), "totalEnergyBurned")
            energy_unit = attrs.get("totalEnergyBurnedUnit")
            # iOS 16+ moved the totals from attributes into <WorkoutStatistics> children.
            if distance is None and pending.distance_km is not None:
                distance, distance_unit = pending.distance_km, "km"
            if energy is None and pending.energy_kcal is not None:
                energy, energy_unit = pending.energy_kcal, "kcal"
            workout = build_workout(
                activity_type=attrs.get("workoutActivityType") or "",
                source_name=self._shared(_required(attrs, "sourceName")),
                source_version=self._shared_optional(attrs.get("sourceVersion")),
                device=parse_device_string(attrs.get("device")),
                start=start,
                end=end,
                duration=_number(attrs.get("duration"), "duration"),
                duration_unit=attrs.get("durationUnit"),
                total_distance=distance,
                total_distance_unit=distance_unit,
                total_energy=energy,
                total_energy_unit=energy_unit,
                creation=_date(attrs, "creationDate", required=False),
                member_id=self.member_id,
            )
        except InvalidField as exc:
            self._reject(pending.line, "Workout", WORKOUT_TYPE, exc)
            return
        self.stats.kept["workout"] += 1
        self.out.append(workout)


# -- bytes ----------------------------------------------------------------------------------


def _line_of(buffer: bytes, index: int) -> int:
    return buffer.count(b"\n", 0, index) + 1


def _check_internal_subset(buffer: bytes, start: int, end: int, label: str) -> None:
    subset = _COMMENT.sub(lambda m: m.group(0).translate(_BLANK), buffer[start:end])
    entity = _ENTITY_DECL.search(subset)
    if entity is not None:
        name = entity.group(1).decode("utf-8", "replace")
        external = _EXTERNAL_ID.search(entity.group(2))
        what = f" pointing at {external.group(0).decode('utf-8', 'replace')}" if external else ""
        raise HealthExportError(
            f"the DTD declares entity {name!r}{what}; entity declarations are refused "
            "(entity expansion and external entities)",
            source=label,
            line=_line_of(buffer, start + entity.start()),
        )


def _doctype_end(buffer: bytes, start: int, label: str) -> int | None:
    """Index just past the DOCTYPE declaration at `start`; None when more bytes are needed."""
    name = _DOCTYPE_NAME.match(buffer, start + len(b"<!DOCTYPE"))
    if name is None or name.end() >= len(buffer):
        return None
    at = name.end()
    if buffer.startswith((b"SYSTEM", b"PUBLIC"), at):
        external = _EXTERNAL_ID.match(buffer, at)
        reference = external.group(0).decode("utf-8", "replace") if external else "SYSTEM"
        raise HealthExportError(
            f"the DOCTYPE refers to an external DTD ({reference}); refused",
            source=label,
            line=_line_of(buffer, start),
        )
    if buffer[at : at + 1] == b">":
        return at + 1
    if buffer[at : at + 1] != b"[":
        raise HealthExportError(
            "malformed DOCTYPE declaration", source=label, line=_line_of(buffer, start)
        )
    # The subset may be malformed (iOS 16 drops a ">"), so only comments and "]>" matter.
    cursor = at + 1
    while True:
        close = buffer.find(b"]", cursor)
        comment = buffer.find(b"<!--", cursor)
        if comment != -1 and (close == -1 or comment < close):
            comment_end = buffer.find(b"-->", comment + 4)
            if comment_end == -1:
                return None
            cursor = comment_end + 3
            continue
        if close == -1:
            return None
        closing = _DOCTYPE_CLOSE.match(buffer, close)
        if closing is not None:
            _check_internal_subset(buffer, at + 1, close, label)
            return closing.end()
        if not buffer[close + 1 :].strip():
            return None
        cursor = close + 1


def _prolog_end(buffer: bytes, at_eof: bool, label: str) -> tuple[int, tuple[int, int] | None]:
    """(where the root element starts, DOCTYPE span) or raise _NeedMore."""
    pos = 3 if buffer.startswith(b"\xef\xbb\xbf") else 0
    doctype: tuple[int, int] | None = None
    while True:
        while pos < len(buffer) and buffer[pos] in b" \t\r\n":
            pos += 1
        if not at_eof and len(buffer) - pos < 16:
            raise _NeedMore
        if pos >= len(buffer):
            return pos, doctype
        if buffer[pos] != 0x3C:  # "<"
            raise HealthExportError(
                f"not an XML document (it starts with {buffer[pos : pos + 12]!r})",
                source=label,
                line=_line_of(buffer, pos),
            )
        if buffer.startswith(b"<?", pos) or buffer.startswith(b"<!--", pos):
            closer = b"?>" if buffer[pos + 1] == 0x3F else b"-->"
            end = buffer.find(closer, pos + 2)
            if end == -1:
                if at_eof:
                    return pos, doctype  # the parser reports the unclosed token
                raise _NeedMore
            pos = end + len(closer)
        elif buffer.startswith(b"<!DOCTYPE", pos):
            end = _doctype_end(buffer, pos, label)
            if end is None:
                if at_eof:
                    return pos, doctype
                raise _NeedMore
            doctype = (pos, end)
            pos = end
        else:
            return pos, doctype


class _NeedMore(Exception):
    pass


def _chunks(stream: BinaryIO, label: str) -> Iterator[bytes]:
    while True:
        try:
            chunk = stream.read(CHUNK_BYTES)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise HealthExportError(
                f"the file is damaged or cut short: {exc}", source=label
            ) from None
        if not chunk:
            return
        yield chunk


def _xml_bytes(stream: BinaryIO, label: str, stats: ExportStats) -> Iterator[bytes]:
    """The document's bytes, control characters removed and the DTD blanked."""

    def cleaned(chunk: bytes) -> bytes:
        kept = chunk.translate(None, _CONTROL_BYTES)
        stats.control_characters_removed += len(chunk) - len(kept)
        stats.bytes_read += len(chunk)
        return kept

    chunks = _chunks(stream, label)
    first = next(chunks, b"")
    if first.startswith((b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")):
        raise HealthExportError("the file is UTF-16; exports are UTF-8", source=label, line=1)
    if first.startswith(b"PK\x03\x04"):
        raise HealthExportError(
            "this is a zip in a stream that cannot seek; pass its path or a seekable file",
            source=label,
        )
    buffer = cleaned(first)
    at_eof = not first
    while True:
        try:
            root, doctype = _prolog_end(buffer, at_eof, label)
            break
        except _NeedMore:
            if len(buffer) > PROLOG_LIMIT:
                raise HealthExportError(
                    f"no root element in the first {PROLOG_LIMIT >> 20} MiB "
                    "(a DOCTYPE or comment that never ends?)",
                    source=label,
                ) from None
            more = next(chunks, b"")
            at_eof = not more
            buffer += cleaned(more)
    if root >= len(buffer) and at_eof:
        raise HealthExportError("the file is empty (no XML element)", source=label)
    if doctype is not None:
        start, end = doctype
        buffer = buffer[:start] + buffer[start:end].translate(_BLANK) + buffer[end:]
    yield buffer
    del buffer
    for chunk in chunks:
        yield cleaned(chunk)


# -- sources --------------------------------------------------------------------------------


def _zip_member(archive: zipfile.ZipFile, label: str) -> zipfile.ZipInfo:
    infos = {info.filename: info for info in archive.infolist() if not info.is_dir()}
    for name in ZIP_MEMBERS:
        if name in infos:
            return infos[name]
    shown = ", ".join(sorted(infos)[:8]) or "nothing"
    raise HealthExportError(
        f"the zip has no {' or '.join(ZIP_MEMBERS)} (it holds {shown})", source=label
    )


@contextlib.contextmanager
def _opened(source: Path | str | BinaryIO) -> Iterator[tuple[BinaryIO, str]]:
    with contextlib.ExitStack() as stack:
        if isinstance(source, str | Path):
            path = Path(source)
            if path.is_dir():
                candidates = [path / "export.xml", path / "apple_health_export" / "export.xml"]
                found = next((c for c in candidates if c.is_file()), None)
                if found is None:
                    raise HealthExportError("the folder has no export.xml", source=str(path))
                path = found
            if path.exists() and not path.is_file():
                # a FIFO or a device: opening it waits for a writer that may never come
                raise HealthExportError("not a regular file", source=str(path))
            try:
                stream: BinaryIO = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                raise HealthExportError(f"cannot open: {exc.strerror}", source=str(path)) from None
            label = path.name
        else:
            stream, label = source, str(getattr(source, "name", None) or "<stream>")
        seekable = stream.seekable()
        head = stream.read(4) if seekable else b""
        if seekable:
            stream.seek(-len(head), 1)
        if head.startswith(b"PK"):
            try:
                archive = stack.enter_context(zipfile.ZipFile(stream))
                info = _zip_member(archive, label)
                member_label = f"{label}!{info.filename}"
                stream = stack.enter_context(archive.open(info))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
                raise HealthExportError(f"not a readable zip: {exc}", source=label) from None
            except RuntimeError as exc:  # encrypted member
                raise HealthExportError(
                    f"cannot open the zip member: {exc}", source=label
                ) from None
            label = member_label
        yield stream, label


def _feed(parser: DefusedExpatParser, chunk: bytes, label: str) -> None:
    try:
        parser.feed(chunk)
    except SAXParseException as exc:
        raise HealthExportError(
            f"not well-formed XML: {exc.getMessage()}",
            source=label,
            line=exc.getLineNumber(),
            column=exc.getColumnNumber(),
        ) from None
    except DefusedXmlException as exc:
        raise HealthExportError(
            f"the hardened XML parser refused it: {exc}",
            source=label,
            line=parser.getLineNumber(),
            column=parser.getColumnNumber(),
        ) from None


def iter_export_records(
    source: Path | str | BinaryIO,
    member_id: str | None = None,
    *,
    stats: ExportStats | None = None,
) -> Iterator[HealthRecord | Workout]:
    """Step, body mass, blood glucose and workout records of an export, as they are read.

    `source` is export.xml, the export zip, an unzipped export folder, or an open binary
    file of either. Raises HealthExportError when the file is unreadable, hostile or cut
    short: records yielded before that point came from a file that did not parse to the end,
    so a caller must treat the whole read as failed. `stats` (optional) is filled in as
    records are read; `stats.completed` turns True only at the end of a good document.
    """
    stats = stats if stats is not None else ExportStats()
    with _opened(source) as (stream, label):
        stats.source = label
        parser = DefusedExpatParser(forbid_dtd=False, forbid_entities=True, forbid_external=True)
        handler = _ExportHandler(parser, stats, member_id, label)
        parser.setContentHandler(handler)
        for chunk in _xml_bytes(stream, label, stats):
            _feed(parser, chunk, label)
            if handler.out:
                out, handler.out = handler.out, []
                yield from out
        try:
            parser.close()
        except SAXParseException as exc:
            raise HealthExportError(
                f"the file ends before the XML document does (truncated?): {exc.getMessage()}",
                source=label,
                line=exc.getLineNumber(),
                column=exc.getColumnNumber(),
            ) from None
        if not handler.saw_root:
            raise HealthExportError("no <HealthData> element", source=label)
        yield from handler.out
        stats.completed = True


def parse_export_to_batches(
    source: Path | str | BinaryIO,
    batch_size: int = 50_000,
    *,
    member_id: str | None = None,
    stats: ExportStats | None = None,
) -> Iterator[pa.Table]:
    """iter_export_records as Arrow tables of at most `batch_size` rows (EXPORT_SCHEMA).

    On HealthExportError the rows not yet yielded are dropped with the error: the caller
    discards the load as a whole.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    # Rows go to Arrow every few thousand records: a batch of Python objects costs ~5x its
    # columnar size, and a table made of several record batches is still one table.
    step = min(batch_size, _ARROW_STEP)
    pending: list[HealthRecord | Workout] = []
    done: list[pa.RecordBatch] = []
    rows = 0
    for record in iter_export_records(source, member_id, stats=stats):
        pending.append(record)
        if len(pending) == step or rows + len(pending) == batch_size:
            done.extend(records_to_table(pending).to_batches())
            rows += len(pending)
            pending = []
            if rows == batch_size:
                yield pa.Table.from_batches(done, schema=EXPORT_SCHEMA)
                done, rows = [], 0
    if pending:
        done.extend(records_to_table(pending).to_batches())
    if done:
        yield pa.Table.from_batches(done, schema=EXPORT_SCHEMA)

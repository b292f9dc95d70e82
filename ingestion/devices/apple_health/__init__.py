"""Apple Health: the Health app's export (export.xml / zip) and the member app's HealthKit uploads.

Apple has no server API. Data arrives either as an export the member hands over, read by
`iter_export_records` / `parse_export_to_batches`, or as batches the member app uploads from
HealthKit, checked here by `parse_upload_batch` (pure: the HTTP layer calls it). Both give
rows with the same canonical columns (EXPORT_SCHEMA), so dbt treats them alike.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ingestion.devices.apple_health.device_string import (
    DeviceInfo,
    device_from_mapping,
    parse_device_string,
)
from ingestion.devices.apple_health.export_xml import (
    EXPORT_SCHEMA,
    RECORD_TYPES,
    WORKOUT_TYPE,
    ExportStats,
    HealthExportError,
    HealthRecord,
    InvalidField,
    RecordProblem,
    Workout,
    build_record,
    build_workout,
    iter_export_records,
    natural_key,
    parse_export_to_batches,
    records_to_table,
)

__all__ = [
    "EXPORT_SCHEMA",
    "UPLOAD_SCHEMA",
    "DeviceInfo",
    "ExportStats",
    "HealthExportError",
    "HealthRecord",
    "RecordProblem",
    "UploadBatch",
    "UploadPayloadError",
    "UploadProblem",
    "Workout",
    "iter_export_records",
    "natural_key",
    "parse_device_string",
    "parse_export_to_batches",
    "parse_upload_batch",
    "records_to_table",
]

UPLOAD_TYPES = {**RECORD_TYPES, WORKOUT_TYPE: "workout"}
UPLOAD_SCHEMA = (
    EXPORT_SCHEMA.append(pa.field("uuid", pa.string(), nullable=False))
    .append(pa.field("sync_identifier", pa.string()))
    .append(pa.field("sync_version", pa.int64()))
)


class UploadPayloadError(ValueError):
    """The upload as a whole has the wrong shape (the API answers 400)."""


@dataclass(frozen=True, slots=True)
class UploadProblem:
    """Sample `index` of `samples` (or of `deleted` when field is "deleted") was left out."""

    index: int
    field: str
    message: str


@dataclass
class UploadBatch:
    rows: list[dict[str, Any]] = field(default_factory=list)  # UPLOAD_SCHEMA columns
    deleted_uuids: list[str] = field(default_factory=list)
    problems: list[UploadProblem] = field(default_factory=list)

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=UPLOAD_SCHEMA)


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidField("uuid", "must be a string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidField("uuid", f"{value!r} is not a UUID") from None


def _iso_datetime(sample: dict[str, Any], name: str) -> dt.datetime:
    value = sample.get(name)
    if not isinstance(value, str):
        raise InvalidField(name, "must be an ISO 8601 date-time string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField(name, f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.utcoffset() is None:
        raise InvalidField(name, f"{value!r} has no UTC offset")
    return parsed


def _json_number(sample: dict[str, Any], name: str, required: bool = True) -> float | None:
    value = sample.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(name, "must be a number")
    if not math.isfinite(value):
        raise InvalidField(name, "must be finite")
    return float(value)


def _text(sample: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = sample.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(name, "must be a non-empty string")
    return value


def _source(sample: dict[str, Any]) -> tuple[str, str | None]:
    source = sample.get("source")
    if isinstance(source, dict):  # HKSourceRevision as {"name", "version"}
        name = source.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidField("source.name", "must be a non-empty string")
        version = source.get("version")
        return name, str(version) if version is not None else None
    name = _text(sample, "source")
    assert name is not None
    return name, _text(sample, "source_version", required=False)


def _device(sample: dict[str, Any]) -> DeviceInfo | None:
    device = sample.get("device")
    if device is None:
        return None
    if isinstance(device, dict):
        return device_from_mapping(device)
    if isinstance(device, str):
        return parse_device_string(device)
    raise InvalidField("device", "must be an object, an HKDevice description or null")


def _sync(sample: dict[str, Any]) -> tuple[str | None, int | None]:
    identifier = _text(sample, "sync_identifier", required=False)
    version = sample.get("sync_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidField("sync_version", "must be an integer")
    if identifier is not None and version is None:
        # HealthKit itself refuses a sync identifier without a version.
        raise InvalidField("sync_version", "is required with sync_identifier")
    return identifier, version


def _sample_row(sample: dict[str, Any], member_id: str | None) -> dict[str, Any]:
    hk_type = sample.get("type")
    record_type = UPLOAD_TYPES.get(hk_type) if isinstance(hk_type, str) else None
    if record_type is None:
        raise InvalidField("type", f"{hk_type!r} is not an accepted type")
    sample_uuid = _uuid(sample.get("uuid"))
    start, end = _iso_datetime(sample, "start"), _iso_datetime(sample, "end")
    value = _json_number(sample, "value")
    unit = _text(sample, "unit")
    assert value is not None and unit is not None
    source_name, source_version = _source(sample)
    device = _device(sample)
    sync_identifier, sync_version = _sync(sample)
    try:
        record: HealthRecord | Workout
        if record_type == "workout":
            record = build_workout(
                activity_type=_text(sample, "workout_activity_type") or "",
                source_name=source_name,
                source_version=source_version,
                device=device,
                start=start,
                end=end,
                duration=value,
                duration_unit=unit,
                total_distance=_json_number(sample, "total_distance", required=False),
                total_distance_unit=_text(sample, "total_distance_unit", required=False),
                total_energy=_json_number(sample, "total_energy_burned", required=False),
                total_energy_unit=_text(sample, "total_energy_burned_unit", required=False),
                member_id=member_id,
            )
        else:
            record = build_record(
                record_type=record_type,
                hk_type=hk_type,
                source_name=source_name,
                source_version=source_version,
                device=device,
                start=start,
                end=end,
                value=value,
                unit=unit,
                member_id=member_id,
            )
    except InvalidField as exc:
        # The shared builders speak the export's attribute names; answer in the upload's.
        names = {
            "startDate": "start",
            "endDate": "end",
            "sourceName": "source",
            "durationUnit": "unit",
            "duration": "value",
            "workoutActivityType": "workout_activity_type",
            "totalDistance": "total_distance",
            "totalDistanceUnit": "total_distance_unit",
            "totalEnergyBurned": "total_energy_burned",
            "totalEnergyBurnedUnit": "total_energy_burned_unit",
        }
        raise InvalidField(names.get(exc.field, exc.field), exc.message) from None
    row = record.to_row()
    row.update(uuid=sample_uuid, sync_identifier=sync_identifier, sync_version=sync_version)
    return row


def parse_upload_batch(payload: dict[str, Any], member_id: str | None = None) -> UploadBatch:
    """Validate one upload from the member app and normalize it to UPLOAD_SCHEMA rows.

    payload: {"samples": [{"uuid", "type", "start", "end", "value", "unit", "source",
    "device", "sync_identifier"?, "sync_version"?}], "deleted": [uuid, ...]}, date-times in
    ISO 8601 with an offset. Workouts (type HKWorkoutTypeIdentifier) carry their duration as
    value/unit plus "workout_activity_type" and optional "total_distance"(+"_unit") and
    "total_energy_burned"(+"_unit"). A bad sample becomes an UploadProblem and the rest are
    kept; a payload of the wrong shape raises UploadPayloadError.
    """
    if not isinstance(payload, dict):
        raise UploadPayloadError("the upload must be a JSON object")
    samples = payload.get("samples", [])
    deleted = payload.get("deleted", [])
    if not isinstance(samples, list):
        raise UploadPayloadError("'samples' must be a list")
    if not isinstance(deleted, list):
        raise UploadPayloadError("'deleted' must be a list")
    batch = UploadBatch()
    first_index: dict[str, int] = {}
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            batch.problems.append(UploadProblem(index, "sample", "must be an object"))
            continue
        try:
            row = _sample_row(sample, member_id)
        except InvalidField as exc:
            batch.problems.append(UploadProblem(index, exc.field, exc.message))
            continue
        seen = first_index.setdefault(row["uuid"], index)
        if seen != index:
            batch.problems.append(
                UploadProblem(index, "uuid", f"repeats the sample at index {seen}")
            )
            continue
        batch.rows.append(row)
    for index, value in enumerate(deleted):
        try:
            batch.deleted_uuids.append(_uuid(value))
        except InvalidField as exc:
            batch.problems.append(UploadProblem(index, "deleted", exc.message))
    batch.deleted_uuids = list(dict.fromkeys(batch.deleted_uuids))
    return batch

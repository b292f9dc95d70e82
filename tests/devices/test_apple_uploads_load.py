"""HealthKit uploads from the API's inbox into raw_apple_health.samples, with HealthKit's
deletion and sync-version rules, against a real Postgres and a real dlt pipeline."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from ingestion.devices.apple_health import uploads
from ingestion.devices.apple_health.load import import_export
from ingestion.devices.apple_health.uploads import UploadLoadResult, process_pending_uploads
from mdp.database import connect
from serving.app import create_app
from serving.apple_upload import UPLOAD_PATH
from serving.member_tokens import issue_member_token

KEY = "member-token-key-for-load-tests"
IPHONE = (
    "<<HKDevice: 0x281d4e260>, name:iPhone, manufacturer:Apple Inc., model:iPhone, "
    "hardware:iPhone12,8, software:16.5>"
)


def sample(**overrides: Any) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()).upper(),
        "type": "HKQuantityTypeIdentifierStepCount",
        "start": "2026-03-01T08:00:00.250-05:00",
        "end": "2026-03-01T08:10:00.750-05:00",
        "value": 412,
        "unit": "count",
        "source": "iPhone",
        "device": {
            "name": "iPhone",
            "manufacturer": "Apple Inc.",
            "model": "iPhone",
            "hardware": "iPhone12,8",
            "software": "16.5",
        },  # fmt: skip
        **overrides,
    }


def versioned(version: int, sync_id: str, **overrides: Any) -> dict[str, Any]:
    return sample(sync_identifier=sync_id, sync_version=version, **overrides)


@pytest.fixture
def client(platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MDP_MEMBER_TOKEN_KEY", KEY)
    with TestClient(create_app(params=platform.params, partner_configs={})) as test_client:
        yield test_client


@pytest.fixture
def member() -> str:
    """A member of its own per test: the database lives for the whole module."""
    return f"member-apple-{uuid.uuid4().hex[:8]}"


def upload(client: TestClient, member_id: str, body: dict[str, Any]) -> dict[str, Any]:
    token = issue_member_token(member_id, key=KEY)
    response = client.post(UPLOAD_PATH, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202, response.text
    return response.json()


def process(platform) -> UploadLoadResult:
    return process_pending_uploads(platform.params, platform.settings.state_dir / "dlt")


def stored(platform, member_id: str) -> list[dict[str, Any]]:
    columns = ("uuid", "sync_identifier", "sync_version", "value", "start_at", "natural_key")
    rows = platform.query(
        f"select {', '.join(columns)} from raw_apple_health.samples"
        " where member_id = %s order by start_at, uuid",
        (member_id,),
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def pending(platform) -> int:
    return platform.query(
        "select count(*) from devices.apple_upload_inbox where processed_at is null"
    )[0][0]


def test_uploaded_samples_are_loaded_once(platform, client: TestClient, member: str) -> None:
    steps = sample()
    weight = sample(
        type="HKQuantityTypeIdentifierBodyMass", value=176.4, unit="lb", start="2026-03-01T07:00:00Z",
        end="2026-03-01T07:00:00Z", sync_identifier="scale-1", sync_version=1,
    )  # fmt: skip
    body = {"samples": [steps, weight]}
    assert upload(client, member, body)["accepted"] == 2

    result = process(platform)
    assert result.batches >= 1 and result.samples_loaded >= 2
    rows = stored(platform, member)
    assert [r["uuid"] for r in rows] == [weight["uuid"].lower(), steps["uuid"].lower()]
    assert rows[0]["sync_identifier"] == "scale-1" and rows[0]["sync_version"] == 1
    assert rows[0]["value"] == pytest.approx(80.01, abs=0.01)  # kg
    assert pending(platform) == 0

    assert process(platform) == UploadLoadResult()
    assert upload(client, member, body)["duplicate"] is True
    # the same samples in another batch merge on their natural key
    upload(client, member, {"samples": [steps, weight, sample(start="2026-03-01T09:00:00Z",
                                                               end="2026-03-01T09:05:00Z")]})  # fmt: skip
    process(platform)
    assert len(stored(platform, member)) == 3


def test_a_deleted_uuid_removes_its_sample(platform, client: TestClient, member: str) -> None:
    kept, gone = sample(), sample(start="2026-03-02T08:00:00Z", end="2026-03-02T08:10:00Z")
    upload(client, member, {"samples": [kept, gone]})
    process(platform)
    assert len(stored(platform, member)) == 2

    upload(client, member, {"deleted": [gone["uuid"]]})
    result = process(platform)
    assert result.deletions == 1
    assert [r["uuid"] for r in stored(platform, member)] == [kept["uuid"].lower()]
    assert process(platform).deletions == 0


def test_a_deletion_processed_before_its_sample_keeps_the_sample_out(
    platform, client: TestClient, member: str
) -> None:
    late = sample()
    upload(client, member, {"deleted": [late["uuid"]]})
    process(platform)
    upload(client, member, {"samples": [late, sample(start="2026-03-03T08:00:00Z",
                                                     end="2026-03-03T08:01:00Z")]})  # fmt: skip
    result = process(platform)
    assert result.dropped_deleted == 1
    assert late["uuid"].lower() not in {r["uuid"] for r in stored(platform, member)}
    assert len(stored(platform, member)) == 1


def test_a_sample_added_and_deleted_in_one_run_is_not_loaded(
    platform, client: TestClient, member: str
) -> None:
    brief = sample()
    upload(client, member, {"samples": [brief]})
    upload(client, member, {"deleted": [brief["uuid"]]})
    process(platform)
    assert stored(platform, member) == []


def test_a_higher_sync_version_replaces_and_a_late_lower_one_does_not(
    platform, client: TestClient, member: str
) -> None:
    v1 = versioned(1, "walk-7", start="2026-03-04T08:00:00Z", end="2026-03-04T08:10:00Z")
    v2 = versioned(2, "walk-7", start="2026-03-04T08:00:00Z", end="2026-03-04T08:20:00Z")
    upload(client, member, {"samples": [v1]})
    process(platform)
    upload(client, member, {"samples": [v2]})
    process(platform)
    assert [(r["uuid"], r["sync_version"]) for r in stored(platform, member)] == [
        (v2["uuid"].lower(), 2)
    ]

    # v1 again, late (a retried batch): the newer version stays
    upload(client, member, {"samples": [v1], "note": "retry"})
    result = process(platform)
    assert result.superseded == 1 and result.samples_loaded == 0
    assert [r["sync_version"] for r in stored(platform, member)] == [2]

    # a new version with the same natural key replaces the values; the late old one cannot
    v3 = {**versioned(3, "walk-7", value=999), "start": v2["start"], "end": v2["end"]}
    upload(client, member, {"samples": [v3]})
    process(platform)
    upload(client, member, {"samples": [v2], "note": "retry"})
    process(platform)
    assert [(r["sync_version"], r["value"]) for r in stored(platform, member)] == [(3, 999.0)]


def test_versions_arriving_out_of_order_in_one_run_keep_the_highest(
    platform, client: TestClient, member: str
) -> None:
    v2 = versioned(2, "glucose-1", start="2026-03-05T08:00:00Z", end="2026-03-05T08:00:00Z")
    v1 = versioned(1, "glucose-1", start="2026-03-05T07:59:00Z", end="2026-03-05T07:59:00Z")
    upload(client, member, {"samples": [v2]})
    upload(client, member, {"samples": [v1]})
    process(platform)
    assert [r["sync_version"] for r in stored(platform, member)] == [2]


def _export_with_one_record(path: Path) -> Path:
    record = (
        '<Record type="HKQuantityTypeIdentifierStepCount" sourceName="iPhone"'
        f' sourceVersion="16.5" device="{IPHONE.replace("<", "&lt;").replace(">", "&gt;")}"'
        ' unit="count" creationDate="2026-03-01 08:10:00 -0500"'
        ' startDate="2026-03-01 08:00:00 -0500" endDate="2026-03-01 08:10:00 -0500"'
        ' value="412"/>'
    )
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="en_US">\n'
        ' <ExportDate value="2026-03-02 09:00:00 -0500"/>\n'
        f" {record}\n</HealthData>\n"
    )
    return path


def test_an_upload_and_an_export_of_the_same_sample_are_one_row(
    platform, client: TestClient, tmp_path: Path
) -> None:
    export = _export_with_one_record(tmp_path / "export.xml")
    pipelines = platform.settings.state_dir / "dlt"

    upload_first = f"member-apple-{uuid.uuid4().hex[:8]}"
    uploaded = sample()
    upload(client, upload_first, {"samples": [uploaded]})
    process(platform)
    import_export(export, upload_first, platform.params, pipelines)
    [kept] = stored(platform, upload_first)
    assert kept["uuid"] == uploaded["uuid"].lower()  # the export did not wipe the upload's ids

    export_first = f"member-apple-{uuid.uuid4().hex[:8]}"
    import_export(export, export_first, platform.params, pipelines)
    upload(client, export_first, {"samples": [uploaded]})
    process(platform)
    [row] = stored(platform, export_first)
    assert row["uuid"] == uploaded["uuid"].lower()  # the upload's row, so a deletion finds it
    assert row["natural_key"] == stored(platform, upload_first)[0]["natural_key"]


def test_rows_stay_pending_until_the_load_is_recorded(
    platform, client: TestClient, member: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(client, member, {"samples": [sample()]})
    monkeypatch.setattr(uploads, "MARK_PROCESSED_SQL", "select no_such_function(%s)")
    with pytest.raises(Exception, match="no_such_function"):
        process(platform)
    monkeypatch.undo()
    assert pending(platform) == 1
    assert len(stored(platform, member)) == 1  # loaded before the crash

    result = process(platform)
    assert result.batches == 1
    assert pending(platform) == 0
    assert len(stored(platform, member)) == 1


def test_a_batch_that_no_longer_parses_is_skipped_and_counted(platform, member: str) -> None:
    with connect(platform.params) as conn, conn.cursor() as cur:
        cur.execute(
            "insert into devices.apple_upload_inbox (member_id, batch_key, payload)"
            " values (%s, 'hand-made', %s::jsonb)",
            (member, json.dumps(["not", "an", "upload"])),
        )
    result = process(platform)
    assert (result.batches, result.rejected, result.samples_loaded) == (1, 1, 0)
    assert pending(platform) == 0


def test_the_limit_caps_the_batches_of_one_run(platform, client: TestClient, member: str) -> None:
    for day in (10, 11, 12):
        upload(client, member, {"samples": [sample(start=f"2026-03-{day}T08:00:00Z",
                                                   end=f"2026-03-{day}T08:01:00Z")]})  # fmt: skip
    first = process_pending_uploads(platform.params, platform.settings.state_dir / "dlt", limit=2)
    assert first.batches == 2
    assert pending(platform) == 1
    assert process(platform).batches == 1
    assert len(stored(platform, member)) == 3

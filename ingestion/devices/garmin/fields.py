"""What the Garmin summary fields we load must hold, checked by the receiver and the loader.

The receiver refuses a wrongly typed item at the door; the loader checks again, since ping
pulls and rows stored before a check existed never passed the receiver. Problems name the
field and what it must be, never its value: summaries are member health data.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

INT64_MAX = 2**63 - 1
# UTC offsets run from -12 h to +14 h; a day either way keeps every local date computable
MAX_OFFSET_SECONDS = 86_400

INSTANT_FIELDS = frozenset({"startTimeInSeconds", "measurementTimeInSeconds"})
OFFSET_FIELDS = frozenset({"startTimeOffsetInSeconds", "measurementTimeOffsetInSeconds"})
INTEGER_FIELDS = frozenset({"durationInSeconds", "steps"})
NUMBER_FIELDS = frozenset(
    {
        "distanceInMeters",
        "activeKilocalories",
        "weightInGrams",
        "bodyFatInPercent",
        "bodyMassIndex",
    }
)
TEXT_FIELDS = frozenset({"activityName", "activityType"})
ID_FIELDS = frozenset({"summaryId", "activityId"})
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidSummary(ValueError):
    """A Garmin summary field with the wrong type or an impossible value."""

    def __init__(self, problem: str, field: str | None = None) -> None:
        super().__init__(f"'{field}' {problem}" if field else problem)
        self.field = field


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def utc_instant(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _check_field(name: str, value: Any) -> None:
    if name in INSTANT_FIELDS:
        if not _is_int(value):
            raise InvalidSummary("must be whole Unix seconds", name)
        try:
            utc_instant(value)
        except (OverflowError, OSError, ValueError):
            raise InvalidSummary("is not a representable time", name) from None
    elif name in OFFSET_FIELDS:
        if not _is_int(value) or abs(value) > MAX_OFFSET_SECONDS:
            raise InvalidSummary(f"must be whole seconds within ±{MAX_OFFSET_SECONDS}", name)
    elif name in INTEGER_FIELDS:
        if not _is_int(value) or abs(value) > INT64_MAX:
            raise InvalidSummary("must be a whole number", name)
    elif name in NUMBER_FIELDS:
        if not _is_number(value):
            raise InvalidSummary("must be a finite number", name)
    elif name in TEXT_FIELDS:
        if not isinstance(value, str):
            raise InvalidSummary("must be a string", name)
    elif name in ID_FIELDS:
        if not (isinstance(value, str) or _is_int(value)):
            raise InvalidSummary("must be a string or an integer", name)
    elif name == "calendarDate":
        if not (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
            raise InvalidSummary("must be a YYYY-MM-DD date", name)
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise InvalidSummary("is not a calendar date", name) from None


def check_summary(item: Mapping[str, Any]) -> None:
    """Raise InvalidSummary for the first field we load that holds the wrong type.

    Absent and null fields pass (they load as NULL); fields we do not load are not checked.
    """
    for name, value in item.items():
        if value is not None:
            _check_field(name, value)

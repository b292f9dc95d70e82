"""Deterministic synthetic device data: what a member's tracker and scale recorded on a day.

Every value is a pure function of (user id, day[, revision]) through a keyed hash, never of
global random state, so the Fitbit and Garmin emulators, the tests and the benchmarks agree on
what a member walked on a given day without sharing anything but the ids. Days are the
member's local calendar days; times are member-local wall-clock times.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from typing import Literal, NamedTuple

US_TIMEZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
)
# roughly where US members live: most in Eastern and Central time
_TIMEZONE_WEIGHTS = (0.40, 0.27, 0.07, 0.22, 0.02, 0.02)

STEPS_MIN = 2_000
STEPS_MAX = 15_000
WEIGHT_MIN_KG = 60.0
WEIGHT_MAX_KG = 120.0
KG_PER_LB = 0.45359237

_EPOCH = dt.date(2020, 1, 1)

Units = Literal["lb", "kg"]


class WeightReading(NamedTuple):
    """One scale reading: member-local time of day and weight in kilograms (0.1 kg steps)."""

    local_time: dt.time
    kg: float


class Workout(NamedTuple):
    """One logged workout; `start` is member-local, `steps` are part of the day's total."""

    name: str
    start: dt.time
    duration_ms: int
    steps: int
    calories: int
    distance_m: float
    fitbit_activity_type_id: int
    garmin_activity_type: str


# name, Fitbit activityTypeId, Garmin activityType, steps per minute, kcal per minute, m per minute
_WORKOUT_KINDS = (
    ("Walk", 90013, "WALKING", 105, 4.5, 85.0),
    ("Run", 90009, "RUNNING", 160, 11.0, 170.0),
    ("Bike", 90001, "CYCLING", 0, 8.0, 330.0),
    ("Hike", 90012, "HIKING", 95, 6.5, 60.0),
    ("Elliptical", 20047, "ELLIPTICAL", 120, 8.5, 0.0),
    ("Yoga", 52001, "YOGA", 0, 3.0, 0.0),
    ("Weights", 2050, "STRENGTH_TRAINING", 0, 5.0, 0.0),
)


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined by `parts` alone."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _between(low: float, high: float, *parts: object) -> float:
    return low + (high - low) * _unit(*parts)


def stable_int(*parts: object, digits: int = 10) -> int:
    """A deterministic positive integer with exactly `digits` digits (ids such as logId)."""
    low = 10 ** (digits - 1)
    return low + int(_unit("id", *parts) * (10**digits - low))


@functools.lru_cache(maxsize=65_536)
def user_timezone(user_id: str) -> str:
    """The member's IANA time zone, one of US_TIMEZONES."""
    point = _unit("timezone", user_id)
    for zone, weight in zip(US_TIMEZONES, _TIMEZONE_WEIGHTS, strict=True):
        if point < weight:
            return zone
        point -= weight
    return US_TIMEZONES[-1]


@functools.lru_cache(maxsize=65_536)
def user_units(user_id: str) -> Units:
    """The member's preferred weight unit (most US members choose pounds)."""
    return "lb" if _unit("units", user_id) < 0.8 else "kg"


@functools.lru_cache(maxsize=65_536)
def user_height_m(user_id: str) -> float:
    return round(_between(1.52, 1.93, "height", user_id), 2)


@functools.lru_cache(maxsize=65_536)
def _step_profile(user_id: str) -> tuple[float, float]:
    """(weekday base steps, weekend multiplier): some members walk more at weekends, some less."""
    return _between(4_500, 10_500, "steps-base", user_id), _between(0.7, 1.35, "weekend", user_id)


def daily_steps(user_id: str, day: dt.date, revision: int = 0) -> int:
    """Steps for a whole local day, between 2,000 and 15,000.

    Revision r > 0 is what the device reports after r later syncs: it differs from revision
    r - 1 (usually more steps, wrapping inside the range near the top).
    """
    base, weekend = _step_profile(user_id)
    value = base * (weekend if day.weekday() >= 5 else 1.0)
    value *= 1.0 + 0.08 * math.sin(2 * math.pi * (day.toordinal() % 365) / 365)  # seasons
    value *= _between(0.75, 1.25, "steps-noise", user_id, day)
    if _unit("sick-day", user_id, day) < 0.04:
        value = _between(STEPS_MIN, 3_500, "sick-steps", user_id, day)
    steps = min(STEPS_MAX, max(STEPS_MIN, round(value)))
    span = STEPS_MAX - STEPS_MIN + 1
    for r in range(1, revision + 1):
        steps = (
            STEPS_MIN
            + (steps - STEPS_MIN + round(_between(25, 1_500, "rev", user_id, day, r))) % span
        )
    return steps


@functools.lru_cache(maxsize=65_536)
def _weight_profile(user_id: str) -> tuple[float, float, float, float]:
    """(base kg, slow drift amplitude kg, seasonal swing kg, share of days weighed)."""
    target_bmi = _between(21.0, 35.0, "bmi", user_id)
    return (
        min(116.0, max(64.0, target_bmi * user_height_m(user_id) ** 2)),
        _between(0.5, 2.5, "weight-drift", user_id),
        _between(0.3, 1.2, "weight-swing", user_id),
        _between(0.15, 0.9, "weigh-days", user_id),
    )


def weight_kg(user_id: str, day: dt.date) -> float:
    """The member's true weight on `day` (readings scatter around it)."""
    base, drift_kg, swing, _ = _weight_profile(user_id)
    years = (day - _EPOCH).days / 365.25
    # a multi-year wave rather than a trend, so members stay inside 60-120 kg forever
    drift = drift_kg * math.sin(2 * math.pi * years / _between(3, 6, "drift-years", user_id))
    season = swing * math.sin(2 * math.pi * years + _between(0, 6.28, "weight-phase", user_id))
    return base + drift + season


def weight_readings(user_id: str, day: dt.date) -> list[WeightReading]:
    """Scale readings on `day`: none on many days, one on most others, sometimes two."""
    *_, weigh_share = _weight_profile(user_id)
    if _unit("weighed", user_id, day) >= weigh_share:
        return []
    times = [_local_time(5 * 3600 + 1800, 9 * 3600 + 1800, "weigh-am", user_id, day)]
    if _unit("weighed-twice", user_id, day) < 0.1:
        times.append(_local_time(18 * 3600, 22 * 3600, "weigh-pm", user_id, day))
    truth = weight_kg(user_id, day)
    readings = []
    for index, at in enumerate(times):
        kg = truth + _between(-0.4, 0.4, "weigh-noise", user_id, day, index) + 0.3 * index
        kg = min(WEIGHT_MAX_KG, max(WEIGHT_MIN_KG, kg))
        readings.append(WeightReading(at, round(kg, 1)))
    return readings


def bmi(user_id: str, kg: float) -> float:
    return round(kg / user_height_m(user_id) ** 2, 2)


def body_fat_percent(user_id: str, kg: float) -> float:
    """A smart scale's body-fat estimate, loosely tied to BMI."""
    return round(max(8.0, min(45.0, 1.2 * bmi(user_id, kg) - 4.0)) + _unit("fat", user_id), 1)


def activities(user_id: str, day: dt.date) -> list[Workout]:
    """Workouts on `day` (0 to 2), morning then evening, never overlapping."""
    roll = _unit("workouts", user_id, day)
    count = 0 if roll < 0.45 else 1 if roll < 0.85 else 2
    windows = ((6 * 3600, 9 * 3600), (17 * 3600, 20 * 3600))
    if count == 1 and _unit("evening", user_id, day) < 0.5:
        windows = windows[1:]
    day_steps = daily_steps(user_id, day)
    workouts = []
    for index, (earliest, latest) in enumerate(windows[:count]):
        name, fitbit_type, garmin_type, spm, kcal_pm, m_pm = _WORKOUT_KINDS[
            int(_unit("kind", user_id, day, index) * len(_WORKOUT_KINDS))
        ]
        minutes = round(_between(15, 90, "minutes", user_id, day, index))
        steps = min(round(spm * minutes * _between(0.85, 1.1, "spm", user_id, day)), day_steps // 2)
        workouts.append(
            Workout(
                name=name,
                start=_local_time(earliest, latest, "start", user_id, day, index),
                duration_ms=minutes * 60_000 + round(_between(0, 59, "sec", user_id, day)) * 1000,
                steps=steps,
                calories=round(kcal_pm * minutes * _between(0.8, 1.2, "kcal", user_id, day)),
                distance_m=round(m_pm * minutes * _between(0.85, 1.15, "m", user_id, day), 1),
                fitbit_activity_type_id=fitbit_type,
                garmin_activity_type=garmin_type,
            )
        )
    return workouts


def _local_time(earliest_s: int, latest_s: int, *parts: object) -> dt.time:
    seconds = int(_between(earliest_s, latest_s, *parts))
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)

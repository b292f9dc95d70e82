"""HealthKit unit strings to the platform's canonical units.

Canonical units: steps `count`, body mass `kg`, blood glucose `mg/dL`, workout duration
`min`, workout distance `km`, workout energy `kcal`. Unit strings are HKUnit's own spelling
(`lb`, `mmol<180.15588000005408>/L`, `kJ`, ...), which is what both the export and the app send.
"""

from __future__ import annotations

import math
import re

POUND_KG = 0.45359237  # exact, by the 1959 international yard and pound agreement
STONE_KG = 14 * POUND_KG
OUNCE_KG = POUND_KG / 16
GLUCOSE_MOLAR_MASS = 180.15588000005408  # g/mol, the value HealthKit writes into the unit string
KCAL_PER_KJ = 1 / 4.184  # thermochemical calorie, HealthKit's definition

CANONICAL_UNITS = {
    "steps": "count",
    "weight": "kg",
    "blood_glucose": "mg/dL",
    "workout": "min",
}

_MASS_KG = {"kg": 1.0, "g": 0.001, "lb": POUND_KG, "oz": OUNCE_KG, "st": STONE_KG}
_DURATION_MIN = {"min": 1.0, "s": 1 / 60, "ms": 1 / 60_000, "hr": 60.0, "h": 60.0, "d": 1440.0}
_DISTANCE_KM = {
    "km": 1.0,
    "m": 0.001,
    "cm": 0.00001,
    "mi": 1.609344,
    "yd": 0.0009144,
    "ft": 0.0003048,
}
_ENERGY_KCAL = {"kcal": 1.0, "Cal": 1.0, "cal": 0.001, "kJ": KCAL_PER_KJ, "J": KCAL_PER_KJ / 1000}
# mmol<180.15588000005408>/L: HKUnit writes the molar mass (g/mol) between angle brackets.
_MOLAR_UNIT = re.compile(r"mmol(?:<([^<>]+)>)?/L")


class UnitError(ValueError):
    """A unit we cannot convert for the record type, or a value that is not a finite number."""


def molar_mass(unit: str) -> float | None:
    """The molar mass in g/mol written in `mmol<M>/L`; None when the unit carries none."""
    match = _MOLAR_UNIT.fullmatch(unit.strip())
    if match is None or match.group(1) is None:
        return None
    try:
        mass = float(match.group(1))
    except ValueError:
        raise UnitError(f"molar mass {match.group(1)!r} in unit {unit!r} is not a number") from None
    if not (math.isfinite(mass) and mass > 0):
        raise UnitError(f"molar mass in unit {unit!r} must be a positive number")
    return mass


def glucose_mg_dl(value: float, unit: str) -> float:
    unit = unit.strip()
    if unit.lower() == "mg/dl":
        return value
    if _MOLAR_UNIT.fullmatch(unit):
        # 1 mmol/L x M mg/mmol = M mg/L = M/10 mg/dL (M = 180.156 gives the familiar 18.0156).
        mass = molar_mass(unit) or GLUCOSE_MOLAR_MASS
        return value * mass / 10
    raise UnitError(f"unit {unit!r} is not a blood glucose unit (mg/dL or mmol<M>/L)")


def _scaled(value: float, unit: str, table: dict[str, float], what: str) -> float:
    factor = table.get(unit.strip())
    if factor is None:
        raise UnitError(f"unit {unit!r} is not a {what} unit ({', '.join(table)})")
    return value * factor


def mass_kg(value: float, unit: str) -> float:
    return _scaled(value, unit, _MASS_KG, "mass")


def duration_minutes(value: float, unit: str) -> float:
    return _scaled(value, unit, _DURATION_MIN, "duration")


def distance_km(value: float, unit: str) -> float:
    return _scaled(value, unit, _DISTANCE_KM, "distance")


def energy_kcal(value: float, unit: str) -> float:
    return _scaled(value, unit, _ENERGY_KCAL, "energy")


def step_count(value: float, unit: str) -> float:
    if unit.strip() != "count":
        raise UnitError(f"unit {unit!r} is not a step unit (count)")
    return value


_CONVERTERS = {
    "steps": step_count,
    "weight": mass_kg,
    "blood_glucose": glucose_mg_dl,
    "workout": duration_minutes,
}


def to_canonical(record_type: str, value: float, unit: str) -> tuple[float, str]:
    """(value, unit) in the canonical unit of `record_type`; UnitError when it cannot be."""
    if not math.isfinite(value):
        raise UnitError(f"value {value!r} is not a finite number")
    converter = _CONVERTERS.get(record_type)
    if converter is None:
        raise UnitError(f"no canonical unit for record type {record_type!r}")
    return converter(value, unit), CANONICAL_UNITS[record_type]

"""Figure 6: export.xml parse rate and peak memory, over a generated export of a given size.

`write_export` streams a synthetic "Export All Health Data" export.xml laid out as the Health
app writes one: the XML declaration, an internal DTD ("HealthKit Export Version"), ExportDate
and Me, then every Record grouped by type (each type in date order), then the Correlations,
the Workouts and one ActivitySummary a day. Several years of one member's iPhone and Apple
Watch, with what `ingestion.devices.apple_health.export_xml` keeps (steps from both devices,
body mass in lb from a Withings scale and in kg typed into Health, blood glucose in mg/dL from
a CGM and in mmol<180.15588000005408>/L from a meter, workouts with WorkoutStatistics, events
and a route) among what it skips (heart rate with metadata, energy, distance, blood pressure
and food Correlations with their nested Records, which also appear at the top level, as in a
real export). A few metadata values carry the stray U+000B that real exports contain.
Everything is a function of the seed; the number of days is chosen to reach the size asked.

The parse runs `parse_export_to_batches` over the file in a fresh spawned process (peak RSS is
its own: VmHWM, as in figure 3, read before the baseline runs). Baseline: the same child then
runs a bare expat pass over the same bytes (pyexpat, a start-element handler that only
counts), the floor for any SAX-based reader.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from bench.common import Bench, Figure, phase
from bench.partner_load import _peak_rss_mb

PEAK_TARGET_MB = 300
MB = 1_000_000
ZONE = ZoneInfo("America/New_York")
OWNER = "Jordan"
IPHONE = f"{OWNER}’s iPhone"  # the Health app writes a typographic apostrophe
WATCH = f"{OWNER}’s Apple Watch"
WITHINGS, DEXCOM, METER, STRAVA = "Health Mate", "Dexcom G6", "OneTouch Reveal", "Strava"
MMOL = "mmol&lt;180.15588000005408&gt;/L"
HK = "HKQuantityTypeIdentifier"

# The DTD, element by element: (children content model, attributes as (name, required)).
_DTD_ELEMENTS: list[tuple[str, str, list[tuple[str, bool]]]] = [
    (
        "HealthData",
        "(ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord|Audiogram"
        "|VisionPrescription)*)",
        [("locale", True)],
    ),
    ("ExportDate", "EMPTY", [("value", True)]),
    (
        "Me",
        "EMPTY",
        [
            ("HKCharacteristicTypeIdentifierDateOfBirth", True),
            ("HKCharacteristicTypeIdentifierBiologicalSex", True),
            ("HKCharacteristicTypeIdentifierBloodType", True),
            ("HKCharacteristicTypeIdentifierFitzpatrickSkinType", True),
            ("HKCharacteristicTypeIdentifierCardioFitnessMedicationsUse", True),
        ],
    ),
    (
        "Record",
        "((MetadataEntry|HeartRateVariabilityMetadataList)*)",
        [
            ("type", True),
            ("unit", False),
            ("value", False),
            ("sourceName", True),
            ("sourceVersion", False),
            ("device", False),
            ("creationDate", False),
            ("startDate", True),
            ("endDate", True),
        ],
    ),
    ("HeartRateVariabilityMetadataList", "(InstantaneousBeatsPerMinute*)", []),
    ("InstantaneousBeatsPerMinute", "EMPTY", [("bpm", True), ("time", True)]),
    (
        "Correlation",
        "((MetadataEntry|Record)*)",
        [
            ("type", True),
            ("sourceName", True),
            ("sourceVersion", False),
            ("device", False),
            ("creationDate", False),
            ("startDate", True),
            ("endDate", True),
        ],
    ),
    (
        "Workout",
        "((MetadataEntry|WorkoutEvent|WorkoutRoute|WorkoutStatistics)*)",
        [
            ("workoutActivityType", True),
            ("duration", False),
            ("durationUnit", False),
            ("totalDistance", False),
            ("totalDistanceUnit", False),
            ("totalEnergyBurned", False),
            ("totalEnergyBurnedUnit", False),
            ("sourceName", True),
            ("sourceVersion", False),
            ("device", False),
            ("creationDate", False),
            ("startDate", True),
            ("endDate", True),
        ],
    ),
    (
        "WorkoutEvent",
        "(MetadataEntry*)",
        [("type", True), ("date", True), ("duration", False), ("durationUnit", False)],
    ),
    (
        "WorkoutStatistics",
        "EMPTY",
        [
            ("type", True),
            ("startDate", True),
            ("endDate", True),
            ("average", False),
            ("minimum", False),
            ("maximum", False),
            ("sum", False),
            ("unit", False),
        ],
    ),
    (
        "WorkoutRoute",
        "((MetadataEntry|FileReference)*)",
        [
            ("sourceName", True),
            ("sourceVersion", False),
            ("device", False),
            ("creationDate", False),
            ("startDate", True),
            ("endDate", True),
        ],
    ),
    ("FileReference", "EMPTY", [("path", True)]),
    (
        "ActivitySummary",
        "EMPTY",
        [
            ("dateComponents", False),
            ("activeEnergyBurned", False),
            ("activeEnergyBurnedGoal", False),
            ("activeEnergyBurnedUnit", False),
            ("appleMoveTime", False),
            ("appleMoveTimeGoal", False),
            ("appleExerciseTime", False),
            ("appleExerciseTimeGoal", False),
            ("appleStandHours", False),
            ("appleStandHoursGoal", False),
        ],
    ),
    ("MetadataEntry", "EMPTY", [("key", True), ("value", True)]),
]


def _dtd(version: int = 13) -> str:
    lines = ["<!DOCTYPE HealthData [", f"<!-- HealthKit Export Version: {version} -->"]
    for name, content, attributes in _DTD_ELEMENTS:
        lines.append(f"<!ELEMENT {name} {content}>")
        if attributes:
            width = max(len(a) for a, _ in attributes)
            lines.append(f"<!ATTLIST {name}")
            for attribute, required in attributes:
                kind = "#REQUIRED" if required else "#IMPLIED"
                lines.append(f"  {attribute.ljust(width)} CDATA {kind}")
            lines.append(">")
        if name == "Record":
            lines.append(
                "<!-- Records nested in a Correlation are also written as top-level Records. -->"
            )
    lines.append("]>")
    return "\n".join(lines) + "\n"


class _Calendar:
    """Export timestamps ("2023-03-01 08:10:00 -0500") by day index and second of the day."""

    def __init__(self, first: dt.date, days: int) -> None:
        self.first = first
        self.dates: list[str] = []
        self.offsets: list[str] = []
        for index in range(days + 2):
            day = first + dt.timedelta(days=index)
            noon = dt.datetime.combine(day, dt.time(12), ZONE)
            self.dates.append(day.isoformat())
            self.offsets.append(noon.strftime("%z"))

    def at(self, day: int, seconds: int) -> str:
        day += seconds // 86_400
        seconds %= 86_400
        return (
            f"{self.dates[day]} {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
            f" {self.offsets[day]}"
        )


class _Devices:
    """Device strings as HealthKit writes them: a per-object address, software by period."""

    def __init__(self, rng: random.Random, days: int) -> None:
        self.rng = rng
        self.days = days
        self.addresses = [f"0x28{rng.randrange(16**7):07x}" for _ in range(48)]

    def _software(self, day: int, versions: tuple[str, ...]) -> str:
        return versions[min(len(versions) - 1, day * len(versions) // max(self.days, 1))]

    def iphone(self, day: int) -> tuple[str, str]:
        software = self._software(day, ("15.7", "16.1.2", "16.5", "17.0.3", "17.2.1"))
        return software, self._device("iPhone", "iPhone", "iPhone14,5", software)

    def watch(self, day: int) -> tuple[str, str]:
        software = self._software(day, ("8.7", "9.1", "9.5", "10.0.2", "10.2"))
        return software, self._device("Apple Watch", "Watch", "Watch6,2", software)

    def _device(self, name: str, model: str, hardware: str, software: str) -> str:
        address = self.addresses[self.rng.randrange(len(self.addresses))]
        return (
            f"&lt;&lt;HKDevice: {address}&gt;, name:{name}, manufacturer:Apple Inc.,"
            f" model:{model}, hardware:{hardware}, software:{software}&gt;"
        )


class _Writer:
    """One member's export, section by section; `days` decides the size."""

    def __init__(self, out: TextIO, days: int, seed: int) -> None:
        self.out = out
        self.days = days
        self.rng = random.Random(seed)
        first = dt.date(2021, 1, 1)
        self.cal = _Calendar(first, days)
        self.devices = _Devices(random.Random(seed + 1), days)
        self.control_characters = 0

    # helpers -------------------------------------------------------------------------------

    def _intervals(self, day: int, count: int, longest: int) -> list[tuple[int, int]]:
        """`count` non-overlapping (start, end) seconds between 06:30 and 23:30."""
        rng = self.rng
        span = 17 * 3600 // max(count, 1)
        out = []
        for index in range(count):
            start = 6 * 3600 + 1800 + index * span + rng.randrange(max(span - longest, 1))
            out.append((start, start + rng.randrange(30, longest)))
        return out

    def _record(
        self,
        kind: str,
        source: str,
        version: str,
        device: str | None,
        unit: str,
        day: int,
        start: int,
        end: int,
        value: str,
        metadata: tuple[tuple[str, str], ...] = (),
        indent: str = " ",
    ) -> str:
        cal = self.cal
        device_attr = f' device="{device}"' if device else ""
        head = (
            f'{indent}<Record type="{kind}" sourceName="{source}" sourceVersion="{version}"'
            f'{device_attr} unit="{unit}" creationDate="{cal.at(day, end + 41)}"'
            f' startDate="{cal.at(day, start)}" endDate="{cal.at(day, end)}" value="{value}"'
        )
        if not metadata:
            return head + "/>\n"
        inner = "".join(
            f'{indent} <MetadataEntry key="{key}" value="{val}"/>\n' for key, val in metadata
        )
        return f"{head}>\n{inner}{indent}</Record>\n"

    def _watch_series(
        self, kind: str, unit: str, per_day: int, longest: int, value, metadata=None
    ) -> None:
        for day in range(self.days):
            version, device = self.devices.watch(day)
            parts = []
            for start, end in self._intervals(day, per_day, longest):
                meta = metadata() if metadata else ()
                parts.append(
                    self._record(kind, WATCH, version, device, unit, day, start, end, value(), meta)
                )
            self.out.write("".join(parts))

    # sections ------------------------------------------------------------------------------

    def header(self) -> None:
        export_day = self.days
        self.out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        self.out.write(_dtd())
        self.out.write('<HealthData locale="en_US">\n')
        self.out.write(f' <ExportDate value="{self.cal.at(export_day, 9 * 3600 + 1234)}"/>\n')
        self.out.write(
            ' <Me HKCharacteristicTypeIdentifierDateOfBirth="1984-06-14"'
            ' HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale"'
            ' HKCharacteristicTypeIdentifierBloodType="HKBloodTypeNotSet"'
            ' HKCharacteristicTypeIdentifierFitzpatrickSkinType="HKFitzpatrickSkinTypeNotSet"'
            ' HKCharacteristicTypeIdentifierCardioFitnessMedicationsUse="None"/>\n'
        )

    def body_mass(self) -> None:
        rng = self.rng
        kg = 82.0
        for day in range(self.days):
            kg = max(55.0, min(120.0, kg + rng.gauss(-0.004, 0.25)))
            at = 6 * 3600 + 1800 + rng.randrange(5400)
            if rng.random() < 0.85:  # the Withings scale, in pounds
                pounds = f"{kg / 0.45359237:.1f}"
                meta = (
                    ("Withings User Identifier", "4471296"),
                    ("Modified Date", f"{self.cal.at(day, at + 95)}"),
                    ("HKWasUserEntered", "0"),
                )
                line = self._record(
                    f"{HK}BodyMass", WITHINGS, "6040004", None, "lb", day, at, at, pounds, meta
                )
            else:  # typed into the Health app, in kilograms
                line = self._record(
                    f"{HK}BodyMass",
                    IPHONE,
                    self.devices.iphone(day)[0],
                    None,
                    "kg",
                    day,
                    at,
                    at,
                    f"{kg:.1f}",
                    (("HKWasUserEntered", "1"),),
                )
            self.out.write(line)

    def heart_rate(self) -> None:
        rng = self.rng
        stray = [0]

        def metadata() -> tuple[tuple[str, str], ...]:
            stray[0] += 1
            if stray[0] % 5000 == 0:  # Apple's stray vertical tab, now and then
                self.control_characters += 1
                return (("HKMetadataKeyHeartRateMotionContext", "0\x0b"),)
            return (("HKMetadataKeyHeartRateMotionContext", str(rng.randrange(2))),)

        self._watch_series(
            f"{HK}HeartRate",
            "count/min",
            150,
            60,
            lambda: str(rng.randrange(52, 150)),
            metadata,
        )

    def steps(self) -> None:
        rng = self.rng
        for day in range(self.days):
            version, device = self.devices.iphone(day)
            parts = [
                self._record(
                    f"{HK}StepCount",
                    IPHONE,
                    version,
                    device,
                    "count",
                    day,
                    start,
                    end,
                    str(rng.randrange(8, 1400)),
                )
                for start, end in self._intervals(day, 34, 600)
            ]
            self.out.write("".join(parts))
        self._watch_series(f"{HK}StepCount", "count", 52, 600, lambda: str(rng.randrange(3, 900)))

    def distance(self) -> None:
        rng = self.rng
        self._watch_series(
            f"{HK}DistanceWalkingRunning",
            "mi",
            60,
            600,
            lambda: f"{rng.random() * 0.6:.5f}",
        )

    def energy(self) -> None:
        rng = self.rng
        self._watch_series(
            f"{HK}ActiveEnergyBurned", "Cal", 110, 300, lambda: f"{rng.random() * 9:.3f}"
        )
        self._watch_series(
            f"{HK}BasalEnergyBurned", "Cal", 50, 1200, lambda: f"{0.8 + rng.random():.3f}"
        )

    def blood_glucose(self) -> None:
        rng = self.rng
        for day in range(self.days):
            parts = []
            level = 105.0
            for start, _ in self._intervals(day, 48, 60):  # the CGM, every ~20 minutes
                level = max(55.0, min(260.0, level + rng.gauss(0, 9)))
                parts.append(
                    self._record(
                        f"{HK}BloodGlucose",
                        DEXCOM,
                        "20813",
                        None,
                        "mg/dL",
                        day,
                        start,
                        start,
                        f"{level:.0f}",
                    )
                )
            for start, _ in self._intervals(day, 2, 60):  # finger-stick meter, mmol/L
                meal = str(1 + rng.randrange(2))
                parts.append(
                    self._record(
                        f"{HK}BloodGlucose",
                        METER,
                        "5.12.0",
                        None,
                        MMOL,
                        day,
                        start,
                        start,
                        f"{rng.uniform(4.2, 9.8):.1f}",
                        (("HKBloodGlucoseMealTime", meal), ("HKWasUserEntered", "0")),
                    )
                )
            self.out.write("".join(parts))

    def _pressure_days(self) -> list[tuple[int, int, int, int]]:
        """(day, second, systolic, diastolic): a home cuff reading about every third day."""
        rng = random.Random(7)
        return [
            (day, 7 * 3600 + rng.randrange(7200), rng.randrange(108, 142), rng.randrange(64, 92))
            for day in range(0, self.days, 3)
        ]

    def blood_pressure(self) -> None:
        readings = self._pressure_days()
        for kind, index in (("Systolic", 2), ("Diastolic", 3)):
            record = f"{HK}BloodPressure{kind}"
            self.out.write(
                "".join(
                    self._record(record, WITHINGS, "6040004", None, "mmHg", d, s, s, str(r[index]))
                    for r in readings
                    for d, s in [(r[0], r[1])]
                )
            )

    def correlations(self) -> None:
        cal = self.cal
        for day, second, systolic, diastolic in self._pressure_days():
            inner = "".join(
                self._record(
                    f"{HK}BloodPressure{kind}",
                    WITHINGS,
                    "6040004",
                    None,
                    "mmHg",
                    day,
                    second,
                    second,
                    str(value),
                    indent="  ",
                )
                for kind, value in (("Systolic", systolic), ("Diastolic", diastolic))
            )
            self.out.write(
                f' <Correlation type="HKCorrelationTypeIdentifierBloodPressure"'
                f' sourceName="{WITHINGS}" sourceVersion="6040004"'
                f' creationDate="{cal.at(day, second + 60)}" startDate="{cal.at(day, second)}"'
                f' endDate="{cal.at(day, second)}">\n'
                f'  <MetadataEntry key="HKWasUserEntered" value="0"/>\n{inner} </Correlation>\n'
            )
        for day in range(5, self.days, 30):  # a logged meal now and then
            second = 12 * 3600 + 900
            inner = self._record(
                f"{HK}DietaryEnergyConsumed",
                "MyFitnessPal",
                "35235",
                None,
                "Cal",
                day,
                second,
                second,
                "612",
                indent="  ",
            )
            self.out.write(
                f' <Correlation type="HKCorrelationTypeIdentifierFood" sourceName="MyFitnessPal"'
                f' sourceVersion="35235" creationDate="{cal.at(day, second + 30)}"'
                f' startDate="{cal.at(day, second)}" endDate="{cal.at(day, second)}">\n'
                f'  <MetadataEntry key="HKFoodMeal" value="Lunch"/>\n{inner} </Correlation>\n'
            )

    def dietary_energy(self) -> None:
        second = 12 * 3600 + 900
        self.out.write(
            "".join(
                self._record(
                    f"{HK}DietaryEnergyConsumed",
                    "MyFitnessPal",
                    "35235",
                    None,
                    "Cal",
                    day,
                    second,
                    second,
                    "612",
                )
                for day in range(5, self.days, 30)
            )
        )

    def workouts(self) -> None:
        rng, cal = self.rng, self.cal
        kinds = (
            ("HKWorkoutActivityTypeWalking", True, 0.9),
            ("HKWorkoutActivityTypeRunning", True, 1.8),
            ("HKWorkoutActivityTypeCycling", True, 4.5),
            ("HKWorkoutActivityTypeTraditionalStrengthTraining", False, 0),
            ("HKWorkoutActivityTypeYoga", False, 0),
        )
        for day in range(self.days):
            if rng.random() > 0.7:
                continue
            kind, outdoor, km_per_min = kinds[rng.randrange(len(kinds))]
            minutes = rng.uniform(18, 75)
            start = 17 * 3600 + rng.randrange(3 * 3600)
            end = start + int(minutes * 60)
            kcal = minutes * rng.uniform(5, 11)
            km = minutes * km_per_min * rng.uniform(0.85, 1.15)
            if rng.random() < 0.1:  # an older app: totals as attributes, no children
                self.out.write(
                    f' <Workout workoutActivityType="{kind}" duration="{minutes:.14f}"'
                    f' durationUnit="min" totalDistance="{km / 1.609344:.13f}"'
                    f' totalDistanceUnit="mi" totalEnergyBurned="{kcal:.13f}"'
                    f' totalEnergyBurnedUnit="Cal" sourceName="{STRAVA}" sourceVersion="31707"'
                    f' creationDate="{cal.at(day, end + 300)}" startDate="{cal.at(day, start)}"'
                    f' endDate="{cal.at(day, end)}"/>\n'
                )
                continue
            version, device = self.devices.watch(day)
            stats = [
                (f"{HK}ActiveEnergyBurned", f' sum="{kcal:.10g}" unit="Cal"'),
                (f"{HK}BasalEnergyBurned", f' sum="{minutes * 1.1:.10g}" unit="Cal"'),
                (
                    f"{HK}HeartRate",
                    f' average="{rng.uniform(95, 150):.10g}" minimum="{rng.randrange(70, 95)}"'
                    f' maximum="{rng.randrange(150, 185)}" unit="count/min"',
                ),
            ]
            if km:
                distance = "DistanceCycling" if "Cycling" in kind else "DistanceWalkingRunning"
                stats.append((f"{HK}{distance}", f' sum="{km / 1.609344:.10g}" unit="mi"'))
                if "Cycling" not in kind:
                    stats.append((f"{HK}StepCount", f' sum="{minutes * 130:.0f}" unit="count"'))
            children = [
                f'  <MetadataEntry key="HKIndoorWorkout" value="{0 if outdoor else 1}"/>\n',
                '  <MetadataEntry key="HKTimeZone" value="America/New_York"/>\n',
                f'  <MetadataEntry key="HKAverageMETs" value="{rng.uniform(3, 11):.5f} kcal/hr·kg"/>\n',
            ]
            if outdoor:
                children.append(
                    f'  <MetadataEntry key="HKWeatherTemperature" value="{rng.randrange(28, 92)} degF"/>\n'
                    f'  <MetadataEntry key="HKWeatherHumidity" value="{rng.randrange(20, 99) * 100} %"/>\n'
                )
            pause = start + int(minutes * 30)
            children.append(
                f'  <WorkoutEvent type="HKWorkoutEventTypeSegment" date="{cal.at(day, start)}"'
                f' duration="{min(minutes, 10.0):.14f}" durationUnit="min"/>\n'
                f'  <WorkoutEvent type="HKWorkoutEventTypePause" date="{cal.at(day, pause)}"/>\n'
                f'  <WorkoutEvent type="HKWorkoutEventTypeResume" date="{cal.at(day, pause + 40)}"/>\n'
            )
            children += [
                f'  <WorkoutStatistics type="{name}" startDate="{cal.at(day, start)}"'
                f' endDate="{cal.at(day, end)}"{values}/>\n'
                for name, values in stats
            ]
            if outdoor:
                clock = f"{start // 3600 % 12 or 12}.{start // 60 % 60:02d}{'pm' if start >= 43_200 else 'am'}"
                children.append(
                    f'  <WorkoutRoute sourceName="{WATCH}" sourceVersion="{version}"'
                    f' creationDate="{cal.at(day, end + 120)}" startDate="{cal.at(day, start)}"'
                    f' endDate="{cal.at(day, end)}">\n'
                    '   <MetadataEntry key="HKMetadataKeySyncVersion" value="2"/>\n'
                    f'   <FileReference path="/workout-routes/route_{cal.dates[day]}_{clock}.gpx"/>\n'
                    "  </WorkoutRoute>\n"
                )
            self.out.write(
                f' <Workout workoutActivityType="{kind}" duration="{minutes:.14f}"'
                f' durationUnit="min" sourceName="{WATCH}" sourceVersion="{version}"'
                f' device="{device}" creationDate="{cal.at(day, end + 30)}"'
                f' startDate="{cal.at(day, start)}" endDate="{cal.at(day, end)}">\n'
                f"{''.join(children)} </Workout>\n"
            )

    def activity_summaries(self) -> None:
        rng = self.rng
        self.out.write(
            "".join(
                f' <ActivitySummary dateComponents="{self.cal.dates[day]}"'
                f' activeEnergyBurned="{rng.uniform(150, 900):.5g}" activeEnergyBurnedGoal="520"'
                f' activeEnergyBurnedUnit="Cal" appleMoveTime="0" appleMoveTimeGoal="0"'
                f' appleExerciseTime="{rng.randrange(0, 95)}" appleExerciseTimeGoal="30"'
                f' appleStandHours="{rng.randrange(4, 16)}" appleStandHoursGoal="12"/>\n'
                for day in range(self.days)
            )
        )

    def write(self) -> None:
        self.header()
        # Records grouped by type, as the Health app writes them (nested copies come later)
        for section in (
            self.heart_rate,
            self.steps,
            self.distance,
            self.energy,
            self.body_mass,
            self.blood_glucose,
            self.blood_pressure,
            self.dietary_energy,
            self.correlations,
            self.workouts,
            self.activity_summaries,
        ):
            section()
        self.out.write("</HealthData>\n")


class _Counter:
    """A text sink that only counts encoded bytes (to size a sample of days)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode("utf-8"))
        return len(text)


def write_export(path: Path, megabytes: float, seed: int = 2024) -> dict[str, Any]:
    """Write an export.xml of about `megabytes` MB (10^6 bytes); returns what was written."""
    sample_days = 40
    probe = _Counter()
    _Writer(probe, sample_days, seed).write()  # type: ignore[arg-type]
    per_day = probe.bytes / sample_days
    days = max(1, round(megabytes * MB / per_day))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
        writer = _Writer(out, days, seed)
        writer.write()
    return {
        "days": days,
        "bytes": path.stat().st_size,
        "control_characters": writer.control_characters,
    }


def _parse_in_child(path: str) -> dict[str, Any]:
    """Runs in a spawned process: parse_export_to_batches, then a bare expat pass (baseline)."""
    import xml.parsers.expat

    from ingestion.devices.apple_health import ExportStats, parse_export_to_batches

    rss_start = _peak_rss_mb()
    stats = ExportStats()
    rows = batches = 0
    started = time.perf_counter()
    for table in parse_export_to_batches(path, stats=stats):
        rows += table.num_rows
        batches += 1
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()  # before the baseline, so the figure is the reader's own

    elements = [0]

    def count(name: str, attrs: Any) -> None:
        elements[0] += 1

    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = count
    started = time.perf_counter()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            parser.Parse(chunk.translate(None, b"\x0b"), False)
        parser.Parse(b"", True)
    expat_seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": rows,
        "batches": batches,
        "kept": dict(stats.kept),
        "ignored": sum(stats.ignored_types.values()),
        "nested_skipped": stats.correlation_records_skipped,
        "rejected": stats.rejected,
        "control_characters": stats.control_characters_removed,
        "bytes_read": stats.bytes_read,
        "completed": stats.completed,
        "expat_seconds": expat_seconds,
        "elements": elements[0],
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak,
    }


def parse_in_child(path: Path) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_parse_in_child, str(path)).result()


def run(bench: Bench, megabytes: float) -> list[Figure]:
    path = bench.root / "apple_health_export" / "export.xml"
    phase(f"apple export: generating a {megabytes:g} MB export.xml")
    started = time.perf_counter()
    written = write_export(path, megabytes)
    size_mb = written["bytes"] / MB
    phase(
        f"  {size_mb:.1f} MB, {written['days']:,} days, in {time.perf_counter() - started:.1f}s;"
        " parsing in a child process"
    )
    result = parse_in_child(path)
    path.unlink()
    if not result["completed"]:
        raise RuntimeError("the export did not parse to the end")
    rate = size_mb / result["seconds"]
    expat_rate = size_mb / result["expat_seconds"]
    kept = result["kept"]
    phase(
        f"  {result['seconds']:.1f}s ({rate:.1f} MB/s, {result['rows'] / result['seconds']:,.0f}"
        f" rows/s), bare expat {result['expat_seconds']:.1f}s; peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    section = f"6. Apple Health export.xml parse, {size_mb:.0f} MB generated export"
    seen = result["rows"] + result["ignored"] + result["nested_skipped"] + result["rejected"]
    return [
        Figure(
            section,
            "parse_export_to_batches",
            rate,
            "MB/s",
            note=f"{result['seconds']:.1f}s for {size_mb:.1f} MB ({written['days']:,} days of one"
            " member)",
        ),
        Figure(
            section,
            "rows kept per second",
            result["rows"] / result["seconds"],
            "rows/s",
            note=", ".join(f"{k} {v:,}" for k, v in sorted(kept.items()))
            + f"; {result['rows']:,} rows in {result['batches']} batches",
        ),
        Figure(
            section,
            "records read per second (kept or skipped)",
            seen / result["seconds"],
            "records/s",
            note=f"{result['ignored']:,} of other types, {result['nested_skipped']:,} nested in"
            f" Correlations, {result['rejected']} rejected, {result['control_characters']}"
            " control characters removed",
        ),
        Figure(
            section,
            "bare expat pass, same file (baseline)",
            expat_rate,
            "MB/s",
            note=f"{result['expat_seconds']:.1f}s, {result['elements']:,} elements, count-only"
            " handler",
        ),
        Figure(section, "ratio ours / bare expat", rate / expat_rate, "x"),
        Figure(
            section,
            "peak RSS of the parsing process (VmHWM)",
            result["peak_rss_mb"],
            "MB",
            PEAK_TARGET_MB,
            "<=",
            note=f"{result['rss_start_mb']:.0f} MB at the child's start (imports)",
        ),
    ]

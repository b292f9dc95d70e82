"""Realistic partner enrollment files, driven by partner configs, with a chosen share of bad rows.

Every file knows its answer: which members should load (`valid_members`) and which physical
line holds each bad record (`bad_rows`). Line numbers count from 1 at the top of the file, the
header included: the first data row of a CSV with a header is line 2, a quoted value with an
embedded newline makes its record span two lines (the record's first line is the one counted),
an xlsx row is its spreadsheet row number and a headerless fixed-width file starts at line 1.

Member `k = id_offset + position` always gets the same identifier, and for the same seed the
same name, birth date and eligibility, whatever the bad share: a corrected file for the same
members is the same call with `bad_share=0` (and `overrides` for changed fields).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import functools
import io
import random
import re
import string
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import openpyxl

from ingestion.partners.config import PartnerConfig
from ingestion.partners.fields import DATE_FIELDS

MISSING_REQUIRED = "missing_required"
UNPARSEABLE_DATE = "unparseable_date"
FUTURE_DATE_OF_BIRTH = "future_date_of_birth"
INVALID_IDENTIFIER = "invalid_identifier"
DUPLICATE_IDENTIFIER = "duplicate_identifier"
SHORT_LINE = "short_line"
LONG_LINE = "long_line"
BAD_ROW_KINDS = (
    MISSING_REQUIRED,
    UNPARSEABLE_DATE,
    FUTURE_DATE_OF_BIRTH,
    INVALID_IDENTIFIER,
    DUPLICATE_IDENTIFIER,
    SHORT_LINE,
    LONG_LINE,
)

# Above this many rows write_partner_file stops collecting valid_members.
MEMBERS_KEPT_UP_TO = 100_000

PROGRAMS = ("diabetes_prevention", "hypertension", "weight_management")
# what partners with narrow fixed-width columns send instead
PROGRAM_CODES = ("DPP", "HTN", "WEIGHT_MGMT")

FEMALE_NAMES = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Lisa", "Nancy", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca",
    "Laura", "Katherine", "Maria", "Aisha", "Mei", "Priya", "Zoë", "Chloé", "Renée",
)  # fmt: skip
MALE_NAMES = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven",
    "Paul", "Andrew", "Joshua", "Kevin", "Brian", "George", "Timothy", "Ronald", "Jason",
    "Wei", "Raj", "Mohammed", "Kwame", "José", "André", "Jürgen",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
    "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen",
    "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams",
    "O'Brien", "O'Connor", "McDonald", "Van der Berg", "Kowalski", "Patel", "Chen", "Kim",
    "Okafor", "Müller", "Peña", "Núñez", "Schröder", "St. John", "Ortiz-Reyes",
)  # fmt: skip
NICKNAMES = {
    "Robert": "Bob", "William": "Bill", "Elizabeth": "Liz", "Katherine": "Kate",
    "James": "Jim", "Margaret": "Peggy", "Richard": "Rick", "Jennifer": "Jen",
}  # fmt: skip
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Park Blvd", "Elm St", "Lake Rd")
CITIES = (
    ("Springfield", "IL", "62701"), ("Austin", "TX", "73301"), ("Portland", "OR", "97201"),
    ("Columbus", "OH", "43004"), ("Raleigh", "NC", "27601"), ("Denver", "CO", "80201"),
)  # fmt: skip

_DOB_FIRST = dt.date(1940, 1, 1).toordinal()
_DOB_DAYS = dt.date(2006, 12, 31).toordinal() - _DOB_FIRST + 1
# canonical fields only some partners send; derived from a third hash when a partner wants them
_CONTACT_FIELDS = frozenset(
    ("middle_name", "phone", "address_line1", "address_line2", "city", "state", "postal_code")
    + ("relationship", "group_id", "coverage_status")
)
_EXCEL_EPOCH = dt.date(1899, 12, 30)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class GeneratedFile:
    """A partner file in memory and what a correct parser should make of it."""

    filename: str
    content: bytes
    valid_members: list[dict[str, Any]]
    bad_rows: dict[int, str]  # line number (see module docstring) -> bad row kind


@dataclass(frozen=True)
class WrittenFile:
    """A partner file written to disk; valid_members is None above MEMBERS_KEPT_UP_TO rows."""

    path: Path
    filename: str
    valid_members: list[dict[str, Any]] | None
    bad_rows: dict[int, str]


class GeneratorError(ValueError):
    """The generator cannot produce a file for this config (names the partner and why)."""


def _mix(value: int) -> int:
    """splitmix64: a cheap, well-spread hash so each member's data depends only on (seed, k)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


# ---------------------------------------------------------------------------------------------
# identifiers


_CLASS_OR_ATOM = re.compile(
    r"\[(?P<cls>(?:\\.|[^\]\\])+)\]|\\(?P<esc>.)|(?P<lit>[^\\\[\](){}|?*+.^$])"
)
_QUANTIFIER = re.compile(r"\{(?P<lo>\d+)(?:(?P<comma>,)(?P<hi>\d*))?\}|(?P<sym>[?*+])")


def _class_chars(body: str, pattern: str) -> str:
    if body.startswith("^"):
        raise GeneratorError(f"negated class in id pattern {pattern!r} is not supported")
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            chars.update(string.digits if body[i + 1] == "d" else body[i + 1])
            i += 2
        elif i + 2 < len(body) and body[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return "".join(sorted(chars))


def _pattern_template(pattern: str) -> list[tuple[str, int]]:
    """(allowed characters, count) per atom of a simple anchored pattern like ^GX[0-9]{6}$."""
    body = pattern.removeprefix("^").removesuffix("$")
    atoms: list[tuple[str, int]] = []
    pos = 0
    while pos < len(body):
        atom = _CLASS_OR_ATOM.match(body, pos)
        if atom is None:
            raise GeneratorError(f"cannot generate ids for pattern {pattern!r} (at {body[pos:]!r})")
        if atom["cls"] is not None:
            chars = _class_chars(atom["cls"], pattern)
        elif atom["esc"] is not None:
            chars = {"d": string.digits, "w": string.ascii_uppercase + string.digits}.get(
                atom["esc"], atom["esc"]
            )
        else:
            chars = atom["lit"]
        pos = atom.end()
        count = 1
        quantifier = _QUANTIFIER.match(body, pos)
        if quantifier is not None:
            pos = quantifier.end()
            sym = quantifier["sym"]
            if sym == "?":
                count = 0
            elif sym in ("*", "+"):
                count = 8 if len(chars) > 1 else (1 if sym == "+" else 0)
            else:
                lo = int(quantifier["lo"])
                hi = lo if not quantifier["comma"] else int(quantifier["hi"] or max(lo, 8))
                count = min(hi, max(lo, 8))
        atoms.append((chars, count))
    return atoms


def _segments(atoms: list[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """Atoms as ("literal", text, 0), ("number", letter prefix, digits) or ("symbols", chars, n)."""
    segments: list[tuple[str, str, int]] = []
    for index, (chars, count) in enumerate(atoms):
        if len(chars) == 1 or count == 0:
            segments.append(("literal", chars[0] * count, 0))
        elif set(string.digits) <= set(chars):
            letters = [c for c in chars if c.isalpha()]
            prefix = ""
            if index == 0 and letters and count >= 4:
                # a leading letter reads like a real staff number (E0012345)
                prefix = "E" if "E" in letters else letters[0]
            segments.append(("number", prefix, count - len(prefix)))
        else:
            segments.append(("symbols", chars, count))
    return segments


class _IdentifierMaker:
    """Member number k -> a unique identifier satisfying the partner's pattern."""

    def __init__(self, config: PartnerConfig, width: int | None):
        inbound = config.inbound
        self.field = inbound.identifier
        rule = inbound.validations.get(self.field)
        self.pattern = rule.pattern if rule and rule.pattern else None
        self._regex = re.compile(self.pattern) if self.pattern else None
        self.width = width
        self._segments: list[tuple[str, str, int]] = []
        self._fast: tuple[str, int] | None = None
        if self.field != "ssn":
            self._segments = _segments(_pattern_template(self.pattern or r"^E[0-9]{7}$"))
            self._fast = self._fast_format()
        self._partner = config.partner_id

    def check(self, first: int, last: int) -> None:
        """Fail early, naming the partner, if members first..last cannot get usable ids."""
        for k in {first, first + 1, last}:
            value = self(k)
            if self._regex is not None and not self._regex.fullmatch(value):
                raise GeneratorError(
                    f"{self._partner}: generated {self.field} {value!r} does not match "
                    f"{self.pattern!r}; the generator handles simple patterns only"
                )
            if self.width is not None and len(value) > self.width:
                raise GeneratorError(
                    f"{self._partner}: {self.field} {value!r} is wider than its column"
                    f" ({self.width} characters)"
                )

    def _fast_format(self) -> tuple[str, int] | None:
        """(format, limit) when literals surround one run of digits, the usual shape."""
        variable = [s for s in self._segments if s[0] != "literal"]
        if len(variable) != 1 or variable[0][0] != "number":
            return None
        parts = []
        for kind, text, count in self._segments:
            escaped = text.replace("{", "{{").replace("}", "}}")
            parts.append(escaped if kind == "literal" else escaped + "{:0" + str(count) + "d}")
        return "".join(parts), 10 ** variable[0][2]

    def __call__(self, k: int) -> str:
        if self.field == "ssn":
            return _ssn(k)
        if self._fast is not None and k < self._fast[1]:
            return self._fast[0].format(k)
        remaining = k
        pieces: list[str] = []
        for kind, text, count in reversed(self._segments):
            if kind == "literal":
                pieces.append(text)
            elif kind == "number":
                pieces.append(text + str(remaining % 10**count).zfill(count))
                remaining //= 10**count
            else:
                encoded = []
                for _ in range(count):
                    encoded.append(text[remaining % len(text)])
                    remaining //= len(text)
                pieces.append("".join(reversed(encoded)))
        if remaining:
            raise GeneratorError(
                f"{self._partner}: pattern {self.pattern!r} has no identifier left for member {k}"
            )
        return "".join(reversed(pieces))

    def invalid(self, valid: str, choice: int) -> str | None:
        """A nonblank variant of `valid` the pattern rejects, or None if none is found."""
        if self._regex is None:
            return None
        middle = len(valid) // 2
        candidates = [
            valid[:-2],
            valid[:middle] + "#" + valid[middle + 1 :],
            valid.lower(),
            valid + "99",
            valid.replace("-", "/") if "-" in valid else "?" + valid[1:],
        ]
        for offset in range(len(candidates)):
            candidate = candidates[(choice + offset) % len(candidates)]
            if (
                candidate.strip()
                and candidate != valid
                and self._regex.search(candidate) is None
                and (self.width is None or len(candidate) <= self.width)
            ):
                return candidate
        return None


_SSN_AREAS = [area for area in range(1, 900) if area != 666]
_SSN_SPACE = len(_SSN_AREAS) * 99 * 9999


def _ssn(k: int) -> str:
    if k >= _SSN_SPACE:
        raise GeneratorError(f"ran out of SSNs at member {k}")
    # an affine map with a multiplier coprime to the space: unique, but not sequential-looking
    index = (k * 549_389_633 + 123_456_789) % _SSN_SPACE
    area, rest = divmod(index, 99 * 9999)
    group, serial = divmod(rest, 9999)
    return f"{_SSN_AREAS[area]:03d}-{group + 1:02d}-{serial + 1:04d}"


# ---------------------------------------------------------------------------------------------
# the plan: columns, widths, which positions are bad and how


@dataclass(frozen=True)
class _Column:
    name: str
    target: str | None  # canonical field, None for a column the partner sends but we ignore
    start: int = 0  # fixed width: 0-based
    width: int = 0


def _columns(config: PartnerConfig, drop: str | None) -> list[_Column]:
    inbound = config.inbound
    mappings = inbound.column_mappings
    if inbound.format == "fixed_width":
        assert inbound.fixed_width is not None
        return [
            _Column(f.name, mappings.get(f.name), f.start - 1, f.width)
            for f in inbound.fixed_width.fields
        ]
    options = inbound.csv_options
    by_name = inbound.format in ("xlsx", "x12_834") or options.has_header
    names = list(mappings) if by_name else options.columns
    return [_Column(name, mappings.get(name)) for name in names or [] if name != drop]


def _text_ok(encoding: str | None) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        if encoding is None:
            return True
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            return False
        return True

    return ok


@functools.cache
def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text.lower() if ch.isalnum())


class _Plan:
    def __init__(
        self,
        config: PartnerConfig,
        rows: int,
        bad_share: float,
        seed: int,
        today: dt.date,
        id_offset: int,
        overrides: Mapping[str, Mapping[str, Any]] | None,
        drop_column: str | None = None,
    ):
        if rows < 0:
            raise GeneratorError(f"rows must be >= 0, got {rows}")
        if not 0.0 <= bad_share <= 1.0:
            raise GeneratorError(f"bad_share must be within [0, 1], got {bad_share}")
        inbound = config.inbound
        self.config = config
        self.format = inbound.format
        self.rows = rows
        self.seed = seed
        self.today = today
        self.today_ordinal = today.toordinal()
        self.id_offset = id_offset
        self.overrides = overrides or {}
        self.date_format = inbound.date_format
        self.columns = _columns(config, drop_column)
        self.mapped = [c.target for c in self.columns if c.target is not None]
        for identifier, changes in self.overrides.items():
            unknown = sorted(set(changes) - set(self.mapped))
            if unknown:
                raise GeneratorError(
                    f"{config.partner_id}: overrides for {identifier!r} change field(s) {unknown}"
                    " that this partner's file does not carry"
                )
        self.wants_contact_fields = bool(_CONTACT_FIELDS & set(self.mapped))
        self.widths = {c.target: c.width for c in self.columns if c.target and c.width}
        self.text_widths = [(f, w) for f, w in self.widths.items() if f not in DATE_FIELDS]
        self.enums = [
            (field, rule.allowed)
            for field, rule in inbound.validations.items()
            if rule.allowed and field in self.mapped
        ]
        self.identifier = inbound.identifier
        self.ids = _IdentifierMaker(config, self.widths.get(self.identifier))
        self.ids.check(id_offset, id_offset + max(rows - 1, 1))
        self.required = sorted(
            (set(inbound.required_fields) | {self.identifier}) & set(self.mapped)
        )
        self.delimiter = inbound.csv_options.delimiter
        self._seed_base = _mix(seed & _MASK64)

        if self.format in ("fixed_width", "x12_834"):
            # fixed width: column positions are characters, keep them bytes too; X12: its
            # character sets are ASCII's
            encoding: str | None = "ascii"
        elif self.format == "csv":
            encoding = inbound.csv_options.encoding
        else:
            encoding = None
        ok = _text_ok(encoding)
        self.female = [n for n in FEMALE_NAMES if ok(n)]
        self.male = [n for n in MALE_NAMES if ok(n)]
        self.last = [n for n in LAST_NAMES if ok(n)]
        program_width = self.widths.get("program")
        self.programs = (
            PROGRAM_CODES if program_width and max(map(len, PROGRAMS)) > program_width else PROGRAMS
        )
        self.email_domain = config.partner_id.replace("_", "") + ".example.com"
        self._date_text: dict[dt.date, str] = {}
        self.bad = self._choose_bad_rows(round(rows * bad_share))

    def date_text(self, value: dt.date) -> str:
        text = self._date_text.get(value)
        if text is None:
            text = self._date_text[value] = value.strftime(self.date_format)
        return text

    def identifier_of(self, k: int) -> str:
        value = self.ids(k)
        override = self.overrides.get(value)
        if override and self.identifier in override:
            return str(override[self.identifier])
        return value

    # -- bad rows ------------------------------------------------------------------------------

    def _applicable_kinds(self) -> list[str]:
        kinds = [MISSING_REQUIRED] if self.required else []
        if self.bad_date_field() is not None:
            kinds.append(UNPARSEABLE_DATE)
        dob_rule = self.config.inbound.validations.get("date_of_birth")
        if "date_of_birth" in self.mapped and dob_rule is not None and dob_rule.max is not None:
            kinds.append(FUTURE_DATE_OF_BIRTH)
        if self.ids.pattern is not None:
            kinds.append(INVALID_IDENTIFIER)
        kinds.append(DUPLICATE_IDENTIFIER)
        if self.format == "fixed_width":
            if self._short_line_range() is not None:
                kinds.append(SHORT_LINE)
            kinds.append(LONG_LINE)
        return kinds

    def bad_date_field(self) -> str | None:
        if "date_of_birth" in self.mapped:
            return "date_of_birth"
        dates = [f for f in self.required if f in DATE_FIELDS]
        return dates[0] if dates else None

    def _short_line_range(self) -> tuple[int, int] | None:
        """Line lengths that stop before the last-ending required field begins."""
        fields = [c for c in self.columns if c.target in self.required]
        last = max(fields, key=lambda c: c.start + c.width)
        if last.start < 1:
            return None
        return max(1, last.start - 8), last.start

    def _choose_bad_rows(self, count: int) -> dict[int, tuple[str, Any]]:
        rng = random.Random(f"bad-rows:{self.seed}")
        positions = sorted(rng.sample(range(self.rows), count))
        bad_set = set(positions)
        kinds = self._applicable_kinds()
        chosen: dict[int, tuple[str, Any]] = {}
        for position in positions:
            kind = rng.choice(kinds)
            detail: Any = None
            if kind == DUPLICATE_IDENTIFIER:
                detail = self._earlier_valid(position, bad_set, rng)
                if detail is None:
                    others = [k for k in kinds if k != DUPLICATE_IDENTIFIER]
                    if not others:
                        raise GeneratorError(
                            f"{self.config.partner_id}: no way to make row {position} bad"
                        )
                    kind = rng.choice(others)
            if kind == MISSING_REQUIRED:
                detail = rng.choice(self.required)
            elif kind == UNPARSEABLE_DATE:
                detail = rng.randrange(4)
            elif kind == FUTURE_DATE_OF_BIRTH:
                detail = self.today + dt.timedelta(days=rng.randint(1, 3650))
            elif kind == INVALID_IDENTIFIER:
                detail = rng.randrange(5)
            elif kind == SHORT_LINE:
                shortest, too_short = self._short_line_range() or (0, 1)
                detail = rng.randrange(shortest, too_short)
            elif kind == LONG_LINE:
                alphabet = string.ascii_uppercase + string.digits
                detail = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
            chosen[position] = (kind, detail)
        return chosen

    @staticmethod
    def _earlier_valid(position: int, bad: set[int], rng: random.Random) -> int | None:
        if position == 0:
            return None
        for _ in range(20):
            candidate = rng.randrange(position)
            if candidate not in bad:
                return candidate
        for candidate in range(position - 1, -1, -1):
            if candidate not in bad:
                return candidate
        return None

    def unparseable_date(self, valid: dt.date, choice: int) -> str:
        width = self.widths.get(self.bad_date_field() or "")
        # month 13 and day 32 together stay invalid whichever order a lenient parser tries
        impossible = valid.strftime(self.date_format.replace("%m", "13").replace("%d", "32"))
        zeros = re.sub(r"[0-9]", "0", self.date_text(valid))
        candidates = [impossible, zeros, "N/A", "UNKNOWN"]
        for offset in range(len(candidates)):
            text = candidates[(choice + offset) % len(candidates)]
            if width and len(text) > width:
                continue
            try:
                dt.datetime.strptime(text, self.date_format)
            except ValueError:
                return text
        return "?"


# ---------------------------------------------------------------------------------------------
# members and rows


def _member(plan: _Plan, k: int) -> tuple[dict[str, Any], bool]:
    """Member k's canonical fields (those the partner sends) and whether a value spans lines."""
    h1 = _mix(plan._seed_base ^ k)
    h2 = _mix(h1)
    female = h1 & 1
    names = plan.female if female else plan.male
    first = names[(h1 >> 1) % len(names)]
    last = plan.last[(h1 >> 9) % len(plan.last)]
    base_first, base_last = first, last
    tag = (k + plan.seed) & _MASK64
    multiline = False
    if plan.format not in ("fixed_width", "x12_834") and tag % 53 == 17:
        # a double-barrelled surname typed with Alt+Enter in a spreadsheet cell
        last = f"{last}\n{plan.last[(h1 >> 17) % len(plan.last)]}"
        multiline = True
    elif tag % 29 == 11:
        separator = plan.delimiter if plan.format == "csv" else ","
        last = f"{last}{separator} Jr."
    elif tag % 31 == 7 and first in NICKNAMES:
        first = f'{first} "{NICKNAMES[first]}"'

    fromordinal = dt.date.fromordinal
    dob = fromordinal(_DOB_FIRST + (h1 >> 25) % _DOB_DAYS)
    elapsed = h2 % 1095
    start = fromordinal(plan.today_ordinal - elapsed)
    end: dt.date | None = None
    if (h2 >> 12) % 10 == 0:
        if (h2 >> 16) & 1 and elapsed > 1:
            end = fromordinal(plan.today_ordinal - elapsed + (h2 >> 20) % (elapsed - 1) + 1)
        else:
            end = fromordinal(plan.today_ordinal + 30 + (h2 >> 20) % 335)

    wanted = plan.mapped
    values: dict[str, Any] = {
        "first_name": first,
        "last_name": last,
        "date_of_birth": dob,
        "program": plan.programs[(h2 >> 40) % len(plan.programs)],
        "eligibility_start_date": start,
        "eligibility_end_date": end,
    }
    if plan.identifier in wanted:
        values[plan.identifier] = plan.ids(k)
    if "employee_id" in wanted and plan.identifier != "employee_id":
        values["employee_id"] = f"E{k:07d}"
    if "ssn" in wanted and plan.identifier != "ssn":
        values["ssn"] = _ssn(k)
    if "gender" in wanted:
        odd = (h2 >> 48) % 50
        values["gender"] = "U" if odd == 0 else "X" if odd == 1 else "F" if female else "M"
    if "email" in wanted:
        values["email"] = f"{_slug(base_first)}.{_slug(base_last)}@{plan.email_domain}"
    if plan.wants_contact_fields:
        h3 = _mix(h2)
        city, state, postal = CITIES[h3 % len(CITIES)]
        values.update(
            middle_name=string.ascii_uppercase[(h3 >> 4) % 26] if (h3 >> 9) % 3 else None,
            phone=f"555-{(h3 >> 11) % 900 + 100:03d}-{(h3 >> 21) % 10000:04d}",
            address_line1=f"{(h3 >> 35) % 9000 + 100} {STREETS[(h3 >> 49) % len(STREETS)]}",
            address_line2=f"Apt {(h3 >> 53) % 40 + 1}" if (h3 >> 59) % 5 == 0 else None,
            city=city,
            state=state,
            postal_code=postal,
            relationship="employee" if (h3 >> 30) % 5 else "spouse",
            group_id=f"GRP{(h3 >> 24) % 50:03d}",
            coverage_status="terminated" if end is not None and end < plan.today else "active",
        )
    member = {field: values[field] for field in wanted}
    if plan.overrides:
        override = plan.overrides.get(member[plan.identifier])
        if override:
            member.update(override)
    for field, allowed in plan.enums:
        if member[field] not in allowed:
            member[field] = allowed[h2 % len(allowed)]
    for field, width in plan.text_widths:
        value = member.get(field)
        if isinstance(value, str) and len(value) > width:
            member[field] = value[:width].rstrip()
    return member, multiline


@dataclass(slots=True)
class _Row:
    position: int
    kind: str | None
    cells: list[Any]
    member: dict[str, Any] | None
    multiline: bool
    detail: Any = None


def _xlsx_date(value: dt.date, h: int, field_index: int, plan: _Plan) -> Any:
    """Most dates as real date cells, some as bare serial numbers, a few as text."""
    pick = (h >> (field_index * 3)) % 10
    if pick < 7:
        return value
    if pick < 9:
        return (value - _EXCEL_EPOCH).days
    return plan.date_text(value)


def _corrupted(plan: _Plan, member: dict[str, Any], kind: str, detail: Any) -> dict[str, Any]:
    values = dict(member)
    if kind == MISSING_REQUIRED:
        values[detail] = None
    elif kind == UNPARSEABLE_DATE:
        field = plan.bad_date_field()
        assert field is not None
        values[field] = plan.unparseable_date(member[field] or plan.today, detail)
    elif kind == FUTURE_DATE_OF_BIRTH:
        values["date_of_birth"] = detail
    elif kind == INVALID_IDENTIFIER:
        valid_id = member[plan.identifier]
        invalid = plan.ids.invalid(valid_id, detail)
        if invalid is None:
            raise GeneratorError(
                f"{plan.config.partner_id}: found no invalid variant of {valid_id!r}"
            )
        values[plan.identifier] = invalid
    elif kind == DUPLICATE_IDENTIFIER:
        values[plan.identifier] = plan.identifier_of(plan.id_offset + detail)
    return values


def _rows(plan: _Plan, keep_members: bool) -> Iterator[_Row]:
    targets = [c.target for c in plan.columns]
    date_text = plan.date_text
    not_bad = (None, None)
    for position in range(plan.rows):
        k = plan.id_offset + position
        member, multiline = _member(plan, k)
        kind, detail = plan.bad.get(position, not_bad)
        values = member if kind is None else _corrupted(plan, member, kind, detail)
        noise = _mix(plan._seed_base ^ (k << 1) ^ 0x5EED)
        cells: list[Any]
        if plan.format == "xlsx":
            cells = [values.get(target) for target in targets]
            for index, value in enumerate(cells):
                if isinstance(value, dt.date):
                    cells[index] = _xlsx_date(value, noise, index, plan)
        else:
            cells = [
                ""
                if value is None
                else date_text(value)
                if isinstance(value, dt.date)
                else str(value)
                for value in map(values.get, targets)
            ]
        if noise % 25 == 0:
            _pad_one_cell(plan, cells, noise >> 8)
        yield _Row(
            position,
            kind,
            cells,
            member if kind is None and keep_members else None,
            multiline,
            detail,
        )


def _pad_one_cell(plan: _Plan, cells: list[Any], h: int) -> None:
    """Stray spaces around one value: harmless, a parser trims them."""
    index = h % len(cells)
    value = cells[index]
    if not isinstance(value, str) or not value:
        return
    if plan.format == "fixed_width":
        if len(value) < plan.columns[index].width:
            cells[index] = " " + value
    else:
        cells[index] = " " + value + "  "


# ---------------------------------------------------------------------------------------------
# writers


class _Tally:
    def __init__(self, keep_members: bool):
        self.members: list[dict[str, Any]] | None = [] if keep_members else None
        self.bad_rows: dict[int, str] = {}

    def add(self, row: _Row, line: int) -> None:
        if row.kind is not None:
            self.bad_rows[line] = row.kind
        elif self.members is not None and row.member is not None:
            row.member["source_line_number"] = line
            self.members.append(row.member)


def _write_csv(plan: _Plan, out: TextIO, tally: _Tally, crlf: bool) -> None:
    options = plan.config.inbound.csv_options
    writer = csv.writer(
        out,
        delimiter=options.delimiter,
        quotechar=options.quotechar,
        lineterminator="\r\n" if crlf else "\n",
        quoting=csv.QUOTE_MINIMAL,
    )
    line = 1
    if options.has_header:
        writer.writerow([c.name for c in plan.columns])
        line = 2
    for row in _rows(plan, tally.members is not None):
        writer.writerow(row.cells)
        tally.add(row, line)
        if row.multiline or plan.overrides:
            line += sum(cell.count("\n") for cell in row.cells)
        line += 1


def _write_fixed_width(plan: _Plan, out: TextIO, tally: _Tally, crlf: bool) -> None:
    inbound = plan.config.inbound
    assert inbound.fixed_width is not None
    record_length = inbound.fixed_width.record_length
    order = sorted(range(len(plan.columns)), key=lambda i: plan.columns[i].start)
    eol = "\r\n" if crlf else "\n"

    def record(cells: list[str]) -> str:
        parts: list[str] = []
        position = 0
        for index in order:
            column = plan.columns[index]
            if column.start > position:
                parts.append(" " * (column.start - position))
            parts.append(cells[index][: column.width].ljust(column.width))
            position = column.start + column.width
        return "".join(parts).ljust(record_length)

    line = 1
    if inbound.fixed_width.has_header:
        out.write(record([c.name for c in plan.columns]) + eol)
        line = 2
    for row in _rows(plan, tally.members is not None):
        text = record(row.cells)
        if row.kind == SHORT_LINE:
            text = text[: row.detail]
        elif row.kind == LONG_LINE:
            text = text + row.detail
        out.write(text + eol)
        tally.add(row, line)
        line += 1


def _write_xlsx(plan: _Plan, target: Any, tally: _Tally) -> None:
    options = plan.config.inbound.xlsx_options
    workbook = openpyxl.Workbook(write_only=True)
    if options.sheet:
        # a sheet before the data makes "which sheet" matter, as in partners' real workbooks
        notes = workbook.create_sheet("Instructions")
        notes.append([f"{plan.config.display_name} member roster"])
        notes.append([f"Member data is on the '{options.sheet}' sheet."])
    sheet = workbook.create_sheet(options.sheet or "Sheet1")
    for row_number in range(1, options.header_row):
        sheet.append(
            [f"{plan.config.display_name} members as of {plan.today}"] if row_number == 1 else []
        )
    sheet.append([c.name for c in plan.columns])
    line = options.header_row + 1
    for row in _rows(plan, tally.members is not None):
        sheet.append(row.cells)
        tally.add(row, line)
        line += 1
    workbook.save(target)


def _repacked_xlsx(content: bytes, today: dt.date) -> bytes:
    """The workbook with its save time replaced by `today`, so the same seed gives the same bytes.

    openpyxl stamps the document properties and every zip entry with the wall clock.
    """
    stamp = f"{today:%Y-%m-%d}T09:00:00Z".encode()
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(content)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "docProps/core.xml":
                data = re.sub(
                    rb"(<dcterms:(?:created|modified)\b[^>]*>)[^<]*", rb"\g<1>" + stamp, data
                )
            fixed = zipfile.ZipInfo(
                entry.filename, date_time=(today.year, today.month, today.day, 9, 0, 0)
            )
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = entry.external_attr
            target.writestr(fixed, data)
    return out.getvalue()


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _text_encoding(plan: _Plan, bom: bool) -> str:
    inbound = plan.config.inbound
    if inbound.format == "fixed_width" and inbound.fixed_width:
        encoding = inbound.fixed_width.encoding
    elif inbound.format == "x12_834":
        encoding = inbound.x12.encoding if inbound.x12 else "utf-8"
    else:
        encoding = inbound.csv_options.encoding
    if bom and not _is_utf8(encoding):
        raise GeneratorError(f"{plan.config.partner_id}: a BOM only fits UTF-8, not {encoding}")
    return "utf-8-sig" if bom else encoding


def _write_text(plan: _Plan, out: TextIO, tally: _Tally, crlf: bool) -> None:
    if plan.format == "csv":
        _write_csv(plan, out, tally, crlf)
    elif plan.format == "x12_834":
        _write_x12_834(plan, out, tally, crlf)
    else:
        _write_fixed_width(plan, out, tally, crlf)


_COVERAGE_DATES = {"DTP*348", "DTP*349", "DTP*303"}  # loop 2300's (benefit begin, end)


def _write_x12_834(plan: _Plan, out: TextIO, tally: _Tally, crlf: bool) -> None:
    """An 834 (5010) interchange with one member loop per row, one segment per line; the
    row's cells fill the element references the partner's column_mappings name."""
    eol = "~\r\n" if crlf else "~\n"
    stamp = f"{plan.today:%Y%m%d}"
    sender = plan.config.partner_id.upper()[:15]
    header = [
        f"ISA*00*{'':10}*00*{'':10}*ZZ*{sender:15}*ZZ*{'MDP':15}*{stamp[2:]}*0900*^*00501"
        "*000000001*0*P*:",
        f"GS*BE*{sender}*MDP*{stamp}*0900*1*X*005010X220A1",
        "ST*834*0001*005010X220A1",
        f"BGN*00*{plan.seed % 10**9:09d}*{stamp}*0900****4",
        f"N1*P5*{plan.config.display_name.upper()}*FI*000000000",
        f"N1*IN*{plan.config.display_name.upper()}*FI*000000000",
    ]
    out.write(eol.join(header) + eol)
    names = [c.name for c in plan.columns]
    position = len(header)
    for row in _rows(plan, tally.members is not None):
        segments = _member_loop(dict(zip(names, row.cells, strict=True)))
        tally.add(row, position + 1)
        position += len(segments)
        out.write(eol.join(segments) + eol)
    transaction = position - 2 + 1  # ST to SE, both counted
    out.write(eol.join([f"SE*{transaction}*0001", "GE*1*1", "IEA*1*000000001"]) + eol)


def _member_loop(cells: dict[str, str]) -> list[str]:
    def get(name: str, default: str = "") -> str:
        return cells.get(name, default).strip() or default

    def qualified(tag: str, coverage: bool = False) -> list[tuple[str, str]]:
        return [
            (name.split("*", 1)[1], value.strip())
            for name, value in cells.items()
            if name.startswith(f"{tag}*") and (name in _COVERAGE_DATES) == coverage
        ]

    segments = [f"INS*{get('INS01', 'Y')}*{get('INS02', '18')}*{get('INS03', '030')}*XN*A***FT"]
    segments += [f"REF*{q}*{value}" for q, value in qualified("REF")]
    segments += [f"DTP*{q}*D8*{value}" for q, value in qualified("DTP") if value]
    ssn = get("NM109")
    name = f"NM1*IL*1*{get('NM103')}*{get('NM104')}*{get('NM105')}"
    segments.append(f"{name}***34*{ssn}" if ssn else name)
    contacts = [f"{q}*{value}" for q, value in qualified("PER") if value]
    if contacts:
        segments.append("PER*IP**" + "*".join(contacts[:3]))
    if get("N301"):
        segments.append(f"N3*{get('N301')}" + (f"*{get('N302')}" if get("N302") else ""))
    if get("N401"):
        segments.append(f"N4*{get('N401')}*{get('N402')}*{get('N403')}")
    segments.append(f"DMG*D8*{get('DMG02')}*{get('DMG03', 'U')}")
    segments.append(f"HD*021**{get('HD03', 'HLT')}*{get('HD04')}*{get('HD05', 'EMP')}")
    segments += [f"DTP*{q}*D8*{value}" for q, value in qualified("DTP", True) if value]
    return segments


def partner_filename(config: PartnerConfig, today: dt.date, sequence: int = 1) -> str:
    """The partner's filename pattern with its `*` filled by a date stamp and sequence."""
    stamp = f"{today:%Y%m%d}_{sequence:03d}"
    return config.inbound.filename_pattern.replace("*", stamp, 1).replace("*", "").replace("?", "X")


# ---------------------------------------------------------------------------------------------
# public API


def generate_partner_file(
    config: PartnerConfig,
    rows: int,
    bad_share: float = 0.0,
    seed: int = 0,
    today: dt.date | None = None,
    id_offset: int = 0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    bom: bool = False,
    crlf: bool = False,
    sequence: int = 1,
) -> GeneratedFile:
    """A file of `rows` records for this partner, `round(rows * bad_share)` of them bad.

    `overrides` maps an identifier value (employee_id, or ssn for ssn partners) to canonical
    field changes (dates as `datetime.date`), for a corrected or updated file.
    """
    today = today or dt.date.today()
    plan = _Plan(config, rows, bad_share, seed, today, id_offset, overrides)
    return _generate(plan, bom=bom, crlf=crlf, sequence=sequence)


def _generate(plan: _Plan, bom: bool, crlf: bool, sequence: int) -> GeneratedFile:
    tally = _Tally(keep_members=True)
    if plan.format == "xlsx":
        buffer = io.BytesIO()
        _write_xlsx(plan, buffer, tally)
        content = _repacked_xlsx(buffer.getvalue(), plan.today)
    else:
        encoding = _text_encoding(plan, bom)
        text = io.StringIO(newline="")
        _write_text(plan, text, tally, crlf)
        content = text.getvalue().encode(encoding)
    assert tally.members is not None
    return GeneratedFile(
        filename=partner_filename(plan.config, plan.today, sequence),
        content=content,
        valid_members=tally.members,
        bad_rows=tally.bad_rows,
    )


def write_partner_file(
    config: PartnerConfig,
    path: Path,
    rows: int,
    bad_share: float = 0.0,
    seed: int = 0,
    today: dt.date | None = None,
    id_offset: int = 0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    bom: bool = False,
    crlf: bool = False,
) -> WrittenFile:
    """Like generate_partner_file, streamed to `path` (a file path, or a folder to put it in)."""
    today = today or dt.date.today()
    plan = _Plan(config, rows, bad_share, seed, today, id_offset, overrides)
    path = Path(path)
    if path.is_dir():
        path = path / partner_filename(config, today)
    path.parent.mkdir(parents=True, exist_ok=True)
    tally = _Tally(keep_members=rows <= MEMBERS_KEPT_UP_TO)
    if plan.format == "xlsx":
        _write_xlsx(plan, path, tally)
    else:
        with path.open("w", encoding=_text_encoding(plan, bom), newline="") as out:
            _write_text(plan, out, tally, crlf)
    return WrittenFile(path, path.name, tally.members, tally.bad_rows)


# -- file-level corruptions ---------------------------------------------------------------------


def empty_file() -> bytes:
    return b""


def truncated_xlsx(content: bytes) -> bytes:
    """The first half of a workbook: a zip without its central directory."""
    return content[: len(content) // 2]


def undecodable_bytes(content: bytes, line: int | None = None) -> bytes:
    """`content` with invalid UTF-8 inserted mid-way through a data line.

    `line` is the 1-based physical line (default: the middle line, never the header line 1).
    """
    if content[:2] == b"PK":
        raise GeneratorError("undecodable_bytes is for text files; this looks like an xlsx zip")
    starts = [0] + [m.end() for m in re.finditer(b"\n", content) if m.end() < len(content)]
    if len(starts) < 2:
        raise GeneratorError("undecodable_bytes needs a file with at least one data line")
    if line is None:
        line = max(2, (len(starts) + 1) // 2)
    if not 1 <= line <= len(starts):
        raise GeneratorError(f"line {line} is outside the file's {len(starts)} lines")
    begin = starts[line - 1]
    end = starts[line] - 1 if line < len(starts) else len(content)
    cut = begin + max(1, (end - begin) // 2)
    return content[:cut] + b"\xff\xfe\xfa" + content[cut:]


def drop_required_column(
    config: PartnerConfig,
    rows: int = 20,
    seed: int = 0,
    today: dt.date | None = None,
    column: str | None = None,
) -> bytes:
    """A CSV or xlsx file whose header (and rows) lack one required column.

    `column` is the partner's column name; by default the one mapped to date_of_birth, or the
    last required field's column.
    """
    inbound = config.inbound
    if inbound.format == "fixed_width":
        raise GeneratorError(f"{config.partner_id}: fixed-width files have no header to drop from")
    if inbound.format == "csv" and not inbound.csv_options.has_header:
        raise GeneratorError(f"{config.partner_id}: this CSV has no header to drop from")
    by_target = {target: name for name, target in inbound.column_mappings.items()}
    if column is None:
        required = [f for f in inbound.required_fields if f != inbound.identifier]
        if "date_of_birth" in required:
            column = by_target["date_of_birth"]
        else:
            column = by_target[required[-1] if required else inbound.identifier]
    elif column not in inbound.column_mappings:
        raise GeneratorError(f"{config.partner_id}: no column {column!r} to drop")
    plan = _Plan(config, rows, 0.0, seed, today or dt.date.today(), 0, None, drop_column=column)
    return _generate(plan, bom=False, crlf=False, sequence=1).content


def write_demo_world(
    configs: Mapping[str, PartnerConfig],
    platform_root: Path,
    pull_roots: Mapping[str, Path],
    rows_per_partner: int = 200,
    bad_share: float = 0.05,
    seed: int = 7,
    today: dt.date | None = None,
) -> dict[str, GeneratedFile]:
    """One file per partner: push partners' into our inbox, pull partners' onto their servers.

    Push: `<platform_root>/<partner_id>/inbound/<filename>`; pull:
    `<pull_roots[partner_id]>/<location.path without its leading slash>/<filename>`.
    """
    files: dict[str, GeneratedFile] = {}
    for partner_id in sorted(configs):
        config = configs[partner_id]
        inbound = config.inbound
        # a per-partner seed, so adding a partner does not change the others' files
        salt = zlib.crc32(partner_id.encode("utf-8"))
        # comma CSVs as Excel's "CSV UTF-8" export writes them; fixed width as moved off a mainframe
        excel_csv = inbound.format == "csv" and inbound.csv_options.delimiter == ","
        bom = excel_csv and _is_utf8(inbound.csv_options.encoding)
        crlf = excel_csv or inbound.format == "fixed_width"
        generated = generate_partner_file(
            config,
            rows_per_partner,
            bad_share=bad_share,
            seed=seed + salt,
            today=today,
            bom=bom,
            crlf=crlf,
        )
        if inbound.transport == "sftp_push":
            folder = Path(platform_root) / partner_id / "inbound"
        else:
            if partner_id not in pull_roots:
                raise GeneratorError(
                    f"{partner_id} is a pull partner but has no entry in pull_roots"
                )
            assert inbound.location is not None
            folder = Path(pull_roots[partner_id]) / inbound.location.path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / generated.filename).write_bytes(generated.content)
        files[partner_id] = generated
    return files


def main(argv: list[str] | None = None) -> int:
    """`python -m sandbox.generator PARTNER [--rows N] [--bad-share S] [--seed K] [--out DIR]`:
    one file as the partner would send it, named by its filename pattern, to upload by hand."""
    import argparse

    from ingestion.partners.config import load_partner_configs
    from mdp.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m sandbox.generator", description=main.__doc__)
    parser.add_argument("partner", help="a partner_id from partner_configs/")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of bad rows (0-1)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same members")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write it in")
    args = parser.parse_args(argv)
    configs = load_partner_configs(load_settings().partner_config_dir).configs
    if args.partner not in configs:
        parser.error(f"unknown partner {args.partner!r}; configured: {', '.join(sorted(configs))}")
    config = configs[args.partner]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / partner_filename(config, dt.date.today(), 1 + args.seed % 999)
    written = write_partner_file(config, path, args.rows, bad_share=args.bad_share, seed=args.seed)
    print(f"{written.path}: {args.rows} rows, {len(written.bad_rows)} bad")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

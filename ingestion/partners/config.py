"""Partner configuration: one YAML per partner, validated against a schema at load time.

A bad config is reported with its file, the key path and the problem, and never stops the
other partners from loading.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import difflib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ingestion.partners.fields import CANONICAL_FIELDS
from ingestion.partners.x12_references import D8_FORMAT, is_reference


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Loc = tuple[str | int, ...]


def _problems(title: str, found: list[tuple[Loc, str, object]]) -> ValidationError:
    """Problems each at its own key path, below the validator's (a ValueError is reported
    once, at the validator's level); pydantic prefixes the path of the value validated."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("config", "{problem}", {"problem": message}),
                loc=loc,
                input=value,
            )
            for loc, message, value in found
        ],
    )


def _text_encoding(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(
            f"unknown encoding {name!r} (Python codec names: utf-8, latin-1, cp1252, ...)"
        ) from None
    try:
        "".encode(name)  # refuses codecs that are not text encodings (base64, rot13)
    except LookupError:
        raise ValueError(f"{name!r} is not a text encoding") from None
    return name


def _canonical_field(name: str) -> str:
    if name not in CANONICAL_FIELDS:
        raise ValueError(f"unknown field {name!r}; known fields: {sorted(CANONICAL_FIELDS)}")
    return name


Encoding = Annotated[str, AfterValidator(_text_encoding)]
CanonicalField = Annotated[str, AfterValidator(_canonical_field)]


class CsvOptions(_Strict):
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    quotechar: Annotated[str, Field(min_length=1, max_length=1)] = '"'
    encoding: Encoding = "utf-8"
    has_header: bool = True
    columns: list[str] | None = None  # names for a headerless file, in order

    @property
    def reader_options(self) -> dict[str, str | bool]:
        """The csv module's options for these files. Spaces before a quoted value are skipped
        (`a, "Smith, Jo" ,b` holds three values, as a person reads it): kept, as RFC 4180 has
        it, the quote was part of the value and the comma inside it split the value in two."""
        return {
            "delimiter": self.delimiter,
            "quotechar": self.quotechar,
            "skipinitialspace": self.delimiter != " ",
        }

    @model_validator(mode="after")
    def _headerless_needs_columns(self) -> CsvOptions:
        if not self.has_header and not self.columns:
            raise ValueError("a file without a header row needs 'columns' listing its column names")
        if self.has_header and self.columns:
            problem = (
                "names a headerless file's columns, but has_header is true (the header's are read)"
            )
            raise _problems("CsvOptions", [(("columns",), problem, self.columns)])
        repeated = sorted({name for name in self.columns or [] if self.columns.count(name) > 1})
        if repeated:
            problem = f"{', '.join(map(repr, repeated))} given more than once: which is which?"
            raise _problems("CsvOptions", [(("columns",), problem, self.columns)])
        return self

    @field_validator("delimiter", "quotechar")
    @classmethod
    def _not_a_line_break(cls, value: str) -> str:
        if value in "\r\n":
            raise ValueError(f"{value!r} is a line break: rows end there")
        return value

    @model_validator(mode="after")
    def _quote_is_not_the_delimiter(self) -> CsvOptions:
        if self.quotechar == self.delimiter:
            # at the key the partner wrote: either may be the default
            key = "quotechar" if "quotechar" in self.model_fields_set else "delimiter"
            problem = f"{self.delimiter!r} is both delimiter and quotechar"
            raise _problems("CsvOptions", [((key,), problem, self.delimiter)])
        return self


class XlsxOptions(_Strict):
    sheet: str | None = None  # None: the first sheet
    header_row: Annotated[int, Field(ge=1)] = 1


class X12Options(_Strict):
    """For format x12_834 (see ingestion/partners/x12_834.py)."""

    encoding: Encoding = "utf-8"
    # subscribers: a dependent's loop is rejected (it usually repeats its subscriber's id);
    # all: every member loop loads, which needs a per-member identifier
    members: Literal["subscribers", "all"] = "subscribers"
    insurance_line: Annotated[str, Field(pattern=r"^[A-Z]{2,3}$")] | None = None  # HD03


class FixedWidthField(_Strict):
    name: str
    start: Annotated[int, Field(ge=1)]  # 1-based column, as partners' layouts are written
    width: Annotated[int, Field(ge=1)]


class FixedWidthOptions(_Strict):
    fields: Annotated[list[FixedWidthField], Field(min_length=1)]
    encoding: Encoding = "utf-8"
    has_header: bool = False
    # a line shorter than the record length is rejected: cut in transit, it would load the
    # field it ends in cut short and the fields after it blank (an end date lost: coverage
    # that never ends). A partner whose system trims trailing blanks says so here; its short
    # lines then read as if padded, unless they end before a required field does.
    trailing_blanks_trimmed: bool = False
    # what `start` and `width` count: characters, or bytes of `encoding` (a layout written
    # for byte-positioned exports: a name with an accent takes two bytes of its field in UTF-8)
    positions: Literal["characters", "bytes"] = "characters"

    @model_validator(mode="after")
    def _fields_are_distinct(self) -> FixedWidthOptions:
        seen: dict[str, int] = {}
        for index, spec in enumerate(self.fields):
            if spec.name in seen:
                problem = f"{spec.name!r} is also field {seen[spec.name]}: which one is meant?"
                raise _problems(
                    "FixedWidthOptions", [(("fields", index, "name"), problem, spec.name)]
                )
            seen[spec.name] = index
        ordered = sorted(enumerate(self.fields), key=lambda item: item[1].start)
        for (_, before), (index, spec) in itertools.pairwise(ordered):
            if spec.start < before.start + before.width:
                problem = (
                    f"{spec.name!r} (from column {spec.start}) overlaps {before.name!r}"
                    f" (columns {before.start}-{before.start + before.width - 1})"
                )
                raise _problems(
                    "FixedWidthOptions", [(("fields", index, "start"), problem, spec.start)]
                )
        return self

    @property
    def record_length(self) -> int:
        return max(f.start + f.width - 1 for f in self.fields)


def _env_name(value: str) -> str:
    # never echoed: a value that is no variable's name may be the secret itself
    if not ENV_NAME.fullmatch(value):
        raise ValueError(
            "must be the name of an environment variable (letters, digits and underscores,"
            " e.g. ACME_SFTP_PASSWORD), which holds the value: never the value itself"
        )
    return value


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EnvName = Annotated[str, AfterValidator(_env_name)]


class RemoteLocation(_Strict):
    """Where a pull partner's own SFTP server is; credentials come from the named env vars."""

    host_env: EnvName
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    port_env: EnvName | None = None
    username_env: EnvName
    password_env: EnvName | None = None
    key_env: EnvName | None = None
    # absolute: a relative one would be read from the login's home, wherever that is
    path: str = "/outbound"

    @field_validator("path")
    @classmethod
    def _absolute_and_plain(cls, value: str) -> str:
        # a relative path would be read from the login's home, wherever that is
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"{value!r}: give the folder's absolute path, without '..'")
        return value

    @model_validator(mode="after")
    def _needs_a_credential(self) -> RemoteLocation:
        if not (self.password_env or self.key_env):
            raise ValueError("give password_env or key_env (the env var holding the secret)")
        return self


class FieldRule(_Strict):
    """Checks on one canonical field. validation.py enforces min and max on date fields and
    pattern, min_length, max_length and allowed on string fields, so a rule is refused when it
    sets an option its field's type would ignore (see Inbound._rules_fit_their_fields)."""

    type: Literal["string", "date", "enum"] | None = None  # None: the field's own type
    pattern: str | None = None
    min_length: Annotated[int, Field(ge=0)] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None
    min: dt.date | Literal["today"] | None = None
    max: dt.date | Literal["today"] | None = None
    allowed: Annotated[list[str], Field(min_length=1)] | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    # before the union is tried: one message, not one per member of dt.date | "today"
    @field_validator("min", "max", mode="before")
    @classmethod
    def _bound_is_a_date(cls, value: object) -> object:
        if value is None or value == "today":
            return value
        if isinstance(value, dt.datetime):
            raise ValueError(f"{value} has a time of day; give a date (YYYY-MM-DD) or 'today'")
        if isinstance(value, dt.date):  # YAML reads an unquoted 2024-01-01 as a date
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError(f"{value!r} is neither 'today' nor a date (YYYY-MM-DD)")

    @model_validator(mode="after")
    def _options_agree(self) -> FieldRule:
        found: list[tuple[Loc, str, object]] = []
        if self.type == "enum" and self.allowed is None:
            found.append((("allowed",), "type enum needs 'allowed', the accepted values", None))
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            found.append(
                (
                    ("min_length",),
                    f"{self.min_length} is greater than max_length {self.max_length}",
                    self.min_length,
                )
            )
        if isinstance(self.min, dt.date) and isinstance(self.max, dt.date) and self.min > self.max:
            found.append((("min",), f"{self.min} is after max {self.max}", self.min))
        if found:
            raise _problems("FieldRule", found)
        return self


# which rule types fit a field of each canonical type, and the options each type enforces
_FITTING_TYPES = {"string": ("string", "enum"), "date": ("date",)}
_ENFORCED_OPTIONS = {
    "string": ("pattern", "min_length", "max_length", "allowed"),
    "date": ("min", "max"),
}


def _rule_problems(name: str, rule: FieldRule) -> Iterator[tuple[Loc, str, object]]:
    """What is wrong with the rule for one field, each at its key path below the field."""
    kind = CANONICAL_FIELDS.get(name)
    if kind is None:
        yield (), f"unknown field {name!r}; known fields: {sorted(CANONICAL_FIELDS)}", name
        return
    fitting = _FITTING_TYPES.get(kind, (kind,))
    if rule.type is not None and rule.type not in fitting:
        yield (
            ("type",),
            f"{name} is a {kind} field; type {rule.type!r} contradicts it"
            f" (use {' or '.join(fitting)}, or leave type out)",
            rule.type,
        )
        return  # the options below are judged against the field's real type
    enforced = _ENFORCED_OPTIONS.get(kind, ())
    for option in ("pattern", "min_length", "max_length", "allowed", "min", "max"):
        value = getattr(rule, option)
        if value is not None and option not in enforced:
            yield (
                (option,),
                f"{name} is a {kind} field, which is checked for"
                f" {', '.join(enforced)} only: {option} would be ignored",
                value,
            )


def _fit_problems(rules: dict[str, FieldRule]) -> list[tuple[Loc, str, object]]:
    return [
        ((name, *loc), message, bad)
        for name, rule in rules.items()
        for loc, message, bad in _rule_problems(name, rule)
    ]


def _rules_that_validate(value: object) -> dict[str, FieldRule]:
    """The rules of a `validations` mapping that are valid on their own."""
    rules: dict[str, FieldRule] = {}
    if isinstance(value, dict):
        for name, raw in value.items():
            with contextlib.suppress(ValidationError):
                rules[str(name)] = FieldRule.model_validate(raw)
    return rules


_SAMPLE_DATE = dt.date(1987, 11, 23)  # day > 12: a swapped day and month cannot read back
_DATE_DIRECTIVES = frozenset("aAwdbBmyYHIpMSfzZjUWcxXGuV%")  # those strptime can read
_NEEDED_DIRECTIVES = {
    "a year (%Y or %y)": "Yy",
    "a month (%m, %b or %B)": "mbB",
    "a day (%d)": "d",
}


def _date_format_problem(fmt: str) -> str | None:
    directives = re.findall(r"%(.?)", fmt, flags=re.DOTALL)
    unknown = [
        f"%{d}" if d else "a lone % at the end" for d in directives if d not in _DATE_DIRECTIVES
    ]
    if unknown:
        return f"{fmt!r} has unknown strftime directive(s): {', '.join(unknown)}"
    missing = [
        what for what, codes in _NEEDED_DIRECTIVES.items() if not set(codes) & set(directives)
    ]
    if missing:
        needs = f"{', '.join(missing[:-1])} and {missing[-1]}" if missing[1:] else missing[0]
        return f"{fmt!r} lacks {needs}: write it like '%m/%d/%Y'"
    repeated = sorted({f"%{d}" for d in directives if d != "%" and directives.count(d) > 1})
    if repeated:
        return f"{fmt!r} repeats {', '.join(repeated)}"
    text = _SAMPLE_DATE.strftime(fmt)
    try:
        read = dt.datetime.strptime(text, fmt).date()
    except (ValueError, re.error) as exc:
        return f"{fmt!r} cannot read back {text!r}, the date {_SAMPLE_DATE} it wrote: {exc}"
    if read != _SAMPLE_DATE:
        return f"{fmt!r} wrote {_SAMPLE_DATE} as {text!r}, which it reads back as {read}"
    return None


Format = Literal["csv", "xlsx", "fixed_width", "x12_834"]


def _cron(expression: str) -> str:
    """A five-field cron string (or @hourly, @daily, ...), as Dagster schedules take: a bad
    one failed the whole Dagster code location, every partner with it."""
    from croniter import croniter

    fields = expression.split()
    # "1W" (nearest weekday): croniter takes it, Dagster's schedules do not
    dagster_refuses = len(fields) == 5 and "W" in fields[2].upper()
    if (
        not croniter.is_valid(expression)
        or (len(fields) != 5 and not expression.startswith("@"))
        or dagster_refuses
    ):
        raise ValueError(
            f"{expression!r} is not a cron schedule: five fields (minute hour day month"
            " weekday), e.g. '*/10 * * * *' for every ten minutes, or @hourly / @daily"
        )
    return expression


# what Inbound's checks across fields read (and date_format, for an 834)
_READ_ACROSS_FIELDS = {
    "transport",
    "location",
    "format",
    "csv",
    "fixed_width",
    "x12",
    "identifier",
    "column_mappings",
    "required_fields",
}


def _is_x12(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == "x12_834"


class Inbound(_Strict):
    transport: Literal["sftp_push", "sftp_pull"]
    location: RemoteLocation | None = None
    schedule: Annotated[str, AfterValidator(_cron)] = "0 * * * *"  # pull partners: poll times
    filename_pattern: Annotated[str, Field(pattern=r"\S")] = "*"
    format: Format
    csv: CsvOptions | None = None
    xlsx: XlsxOptions | None = None
    fixed_width: FixedWidthOptions | None = None
    x12: X12Options | None = None
    identifier: Literal["employee_id", "ssn"] = "employee_id"
    column_mappings: dict[str, CanonicalField] = Field(default_factory=dict)
    date_format: str = "%Y-%m-%d"
    required_fields: list[CanonicalField] = Field(default_factory=lambda: ["employee_id"])
    # full_file: each file lists every member (an 834 audit file, a full roster): a member
    # a file leaves out is terminated as of that file, unless more than
    # max_termination_share of the members would be (then the file is held, not loaded)
    full_file: bool = False
    max_termination_share: Annotated[float, Field(gt=0, le=1)] = 0.2
    validations: dict[str, FieldRule] = Field(default_factory=dict)

    @field_validator("date_format")
    @classmethod
    def _date_format_reads_dates(cls, value: str) -> str:
        problem = _date_format_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("validations", mode="wrap")
    @classmethod
    def _rules_fit_their_fields(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> dict[str, FieldRule]:
        # a rule for a field no column maps to is allowed: one set of rules may serve
        # several layouts of a partner's files. Rules that fail on their own are judged too,
        # so every problem is listed at once (one bad regex hid an unknown field's name)
        try:
            rules = handler(value)
        except ValidationError as invalid:
            found = _fit_problems(_rules_that_validate(value))
            if not found:
                raise
            raise _problems(
                "Inbound",
                [(tuple(e["loc"]), _message(e), e.get("input")) for e in invalid.errors()] + found,
            ) from None
        found = _fit_problems(rules)
        if found:
            raise _problems("Inbound", found)
        return rules

    @model_validator(mode="before")
    @classmethod
    def _identifier_is_required(cls, data: Any) -> Any:
        # the member identifier is what a file must carry, whichever it is
        if isinstance(data, dict) and "required_fields" not in data:
            data = {**data, "required_fields": [data.get("identifier") or "employee_id"]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _x12_dates_are_d8(cls, data: Any) -> Any:
        # an 834's dates are all CCYYMMDD: that is its partner's date_format unless it says
        if isinstance(data, dict) and data.get("format") == "x12_834":
            data = {"date_format": D8_FORMAT, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Inbound:
        # options for other formats, and a push partner's `location` and `schedule`, are
        # accepted and unused: architecture.md's own example config carries them all.
        # Every problem is listed at once: fixing one should not reveal the next.
        found: list[tuple[Loc, str, object]] = []
        if self.format == "x12_834":
            found += self._x12_problems()
        if self.transport == "sftp_pull" and self.location is None:
            found.append((("location",), "sftp_pull needs 'location' (the partner's server)", None))
        if self.format == "fixed_width" and self.fixed_width is None:
            problem = "format fixed_width needs a 'fixed_width' section with its fields"
            found.append((("fixed_width",), problem, None))
        found += self._one_column_per_field_problems()
        mapped = set(self.column_mappings.values())
        if self.identifier not in mapped:
            problem = f"identifier {self.identifier!r} is not the target of any column mapping"
            found.append((("identifier",), problem, self.identifier))
        missing = [name for name in self.required_fields if name not in mapped]
        if missing:
            problem = f"required field(s) {missing} are not the target of any column mapping"
            found.append((("required_fields",), problem, missing))
        if self.format == "fixed_width" and self.fixed_width is not None:
            names = {f.name for f in self.fixed_width.fields}
            absent = sorted(set(self.column_mappings) - names)
            if absent:
                problem = f"column_mappings name field(s) {absent} missing from fixed_width.fields"
                found.append((("column_mappings",), problem, absent))
        csv = self.csv_options
        if self.format == "csv" and not csv.has_header and csv.columns:
            # a headerless file's columns are csv.columns: a name not among them is never
            # found, and every file would be refused for it
            absent = [name for name in self.column_mappings if name not in csv.columns]
            if absent:
                problem = f"column_mappings name column(s) {absent} missing from csv.columns"
                found.append((("column_mappings",), problem, absent))
        if found:
            raise _problems("Inbound", found)
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_at_once(
        cls, data: Any, handler: ModelWrapValidatorHandler[Inbound]
    ) -> Inbound:
        # (defined after `_consistent`, so it wraps it) a wrong field stops pydantic before the checks across fields (`_consistent`): they
        # are run again without the wrong fields, unless they read one of them (they would
        # judge its default, not what the file says)
        try:
            return handler(data)
        except ValidationError as invalid:
            errors = invalid.errors()
            wrong = {error["loc"][0] for error in errors if error["loc"]}
            read = _READ_ACROSS_FIELDS | ({"date_format"} if _is_x12(data) else set())
            if not isinstance(data, dict) or not wrong or wrong & read:
                raise
            try:
                handler({key: value for key, value in data.items() if key not in wrong})
            except ValidationError as across:
                found = [(tuple(e["loc"]), _message(e), e.get("input")) for e in errors]
                found += [(tuple(e["loc"]), _message(e), e.get("input")) for e in across.errors()]
                raise _problems("Inbound", found) from None
            raise

    def _one_column_per_field_problems(self) -> list[tuple[Loc, str, object]]:
        found: list[tuple[Loc, str, object]] = []
        sources: dict[str, list[str]] = {}
        for source, target in self.column_mappings.items():
            sources.setdefault(target, []).append(source)
        for target, names in sources.items():
            if len(names) > 1:
                problem = (
                    f"columns {names} all map to {target}: one column per field (a file"
                    " would need every one of them, and only the last would count)"
                )
                found.append((("column_mappings", names[-1]), problem, target))
        if self.identifier == "ssn" and "employee_id" in sources:
            problem = (
                "with identifier ssn, employee_id holds the SSN's keyed hash: the partner's"
                " own employee id has no column to go to (map it to group_id, or drop it)"
            )
            name = sources["employee_id"][0]
            found.append((("column_mappings", name), problem, "employee_id"))
        return found

    def _x12_problems(self) -> list[tuple[Loc, str, object]]:
        found: list[tuple[Loc, str, object]] = []
        if self.date_format != D8_FORMAT:
            problem = (
                f"x12_834 dates are CCYYMMDD: date_format must be {D8_FORMAT!r} or left out,"
                f" not {self.date_format!r}"
            )
            found.append((("date_format",), problem, self.date_format))
        unknown = [name for name in self.column_mappings if not is_reference(name)]
        if unknown:
            problem = (
                f"column_mappings name(s) {unknown} are not values of an 834 member loop;"
                " use element references such as 'REF*0F', NM103, NM104, DMG02, HD04,"
                " 'DTP*348', 'PER*EM' (see ingestion/partners/x12_834.py)"
            )
            found.append((("column_mappings",), problem, unknown))
        return found

    @property
    def csv_options(self) -> CsvOptions:
        return self.csv or CsvOptions()

    @property
    def xlsx_options(self) -> XlsxOptions:
        return self.xlsx or XlsxOptions()

    @property
    def key_field(self) -> str:
        return self.identifier


class Delivery(_Strict):
    method: Literal["sftp", "api"]
    host_env: EnvName | None = None
    path: str = "/reports/"
    url_env: EnvName | None = None


def _report_schedule(expression: str) -> str:
    """`daily` (architecture.md's word), `hourly`, `weekly`, or a cron string."""
    if expression in REPORT_SCHEDULE_WORDS:
        return expression
    return _cron(expression)


REPORT_SCHEDULE_WORDS = ("hourly", "daily", "weekly", "monthly")


class Outbound(_Strict):
    format: Literal["csv"] = "csv"
    columns: Annotated[list[str], Field(min_length=1)]
    schedule: Annotated[str, AfterValidator(_report_schedule)] = "daily"
    delivery: Delivery

    @field_validator("columns")
    @classmethod
    def _columns_once_each(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"column(s) {repeated} given more than once")
        return value


class EligibilityApi(_Strict):
    enabled: bool = True
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = 1000


class PartnerConfig(_Strict):
    partner_id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")]
    display_name: str
    inbound: Inbound
    outbound: Outbound | None = None
    eligibility_api: EligibilityApi = EligibilityApi()


# every key a partner config may hold, for "did you mean" on an unknown one
_KNOWN_KEYS = sorted(
    {
        name
        for model in (
            PartnerConfig,
            Inbound,
            CsvOptions,
            XlsxOptions,
            X12Options,
            FixedWidthOptions,
            FixedWidthField,
            RemoteLocation,
            FieldRule,
            Outbound,
            Delivery,
            EligibilityApi,
        )
        for name in model.model_fields
    }
)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in one partner config file."""

    file: Path
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file.name}: {self.key_path}" if self.key_path else self.file.name
        return f"{where}: {self.message}"


class PartnerConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            name = str(item)
            if "." in name:  # a column named `Date.Of.Birth` is one key, not three
                name = '"' + name.replace('"', '\\"') + '"'
            parts.append(("." if parts else "") + name)
    return "".join(parts)


def _message(error: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    key = str(error["loc"][-1]) if error["loc"] else ""
    kind = {bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "")
    if error["type"] == "string_type" and kind:
        if key.endswith("_env"):  # it may be the secret itself: never shown
            return (
                f"YAML read it as {kind}: give the name of the environment variable that holds"
                " the value, not the value"
            )
        message += f": YAML read it as {kind} ({str(value).lower()}); put it in quotes"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
        if close := difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.75):
            message += f": did you mean {close[0]!r}?"
    elif error["type"] == "model_type":
        message = f"expected a mapping (key: value lines), not {_yaml_kind(value)}"
    return message


def _yaml_kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "nothing" if value is None else type(value).__name__


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: the plain
    loader keeps the last silently, and which of two rules counts is the partner's call."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # a value YAML's own constructors refuse (`2024-02-30` read as a date, `!!int abc`)
        # is a problem at its line, not an exception that stops every partner loading
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{exc} (the value {_shown(node)})", node.start_mark
            ) from None


def _shown(node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else ""
    return repr(value) if len(value) <= 40 else repr(value[:40] + "...")


def _unique_key_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    """A mapping whose keys are the text written: every key in a partner config is a name,
    and plain YAML reads a column called `on`, `no` or `2024` as a boolean or a number
    (reported as "[1]" or "[2024]", or not matching the file's header). Merge keys (`<<:`)
    work as in plain YAML: a key the mapping gives itself overrides a merged one."""
    own = sum(1 for key, _ in node.value if key.tag != MERGE_TAG)
    loader.flatten_mapping(node)  # the merged pairs first, then the mapping's own
    merged = len(node.value) - own
    mapping: dict[object, object] = {}
    given: set[object] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a name, not a list or a mapping", key_node.start_mark
            )
        key = key_node.value
        if index >= merged:
            if key in given:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            given.add(key)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


MERGE_TAG = "tag:yaml.org,2002:merge"


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_key_mapping
)


MAX_CONFIG_BYTES = 1 << 20  # a partner's config is a page or two; the API reloads them live


def load_partner_config(path: Path) -> PartnerConfig:
    """Parse and validate one file; raises PartnerConfigError naming file, key path and problem."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise PartnerConfigError([ConfigProblem(path, "", "expected a mapping at the top level")])
    problems: list[ConfigProblem] = []
    partner_id = raw.get("partner_id")
    if isinstance(partner_id, str) and partner_id != path.stem:
        problem = f"{partner_id!r} must match the file name {path.stem!r}"
        problems.append(ConfigProblem(path, "partner_id", problem))
    try:
        config = PartnerConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [
            ConfigProblem(path, _key_path(err["loc"]), _message(err)) for err in exc.errors()
        ]
    if problems:
        raise PartnerConfigError(problems)
    return config


def _read_yaml(path: Path) -> object:
    def problem(where: str, message: str) -> PartnerConfigError:
        return PartnerConfigError([ConfigProblem(path, where, message)])

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise problem(
                "", f"{size:,} bytes: larger than a partner config can be ({MAX_CONFIG_BYTES:,})"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise problem("", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise problem(
            f"line {line}", f"not UTF-8: the byte {data[exc.start]:#04x} cannot be read"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: no mark
            where = f"line {text[: exc.position].count(chr(10)) + 1}"
            message = f"a control character ({exc.character!r}) that YAML does not allow"
        else:
            message = getattr(exc, "problem", None) or str(exc)
        raise problem(where, f"not valid YAML: {message}") from None
    except RecursionError:
        raise problem("", "not valid YAML: nested too deeply") from None


@dataclass(frozen=True)
class PartnerConfigs:
    configs: dict[str, PartnerConfig]
    problems: list[ConfigProblem]


CONFIG_SUFFIXES = (".yaml", ".yml")  # in any case: `initech.YAML` is not skipped unsaid


def load_partner_configs(directory: Path) -> PartnerConfigs:
    """Load every `*.yaml`/`*.yml` in a folder; bad files are reported, good ones still load."""
    configs: dict[str, PartnerConfig] = {}
    problems: list[ConfigProblem] = []
    paths = (
        sorted(p for p in directory.iterdir() if p.suffix.lower() in CONFIG_SUFFIXES)
        if directory.is_dir()
        else []
    )
    loaded_from: dict[str, Path] = {}
    for path in paths:
        try:
            config = load_partner_config(path)
        except PartnerConfigError as exc:
            problems.extend(exc.problems)
            continue
        except Exception as exc:  # a case the loader did not foresee: this file's, no one else's
            message = f"could not be loaded ({type(exc).__name__}); the other partners load"
            problems.append(ConfigProblem(path, "", message))
            continue
        if config.partner_id in loaded_from:  # acme.yaml and acme.yml: which one is meant?
            first = loaded_from[config.partner_id]
            problems.append(
                ConfigProblem(
                    path,
                    "partner_id",
                    f"{config.partner_id} is also configured in {first.name}; neither is loaded"
                    " until one is removed",
                )
            )
            configs.pop(config.partner_id, None)
            continue
        loaded_from[config.partner_id] = path
        configs[config.partner_id] = config
    return PartnerConfigs(configs, problems)

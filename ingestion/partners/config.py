"""Partner configuration: one YAML per partner, validated against a schema at load time.

A bad config is reported with its file, the key path and the problem, and never stops the
other partners from loading.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingestion.partners.fields import CANONICAL_FIELDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    quotechar: Annotated[str, Field(min_length=1, max_length=1)] = '"'
    encoding: str = "utf-8"
    has_header: bool = True
    columns: list[str] | None = None  # names for a headerless file, in order

    @model_validator(mode="after")
    def _headerless_needs_columns(self) -> CsvOptions:
        if not self.has_header and not self.columns:
            raise ValueError("a file without a header row needs 'columns' listing its column names")
        return self


class XlsxOptions(_Strict):
    sheet: str | None = None  # None: the first sheet
    header_row: Annotated[int, Field(ge=1)] = 1


class FixedWidthField(_Strict):
    name: str
    start: Annotated[int, Field(ge=1)]  # 1-based column, as partners' layouts are written
    width: Annotated[int, Field(ge=1)]


class FixedWidthOptions(_Strict):
    fields: Annotated[list[FixedWidthField], Field(min_length=1)]
    encoding: str = "utf-8"
    has_header: bool = False

    @property
    def record_length(self) -> int:
        return max(f.start + f.width - 1 for f in self.fields)


class RemoteLocation(_Strict):
    """Where a pull partner's own SFTP server is; credentials come from the named env vars."""

    host_env: str
    port: int = 22
    port_env: str | None = None
    username_env: str
    password_env: str | None = None
    key_env: str | None = None
    path: str = "/outbound"

    @model_validator(mode="after")
    def _needs_a_credential(self) -> RemoteLocation:
        if not (self.password_env or self.key_env):
            raise ValueError("give password_env or key_env (the env var holding the secret)")
        return self


class FieldRule(_Strict):
    type: Literal["string", "date", "enum", "number"] = "string"
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min: str | float | None = None  # dates: ISO date or "today"
    max: str | float | None = None
    allowed: list[str] | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("min", "max")
    @classmethod
    def _bound_is_readable(cls, value: str | float | None) -> str | float | None:
        if isinstance(value, str) and value != "today":
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is neither 'today' nor an ISO date") from None
        return value


Format = Literal["csv", "xlsx", "fixed_width"]


class Inbound(_Strict):
    transport: Literal["sftp_push", "sftp_pull"]
    location: RemoteLocation | None = None
    schedule: str = "0 * * * *"  # pull partners: when we poll their server
    filename_pattern: str = "*"
    format: Format
    csv: CsvOptions | None = None
    xlsx: XlsxOptions | None = None
    fixed_width: FixedWidthOptions | None = None
    identifier: Literal["employee_id", "ssn"] = "employee_id"
    column_mappings: dict[str, str] = Field(default_factory=dict)
    date_format: str = "%Y-%m-%d"
    required_fields: list[str] = Field(default_factory=lambda: ["employee_id"])
    validations: dict[str, FieldRule] = Field(default_factory=dict)

    @field_validator("column_mappings")
    @classmethod
    def _mappings_target_known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted({target for target in value.values() if target not in CANONICAL_FIELDS})
        if unknown:
            raise ValueError(
                f"maps to unknown field(s) {unknown}; known fields: {sorted(CANONICAL_FIELDS)}"
            )
        return value

    @field_validator("required_fields")
    @classmethod
    def _required_are_known(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in CANONICAL_FIELDS]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        return value

    @field_validator("validations")
    @classmethod
    def _validated_are_known(cls, value: dict[str, FieldRule]) -> dict[str, FieldRule]:
        unknown = [name for name in value if name not in CANONICAL_FIELDS]
        if unknown:
            raise ValueError(f"rules for unknown field(s) {unknown}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Inbound:
        if self.transport == "sftp_pull" and self.location is None:
            raise ValueError("sftp_pull needs 'location' (the partner's server)")
        if self.format == "fixed_width" and self.fixed_width is None:
            raise ValueError("format fixed_width needs a 'fixed_width' section with its fields")
        mapped = set(self.column_mappings.values())
        if self.identifier not in mapped:
            raise ValueError(
                f"identifier {self.identifier!r} is not the target of any column mapping"
            )
        missing = [name for name in self.required_fields if name not in mapped]
        if missing:
            raise ValueError(
                f"required field(s) {missing} are not the target of any column mapping"
            )
        if self.format == "fixed_width" and self.fixed_width is not None:
            names = {f.name for f in self.fixed_width.fields}
            absent = sorted(set(self.column_mappings) - names)
            if absent:
                raise ValueError(
                    f"column_mappings name field(s) {absent} missing from fixed_width.fields"
                )
        return self

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
    host_env: str | None = None
    path: str = "/reports/"
    url_env: str | None = None


class Outbound(_Strict):
    format: Literal["csv"] = "csv"
    columns: list[str]
    schedule: str = "daily"
    delivery: Delivery


class EligibilityApi(_Strict):
    enabled: bool = True
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = 1000


class PartnerConfig(_Strict):
    partner_id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")]
    display_name: str
    inbound: Inbound
    outbound: Outbound | None = None
    eligibility_api: EligibilityApi = EligibilityApi()


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
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def load_partner_config(path: Path) -> PartnerConfig:
    """Parse and validate one file; raises PartnerConfigError naming file, key path and problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PartnerConfigError(
            [ConfigProblem(path, where, f"not valid YAML: {problem}")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PartnerConfigError([ConfigProblem(path, "", f"cannot read: {exc}")]) from None
    if not isinstance(raw, dict):
        raise PartnerConfigError([ConfigProblem(path, "", "expected a mapping at the top level")])
    try:
        config = PartnerConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [
            ConfigProblem(path, _key_path(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise PartnerConfigError(problems) from None
    if config.partner_id != path.stem:
        raise PartnerConfigError(
            [
                ConfigProblem(
                    path,
                    "partner_id",
                    f"{config.partner_id!r} must match the file name {path.stem!r}",
                )
            ]
        )
    return config


@dataclass(frozen=True)
class PartnerConfigs:
    configs: dict[str, PartnerConfig]
    problems: list[ConfigProblem]


def load_partner_configs(directory: Path) -> PartnerConfigs:
    """Load every `*.yaml`/`*.yml` in a folder; bad files are reported, good ones still load."""
    configs: dict[str, PartnerConfig] = {}
    problems: list[ConfigProblem] = []
    paths = (
        sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []
    )
    for path in paths:
        try:
            config = load_partner_config(path)
        except PartnerConfigError as exc:
            problems.extend(exc.problems)
            continue
        configs[config.partner_id] = config
    return PartnerConfigs(configs, problems)

"""Per-row validation built from a partner's config (pandera), in chunks.

A row either becomes a clean record for the raw table or a reject with every reason found;
a bad row never fails the file.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from ingestion.partners.config import FieldRule, PartnerConfig
from ingestion.partners.fields import CANONICAL_FIELDS, DATE_FIELDS, STORED_MEMBER_FIELDS
from ingestion.partners.formats import RawRow, mapped_fields
from mdp.phi import keyed_hash, normalize_ssn

MEMBER_ARROW_SCHEMA = pa_arrow.schema(
    [pa_arrow.field("partner_id", pa_arrow.string(), nullable=False)]
    + [
        pa_arrow.field(
            name,
            pa_arrow.date32() if CANONICAL_FIELDS.get(name) == "date" else pa_arrow.string(),
            nullable=name != "employee_id",  # part of the merge key, as the dlt hints say
        )
        for name in STORED_MEMBER_FIELDS
    ]
    + [
        pa_arrow.field("source_file_id", pa_arrow.string(), nullable=False),
        pa_arrow.field("source_line_number", pa_arrow.int64(), nullable=False),
        pa_arrow.field("file_received_at", pa_arrow.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass
class Reject:
    line: int
    key: str | None  # identifier as shown back to the partner (an SSN only as its last 4)
    errors: list[str]


@dataclass
class ValidatedChunk:
    valid: pa_arrow.Table
    rejects: list[Reject] = field(default_factory=list)


def _rule_checks(name: str, rule: FieldRule, today: dt.date) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if rule.pattern is not None:
        checks.append(
            pa.Check.str_matches(rule.pattern, error=f"does not match the pattern {rule.pattern}")
        )
    if rule.min_length is not None or rule.max_length is not None:
        checks.append(
            pa.Check.str_length(
                rule.min_length,
                rule.max_length,
                error=f"length must be between {rule.min_length} and {rule.max_length}",
            )
        )
    if rule.allowed is not None:
        checks.append(pa.Check.isin(rule.allowed, error=f"must be one of {rule.allowed}"))
    if name in DATE_FIELDS:
        for bound, op in ((rule.min, "ge"), (rule.max, "le")):
            if bound is None:
                continue
            limit = today if bound == "today" else dt.date.fromisoformat(str(bound))
            label = f"today ({limit})" if bound == "today" else str(limit)
            word = "before" if op == "ge" else "after"
            checks.append(getattr(pa.Check, op)(pd.Timestamp(limit), error=f"is {word} {label}"))
    return checks


class RowValidator:
    """Validates one file's rows chunk by chunk, remembering ids across chunks."""

    def __init__(
        self,
        config: PartnerConfig,
        file_id: str,
        received_at: dt.datetime,
        today: dt.date | None = None,
    ):
        self.config = config
        self.inbound = config.inbound
        self.file_id = file_id
        self.received_at = received_at
        self.today = today or dt.date.today()
        self.fields = mapped_fields(self.inbound)
        self._first_line_of: dict[str, int] = {}
        self.schema = pa.DataFrameSchema(
            {
                name: pa.Column(
                    "datetime64[ns]" if name in DATE_FIELDS else object,
                    nullable=name not in self.inbound.required_fields,
                    checks=_rule_checks(
                        name, self.inbound.validations.get(name, FieldRule()), self.today
                    ),
                    coerce=False,
                )
                for name in self.fields
            },
            strict=False,
        )

    def validate(self, rows: list[RawRow]) -> ValidatedChunk:
        errors: dict[int, list[str]] = defaultdict(list)  # position in chunk -> messages
        for pos, row in enumerate(rows):
            if row.problem:
                errors[pos].append(row.problem)
        frame = pd.DataFrame.from_records([row.values for row in rows], columns=self.fields).astype(
            object
        )
        frame = frame.where(frame.notna(), None)
        unparsed_dates = self._parse_dates(frame, errors)
        self._run_schema(frame, errors, unparsed_dates)
        ssn_hash, ssn_last4 = self._hash_ssn(frame, errors)
        keys = ssn_hash if self.inbound.identifier == "ssn" else frame["employee_id"]
        self._flag_repeated_ids(rows, keys, errors)

        rejects = [
            Reject(rows[pos].line, self._shown_key(frame, ssn_last4, pos), messages)
            for pos, messages in sorted(errors.items())
        ]
        valid_mask = pd.Series(True, index=frame.index)
        if errors:
            valid_mask.iloc[list(errors)] = False
        return ValidatedChunk(
            self._to_arrow(frame, rows, keys, ssn_hash, ssn_last4, valid_mask), rejects
        )

    def _parse_dates(
        self, frame: pd.DataFrame, errors: dict[int, list[str]]
    ) -> dict[str, set[int]]:
        unparsed: dict[str, set[int]] = {}
        fmt = self.inbound.date_format
        for name in self.fields:
            if name not in DATE_FIELDS:
                continue
            text = frame[name]
            parsed = pd.to_datetime(text, format=fmt, errors="coerce")
            bad = text.notna() & parsed.isna()
            unparsed[name] = set(bad[bad].index)
            for pos in unparsed[name]:
                errors[pos].append(f"{name}: {text.iloc[pos]!r} is not a date in the format {fmt}")
            frame[name] = parsed.astype("datetime64[ns]")
        return unparsed

    def _run_schema(
        self, frame: pd.DataFrame, errors: dict[int, list[str]], unparsed: dict[str, set[int]]
    ) -> None:
        try:
            self.schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            for column, check, value, index in zip(
                cases["column"], cases["check"], cases["failure_case"], cases["index"], strict=True
            ):
                if index is None or pd.isna(index):
                    continue  # a frame-level failure; row-level ones below say the same per row
                pos = int(index)
                if check == "not_nullable":
                    if pos not in unparsed.get(column, ()):
                        errors[pos].append(f"{column}: required but empty")
                    continue
                if column == "ssn":
                    errors[pos].append(f"ssn: {check}")
                elif isinstance(value, pd.Timestamp):
                    errors[pos].append(f"{column}: {value.date()} {check}")
                else:
                    errors[pos].append(f"{column}: {value!r} {check}")

    def _hash_ssn(
        self, frame: pd.DataFrame, errors: dict[int, list[str]]
    ) -> tuple[pd.Series, pd.Series]:
        if "ssn" not in frame:
            empty = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            return empty, empty
        digits = [normalize_ssn(v) if isinstance(v, str) else None for v in frame["ssn"]]
        for pos, (raw, clean) in enumerate(zip(frame["ssn"], digits, strict=True)):
            if isinstance(raw, str) and clean is None:
                if not any(m.startswith("ssn:") for m in errors.get(pos, [])):
                    errors[pos].append("ssn: must have 9 digits")
        hashed = pd.Series(
            [keyed_hash(d) if d else None for d in digits], index=frame.index, dtype=object
        )
        last4 = pd.Series([d[-4:] if d else None for d in digits], index=frame.index, dtype=object)
        frame["ssn"] = None  # the clear SSN goes no further than this line
        return hashed, last4

    def _flag_repeated_ids(
        self, rows: list[RawRow], keys: pd.Series, errors: dict[int, list[str]]
    ) -> None:
        label = "ssn" if self.inbound.identifier == "ssn" else "employee_id"
        for pos, key in enumerate(keys):
            if pos in errors:
                continue
            if key is None:  # the member identifier is always required, configured or not
                errors[pos].append(f"{label}: required but empty (it identifies the member)")
                continue
            first = self._first_line_of.setdefault(key, rows[pos].line)
            if first != rows[pos].line:
                shown = "" if label == "ssn" else f" {key!r}"
                errors[pos].append(f"{label}:{shown} repeats the record on line {first}")

    def _shown_key(self, frame: pd.DataFrame, last4: pd.Series, pos: int) -> str | None:
        if self.inbound.identifier == "ssn":
            return f"***-**-{last4.iloc[pos]}" if last4.iloc[pos] else None
        value = frame["employee_id"].iloc[pos]
        return None if value is None else str(value)

    def _to_arrow(
        self,
        frame: pd.DataFrame,
        rows: list[RawRow],
        keys: pd.Series,
        ssn_hash: pd.Series,
        ssn_last4: pd.Series,
        valid: pd.Series,
    ) -> pa_arrow.Table:
        count = int(valid.sum())
        columns: dict[str, object] = {"partner_id": [self.config.partner_id] * count}
        for name in STORED_MEMBER_FIELDS:
            if name == "employee_id":
                series = keys
            elif name == "ssn_hash":
                series = ssn_hash
            elif name == "ssn_last4":
                series = ssn_last4
            elif name in frame:
                series = frame[name]
            else:
                columns[name] = pa_arrow.nulls(count, MEMBER_ARROW_SCHEMA.field(name).type)
                continue
            kept = series[valid]
            if name in DATE_FIELDS:
                columns[name] = pa_arrow.array(
                    kept.dt.date.where(kept.notna(), None), pa_arrow.date32()
                )
            else:
                columns[name] = pa_arrow.array(kept.tolist(), pa_arrow.string())
        columns["source_file_id"] = [self.file_id] * count
        columns["source_line_number"] = [rows[pos].line for pos in valid[valid].index]
        columns["file_received_at"] = pa_arrow.array(
            [self.received_at] * count, pa_arrow.timestamp("us", tz="UTC")
        )
        return pa_arrow.table(columns, schema=MEMBER_ARROW_SCHEMA)

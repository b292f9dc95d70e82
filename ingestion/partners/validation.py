"""Per-row validation built from a partner's config, a column at a time, in chunks.

A row either becomes a clean record for the raw table or a reject with every reason found;
a bad row never fails the file. Checks run on whole Arrow columns (see column_checks); only
the failing rows are turned into messages, in the order the partner reads them: row problem,
unreadable dates, then field by field (required, pattern, length, allowed values, date
bounds), then the SSN's digits, then a missing or repeated member identifier.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa_arrow
import pyarrow.compute as pc

from ingestion.partners.batches import RowBatch
from ingestion.partners.column_checks import parse_dates, positions, regex_matches
from ingestion.partners.config import FieldRule, PartnerConfig
from ingestion.partners.fields import CANONICAL_FIELDS, DATE_FIELDS, STORED_MEMBER_FIELDS
from ingestion.partners.formats import NOT_IN_ROSTER, mapped_fields
from ingestion.partners.limits import MAX_MEMBER_ID_CHARS
from mdp.phi import keyed_hash, masked_ssns, never_issued, normalize_ssn

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

ISO_DATE = "%Y-%m-%d"
# the same shapes for Arrow's RE2 (no look-behind, no back-references)
_SSN_SHAPED_RE2 = (
    r"(^|[^0-9])([0-9]{9}|[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3}\.[0-9]{2}\.[0-9]{4}"
    r"|[0-9]{3} [0-9]{2} [0-9]{4}|[0-9]{3}_[0-9]{2}_[0-9]{4})([^0-9]|$)"
)
# fields of free text, where nine digits shaped like an SSN are an SSN in the wrong column:
# stored there, it would sit in clear where SSNs are kept only as a keyed hash + last 4
FREE_TEXT_FIELDS = (
    "first_name",
    "middle_name",
    "last_name",
    "email",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "relationship",
    "program",
    "coverage_status",
)

Errors = dict[int, list[str]]  # position in chunk -> messages


@dataclass
class Reject:
    line: int
    key: str | None  # identifier as shown back to the partner (an SSN only as its last 4)
    errors: list[str]


@dataclass
class ValidatedChunk:
    valid: pa_arrow.Table
    rejects: list[Reject] = field(default_factory=list)
    # the stored key (employee_id, or the SSN's hash) of each rejected row that has one: in a
    # full file such a member is present, just not loadable, and must not count as left out
    rejected_keys: list[str] = field(default_factory=list)
    # ... and of every rejected row, in the roster or not: whom the error report names
    reported_keys: list[str] = field(default_factory=list)


def _date_bounds(rule: FieldRule, today: dt.date) -> list[tuple[str, dt.date, str]]:
    """(compute function that flags a failure, limit, message) per configured bound."""
    bounds = []
    for bound, failing, word in ((rule.min, "less", "before"), (rule.max, "greater", "after")):
        if bound is None:
            continue
        limit = today if bound == "today" else dt.date.fromisoformat(str(bound))
        label = f"today ({limit})" if bound == "today" else str(limit)
        bounds.append((failing, limit, f"is {word} {label}"))
    return bounds


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
        self.rules = {name: self.inbound.validations.get(name, FieldRule()) for name in self.fields}
        # every key registered so far in this file, with the line that registered it
        self._seen_keys = pa_arrow.array([], pa_arrow.string())
        self._seen_lines = pa_arrow.array([], pa_arrow.int64())

    def validate(self, batch: RowBatch) -> ValidatedChunk:
        errors: Errors = defaultdict(list)
        for pos, problem in sorted(batch.problems.items()):
            errors[pos].append(problem)
        text = dict(batch.columns)
        for name in self.fields:
            allowed = self.rules[name].allowed if name in self.rules else None
            if allowed:
                text[name] = as_allowed_spelling(text[name], allowed)
        dates, unparsed = self._parse_dates(text, errors)
        for name in self.fields:
            kept = {pos for pos, fields in batch.keeps.items() if name in fields}
            self._check_field(
                name, text[name], dates.get(name), unparsed.get(name, set()), errors, kept
            )
        _check_coverage_order(dates, errors)
        self._refuse_ssns_out_of_place(text, errors)
        ssn_hash, ssn_last4 = self._hash_ssn(text, errors, len(batch))
        keys = ssn_hash if self.inbound.identifier == "ssn" else text["employee_id"]
        self._flag_repeated_ids(batch.lines, keys, errors)

        shown = self._shown_keys(text, ssn_last4, errors)
        lines = batch.lines.to_numpy(zero_copy_only=False)
        rejects = [
            Reject(int(lines[pos]), shown[pos], messages)
            for pos, messages in sorted(errors.items())
        ]
        valid = np.ones(len(batch), dtype=bool)
        valid[list(errors)] = False
        columns = {
            **text,
            **dates,
            "ssn_hash": ssn_hash,
            "ssn_last4": ssn_last4,
            "employee_id": keys,
        }
        present = [
            pos
            for pos in sorted(errors)
            if not batch.problems.get(pos, "").startswith(NOT_IN_ROSTER)
        ]
        rejected_keys = [key for key in _values(keys, present) if key is not None]
        reported_keys = [key for key in _values(keys, sorted(errors)) if key is not None]
        return ValidatedChunk(
            self._to_arrow(columns, batch.lines, pa_arrow.array(valid)),
            rejects,
            rejected_keys,
            reported_keys,
        )

    def _parse_dates(
        self, text: dict[str, pa_arrow.Array], errors: Errors
    ) -> tuple[dict[str, pa_arrow.Array], dict[str, set[int]]]:
        fmt = self.inbound.date_format
        dates: dict[str, pa_arrow.Array] = {}
        unparsed: dict[str, set[int]] = {}
        for name in self.fields:
            if name not in DATE_FIELDS:
                continue
            dates[name] = parse_dates(text[name], fmt)
            if name == "date_of_birth" and "%y" in fmt:
                # only years read from two digits: a date cell's four-digit year stands
                dates[name] = _born_last_century(dates[name], self.today)
            if self.inbound.format == "xlsx" and fmt != ISO_DATE:
                # date cells arrive as ISO text (see formats._cell_text), text cells as typed
                dates[name] = pc.coalesce(dates[name], parse_dates(text[name], ISO_DATE))
            bad = positions(pc.and_(pc.is_valid(text[name]), pc.is_null(dates[name])))
            unparsed[name] = set(bad)
            for pos, value in _at(text[name], bad):
                errors[pos].append(
                    f"{name}: {self._shown(value)} is not a date in the format {fmt}"
                )
        return dates, unparsed

    def _check_field(
        self,
        name: str,
        text: pa_arrow.Array,
        date: pa_arrow.Array | None,
        unparsed: set[int],
        errors: Errors,
        kept: set[int],
    ) -> None:
        if name in self.inbound.required_fields:
            for pos in positions(pc.is_null(text if date is None else date)):
                if pos not in unparsed and pos not in kept:  # kept: the stored value stands
                    errors[pos].append(f"{name}: required but empty")
        rule = self.rules[name]
        if date is not None:
            for failing, limit, message in _date_bounds(rule, self.today):
                flagged = getattr(pc, failing)(date, pa_arrow.scalar(limit, pa_arrow.date32()))
                for pos, value in _at(date, positions(flagged)):
                    errors[pos].append(f"{name}: {value} {message}")
            return
        failures: list[tuple[pa_arrow.Array, str]] = []
        if rule.pattern is not None:
            failures.append(
                (
                    pc.invert(regex_matches(text, rule.pattern)),
                    f"does not match the pattern {rule.pattern}",
                )
            )
        if rule.min_length is not None or rule.max_length is not None:
            length = pc.utf8_length(text)
            too_short = pc.less(length, rule.min_length) if rule.min_length is not None else None
            too_long = pc.greater(length, rule.max_length) if rule.max_length is not None else None
            flagged = (
                too_short
                if too_long is None
                else too_long
                if too_short is None
                else pc.or_(too_short, too_long)
            )
            failures.append((flagged, _length_rule(rule.min_length, rule.max_length)))
        if rule.allowed is not None:
            failures.append(
                (
                    pc.invert(pc.is_in(text, pa_arrow.array(rule.allowed, pa_arrow.string()))),
                    f"must be one of {rule.allowed}",
                )
            )
        if name == "employee_id":
            failures.append(
                (
                    pc.greater(pc.utf8_length(text), MAX_MEMBER_ID_CHARS),
                    f"is longer than {MAX_MEMBER_ID_CHARS} characters, the longest member id"
                    " the eligibility API takes",
                )
            )
        for flagged, message in failures:
            for pos, value in _at(text, positions(pc.and_(flagged, pc.is_valid(text)))):
                # the SSN itself never goes into a message
                errors[pos].append(
                    f"ssn: {message}"
                    if name == "ssn"
                    else f"{name}: {self._shown(value)} {message}"
                )

    def _hash_ssn(
        self, text: dict[str, pa_arrow.Array], errors: Errors, count: int
    ) -> tuple[pa_arrow.Array, pa_arrow.Array]:
        if "ssn" not in text:
            empty = pa_arrow.nulls(count, pa_arrow.string())
            return empty, empty
        raw = text["ssn"].to_pylist()
        digits = [normalize_ssn(v) if v is not None else None for v in raw]
        for pos, (value, clean) in enumerate(zip(raw, digits, strict=True)):
            if value is not None and clean is None:
                if not any(m.startswith("ssn:") for m in errors.get(pos, [])):
                    errors[pos].append("ssn: must have 9 digits")
            elif clean is not None and (why := never_issued(clean)):
                errors[pos].append(f"ssn: ***-**-{clean[-4:]} is no SSN: {why}")
        hashed = pa_arrow.array([keyed_hash(d) if d else None for d in digits], pa_arrow.string())
        last4 = pa_arrow.array([d[-4:] if d else None for d in digits], pa_arrow.string())
        text["ssn"] = pa_arrow.nulls(count, pa_arrow.string())  # the clear SSN goes no further
        return hashed, last4

    def _refuse_ssns_out_of_place(self, text: dict[str, pa_arrow.Array], errors: Errors) -> None:
        for name in FREE_TEXT_FIELDS:
            if name not in self.fields or _fewer_than_nine_digits(text[name]):
                continue  # most columns: a byte count spares the regex (~0.1 s per 500K rows)
            found = pc.match_substring_regex(text[name], _SSN_SHAPED_RE2)
            for pos in positions(found):
                errors[pos].append(
                    f"{name}: holds nine digits shaped like an SSN; an SSN goes only in the"
                    " partner's SSN column (kept as a keyed hash + last 4), never in clear"
                )

    def _shown(self, value: object) -> str:
        """A value as a message quotes it. A partner may put an SSN in the wrong column: an
        SSN-shaped run of digits is masked to its last 4."""
        return masked_ssns(repr(value))

    def _flag_repeated_ids(
        self, lines: pa_arrow.Array, keys: pa_arrow.Array, errors: Errors
    ) -> None:
        """Rows without other errors register their key; a later row with a key already
        registered (in this chunk or an earlier one) repeats the record."""
        label = "ssn" if self.inbound.identifier == "ssn" else "employee_id"
        unchecked = np.ones(len(keys), dtype=bool)
        unchecked[list(errors)] = False
        unchecked = pa_arrow.array(unchecked)
        for pos in positions(pc.and_(unchecked, pc.is_null(keys))):
            # the member identifier is always required, configured or not
            errors[pos].append(f"{label}: required but empty (it identifies the member)")
        candidates = pc.indices_nonzero(pc.and_(unchecked, pc.is_valid(keys)))
        chunk_keys, chunk_lines = keys.take(candidates), lines.take(candidates)
        # the few rows whose key was registered before or appears twice here, in Python.
        # Registered keys are probed against this chunk's (hashing the chunk, not all of them)
        hits = pc.is_in(self._seen_keys, value_set=chunk_keys)
        registered_at = dict(
            zip(
                self._seen_keys.filter(hits).to_pylist(),
                self._seen_lines.filter(hits).to_pylist(),
                strict=True,
            )
        )
        counts = pc.value_counts(chunk_keys)
        twice = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        repeated = pa_arrow.array([*registered_at, *twice.to_pylist()], pa_arrow.string())
        suspects = positions(pc.is_in(chunk_keys, value_set=repeated))
        first_here: dict[str, int] = {}
        repeats = np.zeros(len(chunk_keys), dtype=bool)
        for index, key, line in zip(
            suspects, _values(chunk_keys, suspects), _values(chunk_lines, suspects), strict=True
        ):
            first = registered_at.get(key) or first_here.setdefault(key, line)
            if first != line:
                repeats[index] = True
                shown = "" if label == "ssn" else f" {key!r}"
                errors[candidates[index].as_py()].append(
                    f"{label}:{shown} repeats the record on line {first}"
                )
        registered = pa_arrow.array(~repeats)
        self._seen_keys = pa_arrow.concat_arrays([self._seen_keys, chunk_keys.filter(registered)])
        self._seen_lines = pa_arrow.concat_arrays(
            [self._seen_lines, chunk_lines.filter(registered)]
        )

    def _shown_keys(
        self, text: dict[str, pa_arrow.Array], last4: pa_arrow.Array, errors: Errors
    ) -> dict[int, str | None]:
        """Each rejected row's key as its error report shows it: an employee id that a message
        of the row quotes masked (an SSN sent as the id, refused by the id's pattern: 834
        files' REF*0F often carries one) is masked here too; any other as sent."""
        rejected = sorted(errors)
        if self.inbound.identifier == "ssn":
            return {pos: f"***-**-{v}" if v else None for pos, v in _at(last4, rejected)}
        return {
            pos: masked_ssns(v)
            if v and any(m.startswith("employee_id:") and "***-**-" in m for m in errors[pos])
            else v
            for pos, v in _at(text["employee_id"], rejected)
        }

    def _to_arrow(
        self, columns: dict[str, pa_arrow.Array], lines: pa_arrow.Array, valid: pa_arrow.Array
    ) -> pa_arrow.Table:
        count = pc.sum(valid).as_py() or 0
        kept: dict[str, pa_arrow.Array] = {
            "partner_id": pa_arrow.repeat(self.config.partner_id, count).cast(pa_arrow.string())
        }
        for name in STORED_MEMBER_FIELDS:
            if name in columns:
                kept[name] = columns[name].filter(valid)
            else:
                kept[name] = pa_arrow.nulls(count, MEMBER_ARROW_SCHEMA.field(name).type)
        kept["source_file_id"] = pa_arrow.repeat(self.file_id, count).cast(pa_arrow.string())
        kept["source_line_number"] = lines.filter(valid)
        kept["file_received_at"] = pa_arrow.repeat(
            pa_arrow.scalar(self.received_at, pa_arrow.timestamp("us", tz="UTC")), count
        )
        return pa_arrow.table(kept, schema=MEMBER_ARROW_SCHEMA)


def as_allowed_spelling(values: pa_arrow.Array, allowed: list[str]) -> pa_arrow.Array:
    """Values that are an allowed value in another case (`m` for `M`) as the config spells
    it; the rest as they are. Left alone when two allowed values differ only in case."""
    folded = [value.lower() for value in allowed]  # as utf8_lower folds the values
    if len(set(folded)) < len(folded):
        return values
    index = pc.index_in(pc.utf8_lower(values), value_set=pa_arrow.array(folded, pa_arrow.string()))
    spelled = pa_arrow.array(allowed, pa_arrow.string()).take(index)
    return pc.coalesce(spelled, values)


def _values(values: pa_arrow.Array, where: list[int]) -> list[object]:
    return values.take(pa_arrow.array(where, pa_arrow.int64())).to_pylist() if where else []


def _at(values: pa_arrow.Array, where: list[int]) -> list[tuple[int, object]]:
    """(position, Python value) pairs for a few positions of an array."""
    if not where:
        return []
    return list(
        zip(where, values.take(pa_arrow.array(where, pa_arrow.int64())).to_pylist(), strict=True)
    )


def _length_rule(least: int | None, most: int | None) -> str:
    if least is not None and most is not None:
        return f"length must be between {least} and {most}"
    if least is not None:
        return f"length must be at least {least}"
    return f"length must be at most {most}"


def _born_last_century(dates: pa_arrow.Array, today: dt.date) -> pa_arrow.Array:
    """Two-digit years read as Python reads them (69-99: 1900s, 00-68: 2000s) put a birth in
    1960 in 2060: a birth date after today is taken as 100 years earlier."""
    late = positions(pc.greater(dates, pa_arrow.scalar(today, pa_arrow.date32())))
    if not late:
        return dates
    earlier = []
    for value in _values(dates, late):
        try:
            earlier.append(value.replace(year=value.year - 100))
        except ValueError:  # 29 February of a year whose century year is not leap
            earlier.append(value.replace(year=value.year - 100, day=28))
    mask = np.zeros(len(dates), dtype=bool)
    mask[late] = True
    return pc.replace_with_mask(
        dates, pa_arrow.array(mask), pa_arrow.array(earlier, pa_arrow.date32())
    )


def _check_coverage_order(dates: dict[str, pa_arrow.Array], errors: Errors) -> None:
    """Coverage that ends before it starts can never hold: which date is wrong is the
    partner's to say, so the row is rejected rather than answered."""
    start, end = dates.get("eligibility_start_date"), dates.get("eligibility_end_date")
    if start is None or end is None:
        return
    backwards = positions(pc.less(end, start))
    for pos, (first, last) in zip(
        backwards, zip(_values(start, backwards), _values(end, backwards), strict=True), strict=True
    ):
        errors[pos].append(
            f"eligibility_end_date: {last.isoformat()} is before eligibility_start_date"
            f" {first.isoformat()}"
        )


_DIGIT_BYTES = np.zeros(256, dtype=bool)
_DIGIT_BYTES[ord("0") : ord("9") + 1] = True


def _fewer_than_nine_digits(column: pa_arrow.Array) -> bool:
    """Whether the whole column holds fewer than nine digits: no value can hold an SSN."""
    if isinstance(column, pa_arrow.ChunkedArray):
        return all(_fewer_than_nine_digits(chunk) for chunk in column.chunks)
    buffers = column.buffers()
    if len(column) == 0 or column.null_count == len(column) or buffers[2] is None:
        return True
    offsets = np.frombuffer(buffers[1], np.int32)[column.offset : column.offset + len(column) + 1]
    data = np.frombuffer(buffers[2], np.uint8)[offsets[0] : offsets[-1]]
    return int(np.count_nonzero(_DIGIT_BYTES[data])) < 9

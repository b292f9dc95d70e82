"""Parsed rows as columns: what every reader hands the validator, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import pyarrow as pa
import pyarrow.compute as pc

from ingestion.partners.formats import RawRow
from ingestion.partners.limits import MAX_VALUE_CHARS


@dataclass
class RowBatch:
    """A chunk of rows: one string column per mapped field (stripped, null when blank), the
    line where each row starts, and the row-level problems of the few malformed rows."""

    lines: pa.Int64Array
    columns: dict[str, pa.StringArray]
    problems: dict[int, str] = field(default_factory=dict)  # position in batch -> problem
    # position in batch -> fields whose blank keeps the stored value (see RawRow.keeps)
    keeps: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines)


def batch_from_rows(rows: list[RawRow], fields: list[str]) -> RowBatch:
    values = list(zip(*(row.values for row in rows), strict=True)) if rows else [()] * len(fields)
    batch = RowBatch(
        lines=pa.array([row.line for row in rows], pa.int64()),
        columns={
            name: pa.array(column, pa.string()) for name, column in zip(fields, values, strict=True)
        },
        problems={pos: row.problem for pos, row in enumerate(rows) if row.problem},
        keeps={pos: row.keeps for pos, row in enumerate(rows) if row.keeps},
    )
    _reject_nul_characters(batch)
    _reject_overlong_values(batch)
    return batch


def _reject_overlong_values(batch: RowBatch) -> None:
    """A value longer than any member field holds (a quote opened by mistake, a pasted
    document) rejects its row, and is cut to MAX_VALUE_CHARS for the report. The csv module
    refused it outright (over its field limit), and the whole file was quarantined."""
    for name, column in batch.columns.items():
        lengths = pc.utf8_length(column)
        if (pc.max(lengths).as_py() or 0) <= MAX_VALUE_CHARS:
            continue
        flagged = pc.fill_null(pc.greater(lengths, MAX_VALUE_CHARS), False)
        for pos, length in zip(
            pc.indices_nonzero(flagged).to_pylist(),
            lengths.filter(flagged).to_pylist(),
            strict=True,
        ):
            problem = (
                f"{name}: {length:,} characters, longer than a value can be ({MAX_VALUE_CHARS:,})"
            )
            known = batch.problems.get(pos)
            batch.problems[pos] = f"{known}; {problem}" if known else problem
        batch.columns[name] = pc.utf8_slice_codeunits(column, 0, MAX_VALUE_CHARS)


def _reject_nul_characters(batch: RowBatch) -> None:
    """A value holding a NUL character rejects its row, and the NUL is shown as U+FFFD: Postgres
    text cannot hold one, so one such value failed the whole file's load. (The Arrow reader
    never sees one: a file with a NUL byte goes to these readers.)"""
    for name, column in batch.columns.items():
        holding = pc.match_substring(column, NUL)
        if not pc.any(holding).as_py():
            continue
        problem = f"{name}: holds a NUL character (byte 0), which cannot be stored"
        for pos in pc.indices_nonzero(pc.fill_null(holding, False)).to_pylist():
            known = batch.problems.get(pos)
            batch.problems[pos] = f"{known}; {problem}" if known else problem
        batch.columns[name] = pc.replace_substring(column, NUL, "\ufffd")


NUL = "\x00"


def batches_from_rows(rows: Iterable[RawRow], fields: list[str], size: int) -> Iterator[RowBatch]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield batch_from_rows(chunk, fields)

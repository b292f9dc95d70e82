"""Parsed rows as columns: what every reader hands the validator, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import pyarrow as pa

from ingestion.partners.formats import RawRow


@dataclass
class RowBatch:
    """A chunk of rows: one string column per mapped field (stripped, null when blank), the
    line where each row starts, and the row-level problems of the few malformed rows."""

    lines: pa.Int64Array
    columns: dict[str, pa.StringArray]
    problems: dict[int, str] = field(default_factory=dict)  # position in batch -> problem

    def __len__(self) -> int:
        return len(self.lines)


def batch_from_rows(rows: list[RawRow], fields: list[str]) -> RowBatch:
    values = list(zip(*(row.values for row in rows), strict=True)) if rows else [()] * len(fields)
    return RowBatch(
        lines=pa.array([row.line for row in rows], pa.int64()),
        columns={
            name: pa.array(column, pa.string()) for name, column in zip(fields, values, strict=True)
        },
        problems={pos: row.problem for pos, row in enumerate(rows) if row.problem},
    )


def batches_from_rows(rows: Iterable[RawRow], fields: list[str], size: int) -> Iterator[RowBatch]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield batch_from_rows(chunk, fields)

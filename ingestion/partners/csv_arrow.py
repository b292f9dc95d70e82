"""The fast path for plain UTF-8 CSV files: pyarrow's parser, with physical line numbers.

pyarrow gives no line numbers. A record starts on the line after the previous record's
first line plus the line breaks quoted inside that record's values, which holds exactly when
the file has no blank lines (pyarrow skips them, line numbers count them). So the sum of
record spans is checked against a count of the file's line breaks. A file that does not fit
(blank lines, a wrong field count, bytes that are not UTF-8, NULs, a quoted header, another
encoding) gets None: the caller reads it with the stdlib reader, which reports such details.
"""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ingestion.partners.batches import RowBatch
from ingestion.partners.config import Inbound
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import _check_columns, mapped_fields

# every character str.strip() removes (the stdlib path strips with it); a test checks the list
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_NULL_TEXT = pa.scalar(None, pa.string())


def read_csv_batches(path: Path, inbound: Inbound, size: int) -> list[RowBatch] | None:
    """The whole file as batches of `size` rows, or None when only the stdlib reader fits.

    Eager on purpose: the choice of reader is final before the first row is handed on.
    """
    options = inbound.csv_options
    if codecs.lookup(options.encoding).name != "utf-8":
        return None
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    end = len(data)
    while end > start and data[end - 1] in b"\r\n":  # trailing blank lines are skipped by both
        end -= 1
    if b"\x00" in data:
        return None
    first_line = 1
    if options.has_header:
        header_end = _first_break(data, start)
        if header_end is None:
            return None
        header_bytes = data[start:header_end]
        if options.quotechar.encode() in header_bytes or not header_bytes.strip():
            return None
        try:
            header_text = header_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return None
        header = next(
            csv.reader([header_text], delimiter=options.delimiter, quotechar=options.quotechar)
        )
        header = [h.strip() for h in header]
        start = header_end + (2 if data[header_end : header_end + 2] == b"\r\n" else 1)
        first_line = 2
    else:
        header = list(options.columns or [])
    if end <= start:
        return None
    try:
        positions = _check_columns(inbound, header)
    except UnreadableFileError:
        return None  # the stdlib reader words it, after any undecodable bytes it meets first
    table = _parse(pa.py_buffer(data)[start:end], len(header), options.delimiter, options.quotechar)
    if table is None or _longest_value(table) > csv.field_size_limit():
        return None
    spans = _record_spans(table, has_cr=data.find(b"\r", start, end) != -1)
    if pc.sum(spans).as_py() != _line_breaks(data, start, end) + 1:
        return None  # blank lines inside the file
    del data
    lines = pc.add(pc.subtract(pc.cumulative_sum(spans), spans), first_line).combine_chunks()
    # one contiguous array per column (batches are zero-copy slices of it)
    columns = {
        name: _stripped(table.column(pos).combine_chunks())
        if pos is not None
        else pa.nulls(len(table), pa.string())
        for name, pos in zip(mapped_fields(inbound), positions, strict=True)
    }
    return [
        RowBatch(
            lines=lines.slice(offset, size),
            columns={name: column.slice(offset, size) for name, column in columns.items()},
        )
        for offset in range(0, len(table), size)
    ]


def _first_break(data: bytes, start: int) -> int | None:
    found = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i != -1]
    return min(found) if found else None


def _line_breaks(data: bytes, start: int, end: int) -> int:
    """Line breaks as Python's universal newlines count them: \\n, \\r\\n and a lone \\r."""
    return (
        data.count(b"\n", start, end) + data.count(b"\r", start, end)
        - data.count(b"\r\n", start, end)
    )  # fmt: skip


def _parse(body: pa.Buffer, width: int, delimiter: str, quotechar: str) -> pa.Table | None:
    names = [f"c{i}" for i in range(width)]
    try:
        return pv.read_csv(
            body,
            read_options=pv.ReadOptions(column_names=names),
            parse_options=pv.ParseOptions(
                delimiter=delimiter,
                quote_char=quotechar,
                double_quote=True,
                escape_char=False,
                newlines_in_values=True,
                ignore_empty_lines=True,
            ),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # a wrong field count, invalid UTF-8, ...: the stdlib reader says which line


def _longest_value(table: pa.Table) -> int:
    # the stdlib reader refuses a field over csv.field_size_limit(): so must this path
    longest = [pc.max(pc.binary_length(column)).as_py() for column in table.columns]
    return max((n for n in longest if n is not None), default=0)


def _record_spans(table: pa.Table, has_cr: bool) -> pa.ChunkedArray:
    """How many physical lines each record covers: 1 plus the line breaks in its values."""
    spans = pa.chunked_array([pa.repeat(pa.scalar(1, pa.int64()), len(table))])
    for column in table.columns:
        breaks = pc.count_substring(column, "\n")
        if has_cr:
            breaks = pc.subtract(
                pc.add(breaks, pc.count_substring(column, "\r")),
                pc.count_substring(column, "\r\n"),
            )
        spans = pc.add(spans, pc.cast(breaks, pa.int64()))
    return spans


def _stripped(column: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim(column, characters=PY_WHITESPACE)
    return pc.if_else(pc.equal(trimmed, ""), _NULL_TEXT, trimmed)

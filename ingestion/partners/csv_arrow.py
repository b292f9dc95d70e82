"""The fast path for plain UTF-8 CSV files: pyarrow's parser, with physical line numbers.

pyarrow gives no line numbers. A record starts on the line after the previous record's
first line plus the line breaks quoted inside that record's values, which holds exactly when
the file has no blank lines (pyarrow skips them, line numbers count them). So the sum of
record spans is checked against a count of the file's line breaks.

The file is parsed as it is read, so its first rows are validated and loaded while Arrow's
threads parse the rest. What rules this path out shows up at two times:
- before the first row (another encoding, NULs, a quoted header, a missing column): the
  reader returns None and the caller reads the file with the stdlib reader;
- while reading (a wrong field count, bytes that are not UTF-8, an over-long value, and after
  the last row, blank lines): ArrowPathUnfit is raised, and the caller throws away what it
  read and reads the file again with the stdlib reader, which reports such details by line.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
BLOCK_BYTES = 1 << 20  # parsed ahead a block at a time; ~7K rows of a typical file
SMALL_BATCH = 10_000


def read_csv_batches(path: Path, inbound: Inbound, size: int) -> Iterator[RowBatch] | None:
    """The file as batches of about `size` rows, or None when only the stdlib reader fits.
    Iterating may raise ArrowPathUnfit (see the module's docstring)."""
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
    body = pa.py_buffer(data)[start:end]
    fields = mapped_fields(inbound)
    rows = _stream(body, len(header), options.delimiter, options.quotechar)
    has_cr = data.find(b"\r", start, end) != -1
    lines = _line_breaks(data, start, end, has_cr) + 1
    return _batches(rows, positions, fields, size, first_line, lines, has_cr)


class ArrowPathUnfit(Exception):
    """Met while reading: the file is one only the stdlib reader numbers right. Whatever was
    read from it must be thrown away and the file read again with `arrow=False`."""


def _batches(
    rows: Iterator[pa.RecordBatch],
    positions: list[int | None],
    fields: list[str],
    size: int,
    first_line: int,
    physical_lines: int,
    has_cr: bool,
) -> Iterator[RowBatch]:
    """Batches of at most about `size` rows as the parser reads them: small first and last
    ones (each twice the one before, up to `size`, and at most a quarter of what is left), so
    the first merge starts soon and the last one, which nothing overlaps, is short.
    What only the whole file can show (a blank line anywhere makes the record spans fall
    short of its line count) is checked after the last batch, by raising ArrowPathUnfit."""
    pending: list[pa.RecordBatch] = []
    held = 0
    line = first_line
    wanted = SMALL_BATCH
    for batch in itertools.chain(rows, [None]):
        if batch is not None:
            pending.append(batch)
            held += batch.num_rows
        if held and (held >= wanted or batch is None):
            table = pa.Table.from_batches(pending)
            pending, held = [], 0
            if _longest_value(table) > csv.field_size_limit():
                raise ArrowPathUnfit("a value is longer than the csv module accepts")
            spans = _record_spans(table, has_cr)
            yield RowBatch(
                lines=pc.add(pc.subtract(pc.cumulative_sum(spans), spans), line).combine_chunks(),
                columns={
                    name: _stripped(table.column(pos).combine_chunks())
                    if pos is not None
                    else pa.nulls(len(table), pa.string())
                    for name, pos in zip(fields, positions, strict=True)
                },
            )
            line += pc.sum(spans).as_py()
            remaining = physical_lines - (line - first_line)
            wanted = max(SMALL_BATCH, min(size, 2 * wanted, remaining // 4))
    if line - first_line != physical_lines:
        raise ArrowPathUnfit("blank lines inside the file")


def _first_break(data: bytes, start: int) -> int | None:
    found = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i != -1]
    return min(found) if found else None


def _line_breaks(data: bytes, start: int, end: int, has_cr: bool) -> int:
    """Line breaks as Python's universal newlines count them: \\n, \\r\\n and a lone \\r."""
    breaks = data.count(b"\n", start, end)
    if has_cr:
        breaks += data.count(b"\r", start, end) - data.count(b"\r\n", start, end)
    return breaks


def _stream(
    body: pa.Buffer, width: int, delimiter: str, quotechar: str
) -> Iterator[pa.RecordBatch]:
    """Record batches of text columns, parsed a block at a time (ahead, on Arrow's threads)."""
    names = [f"c{i}" for i in range(width)]
    try:
        reader = pv.open_csv(
            pa.BufferReader(body),
            read_options=pv.ReadOptions(column_names=names, block_size=BLOCK_BYTES),
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
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        # a wrong field count, invalid UTF-8, ...: the stdlib reader says which line
        raise ArrowPathUnfit(str(exc)) from exc


def _longest_value(table: pa.Table) -> int:
    # the stdlib reader refuses a field over csv.field_size_limit(): so must this path
    longest = [pc.max(pc.binary_length(column)).as_py() for column in table.columns]
    return max((n for n in longest if n is not None), default=0)


def _record_spans(table: pa.Table, has_cr: bool) -> pa.ChunkedArray:
    """How many physical lines each record covers: 1 plus the line breaks in its values."""
    spans = pa.chunked_array([pa.repeat(pa.scalar(1, pa.int64()), len(table))])
    for column in table.columns:
        if not _holds_line_break(column, has_cr):
            continue  # most columns: counting per value cost more than the rest of the read
        breaks = pc.count_substring(column, "\n")
        if has_cr:
            breaks = pc.subtract(
                pc.add(breaks, pc.count_substring(column, "\r")),
                pc.count_substring(column, "\r\n"),
            )
        spans = pc.add(spans, pc.cast(breaks, pa.int64()))
    return spans


def _holds_line_break(column: pa.ChunkedArray, has_cr: bool) -> bool:
    """Whether any value holds a line break, from one pass over the values' bytes."""
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        if data is None or not len(chunk):
            continue
        first, last = np.frombuffer(offsets, np.int32)[[chunk.offset, chunk.offset + len(chunk)]]
        values = np.frombuffer(data, np.uint8, count=last - first, offset=first)
        found = values == ord("\n")
        if has_cr:
            found |= values == ord("\r")
        if found.any():
            return True
    return False


def _stripped(column: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim(column, characters=PY_WHITESPACE)
    return pc.if_else(pc.equal(trimmed, ""), _NULL_TEXT, trimmed)

"""The fast path for plain UTF-8 CSV files: pyarrow's parser, with physical line numbers.

pyarrow gives no line numbers. A record starts on the line after the previous record's
first line plus the line breaks quoted inside that record's values, which holds exactly when
the file has no blank lines. pyarrow is told not to skip them: a blank line reads as a row
of empty values, and the file goes to the stdlib reader (files of one column always do).

The file is parsed as it is read, so its first rows are validated and loaded while Arrow's
threads parse the rest. What rules this path out shows up at two times:
- before the first row (another encoding, NULs, a quoted header, a missing column): the
  reader returns None and the caller reads the file with the stdlib reader;
- while reading (a wrong field count, a blank line, bytes that are not UTF-8, an over-long
  value): ArrowPathUnfit is raised, and the caller throws away what it read and reads the
  file again with the stdlib reader, which reports such details by line.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import mmap
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ingestion.partners.batches import RowBatch
from ingestion.partners.config import CsvOptions, Inbound
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import (
    _check_columns,
    mapped_fields,
    swallowed_rows,
    unclosed_quote,
    unclosed_quote_error,
    without_trailing_blanks,
)
from ingestion.partners.limits import MAX_VALUE_CHARS

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
    data = _mapped(path)
    if data is None:
        return None  # empty: the stdlib reader says so
    start = len(codecs.BOM_UTF8) if data[: len(codecs.BOM_UTF8)] == codecs.BOM_UTF8 else 0
    end = len(data)
    while end > start and data[end - 1] in b"\r\n":  # trailing blank lines are skipped by both
        end -= 1
    if data.find(b"\x00") != -1:
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
        cells = next(csv.reader([header_text], **options.reader_options))
        header = without_trailing_blanks([h.strip() for h in cells])
        width = len(cells)  # a trailing delimiter on every line: the rows have as many
        start = header_end + (2 if data[header_end : header_end + 2] == b"\r\n" else 1)
        first_line = 2
    else:
        header = list(options.columns or [])
        width = len(header)
    if end <= start or len(header) < 2:
        return None  # a blank line would pass for a one-field row
    if data[start : start + len(codecs.BOM_UTF8)] == codecs.BOM_UTF8:
        # pyarrow drops a BOM that opens its input; here it opens the first row, where the
        # stdlib reader keeps it as part of the value (the file's own BOM is gone already)
        return None
    try:
        positions = _check_columns(inbound, header)
    except UnreadableFileError:
        return None  # the stdlib reader words it, after any undecodable bytes it meets first
    body = pa.py_buffer(data)[start:end]
    fields = mapped_fields(inbound)
    rows = _stream(body, width, options.delimiter, options.quotechar)
    has_cr = data.find(b"\r", start, end) != -1

    def check_last_record(line: int) -> None:
        if opened := unclosed_quote(path, options, line):
            raise unclosed_quote_error(opened)

    return _batches(
        rows,
        positions,
        fields,
        size,
        first_line,
        len(body),
        has_cr,
        check_last_record,
        options,
        len(header),
    )


def _mapped(path: Path) -> mmap.mmap | None:
    """The file's bytes, mapped (and read in) at once: no copy into our memory."""
    with path.open("rb") as handle:
        if not os.fstat(handle.fileno()).st_size:
            return None
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)


class ArrowPathUnfit(Exception):
    """Met while reading: the file is one only the stdlib reader numbers right. Whatever was
    read from it must be thrown away and the file read again with `arrow=False`."""


def _batches(
    rows: Iterator[pa.RecordBatch],
    positions: list[int | None],
    fields: list[str],
    size: int,
    first_line: int,
    body_bytes: int,
    has_cr: bool,
    check_last_record: Callable[[int], None],
    options: CsvOptions,
    named_width: int,
) -> Iterator[RowBatch]:
    """Batches of at most about `size` rows as the parser reads them: small first and last
    ones (each twice the one before, up to `size`, and at most a quarter of what is left), so
    the first merge starts soon and the last one, which nothing overlaps, is short. What is
    left is estimated from the bytes read so far (values plus one separator each).
    `named_width` is the header's named columns: the rest are a trailing delimiter's."""
    delimiter, quotechar = options.delimiter, options.quotechar
    skip_spaces = bool(options.reader_options["skipinitialspace"])
    pending: list[pa.RecordBatch] = []
    held = read_rows = read_bytes = 0
    line = first_line
    wanted = SMALL_BATCH
    for batch in itertools.chain(rows, [None]):
        if batch is not None:
            pending.append(batch)
            held += batch.num_rows
        if held and (held >= wanted or batch is None):
            table = pa.Table.from_batches(pending)
            pending, held = [], 0
            lengths = [pc.binary_length(column) for column in table.columns]
            if _longest(lengths) > MAX_VALUE_CHARS:  # bytes: at least as many as characters
                # the streaming readers reject such a row (batches._reject_overlong_values)
                raise ArrowPathUnfit("a value is longer than any field holds")
            if _any_blank_row(lengths):
                raise ArrowPathUnfit("a blank line, or a row of empty fields")
            if _past_named_columns(table, named_width):
                # a value under a blank header cell (a row with one field too many): the
                # stdlib reader rejects its row for its field count
                raise ArrowPathUnfit("a value past the header's named columns")
            spans = _record_spans(table, has_cr)
            if _swallowed_rows(table, spans, delimiter, named_width):
                raise ArrowPathUnfit("a quoted value over lines holds lines that read as rows")
            lines = pc.add(pc.subtract(pc.cumulative_sum(spans), spans), line).combine_chunks()
            if batch is None and spans[-1].as_py() > 1:
                check_last_record(lines[-1].as_py())  # its quoted value may never close
            columns = {
                name: _stripped(table.column(pos).combine_chunks())
                if pos is not None
                else pa.nulls(len(table), pa.string())
                for name, pos in zip(fields, positions, strict=True)
            }
            if skip_spaces and any(
                pc.any(pc.starts_with(column, quotechar)).as_py() for column in columns.values()
            ):
                # `, "Ann" ,`: pyarrow kept the spaces and the quotes (the stdlib reader skips
                # the spaces, CsvOptions.reader_options); a value opening with a quote, quoted
                # as `"""..."`, goes there too
                raise ArrowPathUnfit("spaces before a quoted value")
            yield RowBatch(lines=lines, columns=columns)
            line += pc.sum(spans).as_py()
            read_rows += len(table)
            read_bytes += sum(pc.sum(n).as_py() or 0 for n in lengths) + len(table) * len(lengths)
            remaining = max(body_bytes - read_bytes, 0) * read_rows // max(read_bytes, 1)
            wanted = max(SMALL_BATCH, min(size, 2 * wanted, remaining // 4))


def _past_named_columns(table: pa.Table, named_width: int) -> bool:
    """Whether a row holds a value (not only whitespace) past the header's named columns."""
    return any(
        _stripped(column.combine_chunks()).null_count < len(column)
        for column in table.columns[named_width:]
    )


def _swallowed_rows(
    table: pa.Table, spans: pa.ChunkedArray, delimiter: str, named_width: int
) -> bool:
    """formats.swallowed_rows for the few records over several lines (the stdlib reader then
    quarantines the file, naming them)."""
    multiline = pc.greater(spans, 1)
    if not pc.any(multiline).as_py():
        return False
    for column in table.columns:
        values = column.filter(multiline)
        broken = pc.or_(pc.match_substring(values, "\n"), pc.match_substring(values, "\r"))
        if not pc.any(broken).as_py():
            continue  # most columns (ids, dates): no value to read line by line
        if swallowed_rows(values.filter(broken).to_pylist(), delimiter, named_width):
            return True
    return False


def _first_break(data: mmap.mmap, start: int) -> int | None:
    found = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i != -1]
    return min(found) if found else None


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
                # kept, as a row of empty values, which makes this path step aside: a blank
                # line is a line in the stdlib reader's numbering
                ignore_empty_lines=False,
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
        raise ArrowPathUnfit(_unfit_reason(exc)) from exc


_FIELD_COUNT = re.compile(r"Expected (\d+) columns, got (\d+)")


def _unfit_reason(exc: Exception) -> str:
    """Why Arrow's parser gave up, in words fit for a log: its message quotes the row."""
    message = str(exc)
    if found := _FIELD_COUNT.search(message):
        expected, got = found.groups()
        return f"a row with {got} of {expected} fields"
    if "UTF8" in message or "UTF-8" in message:
        return "bytes that are not UTF-8"
    return f"the parser stopped ({type(exc).__name__})"


def _longest(lengths: list[pa.ChunkedArray]) -> int:
    return max(
        (n for n in (pc.max(length).as_py() for length in lengths) if n is not None), default=0
    )


def _any_blank_row(lengths: list[pa.ChunkedArray]) -> bool:
    """A row whose every value is empty: what a blank line reads as (and a row of nothing
    but delimiters, which the stdlib reader tells apart)."""
    blank = pc.equal(lengths[0], 0)
    for length in lengths[1:]:
        blank = pc.and_(blank, pc.equal(length, 0))
    return bool(pc.any(blank).as_py())


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

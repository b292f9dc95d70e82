"""Streaming readers for partner files: CSV, XLSX, fixed-width (and X12 834, x12_834.py).

Each reader yields `RawRow`s keyed by canonical field name, with the 1-based line (or sheet
row) where the record starts. A record that is malformed on its own (wrong field count, short
fixed-width line) carries a `problem` and is rejected alone; a file that cannot be read as a
whole raises UnreadableFileError and is quarantined.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingestion.partners.config import CsvOptions, Inbound, X12Options
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.fields import DATE_FIELDS
from ingestion.partners.xlsx_formulas import formulas_without_results
from mdp.phi import masked_ssns

EXCEL_EPOCH = dt.date(1899, 12, 30)  # serial 1 = 1900-01-01 with Excel's 1900 leap-year bug
MAC_1904_EPOCH = dt.date(1904, 1, 1)  # a workbook in the 1904 date system: serial 0


# a row problem that says the record is not one of the partner's members for this program
# (an 834 dependent, a loop without the configured coverage line): rejected, and in a full
# file counted as left out rather than as present
NOT_IN_ROSTER = "not in the roster: "


@dataclass(slots=True)
class RawRow:
    line: int
    values: list[str | None]  # stripped text (None when blank), in `mapped_fields` order
    problem: str | None = None
    # fields whose blank means "not sent: keep the stored value" (an 834 termination's begin)
    keeps: tuple[str, ...] = ()


def mapped_fields(inbound: Inbound) -> list[str]:
    """The canonical fields a partner's file maps onto, in the order rows carry them."""
    return list(dict.fromkeys(inbound.column_mappings.values()))


def row_dict(inbound: Inbound, row: RawRow) -> dict[str, str | None]:
    return dict(zip(mapped_fields(inbound), row.values, strict=True))


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _codec(encoding: str) -> str:
    # A BOM is noise for us: utf-8-sig reads files with and without one.
    name = codecs.lookup(encoding).name
    return "utf-8-sig" if name == "utf-8" else encoding


def _check_columns(inbound: Inbound, header: list[str]) -> list[int | None]:
    """Header position of each mapped field (None: absent); a missing required column is fatal."""
    if header and header[0].startswith("\ufeff"):  # a BOM the codec kept (utf-16-le, ...)
        header = [header[0].lstrip("\ufeff").strip(), *header[1:]]
    if not any(cell.strip() for cell in header):
        raise UnreadableFileError(
            "the header row is blank: the file holds no column names"
            " (a file of blank lines, or one starting with a blank line)"
        )
    loose_header = [_loosely(cell) for cell in header]
    repeated = [
        f"'{source}' ({count} cells)"
        for source in inbound.column_mappings
        if (count := loose_header.count(_loosely(source))) > 1
    ]
    if repeated:
        raise UnreadableFileError(
            f"configured column(s) {', '.join(repeated)} appear more than once in the header"
            " (names alike but for case or spacing count as the same): which cell holds the"
            " field is unclear"
        )
    positions = _header_positions(list(inbound.column_mappings), header)
    missing = [
        f"'{source}' (for {target})"
        for source, target in inbound.column_mappings.items()
        if (target in inbound.required_fields or target == inbound.identifier)
        and source not in positions
    ]
    if missing:
        # the header's own cells are not quoted: a file without a header row has a member's
        # values there. Only names from the partner's config are shown.
        found = [f"'{source}'" for source in inbound.column_mappings if source in positions]
        raise UnreadableFileError(
            f"missing required column(s) {', '.join(missing)}; the header row has"
            f" {len(header)} cells, of the configured columns "
            + (f"only {', '.join(found)}" if found else "none (is the header row missing?)")
        )
    source_of = {target: source for source, target in inbound.column_mappings.items()}
    return [positions.get(source_of[target]) for target in mapped_fields(inbound)]


def absent_fields(path: Path, inbound: Inbound) -> list[str]:
    """The optional fields whose configured column is not in the file's header (a renamed or
    dropped column): the import keeps their stored values. Empty for layouts without a header
    and for a header that cannot be read (the readers say why)."""
    try:
        header = _header_of(path, inbound)
    except Exception:  # an unreadable file: its reader says why (openpyxl raises anything)
        return []
    if header is None:
        return []
    if header and header[0].startswith("\ufeff"):
        header = [header[0].lstrip("\ufeff").strip(), *header[1:]]
    found = _header_positions(list(inbound.column_mappings), header)
    # the identifier is never "kept": a file without it is refused as missing its key column
    always_required = {*inbound.required_fields, inbound.identifier, "employee_id"}
    return [
        target
        for source, target in inbound.column_mappings.items()
        if source not in found and target not in always_required
    ]


def _header_of(path: Path, inbound: Inbound) -> list[str] | None:
    if inbound.format == "csv" and inbound.csv_options.has_header:
        options = inbound.csv_options
        with open(path, encoding=_codec(options.encoding), newline="") as text:
            reader = csv.reader(text, **options.reader_options)
            return [cell.strip() for cell in next(reader, [])]
    if inbound.format == "xlsx":
        import openpyxl

        options = inbound.xlsx_options
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            names = workbook.sheetnames
            if options.sheet is not None and options.sheet not in names:
                return None
            sheet = workbook[options.sheet] if options.sheet else workbook.worksheets[0]
            sheet.reset_dimensions()
            row = next(sheet.iter_rows(min_row=options.header_row, values_only=True), None)
            return None if row is None else [_header_cell(value) for value in row]
        finally:
            workbook.close()
    return None


def _header_positions(sources: list[str], header: list[str]) -> dict[str, int]:
    """Where each configured column is in the header: the cell of that name, else the one
    cell that differs from it only in case or spacing ("EMPLOYEE ID", "Employee  Id"), as
    partners' exports drift. Two such cells match neither: which one was meant is unclear."""
    exact = {name: i for i, name in enumerate(header)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        loose.setdefault(_loosely(name), []).append(i)
    positions = {}
    for source in sources:
        if source in exact:
            positions[source] = exact[source]
        elif len(candidates := loose.get(_loosely(source), [])) == 1:
            positions[source] = candidates[0]
    return positions


def _loosely(name: str) -> str:
    return " ".join(name.split()).casefold()


# the csv module refuses a field over 128 KiB, and a file with one was quarantined whole; up to
# this, a one-line value is read and its row rejected (batches.MAX_VALUE_CHARS). A quoted value
# over many lines and that long is a stray quote: see `_swallowed_lines`.
FIELD_LIMIT_CHARS = 1 << 20
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT_CHARS))


def read_csv(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    options = inbound.csv_options
    with open(path, "rb") as raw:
        if not raw.read(1):
            raise UnreadableFileError("file is empty")
        raw.seek(0)
        text = io.TextIOWrapper(raw, encoding=_codec(options.encoding), newline="")
        lines = _LastLine(text)
        reader = csv.reader(lines, **options.reader_options)
        last_line = 0
        try:
            if options.has_header:
                header = next(reader, None)
                if header is None:
                    raise UnreadableFileError("file has no header row")
                header = without_trailing_blanks([h.strip() for h in header])
                last_line = reader.line_num
            else:
                header = list(options.columns or [])
            columns = _check_columns(inbound, header)
            width = len(header)
            layout = "the header has" if options.has_header else "the configured columns are"
            line = last_line
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    if not _overlong_on_its_line(exc, reader.line_num, last_line + 1):
                        raise
                    # one long line, which the reader gave up on and dropped: read on its
                    # own, its row is rejected for its value's length like any over-long one
                    record = _one_line_record(lines.last, options)
                line = last_line + 1
                last_line = reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # blank line
                if last_line > line:  # a quoted value over lines: a stray quote may have
                    _refuse_swallowed_lines(record, line, last_line, path, options, width)
                # empty values past the header's width (a trailing delimiter) are no data
                if len(record) != width and not (
                    len(record) > width and not any(v.strip() for v in record[width:])
                ):
                    problem = f"has {len(record)} fields, {layout} {width}"
                    if last_line > line:  # the lines a stray quote took are named with it
                        problem += (
                            f" (a quoted value runs from line {line} to line {last_line}: the"
                            " lines between were read into it)"
                        )
                    yield RawRow(line, _values_from(record, columns), problem)
                    continue
                yield RawRow(line, _values_from(record, columns))
        except UnicodeError:
            raise undecodable(path, options.encoding) from None
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise UnreadableFileError(
                    f"a value from line {last_line + 1} runs past {FIELD_LIMIT_CHARS:,}"
                    " characters: a quote opened there is closed far later, or never"
                ) from None
            raise UnreadableFileError(
                f"CSV structure broken near line {last_line + 1}: {exc}"
            ) from None
        if last_line > line and (opened := unclosed_quote(path, options, line)):
            raise unclosed_quote_error(opened)


class _LastLine:
    """The text's lines as the csv reader takes them, keeping the last one taken."""

    def __init__(self, text: io.TextIOWrapper):
        self._lines = iter(text)
        self.last = ""

    def __iter__(self) -> _LastLine:
        return self

    def __next__(self) -> str:
        self.last = next(self._lines)
        return self.last


def _one_line_record(line: str, options: CsvOptions) -> list[str]:
    """A record of one physical line, whatever its values' length. The csv module's field
    limit is process-wide: it is raised for this read only (a raised limit lets more
    through, never less, so a reader in another thread loses nothing meanwhile)."""
    limit = csv.field_size_limit(max(FIELD_LIMIT_CHARS, len(line) + 1))
    try:
        return next(csv.reader([line], **options.reader_options), [])
    finally:
        csv.field_size_limit(limit)


def _overlong_on_its_line(exc: csv.Error, line_num: int, line: int) -> bool:
    """A value over the field limit within its record's first line: one long line (its row
    is rejected), not a quote that took the lines after it (the file is quarantined)."""
    return "field larger than field limit" in str(exc) and line_num == line


def without_trailing_blanks(header: list[str]) -> list[str]:
    """A header without the empty names a trailing delimiter leaves (`...,Program,`): they
    name no column, and the rows' trailing empty values are no data."""
    end = len(header)
    while end > 1 and not header[end - 1]:
        end -= 1
    return header[:end]


def _refuse_swallowed_lines(
    record: list[str], first: int, last: int, path: Path, options: CsvOptions, width: int
) -> None:
    """A record over several lines holding lines that read as rows: a stray quote took the
    rows up to the next quote into one value. Those rows would be neither loaded nor reported
    (or one of them loaded with a name made of the others), so the file is quarantined."""
    if not swallowed_rows(record, options.delimiter, width):
        return
    if opened := unclosed_quote(path, options, first):  # it runs to the end of the file
        raise unclosed_quote_error(opened)
    raise UnreadableFileError(
        f"the record on line {first} holds a quoted value running to line {last} whose lines"
        " read as rows: a stray quote took them into one value"
    )


def swallowed_rows(values: Iterable[str | None], delimiter: str, width: int) -> bool:
    """Whether a multi-line value holds a line with a row's worth of delimiters. A real one
    (an address, a name typed with Alt+Enter, a note) has few, if any."""
    least = max(width - 1, 2)
    for value in values:
        if value and ("\n" in value or "\r" in value):
            continuations = value.splitlines()[1:]
            if any(line.count(delimiter) >= least for line in continuations):
                return True
    return False


def undecodable(path: Path, encoding: str) -> UnreadableFileError:
    """The error for a file with bytes `encoding` cannot decode, naming the first such byte's
    line. Counted from the raw bytes: the text reader decodes ahead of the rows it hands out,
    so its line count is behind when the error surfaces."""
    decoder = codecs.getincrementaldecoder(_codec(encoding))()
    consumed = 0  # bytes handed to the decoder before the current block
    with open(path, "rb") as raw:
        while block := raw.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                held = len(exc.object) - len(block)  # bytes the decoder kept from before
                offset = consumed - held + exc.start
                raw.seek(0)
                before = raw.read(offset)
                line = 1 + before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n")
                return UnreadableFileError(
                    f"bytes that are not valid {encoding} on line {line}: {exc.reason}"
                    f" (byte 0x{exc.object[exc.start]:02x} at offset {offset})"
                )
            except UnicodeError as exc:  # not about a byte: "stream does not start with BOM"
                return UnreadableFileError(f"not {encoding} text: {exc}")
            consumed += len(block)
    return UnreadableFileError(f"bytes that are not valid {encoding}")


# byte order marks and the encodings they say (UTF-32's before UTF-16's: the little-endian
# UTF-32 mark starts with UTF-16's)
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8"),
)


def unclosed_quote_error(line: int) -> UnreadableFileError:
    return UnreadableFileError(
        f"the quoted value opened on line {line} is never closed: every line after it would"
        " be read as part of that one value"
    )


def unclosed_quote(path: Path, options: CsvOptions, start_line: int) -> int | None:
    """The line where the file's last record opens a quoted value that never closes, if it
    does. The csv module (not strict) reads such a value to the end of the file and keeps it:
    every row after the quote would vanish into one value. Only the last record can do that,
    so only it is read again, with the csv module's rules for quotes (a quote opens a value
    only as its first character, spaces skipped; a doubled quote inside one is a quote)."""
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding=_codec(options.encoding), newline="")
        rest = "".join(itertools.islice(text, start_line - 1, None))
    quote = options.quotechar
    skip_spaces = options.reader_options["skipinitialspace"]
    special = re.compile(f"[{re.escape(quote + options.delimiter)}\r\n]")
    position, at_field_start = 0, True
    while found := special.search(rest, position):
        if found.group() != quote:  # a delimiter or a line break: a new value starts
            position, at_field_start = found.end(), True
            continue
        leading = rest[position : found.start()]
        if not (at_field_start and (not leading or (skip_spaces and not leading.strip(" ")))):
            position, at_field_start = found.end(), False  # a quote inside a plain value
            continue
        opened, position = found.start(), found.end()
        while True:  # inside the quoted value: up to a quote that is not doubled
            closing = rest.find(quote, position)
            if closing == -1:
                before = rest[:opened]
                return start_line + before.count("\n") + before.count("\r") - before.count("\r\n")
            position = closing + 1
            if rest.startswith(quote, position):
                position += 1
                continue
            break
        at_field_start = False
    return None


def _values_from(record: list[str], columns: list[int | None]) -> list[str | None]:
    size = len(record)
    # the hot loop of every text file: inlined strip-or-None rather than a call per cell
    return [(record[i].strip() or None) if i is not None and i < size else None for i in columns]


def read_fixed_width(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    layout = inbound.fixed_width
    assert layout is not None  # guaranteed by the config schema
    record_length = layout.record_length
    by_target = {
        inbound.column_mappings[f.name]: (f.start - 1, f.start - 1 + f.width)
        for f in layout.fields
        if f.name in inbound.column_mappings
    }
    slices = [(target, *by_target[target]) for target in mapped_fields(inbound)]
    shortest = (
        max((end for target, _, end in slices if target in inbound.required_fields), default=0)
        if layout.trailing_blanks_trimmed
        else record_length
    )
    by_bytes = layout.positions == "bytes"
    with open(path, "rb") as raw:
        if not raw.read(1):
            raise UnreadableFileError("file is empty")
        raw.seek(0)
        text = io.TextIOWrapper(raw, encoding=_codec(layout.encoding), newline=None)
        line_no = 0
        try:
            for line_no, line in enumerate(text, start=1):
                line = line.rstrip("\r\n")
                if line_no == 1 and layout.has_header:
                    continue
                if not line.strip():
                    continue
                if by_bytes:
                    yield _byte_positioned_row(
                        line_no, line, layout.encoding, slices, shortest, record_length
                    )
                    continue
                values = [line[start:end].strip() or None for _, start, end in slices]
                problem = None
                if len(line) < shortest:
                    problem = f"line is {len(line)} characters, shorter than the record length {record_length}"
                elif len(line) > record_length and line[record_length:].strip():
                    problem = f"line is {len(line)} characters, longer than the record length {record_length}"
                if problem and not line.isascii():
                    size = len(line.encode(layout.encoding, "replace"))
                    if shortest <= size <= record_length:
                        problem += (
                            f" (it is {size} bytes: if the partner's positions count bytes, set"
                            " fixed_width.positions: bytes)"
                        )
                yield RawRow(line_no, values, problem)
        except UnicodeError:
            raise undecodable(path, layout.encoding) from None


def _byte_positioned_row(
    line_no: int,
    line: str,
    encoding: str,
    slices: list[tuple[str, int, int]],
    shortest: int,
    record_length: int,
) -> RawRow:
    """A line of a layout whose positions count bytes (`fixed_width.positions: bytes`)."""
    data = line.encode(encoding)  # not _codec's utf-8-sig: its encoder writes a BOM
    values: list[str | None] = []
    problems: list[str] = []
    for target, start, end in slices:
        try:
            values.append(data[start:end].decode(encoding).strip() or None)
        except UnicodeDecodeError:
            values.append(None)
            problems.append(f"{target}: its bytes {start + 1}-{end} cut a character in two")
    if len(data) < shortest:
        problems.insert(
            0, f"line is {len(data)} bytes, shorter than the record length {record_length}"
        )
    elif len(data) > record_length and data[record_length:].strip():
        problems.insert(
            0, f"line is {len(data)} bytes, longer than the record length {record_length}"
        )
    return RawRow(line_no, values, "; ".join(problems) or None)


def read_xlsx(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    import openpyxl

    options = inbound.xlsx_options
    if path.stat().st_size == 0:
        raise UnreadableFileError("file is empty")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises what zipfile, zlib and its XML parser raise
        raise UnreadableFileError(
            f"not a readable Excel workbook (truncated or corrupt?): {_described(exc)}"
        ) from None
    try:
        if options.sheet is None:
            sheet = workbook.worksheets[0]
        elif options.sheet in workbook.sheetnames:
            sheet = workbook[options.sheet]
        else:
            raise UnreadableFileError(
                f"no sheet named {options.sheet!r}; the workbook has"
                f" {masked_ssns(str(workbook.sheetnames))}"
            )
        # the size a sheet states may be stale (exporters write it, some wrongly): read all
        sheet.reset_dimensions()
        rows = sheet.iter_rows(min_row=options.header_row)
        try:
            header_cells = next(rows, None)
            if header_cells is None:
                raise UnreadableFileError(f"sheet {sheet.title!r} has no header row")
            header = [_header_cell(c.value) for c in header_cells]
            columns = _check_columns(inbound, header)
            fields = mapped_fields(inbound)
            # Excel for Mac's workbooks may count dates from 1904 (openpyxl reads date cells
            # right either way; a serial stored as a plain number is ours to count)
            mac_1904 = workbook.epoch.date() == MAC_1904_EPOCH
            uncalculated = formulas_without_results(
                path, getattr(sheet, "_worksheet_path", None), sheet.title
            )
            for offset, cells in enumerate(rows, start=1):
                line = options.header_row + offset
                if all(c.value is None or str(c.value).strip() == "" for c in cells):
                    continue  # blank, even where an array formula's empty range runs on
                problem = _joined(
                    _uncalculated_problem(line, cells, columns, fields, uncalculated),
                    _error_cells_problem(cells, columns, fields),
                )
                values = [
                    _cell_text(cells[i].value, target, _number_format(cells[i]), mac_1904)
                    if i is not None and i < len(cells)
                    else None
                    for i, target in zip(columns, fields, strict=True)
                ]
                yield RawRow(line, values, problem)
        except UnreadableFileError:
            raise
        except Exception as exc:  # a sheet's XML or its compressed bytes are broken
            raise UnreadableFileError(
                f"workbook is truncated or corrupt: {_described(exc)}"
            ) from None
    finally:
        workbook.close()


def _uncalculated_problem(
    line: int,
    cells: tuple,
    columns: list[int | None],
    fields: list[str],
    uncalculated: set[tuple[int, int]],
) -> str | None:
    """The row's problem when a mapped cell is a formula with no stored result (read as
    empty, it would load as a blank: no program, or coverage without an end)."""
    if not uncalculated:
        return None
    named = [
        f
        for i, f in zip(columns, fields, strict=True)
        if (line, i) in uncalculated and (i >= len(cells) or cells[i].value in (None, ""))
    ]
    if not named:
        return None
    return (
        f"{', '.join(named)}: a formula without its computed value (the workbook was saved"
        " by a program that does not calculate: open and save it in Excel, or export values)"
    )


def _error_cells_problem(cells: tuple, columns: list[int | None], fields: list[str]) -> str | None:
    """The row's problem when a mapped cell holds an Excel error (#N/A, #REF!): a formula that
    failed, read as data it loaded as the member's program ('#N/A')."""
    failed = [
        f"{target} ({cells[i].value})"
        for i, target in zip(columns, fields, strict=True)
        if i is not None and i < len(cells) and getattr(cells[i], "data_type", None) == "e"
    ]
    if not failed:
        return None
    return f"{', '.join(failed)}: the cell holds an Excel error, not a value"


def _joined(*problems: str | None) -> str | None:
    return "; ".join(p for p in problems if p) or None


def _described(exc: Exception) -> str:
    """The exception's type only: openpyxl's and the XML parser's messages quote cell values
    ("could not convert string to float: '<a member's name>'"), and this text goes to the
    ledger, the logs and Dagster's metadata."""
    return type(exc).__name__


def excel_serial_date(serial: int, mac_1904: bool = False) -> dt.date | None:
    """The date of an Excel serial. Excel counts a 29 February 1900 that never was (serial
    60, None here): serials after it count from 1899-12-30, those before from 1899-12-31.
    In the 1904 date system (`mac_1904`) serial 0 is 1904-01-01, with no such day."""
    if mac_1904:
        return MAC_1904_EPOCH + dt.timedelta(days=serial)
    if serial == 60:
        return None
    return EXCEL_EPOCH + dt.timedelta(days=serial if serial > 60 else serial + 1)


def _header_cell(value: object) -> str:
    return "" if value is None else str(value).strip()


def _number_format(cell: object) -> str:
    return getattr(cell, "number_format", None) or "General"


_ZERO_PADDED = re.compile(r"0+")
LAST_SERIAL = 109_574  # 2200-01-01: a larger number in a date field is not a date cell


def _cell_text(
    cell: object, target: str, number_format: str = "General", mac_1904: bool = False
) -> str | None:
    """A cell as text. A date cell in a date field becomes ISO text (which the validator
    reads in workbooks beside the partner's format): written out in a format with a
    two-digit year, a 1960 birth date would read back as 2060. A number shown zero-padded
    (format 000000: an id 001234, a zip 02134) keeps the zeros the partner sees."""
    if cell is None:
        return None
    if isinstance(cell, dt.datetime):
        return cell.date().isoformat() if target in DATE_FIELDS else cell.isoformat()
    if isinstance(cell, dt.date):
        return cell.isoformat()
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        if target in DATE_FIELDS and 1 <= cell < LAST_SERIAL:  # a date saved as a serial
            date = excel_serial_date(int(cell), mac_1904)
            if date is not None:
                return date.isoformat()
        if isinstance(cell, float) and cell.is_integer():
            cell = int(cell)
        if isinstance(cell, int) and _ZERO_PADDED.fullmatch(number_format):
            return str(cell).zfill(len(number_format))
        return str(cell)
    return _clean(str(cell))


def read_x12(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    from ingestion.partners.x12_834 import read_x12_834  # it builds on this module's rows

    return read_x12_834(path, inbound)


READERS = {
    "csv": read_csv,
    "xlsx": read_xlsx,
    "fixed_width": read_fixed_width,
    "x12_834": read_x12,
}


def read_rows(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    """Stream the rows of a partner file in the partner's configured format."""
    encoding = _text_encoding_of(inbound)
    if encoding is not None and (wrong := foreign_encoding(path, encoding)):
        raise wrong
    return READERS[inbound.format](path, inbound)


def _text_encoding_of(inbound: Inbound) -> str | None:
    if inbound.format == "csv":
        return inbound.csv_options.encoding
    if inbound.format == "fixed_width" and inbound.fixed_width is not None:
        return inbound.fixed_width.encoding
    if inbound.format == "x12_834":
        return (inbound.x12 or X12Options()).encoding
    return None  # a workbook is a zip: its text is XML, which names its own encoding


def foreign_encoding(path: Path, encoding: str) -> UnreadableFileError | None:
    """Why a text file is not in the partner's encoding, when its first bytes say so: another
    encoding's byte order mark (a latin-1 partner's reader takes any bytes, and an 834 reader
    looks for ISA, so neither would say it), or UTF-16 without one (every other byte NUL)."""
    with open(path, "rb") as raw:
        start = raw.read(64)
    if not start:
        return None  # the reader says the file is empty
    configured = codecs.lookup(_codec(encoding)).name
    for bom, name in _BYTE_ORDER_MARKS:
        if start.startswith(bom):  # the first that matches: UTF-32's starts like UTF-16's
            if configured.startswith(name):
                break
            return UnreadableFileError(
                f"the file starts with a {name.upper()} byte order mark, so it is"
                f" {name.upper()} text; the partner's config says {encoding} (set its encoding"
                f" to {name}, or ask the partner for {encoding})"
            )
    else:
        if configured in ("utf-16", "utf-32"):  # these read the byte order from the mark
            return UnreadableFileError(
                f"the file has no byte order mark, which {encoding} needs to know the byte"
                f" order ({configured}-le or {configured}-be name it without one)"
            )
    if len(start) >= 8 and not configured.startswith(("utf-16", "utf-32")):
        even, odd = start[0::2], start[1::2]
        if not odd.strip(b"\x00") or not even.strip(b"\x00"):
            return UnreadableFileError(
                "every other byte of the file is NUL: it looks like UTF-16 text without a"
                f" byte order mark; the partner's config says {encoding}"
            )
    return None

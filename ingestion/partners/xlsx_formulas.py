"""Formula cells a workbook holds without their results.

A workbook written by a program rather than by Excel (openpyxl, many HR systems' exports)
stores a formula such as `=DATE(2026,12,31)` with no computed value: nothing has calculated
it. openpyxl (values only) reads such a cell as empty, so a coverage end given by a formula
loaded as "no end", eligible for ever, and nobody was told. The sheet's XML is read once for
them, without parsing it: a workbook with no formula at all costs one decompression.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

_BLOCK = 1 << 20
_CARRY = 1 << 16  # more than any one cell element of a roster
# one cell element, any namespace prefix (`<x:c>` from .NET's SDK); a self-closing cell holds
# nothing, so `(?<!/)>` keeps the match from running on into the next cells
_CELL = re.compile(rb"<(?:\w+:)?c\b([^>]*)(?<!/)>(.*?)</(?:\w+:)?c>", re.DOTALL)
_REFERENCE = re.compile(rb"\br=\"([A-Z]{1,3})([0-9]+)\"")
_TEXT_RESULT = re.compile(rb"\bt=\"str\"")  # a formula's text result, possibly empty
_FORMULA = re.compile(rb"<(?:\w+:)?f\b")
_VALUE = re.compile(rb"<(?:\w+:)?v\b")
_FILLED_VALUE = re.compile(rb"<(?:\w+:)?v>\s*[^<\s]")
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f\b([^>]*)>")
_ARRAY = re.compile(rb"\bt=\"array\"")
_RANGE = re.compile(rb"\bref=\"([A-Z]{1,3})([0-9]+)(?::([A-Z]{1,3})([0-9]+))?\"")
_MOST_ARRAY_CELLS = 1_000_000


def formulas_without_results(
    path: Path, sheet_xml: str | None, sheet_title: str | None = None
) -> set[tuple[int, int]]:
    """(row, 0-based column) of every formula cell of the sheet with no stored result; empty
    when the sheet's part is unknown or unreadable (openpyxl then says what is wrong).

    A cell may leave out its reference (`r`, optional in the format: it then follows the cell
    before it). Such a cell without a result is placed by reading the sheet's cells in order
    (`_formula_cells`, a second read, only then): every formula cell is returned, and the
    reader flags the ones it read empty."""
    found: set[tuple[int, int]] = set()
    if not sheet_xml:
        return found
    unplaced = False
    try:
        with zipfile.ZipFile(path) as archive, archive.open(sheet_xml) as xml:
            carry = b""
            while block := xml.read(_BLOCK):
                text = carry + block
                if _FORMULA.search(text):
                    for cell in _CELL.finditer(text):
                        attributes, inner = cell.groups()
                        if not _FORMULA.search(inner) or _has_result(attributes, inner):
                            continue
                        reference = _REFERENCE.search(attributes)
                        if reference is None:
                            unplaced = True
                        else:
                            column = _column_index(reference.group(1))
                            found.add((int(reference.group(2)), column))
                        found |= _array_cells(inner)
                carry = text[-_CARRY:]
    except (OSError, KeyError, zipfile.BadZipFile, EOFError):
        return set()
    if unplaced and sheet_title is not None:
        found |= _formula_cells(path, sheet_title)
    return found


def _formula_cells(path: Path, sheet_title: str) -> set[tuple[int, int]]:
    """Every formula cell of the sheet, placed as openpyxl places cells in order."""
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=False)
    try:
        return {
            (cell.row, cell.column - 1)
            for row in workbook[sheet_title].iter_rows()
            for cell in row
            if cell.data_type == "f"
        }
    finally:
        workbook.close()


def _array_cells(inner: bytes) -> set[tuple[int, int]]:
    """An array formula's other cells: only its first cell holds the formula, so when that one
    has no result, neither have they (they are written empty)."""
    tag = _FORMULA_TAG.search(inner)
    if tag is None or not _ARRAY.search(tag.group(1)):
        return set()
    area = _RANGE.search(tag.group(1))
    if area is None or area.group(3) is None:
        return set()
    first_row, last_row = int(area.group(2)), int(area.group(4))
    first_column, last_column = _column_index(area.group(1)), _column_index(area.group(3))
    if (last_row - first_row + 1) * (last_column - first_column + 1) > _MOST_ARRAY_CELLS:
        return set()
    return {
        (row, column)
        for row in range(first_row, last_row + 1)
        for column in range(first_column, last_column + 1)
    }


def _has_result(attributes: bytes, inner: bytes) -> bool:
    if _TEXT_RESULT.search(attributes):  # Excel stores an empty text result as `<v></v>`
        return bool(_VALUE.search(inner))
    return bool(_FILLED_VALUE.search(inner))


def _column_index(letters: bytes) -> int:
    """0-based: A is 0, Z 25, AA 26."""
    index = 0
    for letter in letters:
        index = index * 26 + letter - ord("A") + 1
    return index - 1

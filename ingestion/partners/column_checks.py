"""Whole-column date parsing and pattern matching that agree value for value with Python's.

Arrow does the common case in C++; the values where its answer might differ from Python's
(pandas' strptime, the `re` module) are few and are decided by Python itself.
"""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# fixed-width directives: a value in this exact layout is the canonical text of its date
_DIGITS = {"Y": 4, "m": 2, "d": 2}
# Patterns that mean the same to RE2 and to Python's `re` on ASCII text
_RE2_SAFE_PATTERN = re.compile(r"(?:\\[dDwW.\-+*?()\[\]{}|^$/\\]|\((?!\?)|\{(?!,)|[^\\({])*")


def positions(mask: pa.Array) -> list[int]:
    """Where a boolean array is true (null counts as false)."""
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()


def parse_dates(text: pa.Array, date_format: str) -> pa.Array:
    """date32 values of `text` read with `date_format`, null where it is blank or not a date,
    as `pd.to_datetime(format=date_format, errors="coerce")` reads them."""
    layout = _canonical_layout(date_format)
    if layout is None:
        return _parse_like_pandas(text, date_format)
    pattern, day_at = layout
    stamps = pc.strptime(text, format=date_format, unit="s", error_is_null=True)
    # Arrow's strptime rolls 02/30 over to 03/01 and takes short years; a value in the
    # canonical layout whose day survived is read as pandas reads it, the rest goes to pandas
    certain = pc.and_(pc.match_substring_regex(text, pattern), pc.greater_equal(pc.year(stamps), 1))
    if day_at is not None:
        day_read = pc.utf8_lpad(pc.cast(pc.day(stamps), pa.string()), 2, "0")
        certain = pc.and_(certain, pc.equal(pc.utf8_slice_codeunits(text, *day_at), day_read))
    parsed = pc.cast(stamps, pa.date32())
    doubtful = pc.and_(pc.is_valid(text), pc.invert(pc.fill_null(certain, False)))
    if not pc.any(doubtful).as_py():
        return parsed
    redone = _parse_like_pandas(text.filter(doubtful), date_format)
    return pc.replace_with_mask(parsed, doubtful, redone)


def _canonical_layout(date_format: str) -> tuple[str, tuple[int, int] | None] | None:
    """(anchored regex of the zero-padded layout, where the day is) for formats made of
    %Y, %m, %d and ASCII literals; None for any other format."""
    parts, offset, day_at = ["^"], 0, None
    pieces = re.findall(r"%.|[^%]", date_format)
    if "".join(pieces) != date_format:
        return None  # a trailing lone %
    for piece in pieces:
        if piece == "%%":
            piece = "%"
        elif piece.startswith("%"):
            width = _DIGITS.get(piece[1])
            if width is None:
                return None
            if piece == "%d":
                day_at = (offset, offset + width)
            parts.append(f"[0-9]{{{width}}}")
            offset += width
            continue
        if not piece.isascii():
            return None
        parts.append(re.escape(piece))
        offset += 1
    return "".join(parts) + "$", day_at


def _parse_like_pandas(text: pa.Array, date_format: str) -> pa.Array:
    stamps = pd.to_datetime(
        pd.Series(text.to_pylist(), dtype=object), format=date_format, errors="coerce"
    )
    return pa.array([None if pd.isna(s) else s.date() for s in stamps], pa.date32())


def regex_matches(values: pa.Array, pattern: str) -> pa.Array:
    """Whether each value starts with a match of `pattern`, as `re.match` says (null: null)."""
    compiled = re.compile(pattern)
    if not _RE2_SAFE_PATTERN.fullmatch(pattern):
        return _python_matches(values, compiled)
    try:
        matched = pc.match_substring_regex(values, f"^(?:{pattern})")
    except pa.ArrowInvalid:  # a construct RE2 lacks
        return _python_matches(values, compiled)
    # Python's \d and \w also take non-ASCII digits and letters
    unicode = pc.invert(pc.string_is_ascii(values))
    if not pc.any(unicode).as_py():
        return matched
    return pc.replace_with_mask(matched, unicode, _python_matches(values.filter(unicode), compiled))


def _python_matches(values: pa.Array, compiled: re.Pattern[str]) -> pa.Array:
    return pa.array(
        [None if v is None else compiled.match(v) is not None for v in values.to_pylist()],
        pa.bool_(),
    )

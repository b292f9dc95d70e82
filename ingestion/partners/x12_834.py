"""The reader for X12 834 benefit enrollment files (4010 and 5010), as health plans send them.

An 834 is not a table: it is segments (`NM1*IL*1*DOE*JOHN~`) grouped in loops, one member loop
per `INS` segment. Each member loop becomes one row whose "columns" are the element
references companion guides use, so a partner config maps them as it maps CSV headers:

    column_mappings: {"REF*0F": employee_id, NM103: last_name, NM104: first_name,
                      DMG02: date_of_birth, HD04: program, "DTP*348": eligibility_start_date}

References a row offers (x12_references.is_reference):
- loop 2000, member level: INS01-INS08, `REF*<qualifier>` (0F subscriber id, 1L group or
  policy number, 23 client number, ...) and `DTP*<qualifier>` (356 eligibility begin, 357
  eligibility end, 336 employment begin, ...);
- loop 2100A, member name (NM1*IL, or NM1*74 for a corrected name): NM103-NM109 (NM109 is the
  SSN when NM108 is 34), DMG02 (birth date) and DMG03 (gender), N301-N302, N401-N403, and
  `PER*<qualifier>` for each communication number (EM email, TE telephone, CP cell, ...);
- loop 2300, health coverage: HD01-HD05 and its `DTP*<qualifier>` (348 benefit begin, 349
  benefit end) when loop 2000 has no date of that qualifier. A member with several coverage
  loops gives the first, or the one whose HD03 is `x12.insurance_line` (see _chosen_coverage
  for cancelled loops and plan changes).
Dates stay CCYYMMDD (D8) text: the partner's date_format is %Y%m%d.

The row's line is the position of its INS segment in the file (ISA = 1): most 834s put one
segment on a line, where the two are the same. A dependent's loop (INS01 = N) is read only
with `x12.members: all` (it usually repeats its subscriber's REF*0F, so it needs a per-member
identifier such as NM109); otherwise it is rejected with that reason, so every loop is
accounted for. A cancellation or termination (INS03, or the chosen loop's HD01, is 024) needs
the end date the config maps: without one it is rejected, since it would load as covered;
without a begin date it keeps the stored one (RawRow.keeps), required or not. A file that is not an 834, or whose envelope is broken or cut short (no
SE/IEA, a segment count that disagrees), is unreadable and quarantined.

Hand-written: the maintained Python X12 library (linuxforhealth-x12) models 5010 only and
refuses 4010 files, which plans still send; the member loop needs a dozen segments.
"""

from __future__ import annotations

import codecs
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingestion.partners.config import Inbound, X12Options
from ingestion.partners.errors import UnreadableFileError
from ingestion.partners.formats import NOT_IN_ROSTER, RawRow, mapped_fields

BLOCK_BYTES = 1 << 20
PADDING = " \t\r\n\x00\x1a"  # after the last terminator: NULs, Ctrl-Z, blank lines
MEMBER_NAME_QUALIFIERS = {"IL", "74"}  # insured or subscriber; corrected insured


@dataclass
class _Member:
    line: int
    values: dict[str, str] = field(default_factory=dict)
    coverages: list[dict[str, str]] = field(default_factory=list)
    name_loop: bool = False  # inside loop 2100A (the member's own name, address, birth date)
    other_loop: bool = False  # inside a loop whose segments are not the member's

    def set(self, name: str, value: str) -> None:
        if value and name not in self.values:
            self.values[name] = value


@dataclass
class _Separators:
    element: str
    component: str
    segment: str


def read_x12_834(path: Path, inbound: Inbound) -> Iterator[RawRow]:
    options = inbound.x12 or X12Options()
    fields = mapped_fields(inbound)
    source_of = {target: source for source, target in inbound.column_mappings.items()}
    sources = [source_of[target] for target in fields]
    reader = _Reader(options)
    ssn_from_nm109 = source_of.get("ssn") == "NM109"
    end_source = source_of.get("eligibility_end_date")
    start_source = source_of.get("eligibility_start_date")
    for member in reader.members(_segments(path, options.encoding)):
        yield _row(member, sources, options, ssn_from_nm109, end_source, start_source)


# member-level eligibility dates and coverage-level benefit dates stand in for each other
# when a loop has only one of them (a termination often comes as INS03 024 + DTP*357)
_SAME_DATE = {
    "DTP*348": "DTP*356",
    "DTP*349": "DTP*357",
    "DTP*356": "DTP*348",
    "DTP*357": "DTP*349",
}
SSN_QUALIFIER = "34"  # NM108: NM109 is a Social Security Number
_ENVELOPE_CODE = re.compile(r"[A-Za-z0-9]{1,9}")
TERMINATION = "024"  # INS03 / HD01 maintenance type: cancellation or termination


def _row(
    member: _Member,
    sources: list[str],
    options: X12Options,
    ssn_from_nm109: bool = False,
    end_source: str | None = None,
    start_source: str | None = None,
) -> RawRow:
    values = dict(member.values)
    coverage = _chosen_coverage(member.coverages, options.insurance_line)
    for name, value in (coverage or {}).items():
        values.setdefault(name, value)
    for name, other in _SAME_DATE.items():
        if name not in values and other in values:
            values[name] = values[other]
    problem = None
    if options.members == "subscribers" and values.get("INS01") == "N":
        relationship = values.get("INS02", "?")
        problem = NOT_IN_ROSTER + (
            f"a dependent's loop (INS01 N, relationship {relationship}): this partner loads"
            " subscribers only (x12.members: subscribers)"
        )
    elif coverage is None:
        lines = sorted({c.get("HD03", "?") for c in member.coverages}) or ["none"]
        problem = NOT_IN_ROSTER + (
            f"no coverage loop with insurance line {options.insurance_line} (HD03; this"
            f" loop has {', '.join(lines)})"
        )
    elif _is_termination(values, coverage) and not values.get(end_source or ""):
        problem = "a cancellation or termination (INS03 or HD01 is 024) without an end date: " + (
            f"the loop has no {end_source} (or its member/coverage counterpart)"
            if end_source
            else "this partner's config maps no eligibility_end_date (map 'DTP*349' or"
            " 'DTP*357'), so the member would stay covered"
        )
    elif ssn_from_nm109 and values.get("NM108") != SSN_QUALIFIER:
        ssn_for = sources.index("NM109")
        row = [values.get(source) or None for source in sources]
        row[ssn_for] = None
        qualifier = values.get("NM108") or "none"
        problem = f"NM109 is not an SSN here (NM108 is {qualifier}, not {SSN_QUALIFIER})"
        return RawRow(member.line, row, problem)
    row = RawRow(member.line, [values.get(source) or None for source in sources], problem)
    if problem is None and _is_termination(values, coverage):
        # a termination often carries only its end (INS03 024 + DTP*349/357): the begin it
        # leaves out is the stored one, not "none" (required, it was rejected and the member
        # stayed covered)
        if start_source is not None and not values.get(start_source):
            row.keeps = ("eligibility_start_date",)
    return row


def _is_termination(values: dict[str, str], coverage: dict[str, str] | None) -> bool:
    """Maintenance type 024, "cancellation or termination", on the member (INS03) or on the
    coverage loop the row takes (HD01). Its end date says when coverage ends: without one
    the row would load as covered, with nothing to say otherwise."""
    return values.get("INS03") == TERMINATION or (coverage or {}).get("HD01") == TERMINATION


def _chosen_coverage(coverages: list[dict[str, str]], line: str | None) -> dict[str, str] | None:
    """The coverage loop the row takes: of the configured insurance line (None when the
    member has none), else the first; a cancelled loop (HD01 024) only when no other is
    there (a plan change sends the old plan cancelled and the new one added)."""
    fitting = [c for c in coverages if line is None or c.get("HD03") == line]
    if not fitting:
        return None if line is not None else {}
    chosen = next((c for c in fitting if c.get("HD01") != TERMINATION), fitting[0])
    return _continued(chosen, fitting)


def _continued(chosen: dict[str, str], fitting: list[dict[str, str]]) -> dict[str, str]:
    """A plan change sends the old plan cancelled (HD01 024, ending the day before) and the
    new one added, often starting weeks ahead (open enrollment sends January's plans in
    November). The member is covered throughout, so the row takes the new plan from the day
    the old one began: taken alone, the new plan's start made the check answer "Coverage
    starts" for a member the old plan still covered. The plan named until the change is the
    new one (the row holds one coverage)."""
    start = _d8(chosen.get("DTP*348"))
    if start is None or chosen.get("HD01") == TERMINATION:
        return chosen
    for old in fitting:
        old_start, old_end = _d8(old.get("DTP*348")), _d8(old.get("DTP*349"))
        if (
            old.get("HD01") == TERMINATION
            and old_start is not None
            and old_end is not None
            and old_start < start <= old_end + dt.timedelta(days=1)
        ):
            return {**chosen, "DTP*348": old["DTP*348"]}
    return chosen


def _d8(value: str | None) -> dt.date | None:
    """A CCYYMMDD date, or None (a malformed one is the validation's to report)."""
    try:
        return dt.datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


class _Reader:
    """Walks the segments: envelope checks, and one _Member per INS loop."""

    def __init__(self, options: X12Options):
        self.options = options
        self.transaction: str | None = None  # ST02 of the open transaction set
        self.transaction_segments = 0
        self.interchange: str | None = None  # ISA13 of the open interchange
        self.interchange_groups = 0
        self.group: str | None = None  # GS06 of the open functional group
        self.group_transactions = 0

    def members(self, segments: Iterator[tuple[int, list[str], _Separators]]) -> Iterator[_Member]:
        member: _Member | None = None
        position = 0
        for position, elements, separators in segments:
            tag = elements[0]
            if self.transaction is not None:
                self.transaction_segments += 1
            if tag == "INS":
                if self.transaction is None:
                    raise UnreadableFileError(
                        f"segment {position} (INS) is outside any 834 transaction set (ST..SE):"
                        " the envelope is broken"
                    )
                if member is not None:
                    yield member
                member = _Member(position)
                _elements_into(member, elements, "INS", 8)
                continue
            if tag in ("SE", "ST", "GE", "IEA", "ISA", "GS"):
                if member is not None:
                    yield member
                    member = None
                self._envelope(tag, elements, position)
                continue
            if member is not None:
                _member_segment(member, tag, elements, separators)
        if member is not None or self.transaction is not None:
            raise UnreadableFileError(
                f"the file ends inside transaction set {_shown(self.transaction or '?')} after"
                " segment"
                f" {position} (no SE/IEA): truncated?"
            )
        if self.interchange is not None:
            raise UnreadableFileError(
                f"the file ends after segment {position} without its IEA segment: truncated?"
            )

    def _envelope(self, tag: str, elements: list[str], position: int) -> None:
        """The envelope's counts and control numbers, as a 999/TA1 checks them: a count that
        disagrees means segments were lost or added on the way."""
        if tag == "ISA":
            self.interchange, self.interchange_groups = _element(elements, 13).strip(), 0
        elif tag == "IEA":
            _check_trailer(
                "interchange", self.interchange, self.interchange_groups, "functional groups",
                "IEA", elements, position, inner=("functional group", self.group, "GE"),
            )  # fmt: skip
            self.interchange = None
        elif tag == "GS":
            self.group, self.group_transactions = _element(elements, 6).strip(), 0
            self.interchange_groups += 1
        elif tag == "GE":
            _check_trailer(
                "functional group", self.group, self.group_transactions, "transaction sets",
                "GE", elements, position, inner=("transaction set", self.transaction, "SE"),
            )  # fmt: skip
            self.group = None
        elif tag == "ST":
            if self.transaction is not None:
                raise UnreadableFileError(
                    f"segment {position} opens a transaction set before"
                    f" {_shown(self.transaction)}"
                    " was closed by its SE: segments are missing (truncated or corrupt?)"
                )
            kind = _element(elements, 1)
            if kind != "834":
                raise UnreadableFileError(
                    f"segment {position} opens a {_shown(kind, longest=3) if kind else 'unnamed'}"
                    " transaction set; this"
                    " partner sends 834 benefit enrollment files"
                )
            self.transaction, self.transaction_segments = _element(elements, 2) or "?", 1
            self.group_transactions += 1
        elif tag == "SE":
            if self.transaction is None:
                raise UnreadableFileError(f"segment {position} (SE) closes no transaction set")
            _check_trailer(
                "transaction set", None if self.transaction == "?" else self.transaction,
                self.transaction_segments, "segments",
                "SE", elements, position,
            )  # fmt: skip
            self.transaction = None


def _shown(value: str, longest: int = 9) -> str:
    """An envelope value as a reason quotes it: a code or control number as X12 has them (up
    to `longest` letters or digits: control numbers have 9), else only its length. Reasons
    reach the ledger, the logs and the partner's quarantine note, and a value out of place
    may be a member's name or SSN."""
    fits = value == "?" or (len(value) <= longest and _ENVELOPE_CODE.fullmatch(value))
    return value if fits else f"<{len(value)} characters>"


def _check_trailer(
    opened: str,
    control: str | None,
    counted: int,
    counting: str,
    tag: str,
    elements: list[str],
    position: int,
    inner: tuple[str, str | None, str] | None = None,
) -> None:
    """A trailer (SE, GE, IEA) closes what its header opened, after what that holds (`inner`:
    kind, control number while still open, its trailer); it states how many it closes
    (element 1) and repeats its header's control number (element 2)."""
    if inner is not None and inner[1] is not None:
        kind, still_open, inner_tag = inner
        raise UnreadableFileError(
            f"segment {position} ({tag}) closes the {opened} before {kind}"
            f" {_shown(still_open)} was"
            f" closed by its {inner_tag}: segments are missing (truncated or corrupt?)"
        )
    declared, closing = _element(elements, 1).strip(), _element(elements, 2).strip()
    if declared != str(counted):
        raise UnreadableFileError(
            f"{opened} {_shown(control) if control else '?'} has {counted} {counting} but its"
            f" {tag} (segment {position}) says {_shown(declared) if declared else 'nothing'}:"
            " some were lost or added on the way"
            " (truncated or corrupt?)"
        )
    if control is not None and closing != control:
        raise UnreadableFileError(
            f"the {tag} at segment {position} closes {opened}"
            f" {_shown(closing) if closing else '(no number)'}, but the open one is"
            f" {_shown(control)}: the envelope is broken"
        )


def _member_segment(
    member: _Member, tag: str, elements: list[str], separators: _Separators
) -> None:
    if tag == "NM1":
        member.name_loop = _element(elements, 1) in MEMBER_NAME_QUALIFIERS
        member.other_loop = not member.name_loop
        if member.name_loop:
            _elements_into(member, elements, "NM1", 9)
    elif tag == "HD":
        member.name_loop = member.other_loop = False
        coverage: dict[str, str] = {}
        for index in range(1, 6):
            if value := _element(elements, index):
                coverage[f"HD0{index}"] = value
        member.coverages.append(coverage)
    elif tag in ("LX", "COB", "LS", "LE"):  # provider, coordination of benefits, reporting loops
        member.name_loop, member.other_loop = False, True
    elif member.other_loop:
        return
    elif tag in ("REF", "DTP"):
        name = f"{tag}*{_element(elements, 1)}"
        value = _element(elements, 3 if tag == "DTP" else 2)
        if not value:
            return
        found = {name: value}
        if tag == "DTP" and _element(elements, 2) == "RD8" and "-" in value:
            # a range: its first date, and its last as the paired end date (348 -> 349)
            first, last = value.split("-", 1)
            found = {name: first}
            if name in _RANGE_END:
                found[_RANGE_END[name]] = last
        for key, found_value in found.items():
            if member.coverages:  # loop 2300's own: offered where loop 2000 has none
                member.coverages[-1].setdefault(key, found_value)
            else:
                member.set(key, found_value)
    elif member.name_loop and tag == "DMG":
        member.set("DMG02", _element(elements, 2))
        member.set("DMG03", _element(elements, 3))
    elif member.name_loop and tag in ("N3", "N4"):
        _elements_into(member, elements, tag, 2 if tag == "N3" else 3)
    elif member.name_loop and tag == "PER":
        for index in (3, 5, 7):  # (qualifier, number) pairs
            qualifier = _element(elements, index)
            if qualifier:
                member.set(f"PER*{qualifier}", _element(elements, index + 1))


_ELEMENT_NAMES = {
    tag: [f"{tag}{index:02d}" for index in range(1, count + 1)]
    for tag, count in (("INS", 8), ("NM1", 9), ("N3", 2), ("N4", 3))
}


def _elements_into(member: _Member, elements: list[str], tag: str, count: int) -> None:
    values = member.values
    for name, value in zip(_ELEMENT_NAMES[tag][:count], elements[1:], strict=False):
        if value and name not in values:
            value = value.strip()
            if value:
                values[name] = value


def _element(elements: list[str], index: int) -> str:
    return elements[index].strip() if index < len(elements) else ""


_RANGE_END = {"DTP*348": "DTP*349", "DTP*356": "DTP*357", "DTP*336": "DTP*337"}


def _segments(path: Path, encoding: str) -> Iterator[tuple[int, list[str], _Separators]]:
    """(position, elements, separators) of each segment, read a block at a time. The
    separators come from the ISA segment, whose layout is fixed: the element separator is
    its 4th character, the component separator and the segment terminator follow ISA16."""
    with path.open("rb") as handle:
        head = handle.read(BLOCK_BYTES)
        if not head.strip():
            raise UnreadableFileError("file is empty")
        start = len(head) - len(head.lstrip(b"\xef\xbb\xbf \t\r\n"))
        separators = _separators(head[start:], encoding)
        terminator, element = separators.segment, separators.element
        decoder = codecs.getincrementaldecoder(encoding)()
        pending, position, block = "", 0, head[start:]
        while block:
            try:
                pending += decoder.decode(block)
            except UnicodeDecodeError as exc:
                before = pending + block[: exc.start].decode(encoding, errors="replace")
                raise UnreadableFileError(
                    f"bytes that are not valid {encoding} in segment"
                    f" {position + 1 + before.count(terminator)}: {exc.reason}"
                    f" (byte 0x{block[exc.start]:02x})"
                ) from None
            parts = pending.split(terminator)
            pending = parts.pop()  # the unterminated rest waits for the next block
            for raw in parts:
                text = raw.strip()
                if text:
                    position += 1
                    yield position, text.split(element), separators
            block = handle.read(BLOCK_BYTES)
        if pending.strip(PADDING):  # a last segment without its terminator: the file was cut
            raise UnreadableFileError(
                f"the file ends inside segment {position + 1}, which has no terminator"
                f" ({separators.segment!r}): truncated?"
            )


def _separators(head: bytes, encoding: str) -> _Separators:
    if not head.startswith(b"ISA") or len(head) < 106:
        raise UnreadableFileError(
            "not an X12 interchange: the file does not start with an ISA segment"
        )
    text = head[:200].decode(encoding, errors="replace")
    element = text[3]
    # ISA has 16 elements; ISA16 is the component separator, the terminator comes right after
    cut = text.split(element, 16)
    if len(cut) < 17 or len(cut[16]) < 2:
        raise UnreadableFileError("the ISA segment is cut short: not an X12 interchange")
    component, segment = cut[16][0], cut[16][1]
    if segment.isalnum() or segment in (element, component, " "):
        raise UnreadableFileError(
            f"the ISA segment names {segment!r} as segment terminator: not an X12 interchange"
        )
    return _Separators(element, component, segment)

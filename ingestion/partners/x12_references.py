"""The element references an X12 834 member row offers as columns (see x12_834.py)."""

from __future__ import annotations

import re

_ELEMENT = re.compile(r"^(INS0[1-8]|NM10[1-9]|DMG0[23]|N30[12]|N40[1-3]|HD0[1-5])$")
_QUALIFIED = re.compile(r"^(REF|DTP|PER)\*[A-Z0-9]{2,3}$")
D8_FORMAT = "%Y%m%d"  # X12's D8 dates: CCYYMMDD


def is_reference(name: str) -> bool:
    """Whether `name` names a value of an 834 member loop: INS01-INS08, NM101-NM109,
    DMG02-DMG03, N301-N302, N401-N403, HD01-HD05, or REF*/DTP*/PER* with a qualifier."""
    return bool(_ELEMENT.match(name) or _QUALIFIED.match(name))

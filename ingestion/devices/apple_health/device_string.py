"""The `device` attribute of an export record: HKDevice's description string.

It looks like `<<HKDevice: 0x283f1c0a0>, name:Apple Watch, manufacturer:Apple Inc.,
model:Watch, hardware:Watch6,1, software:9.0>`. Values contain spaces, commas (`Watch6,1`)
and colons (`localIdentifier:38:EC:0D:BF:32:C6-tacl`, `creation date:2020-06-01 06:06:25
+0000`), so fields are split only where `, ` is followed by something shaped like a key and a
colon with no space after it. The memory address changes between exports and is dropped.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_HEADER = re.compile(r"<*\s*HKDevice:\s*(?:0x[0-9a-fA-F]+)?\s*>?\s*,?\s*")
# A field starts after ", " with a key: a word, optionally a second lower-case word
# ("creation date"), then ":" directly followed by the value.
FIELD_SEPARATOR = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9]*(?: [a-z]+)?:(?!\s))")
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9]*(?: [a-z]+)?):(.*)", re.DOTALL)
_KNOWN = {"name", "manufacturer", "model", "hardware", "software"}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    hardware: str | None = None
    software: str | None = None
    # Other HKDevice fields as written (firmware, localIdentifier, creation date, ...).
    other: tuple[tuple[str, str], ...] = ()


def _body(text: str) -> str:
    text = text.strip()
    header = _HEADER.match(text)
    if header is not None and header.group(0):
        text = text[header.end() :]
    if text.endswith(">"):
        text = text[:-1]
    return text


@functools.lru_cache(
    maxsize=4096
)  # an export repeats a handful of device strings millions of times
def parse_device_string(text: str | None) -> DeviceInfo | None:
    """DeviceInfo from an HKDevice description; None when empty or without any `key:value`."""
    if text is None:
        return None
    known: dict[str, str] = {}
    other: list[tuple[str, str]] = []
    for part in FIELD_SEPARATOR.split(_body(text)):
        field = _FIELD.fullmatch(part.strip())
        if field is None:
            continue
        key, value = field.group(1), field.group(2).strip()
        if not value:
            continue
        if key in _KNOWN and key not in known:
            known[key] = value
        else:
            other.append((key, value))
    if not known and not other:
        return None
    return DeviceInfo(**known, other=tuple(other))


def device_from_mapping(data: dict[str, object]) -> DeviceInfo | None:
    """DeviceInfo from the app's JSON form of HKDevice (name, manufacturer, model, ...)."""
    fields = {
        key: str(data[key]).strip()
        for key in _KNOWN
        if data.get(key) is not None and str(data[key]).strip()
    }
    return DeviceInfo(**fields) if fields else None

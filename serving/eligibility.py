"""The eligibility check: what a valid request is, how a member is found, what the answer is.

Everything here is pure, so the rules are unit-testable without a server; the lookup itself
is serving.member_lookup.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from ingestion.partners.limits import MAX_MEMBER_ID_CHARS
from mdp.phi import keyed_hash, normalize_ssn
from serving.auth import AUTH_FAILURES_PER_MINUTE

CHECK_PATH = "/api/v1/eligibility/check"
MAX_BODY_BYTES = 8 * 1024
MAX_ID_CHARS = MAX_MEMBER_ID_CHARS  # the import rejects longer ids (limits.py)
NOT_FOUND_REASON = "Member not found or DOB mismatch"
NOT_FOUND_BODY: dict[str, Any] = {"eligible": False, "reason": NOT_FOUND_REASON}
NOT_FOUND_JSON = json.dumps(NOT_FOUND_BODY, separators=(",", ":")).encode()
REQUEST_FIELDS = ("employee_id", "date_of_birth", "partner_id")
QUERY_TIMEOUT_SECONDS = 2.0

_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SSN_SHAPE = re.compile(r"[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}")  # as mdp.phi.normalize_ssn
_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class InvalidRequest(Exception):
    """The request cannot be checked; answered 422 with every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.problem}" for p in problems))
        self.problems = problems

    def body(self) -> dict[str, Any]:
        return {"error": "invalid_request", "detail": [p.as_dict() for p in self.problems]}


@dataclass(frozen=True, slots=True)
class EligibilityRequest:
    employee_id: str
    date_of_birth: dt.date
    partner_id: str | None = None


def json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def is_json_content_type(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def load_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode the body as one JSON object; a missing Content-Type is taken to mean JSON."""
    if content_type is not None and not is_json_content_type(content_type):
        shown = content_type[:64]
        raise InvalidRequest([Problem("content-type", f"expected application/json, got {shown!r}")])
    if not body.strip():
        raise InvalidRequest([Problem("body", "empty body: expected a JSON object")])
    try:
        # JSON between systems is UTF-8 (RFC 8259): json.loads would guess UTF-16 or -32 from
        # the bytes; a byte order mark may be ignored, and is
        text = body.decode("utf-8").removeprefix("\ufeff")
        value = json.loads(text)
        # every member of an object has a colon: fewer members than colons may hide a name
        # given twice (or a colon in a value); only then is it parsed again, checking names
        # (the check on every body cost ~2 µs a request)
        if isinstance(value, dict) and body.count(b":") > len(value):
            value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise InvalidRequest([Problem("body", problem)]) from None
    except UnicodeDecodeError:
        raise InvalidRequest(
            [Problem("body", "not valid JSON: the body is not UTF-8 text")]
        ) from None
    except RecursionError:
        raise InvalidRequest([Problem("body", "not valid JSON: nested too deeply")]) from None
    except ValueError:  # e.g. an integer literal beyond Python's digit limit
        raise InvalidRequest([Problem("body", "not valid JSON")]) from None
    if not isinstance(value, dict):
        raise InvalidRequest([Problem("body", f"expected a JSON object, got {json_type(value)}")])
    return value


def requested_partner(payload: dict[str, Any]) -> str | None:
    """The body's optional partner_id, if it is a string (validation reports other types)."""
    value = payload.get("partner_id")
    return value if isinstance(value, str) else None


def _text_problem(value: object, max_chars: int) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {json_type(value)}"
    if not value.strip():
        return "must not be empty"
    if len(value) > max_chars:
        return f"too long: {len(value)} characters (max {max_chars})"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "not valid Unicode (contains an unpaired surrogate)"
    return None


def _date_of_birth(value: object, today: dt.date) -> tuple[dt.date | None, str | None]:
    if not isinstance(value, str):
        return None, f"expected a string in YYYY-MM-DD format, got {json_type(value)}"
    if not value.strip():
        return None, "must not be empty"
    if not _DATE_SHAPE.fullmatch(value):
        return None, "expected a date in YYYY-MM-DD format"
    try:
        date = dt.date.fromisoformat(value)
    except ValueError:
        return None, f"not a real date: {value}"
    if date > today:
        return None, f"in the future: {value}"
    return date, None


def shown_name(name: str) -> str:
    """A client's field name as an error may echo it: cut short, and with what UTF-8 cannot
    carry (a lone surrogate from a JSON escape such as "\\ud800") written as an escape."""
    return name[:MAX_ID_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a name given twice: which one counts would be up to
    the parser (a second partner_id would slip past the 403 check)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        counts = Counter(name for name, _ in pairs)
        raise InvalidRequest(
            [
                Problem(shown_name(name), "given more than once")
                for name, n in counts.items()
                if n > 1
            ]
        )
    return value


def validate_request(payload: dict[str, Any], today: dt.date) -> EligibilityRequest:
    """Check every field (reporting all problems at once); unknown fields are rejected."""
    problems = [
        Problem(shown_name(name), "unknown field") for name in payload if name not in REQUEST_FIELDS
    ]
    employee_id = payload.get("employee_id")
    if "employee_id" not in payload:
        problems.append(Problem("employee_id", "required"))
    elif problem := _text_problem(employee_id, MAX_ID_CHARS):
        problems.append(Problem("employee_id", problem))
    date_of_birth = None
    if "date_of_birth" not in payload:
        problems.append(Problem("date_of_birth", "required"))
    else:
        date_of_birth, problem = _date_of_birth(payload["date_of_birth"], today)
        if problem:
            problems.append(Problem("date_of_birth", problem))
    partner_id = payload.get("partner_id")
    if "partner_id" in payload and (problem := _text_problem(partner_id, MAX_ID_CHARS)):
        problems.append(Problem("partner_id", problem))
    if problems:
        raise InvalidRequest(problems)
    assert isinstance(employee_id, str) and date_of_birth is not None
    # stored ids never hold surrounding spaces (the import strips every value)
    return EligibilityRequest(employee_id.strip(), date_of_birth, partner_id)


def lookup_id(employee_id: str, identifier: str) -> str:
    """The mart's employee_id for what the partner sent: for SSN partners, the SSN's keyed hash."""
    if identifier != "ssn":
        return employee_id
    digits = normalize_ssn(employee_id) if _SSN_SHAPE.fullmatch(employee_id) else None
    if digits is None:
        problem = "not a valid SSN: expected 9 digits, dashes or spaces allowed (e.g. 123-45-6789)"
        raise InvalidRequest([Problem("employee_id", problem)])
    return keyed_hash(digits)


class MartRow(NamedTuple):
    date_of_birth: dt.date | None
    program: str | None
    eligibility_start_date: dt.date | None
    eligibility_end_date: dt.date | None
    coverage_status: str | None
    coverage_status_basis: str | None = None  # 'partner' | 'eligibility_dates'


DATES_BASIS = "eligibility_dates"


def ineligibility_reason(row: MartRow, today: dt.date) -> str | None:
    """None when covered today; otherwise why not, dates first (they say the most). A status
    the mart derived from the dates held on the day dbt built it: the dates are judged again
    against this process's today, so a member is covered on the first and last day whatever
    day the mart was built (a status the partner stated still applies as stated)."""
    start, end, status = row.eligibility_start_date, row.eligibility_end_date, row.coverage_status
    # a date not given bounds nothing, as in dim_member.is_eligible_today
    if end is not None and end < today:
        return f"Coverage ended {end.isoformat()}"
    stated = row.coverage_status_basis != DATES_BASIS
    if stated and status == "terminated":  # before the start: cancelled, it never starts
        began = start is None or start <= today
        return "Coverage terminated" if began else "Coverage cancelled before it began"
    if start is not None and start > today:
        return f"Coverage starts {start.isoformat()}"
    if not stated:
        return None
    if status != "active":
        return f"Coverage {status}" if status else "Coverage status unknown"
    return None


def found_body(row: MartRow, today: dt.date) -> dict[str, Any]:
    reason = ineligibility_reason(row, today)
    body: dict[str, Any] = {
        "eligible": reason is None,
        "program": row.program,
        "eligibility_start_date": _iso(row.eligibility_start_date),
        "eligibility_end_date": _iso(row.eligibility_end_date),
    }
    if reason is not None:
        body["reason"] = reason
    return body


def rendered_found_body(row: MartRow, today: dt.date) -> tuple[bytes, bool]:
    """`found_body` as the JSON bytes Starlette's JSONResponse would send, and whether
    eligible. The answer does not depend on the date of birth, and members share a few
    programs and coverage dates: each answer is rendered once a day, not once per member
    (rendering was ~4 µs of every cache miss)."""
    return _rendered_answer(row[1:], today)


@functools.lru_cache(maxsize=4096)
def _rendered_answer(answer_fields: tuple[Any, ...], today: dt.date) -> tuple[bytes, bool]:
    body = found_body(MartRow(None, *answer_fields), today)
    return render_json(body), body["eligible"]


def render_json(body: dict[str, Any]) -> bytes:
    """JSON exactly as starlette.responses.JSONResponse renders it."""
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _error_schema(example: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        "example": example,
    }


def _response(description: str, schema: dict[str, Any], **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "integer", "minimum": 1}}
            for name, text in headers.items()
        }
    return response


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the public API (served at /openapi.json)."""
    date = {"type": "string", "format": "date", "example": "2024-01-01"}
    ref = "#/components/schemas/"
    check_responses = {
        "200": _response(
            "Member found, date of birth matches; `eligible` says if coverage applies today.",
            {"$ref": ref + "EligibilityResult"},
        ),
        "401": {
            **_response(
                "Missing, malformed, unknown or revoked API key.",
                _error_schema({"error": "unauthorized", "detail": "unknown or revoked API key"}),
            ),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        "403": _response(
            "The API is not enabled for this partner, or partner_id names another partner.",
            _error_schema(
                {"error": "forbidden", "detail": "partner_id in the body does not match"}
            ),
        ),
        "404": _response(
            "No such member for this partner, or the date of birth does not match (one answer).",
            {"$ref": ref + "NotFound"},
        ),
        "408": _response(
            "The body stopped arriving (nothing for 10 s, or under 1 KiB/s on average after"
            " 60 s); the connection is closed.",
            _error_schema(
                {"error": "request_timeout", "detail": "the request body stopped arriving"}
            ),
        ),
        "413": _response(
            f"Body larger than {MAX_BODY_BYTES} bytes.",
            _error_schema({"error": "payload_too_large", "detail": "request body is too large"}),
        ),
        "422": _response(
            "Malformed request: each problem names its field.", {"$ref": ref + "InvalidRequest"}
        ),
        "429": _response(
            "The partner's rate limit is exceeded, or the client's address failed"
            f" authentication more than {AUTH_FAILURES_PER_MINUTE} times in the last minute"
            " (then a key that is not an active key gets 429 without being looked up; active"
            " keys keep working).",
            _error_schema({"error": "rate_limited", "detail": "rate limit exceeded"}),
            **{"Retry-After": "Seconds to wait before retrying."},
        ),
        "503": _response(
            "The database or the eligibility mart is not available yet.",
            _error_schema({"error": "unavailable", "detail": "the database is not reachable"}),
            **{"Retry-After": "Seconds to wait before retrying."},
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Member Data Platform eligibility API",
            "version": "1.0.0",
            "description": "Partners check whether a member is eligible for a program today. "
            "The partner is the one the API key belongs to.",
        },
        "paths": {
            CHECK_PATH: {
                "post": {
                    "operationId": "checkEligibility",
                    "summary": "Check a member's eligibility",
                    "security": [{"bearerAuth": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": ref + "EligibilityRequest"}}
                        },
                    },
                    "responses": check_responses,
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and database/mart status",
                    "security": [],
                    "responses": {
                        "200": {"description": "Database reachable (mart: ok or missing)."},
                        "503": {"description": "Database unreachable."},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A partner API key (`mdp_<key_id>_<secret>`).",
                }
            },
            "schemas": {
                "EligibilityRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["employee_id", "date_of_birth"],
                    "properties": {
                        "employee_id": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_ID_CHARS,
                            "description": "The partner's member identifier; for partners "
                            "identifying members by SSN, the SSN (9 digits, dashes or spaces allowed).",
                        },
                        "date_of_birth": {**date, "example": "1980-05-17"},
                        "partner_id": {
                            "type": "string",
                            "description": "Optional; must be the API key's partner (else 403).",
                        },
                    },
                },
                "EligibilityResult": {
                    "type": "object",
                    "required": [
                        "eligible",
                        "program",
                        "eligibility_start_date",
                        "eligibility_end_date",
                    ],
                    "properties": {
                        "eligible": {"type": "boolean"},
                        "program": {
                            "type": ["string", "null"],
                            "description": "null when the partner's file gives none.",
                        },
                        "eligibility_start_date": {
                            **date,
                            "type": ["string", "null"],
                            "description": "null when the partner's file gives none (no "
                            "bound, as a null end date).",
                        },
                        "eligibility_end_date": {**date, "type": ["string", "null"]},
                        "reason": {
                            "type": "string",
                            "description": "Why not eligible, when eligible is false.",
                            "example": "Coverage ended 2024-01-31",
                        },
                    },
                },
                "NotFound": {
                    "type": "object",
                    "required": ["eligible", "reason"],
                    "properties": {
                        "eligible": {"type": "boolean", "const": False},
                        "reason": {"type": "string", "const": NOT_FOUND_REASON},
                    },
                },
                "InvalidRequest": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string", "const": "invalid_request"},
                        "detail": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["field", "problem"],
                                "properties": {
                                    "field": {"type": "string"},
                                    "problem": {"type": "string"},
                                },
                            },
                        },
                    },
                    "example": {
                        "error": "invalid_request",
                        "detail": [
                            {"field": "date_of_birth", "problem": "not a real date: 2023-02-30"}
                        ],
                    },
                },
            },
        },
    }

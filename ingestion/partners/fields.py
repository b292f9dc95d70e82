"""The canonical member fields a partner file can map its columns onto."""

from __future__ import annotations

# field name -> logical type; partner column_mappings must target one of these
CANONICAL_FIELDS: dict[str, str] = {
    "employee_id": "string",
    "ssn": "string",
    "first_name": "string",
    "middle_name": "string",
    "last_name": "string",
    "date_of_birth": "date",
    "gender": "string",
    "email": "string",
    "phone": "string",
    "address_line1": "string",
    "address_line2": "string",
    "city": "string",
    "state": "string",
    "postal_code": "string",
    "relationship": "string",
    "group_id": "string",
    "program": "string",
    "eligibility_start_date": "date",
    "eligibility_end_date": "date",
    "coverage_status": "string",
}

DATE_FIELDS = frozenset(name for name, kind in CANONICAL_FIELDS.items() if kind == "date")

# Columns of raw_partners.enrollment_members besides the canonical fields (ssn is never stored:
# it becomes ssn_hash + ssn_last4).
STORED_MEMBER_FIELDS: list[str] = [f for f in CANONICAL_FIELDS if f != "ssn"] + [
    "ssn_hash",
    "ssn_last4",
]
LINEAGE_FIELDS: list[str] = ["source_file_id", "source_line_number", "file_received_at"]

"""The OpenAPI paths of everything the service answers besides the eligibility check: metrics,
the provider webhooks, the member app's endpoints. The check's own contract (with its
schemas) is `serving.eligibility.openapi_document`; `/openapi.json` serves both."""

from __future__ import annotations

from typing import Any

from serving.apple_upload import MAX_BODY_BYTES as APPLE_MAX_BODY_BYTES
from serving.apple_upload import UPLOAD_PATH
from serving.device_connect import AUTHORIZE_PATH, CALLBACK_PATH
from serving.webhooks import (
    FITBIT_MAX_BODY_BYTES,
    FITBIT_PATH,
    GARMIN_MAX_BODY_BYTES,
    GARMIN_PATH,
    GARMIN_SUMMARY_TYPES,
)

MEMBER_TOKEN = "memberToken"


def _answers(**codes: str) -> dict[str, Any]:
    return {code.removeprefix("s"): {"description": text} for code, text in codes.items()}


def service_paths() -> dict[str, Any]:
    return {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": _answers(s200="OpenAPI 3.1, as JSON."),
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": _answers(s200="Counters, histograms and gauges of this process."),
            }
        },
        FITBIT_PATH: {
            "get": {
                "operationId": "fitbitVerify",
                "summary": "Fitbit's subscriber verification (`?verify=<code>`)",
                "security": [],
                "responses": _answers(
                    s204="The code is ours.",
                    s404="Any other code (as Fitbit's docs ask).",
                    s503="The verification code is not configured.",
                ),
            },
            "post": {
                "operationId": "fitbitNotifications",
                "summary": "Fitbit notifications, a JSON array signed with X-Fitbit-Signature",
                "security": [],
                "responses": _answers(
                    s204="Stored for syncing (a repeat is stored once).",
                    s400="Signed, but an item does not parse: the body names it; nothing stored.",
                    s404="Missing or wrong signature.",
                    s413=f"Body larger than {FITBIT_MAX_BODY_BYTES} bytes.",
                    s503="The database is not reachable: Fitbit redelivers.",
                ),
            },
        },
        **{
            path: {
                "post": {
                    "operationId": operation,
                    "summary": "Garmin push or ping notifications (header garmin-client-id);"
                    f" summary types: {', '.join(GARMIN_SUMMARY_TYPES)}",
                    "security": [],
                    "responses": _answers(
                        s200="Stored; items refused (unknown token, wrong user, a wrongly typed"
                        " field) are listed under `refused`.",
                        s400="The body is not JSON of the expected shape.",
                        s401="The garmin-client-id header is missing or wrong.",
                        s404="Unknown summary type in the path.",
                        s413=f"Body larger than {GARMIN_MAX_BODY_BYTES} bytes.",
                        s503="The database is not reachable: Garmin redelivers.",
                    ),
                }
            }
            for path, operation in (
                (GARMIN_PATH, "garminNotifications"),
                (GARMIN_PATH + "/{summary_type}", "garminNotificationsOfType"),
            )
        },
        UPLOAD_PATH: {
            "post": {
                "operationId": "appleHealthSamples",
                "summary": "The member app's HealthKit batch (`mdp devices member-token` issues"
                " the token)",
                "security": [{MEMBER_TOKEN: []}],
                "responses": _answers(
                    s202="Accepted: counts of samples accepted and deleted, bad samples listed"
                    " under `rejected`, `duplicate` when this exact batch came before.",
                    s401="Missing, malformed, expired or wrongly signed member token.",
                    s413=f"Body larger than {APPLE_MAX_BODY_BYTES} bytes.",
                    s422="Not a JSON object of the expected shape.",
                    s503="The database is not reachable (Retry-After).",
                ),
            }
        },
        AUTHORIZE_PATH: {
            "post": {
                "operationId": "fitbitAuthorize",
                "summary": "The Fitbit consent URL for the member the token names",
                "security": [{MEMBER_TOKEN: []}],
                "responses": _answers(
                    s200='`{"authorize_url": ...}`: open it in the member\'s browser.',
                    s401="Missing, malformed, expired or wrongly signed member token.",
                ),
            }
        },
        CALLBACK_PATH: {
            "get": {
                "operationId": "fitbitCallback",
                "summary": "Where Fitbit sends the member's browser back (`code`, `state`)",
                "security": [],
                "responses": _answers(
                    s200="A page: connected.",
                    s400="A page: not connected, and why (refused consent, a stale link).",
                ),
            }
        },
    }


MEMBER_TOKEN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A member-app token (`mdp devices member-token MEMBER_ID`).",
}

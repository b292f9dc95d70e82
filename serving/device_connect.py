"""Members connect a device: the member app asks for Fitbit's consent URL, the member's
browser comes back to our callback, and the connection is stored (ingestion/devices/fitbit/oauth.py).

POST /api/v1/devices/fitbit/authorize  (Bearer member token) -> {"authorize_url": ...}
GET  /oauth/fitbit/callback?code=&state=                     -> a small page: connected or why not
"""

from __future__ import annotations

import asyncio
import html
import logging
import os

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ingestion.devices.fitbit.client import FitbitApp, fitbit_app_from_env
from ingestion.devices.fitbit.oauth import ConnectError, authorize_url, complete_connection
from mdp.phi import log_ref
from mdp.settings import secret
from serving.member_tokens import KEY_NAME, InvalidMemberToken, bearer_token, verify_member_token

log = logging.getLogger(__name__)

AUTHORIZE_PATH = "/api/v1/devices/fitbit/authorize"
CALLBACK_PATH = "/oauth/fitbit/callback"


class DeviceConnect:
    def __init__(self, fitbit_app: FitbitApp | None = None, member_token_key: str | None = None):
        self._app = fitbit_app
        self._key = member_token_key

    def routes(self) -> list[Route]:
        return [
            Route(AUTHORIZE_PATH, self.authorize, methods=["POST"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"], name="fitbit_callback"),
        ]

    async def _fitbit(self) -> FitbitApp:
        if self._app is None:  # may create a local secret file on the sandbox stack
            self._app = await asyncio.to_thread(fitbit_app_from_env)
        return self._app

    def _redirect_uri(self, request: Request) -> str:
        # must match the URI registered with Fitbit exactly; behind a proxy, set it
        return os.environ.get("FITBIT_REDIRECT_URI") or str(request.url_for("fitbit_callback"))

    async def authorize(self, request: Request) -> Response:
        runtime = request.app.state.runtime
        try:
            if self._key is None:
                self._key = await asyncio.to_thread(secret, KEY_NAME, runtime.settings)
            member_id = verify_member_token(
                bearer_token(request.headers.get("authorization")), self._key
            )
        except InvalidMemberToken as exc:
            return JSONResponse(
                {"error": "unauthorized", "detail": str(exc)},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        url = authorize_url(await self._fitbit(), self._redirect_uri(request), member_id)
        return JSONResponse({"authorize_url": url})

    async def callback(self, request: Request) -> Response:
        query = request.query_params
        if "error" in query:  # the member said no, or Fitbit refused the request
            reason = query.get("error_description") or query["error"]
            return _page(400, "Fitbit was not connected", f"Fitbit answered: {reason}.")
        code, state = query.get("code"), query.get("state")
        if not code or not state:
            return _page(400, "Fitbit was not connected", "The link is missing code or state.")
        runtime = request.app.state.runtime
        try:
            connection_id, subscribed = await asyncio.to_thread(
                complete_connection, runtime.params, await self._fitbit(), code, state
            )
        except ConnectError as exc:
            return _page(400, "Fitbit was not connected", str(exc))
        log.info("fitbit connected: %s (subscribed: %s)", log_ref(connection_id), subscribed)
        return _page(200, "Fitbit connected", "You can close this window.")


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return HTMLResponse(body, status_code=status)

"""The baseline for figure 4: a bare Starlette endpoint that reads the body and returns a small
JSON, served by the same uvicorn (one worker) as the real app: `uvicorn bench.bare_app:app`."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ANSWER = {
    "eligible": True,
    "program": "diabetes_prevention",
    "eligibility_start_date": "2024-01-01",
    "eligibility_end_date": None,
}


async def check(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse(ANSWER)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/api/v1/eligibility/check", check, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)

"""The partner-facing eligibility API (Starlette on uvicorn, asyncpg to Postgres).

Run with `uvicorn serving.app:create_app --factory`; nothing here connects at import time.
"""

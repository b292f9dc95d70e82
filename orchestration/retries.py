"""Retry policies shared by the steps that only read the database.

An asset check is a step of its own: without a policy, a Postgres restart while it ran
failed the whole run, though the assets it checks retried and loaded everything."""

import dagster as dg

DATABASE_READ_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL)

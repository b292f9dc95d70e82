"""Audit rows for every eligibility check, written in batches off the request path.

The trade-off: a request returns before its audit row is committed, so a hard kill
(SIGKILL, power loss) can lose up to one flush interval (~200 ms) of rows; a normal
shutdown flushes everything. While Postgres is down or slow, rows wait in memory. Once
`max_pending` are waiting the writer is `backlogged` and the API refuses member reads (503)
until it has caught up: no read goes unaudited, and no waiting row is ever dropped to make
room. A process that stops while Postgres cannot take its rows spools them to a file in the
state folder (`audit_spool/`, owner-only), and the next start writes them before deleting the
file: a crash between that write and the delete writes them twice, never loses them. Rows
are lost only without a spool folder (an app built without settings, as tests build it), or
when even the file cannot be written (both logged and counted in a metric).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import psycopg2

from mdp.database import ConnectionParams, connect
from mdp.settings import private_dir

log = logging.getLogger(__name__)

ACTION = "eligibility_check"
PURPOSE = "eligibility_verification"
COLUMNS = (
    "occurred_at",
    "actor",
    "action",
    "partner_id",
    "member_ref",
    "purpose",
    "outcome",
    "request_id",
    "detail",
)


class AuditEvent(NamedTuple):
    """One audit.access_log row. member_ref is mdp.phi.log_ref, never a clear identifier."""

    occurred_at: dt.datetime
    actor: str
    action: str
    partner_id: str
    member_ref: str | None
    purpose: str
    outcome: str
    request_id: str
    detail: str  # JSON text for the jsonb column


_STATUS_DETAILS: dict[int, str] = {}


def _status_detail(status: int) -> str:
    detail = _STATUS_DETAILS.get(status)
    if detail is None:
        detail = _STATUS_DETAILS[status] = json.dumps({"status": status})
    return detail


_CHECK_PARTS: dict[tuple[str, str, str, int], tuple[str, str, str]] = {}
_MAX_CHECK_PARTS = 10_000  # (key, partner, outcome, status) combinations kept
_second: tuple[int, str] = (-1, "")


def check_row(
    actor: str,
    partner_id: str,
    member_ref: str | None,
    outcome: str,
    request_id: str,
    status: int,
) -> str:
    """The access_log row of an eligibility check, in COPY's text format, as `copy_row` would
    write its AuditEvent, made on the serving loop without one. The fields that repeat (actor,
    partner, outcome, status) are escaped once per combination and the timestamp's date and
    time once a second: an event and its generic formatting took ~5.5 µs of every check,
    this ~1.2."""
    parts = _CHECK_PARTS.get((actor, partner_id, outcome, status))
    if parts is None:
        if len(_CHECK_PARTS) >= _MAX_CHECK_PARTS:
            _CHECK_PARTS.clear()
        parts = _CHECK_PARTS[(actor, partner_id, outcome, status)] = (
            f"\t{_copy_text(actor)}\t{ACTION}\t{_copy_text(partner_id)}\t",
            f"\t{PURPOSE}\t{_copy_text(outcome)}\t",
            f"\t{_copy_text(_status_detail(status))}\n",
        )
    head, middle, tail = parts
    ref = "\\N" if member_ref is None else _copy_field(member_ref)
    return f"{_utc_now_text()}{head}{ref}{middle}{_copy_field(request_id)}{tail}"


def _utc_now_text() -> str:
    """Now, in the form of `datetime.now(UTC).isoformat()` (microseconds truncated)."""
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        moment = dt.datetime.fromtimestamp(second, dt.UTC)
        _second = (second, moment.strftime("%Y-%m-%dT%H:%M:%S"))
    micros = int((now - second) * 1_000_000)
    return f"{_second[1]}.{micros:06d}+00:00" if micros else f"{_second[1]}+00:00"


def _copy_field(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


class AuditWriter:
    """Buffers events and COPYs them to audit.access_log every `flush_interval` or `batch_size`."""

    def __init__(
        self,
        params_source: Callable[[], ConnectionParams | None],
        flush_interval: float = 0.2,
        batch_size: int = 500,
        max_pending: int = 100_000,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        spool_dir: Path | None = None,
        statement_timeout: str = "10s",
    ) -> None:
        self._params_source = params_source
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._on_written = on_written or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n: None)
        self._pending: list[str] = []  # rows already in COPY text format
        self._writing = threading.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.spool_dir = spool_dir
        self.statement_timeout = statement_timeout
        self._spooled: list[Path] = []  # files read at start, deleted once their rows are in

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def backlogged(self) -> bool:
        """True while `max_pending` rows wait: callers must not read member data then."""
        return len(self._pending) >= self.max_pending

    def record(self, event: AuditEvent) -> None:
        """Queue an event; never waits on the database. The row is formatted here, a few
        microseconds per request, not in bursts by the writer thread (which would hold the
        GIL for whole batches and stall the requests in flight)."""
        self.record_row(copy_row(event))

    def record_row(self, row: str) -> None:
        """Queue a row already in COPY's text format (`check_row`)."""
        self._pending.append(row)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._read_spool()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Stop the background loop and write what is left; what Postgres cannot take now is
        spooled to a file for the next start."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        params = self._params_source()
        await asyncio.to_thread(self._final_write, params)
        if self._spooled and not self._pending:
            self._remove_spooled()

    def _final_write(self, params: ConnectionParams | None) -> None:
        """In a worker thread, after any write under way: a batch that write took from the
        queue is back in it if Postgres refused it (the queue looked empty while it was out,
        and its rows were lost). Then one more try, with a short statement timeout (the
        stack kills a process that takes 15 s to stop), and what is left goes to the spool."""
        with self._writing:
            if self._pending and params is not None:
                self._write_batches(params, statement_timeout="2s")
            if self._pending:
                self._spool()

    def _read_spool(self) -> None:
        """Rows an earlier process could not write go first (deleted once written)."""
        if self.spool_dir is None or not self.spool_dir.is_dir():
            return
        for path in sorted(self.spool_dir.glob("*.copy")):
            rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
            self._pending[:0] = [row for row in rows if row.endswith("\n")]
            self._spooled.append(path)
            log.info("%d audit events from %s queued to be written", len(rows), path.name)

    def _spool(self) -> None:
        count = len(self._pending)
        if self.spool_dir is None:
            self._on_dropped(count)
            log.error("shutting down with %d audit events not written", count)
            return
        try:
            private_dir(self.spool_dir)
            path = self.spool_dir / f"{time.time_ns()}-{os.getpid()}.copy"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("".join(self._pending))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            self._on_dropped(count)
            log.error("%d audit events not written nor spooled (%s)", count, type(exc).__name__)
            return
        self._pending.clear()
        self._remove_spooled()  # the rows read from them are in the new file
        log.warning("%d audit events spooled to %s; the next start writes them", count, path)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._pending and not await self.flush():
                await asyncio.sleep(1.0)  # Postgres is down: retry without spinning

    async def flush(self) -> bool:
        """Write every pending event; False (events kept) when the database cannot take them.

        The batches are COPied by psycopg2 in one worker-thread call: under full load a
        coroutine on the serving loop waited seconds per resume, so one await per batch
        (asyncpg's COPY) let the backlog grow while requests were answered."""
        params = self._params_source()
        if params is None:
            return False
        written = await asyncio.to_thread(self._write_pending, params, self.statement_timeout)
        if written and self._spooled:
            self._remove_spooled()
        return written

    def _remove_spooled(self) -> None:
        for path in self._spooled:
            path.unlink(missing_ok=True)
        self._spooled.clear()

    def _write_pending(self, params: ConnectionParams, statement_timeout: str) -> bool:
        # runs in a worker thread. `record` only appends; removers take turns (a flush
        # cancelled at shutdown keeps running in its thread while close() flushes again)
        with self._writing:
            return self._write_batches(params, statement_timeout)

    def _write_batches(self, params: ConnectionParams, statement_timeout: str = "10s") -> bool:
        while self._pending:
            batch = self._pending[: self.batch_size]
            del self._pending[: len(batch)]
            try:
                _copy_events(params, batch, statement_timeout)
            except (psycopg2.Error, OSError) as exc:
                self._pending[:0] = batch
                log.warning(
                    "audit flush failed (%s); %d events kept", type(exc).__name__, self.pending
                )
                return False
            self._on_written(len(batch))
        return True


def _copy_events(params: ConnectionParams, rows: list[str], statement_timeout: str) -> None:
    data = io.BytesIO("".join(rows).encode())
    with connect(params) as conn, conn.cursor() as cur:
        cur.execute("select set_config('statement_timeout', %s, true)", (statement_timeout,))
        cur.copy_expert(
            f"copy audit.access_log ({', '.join(COLUMNS)}) from stdin", data, size=1 << 20
        )


def copy_row(event: AuditEvent) -> str:
    """One access_log row in COPY's text format, newline included."""
    values = (event.occurred_at.isoformat(), *event[1:])
    if _COPY_SPECIAL.search("".join([v for v in values if v is not None])) is None:
        # the usual case (ids, hashes, fixed words): nothing to escape, one join
        return "\t".join(["\\N" if v is None else v for v in values]) + "\n"
    return "\t".join(map(_copy_text, event)) + "\n"


def _copy_text(value: object) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    text = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return text.translate(_COPY_ESCAPES)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")

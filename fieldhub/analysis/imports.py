"""Running file imports: parse, COPY into a staging table, insert what is new, roll up.

An import is a row in `imports` with its file in `import_files`. Whoever runs it (the
worker's `imports` job, or `fieldhub import` inline) holds an advisory lock on the import for
the whole run; batches of ~100,000 rows are committed one by one with the progress, so the
web app and the CLI can show percent and rows/s, and a crash loses at most one batch (the
next runner starts again from the top: the readings identity makes that harmless).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fieldhub.analysis import import_parse, rollups
from fieldhub.analysis.worker import Conn, JobContext
from fieldhub.core.db import Queries, before_params

QUERIES = Queries(Path(__file__).with_name("imports.sql"))
LOCK_NAMESPACE = 0x494D5054  # "IMPT"
BATCH_ROWS = 100_000
MAX_REPORTED_ERRORS = 1000
MAX_FILE_BYTES = 512 * 1024 * 1024

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


class ImportRequestError(ValueError):
    """A request to import that cannot be accepted; the message says why."""


def create_import(
    conn: Conn,
    *,
    org_id: int,
    content: bytes,
    filename: str,
    fmt: str | None = None,
    device_id: str | None = None,
    created_by: int | None = None,
    lock: bool = False,
) -> dict[str, Any]:
    """Store an uploaded file as a queued import of the org; returns the imports row.

    `lock=True` takes the run lock inside the creating transaction, so the caller can run it
    inline with no worker able to grab it in between.
    """
    fmt = fmt or import_parse.guess_format(filename)
    if fmt not in import_parse.FORMATS:
        raise ImportRequestError(f"format must be one of {', '.join(import_parse.FORMATS)}")
    if len(content) > MAX_FILE_BYTES:
        raise ImportRequestError(f"file larger than {MAX_FILE_BYTES // 2**20} MiB")
    with conn.transaction():
        if device_id is not None:
            devices = {
                r["device_id"] for r in conn.execute(QUERIES["org_devices"], {"org_id": org_id})
            }
            if device_id not in devices:
                raise ImportRequestError(f"unknown device {device_id!r}")
        row = conn.execute(
            QUERIES["create_import"],
            {
                "org_id": org_id,
                "device_id": device_id,
                "filename": filename[:255],
                "format": fmt,
                "total_bytes": len(content),
                "created_by": created_by,
            },
        ).fetchone()
        assert row is not None
        conn.execute(QUERIES["fast_compression"])
        conn.execute(QUERIES["store_file"], {"id": row["id"], "content": content})
        if lock:
            conn.execute(QUERIES["try_lock_import"], {"namespace": LOCK_NAMESPACE, "id": row["id"]})
    return dict(row)


def unlock(conn: Conn, import_id: uuid.UUID) -> None:
    conn.execute(QUERIES["unlock_import"], {"namespace": LOCK_NAMESPACE, "id": import_id})


@dataclasses.dataclass
class _Progress:
    processed_bytes: int = 0
    processed_rows: int = 0
    rows_rejected: int = 0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "processed_bytes": self.processed_bytes,
            "processed_rows": self.processed_rows,
            "rows_rejected": self.rows_rejected,
            "rows_per_s": round(self.processed_rows / elapsed, 1),
            "errors": Jsonb(list(self.errors)),
        }


def _lines(content: bytes) -> Iterator[bytes]:
    return iter(io.BytesIO(content))


# Binary COPY takes a timestamptz as microseconds since 2000-01-01: sending that integer
# (typed int8, the same 8 bytes) skips formatting a timestamp string per reading, which was
# the single largest cost of a bulk import.
_PG_EPOCH = 946_684_800
_COPY_TYPES = ["int8", "text", "text", "float8", "text"]
_Staged = tuple[int, str, str, float | None, str | None]


def run_import(
    conn: Conn,
    import_row: dict[str, Any],
    *,
    on_progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Import the file of a claimed (locked, 'running') import; returns the final row.

    Parsing (Python) and writing (PostgreSQL) overlap: a writer thread sends one batch while
    the next is parsed. Only the writer thread touches `conn` until the file is done.
    """
    import_id = import_row["id"]
    conn.execute(QUERIES["create_staging"])
    file_row = conn.execute(QUERIES["load_file"], {"id": import_id}).fetchone()
    if file_row is None:
        return _finish(conn, import_id, "failed", "the uploaded file is missing")
    content: bytes = file_row["content"]
    allowed = frozenset(
        r["device_id"]
        for r in conn.execute(QUERIES["org_devices"], {"org_id": import_row["org_id"]})
    )
    progress = _Progress()
    started = time.perf_counter()
    writer = _Writer(conn, import_id, progress, on_progress)
    spans: dict[str, list[float]] = {}
    latest: dict[tuple[str, str], import_parse.Row] = {}
    batch: list[_Staged] = []

    def count_bytes(n: int) -> None:
        progress.processed_bytes += n

    try:
        parsed = import_parse.parse(
            import_row["format"],
            _lines(content),
            allowed_devices=allowed,
            default_device=import_row["device_id"],
            on_bytes=count_bytes,
        )
        append = batch.append
        for number, result in parsed:
            if isinstance(result, import_parse.LineError):
                progress.rows_rejected += 1
                if len(progress.errors) < MAX_REPORTED_ERRORS:
                    progress.errors.append({"line": number, "reason": str(result)})
                continue
            for row in result:
                t = row.time
                append(
                    (
                        round((t - _PG_EPOCH) * 1_000_000),
                        row.device_id,
                        row.metric,
                        row.value,
                        row.text,
                    )
                )
                span = spans.get(row.device_id)
                if span is None:
                    spans[row.device_id] = [t, t]
                elif t < span[0]:
                    span[0] = t
                elif t > span[1]:
                    span[1] = t
                key = (row.device_id, row.metric)
                seen = latest.get(key)
                if seen is None or t > seen.time:
                    latest[key] = row
            progress.processed_rows += len(result)
            if len(batch) >= BATCH_ROWS:
                writer.submit(batch, progress.snapshot())
                batch = []
                append = batch.append
        writer.submit(batch, progress.snapshot())
        writer.close()
        _upsert_latest(conn, latest.values())
    except Exception as exc:
        writer.abandon()
        log.exception("import %s failed", import_id)
        return _finish(conn, import_id, "failed", f"{type(exc).__name__}: {exc}"[:500])
    loaded = time.perf_counter()
    ranges = [
        rollups.DeviceRange(
            device_id,
            dt.datetime.fromtimestamp(lo, dt.UTC),
            dt.datetime.fromtimestamp(hi, dt.UTC) + dt.timedelta(microseconds=1),
        )
        for device_id, (lo, hi) in sorted(spans.items())
    ]
    rollups.recompute_ranges(conn, ranges)
    if timings is not None:
        timings["load_s"] = loaded - started
        timings["rollups_s"] = time.perf_counter() - loaded
    return _finish(conn, import_id, "done", None)


def _upsert_latest(conn: Conn, rows: Iterable[import_parse.Row]) -> None:
    rows = list(rows)
    if not rows:
        return
    with conn.transaction():
        conn.execute(
            QUERIES["upsert_latest"],
            {
                "devices": [r.device_id for r in rows],
                "metrics": [r.metric for r in rows],
                "times": [dt.datetime.fromtimestamp(r.time, dt.UTC) for r in rows],
                "values": [
                    Jsonb(bool(r.value) if r.is_bool else r.value if r.text is None else r.text)
                    for r in rows
                ],
            },
        )


class _Writer:
    """Writes batches on a thread of its own so PostgreSQL works while Python parses."""

    def __init__(
        self,
        conn: Conn,
        import_id: uuid.UUID,
        progress: _Progress,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.conn = conn
        self.import_id = import_id
        self.progress = progress
        self.on_progress = on_progress
        self.inserted = 0
        # One batch in flight and one waiting bounds memory to about two batches.
        self.queue: queue.Queue[tuple[list[_Staged], dict[str, Any]] | None] = queue.Queue(1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"import-{import_id}", daemon=True)
        self.thread.start()

    def submit(self, batch: list[_Staged], snapshot: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((batch, snapshot))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        # The thread drains the queue (skipping batches once it failed), so this never
        # blocks for long.
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as exc:
                self.error = exc

    def _write(self, batch: list[_Staged], snapshot: dict[str, Any]) -> None:
        conn = self.conn
        with conn.transaction():
            if batch:
                self.inserted += _insert_batch(conn, batch)
            snapshot["rows_imported"] = self.inserted
            params = {**snapshot, "id": self.import_id}
            conn.execute(QUERIES["progress"], params)
        if self.on_progress is not None:
            self.on_progress(params)


def _copy_rows(conn: Conn, query: str, batch: list[_Staged]) -> None:
    with conn.cursor().copy(query) as copy:
        copy.set_types(_COPY_TYPES)
        write_row = copy.write_row
        for row in batch:
            write_row(row)


def _insert_batch(conn: Conn, batch: list[_Staged]) -> int:
    """Insert a batch, skipping readings that exist; returns how many were new."""
    try:
        with conn.transaction():
            _copy_rows(conn, QUERIES["copy_readings"], batch)
        return len(batch)
    except psycopg.errors.UniqueViolation:
        pass
    _copy_rows(conn, QUERIES["copy_staging"], batch)
    inserted = conn.execute(QUERIES["insert_staged"]).rowcount
    return inserted


def _finish(conn: Conn, import_id: uuid.UUID, status: str, error: str | None) -> dict[str, Any]:
    with conn.transaction():
        row = conn.execute(
            QUERIES["finish_import"], {"id": import_id, "status": status, "error": error}
        ).fetchone()
        if status == "done":
            conn.execute(QUERIES["drop_file"], {"id": import_id})
    assert row is not None
    return dict(row)


def claim_next(conn: Conn) -> dict[str, Any] | None:
    """Lock and start the oldest queued import, or a running one whose runner died."""
    for candidate in conn.execute(QUERIES["import_candidates"]).fetchall():
        params = {"namespace": LOCK_NAMESPACE, "id": candidate["id"]}
        locked = conn.execute(QUERIES["try_lock_import"], params).fetchone()
        if not locked or not locked["locked"]:
            continue
        with conn.transaction():
            row = conn.execute(QUERIES["start_import"], {"id": candidate["id"]}).fetchone()
        if row is not None:
            return dict(row)
        unlock(conn, candidate["id"])
    return None


def start_locked(conn: Conn, import_id: uuid.UUID) -> dict[str, Any]:
    """Start an import whose lock the caller already holds (see create_import(lock=True))."""
    with conn.transaction():
        row = conn.execute(QUERIES["start_import"], {"id": import_id}).fetchone()
    if row is None:
        raise ImportRequestError(f"import {import_id} is not queued")
    return dict(row)


def run_imports_job(context: JobContext) -> dict[str, Any]:
    done: list[dict[str, Any]] = []
    while not context.stopping.is_set():
        claimed = claim_next(context.conn)
        if claimed is None:
            break
        try:
            final = run_import(context.conn, claimed)
        finally:
            unlock(context.conn, claimed["id"])
        done.append(
            {
                "id": str(final["id"]),
                "status": final["status"],
                "imported": final["rows_imported"],
                "rejected": final["rows_rejected"],
            }
        )
    return {"imports": done}


def get_import(
    conn: Conn, import_id: uuid.UUID | str, *, org_id: int | None
) -> dict[str, Any] | None:
    row = conn.execute(QUERIES["get_import"], {"id": str(import_id), "org_id": org_id}).fetchone()
    return dict(row) if row else None


def list_imports(
    conn: Conn,
    *,
    org_id: int,
    limit: int = 50,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    params = {
        "org_id": org_id,
        "limit": limit,
        **before_params(before),
    }
    return [dict(r) for r in conn.execute(QUERIES["list_imports"], params)]

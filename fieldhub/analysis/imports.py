"""Running file imports: parse, write the readings (fieldhub.core.readings), roll up.

An import is a row in `imports` with its file in `import_files`. Whoever runs it (the
worker's `imports` job, or `fieldhub import` inline) holds an advisory lock on the import for
the whole run; batches of ~100,000 rows are committed one by one with the progress, so the
web app and the CLI can show percent and rows/s, and a crash loses at most one batch (the
next runner starts again from the top: the readings identity makes that harmless).

Each line is written like an MQTT message: through the binary COPY fast path, or, when the
batch repeats stored readings (a re-import, an overlap with live data), staged, where a
reading whose identity is stored with other content is a conflict. A conflicting line is
reported as a line error (reason `conflict`); the stored reading stays, the line's other
readings are stored."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import io
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from fieldhub.analysis import import_parse, rollups
from fieldhub.analysis.worker import JobContext
from fieldhub.core import readings
from fieldhub.core.db import Conn, Queries, before_params
from fieldhub.core.decode import Reading

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
    inline with no worker able to grab it in between."""
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
            "errors": list(self.errors),
        }


def _lines(content: bytes) -> Iterator[bytes]:
    return iter(io.BytesIO(content))


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect the young generation every 50,000 allocations instead of 700 while a file is
    parsed. A batch keeps 100,000 lines of readings alive until it is written, and readings
    (named tuples) stay tracked by the collector, so with the default thresholds collections
    kept walking the growing batch: about a third of the import's CPU time (py-spy). The
    same setting as the bridge's (fieldhub/bridge/app.py)."""
    previous = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


@dataclasses.dataclass
class _Batch:
    """Lines for one transaction: each line's (device key, readings) and its line number."""

    messages: list[readings.Message] = dataclasses.field(default_factory=list)
    line_numbers: list[int] = dataclasses.field(default_factory=list)
    rows: int = 0


def run_import(
    conn: Conn,
    import_row: dict[str, Any],
    *,
    on_progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Import the file of a claimed (locked, 'running') import; returns the final row.

    Parsing (Python) and writing (PostgreSQL) overlap: a writer thread sends one batch while
    the next is parsed. Only the writer thread touches `conn` until the file is done."""
    import_id = import_row["id"]
    readings.create_staging(conn)
    file_row = conn.execute(QUERIES["load_file"], {"id": import_id}).fetchone()
    if file_row is None:
        return _finish(conn, import_id, "failed", "the uploaded file is missing")
    content: bytes = file_row["content"]
    # The organisation's devices, resolved to their keys once, at the start of the run.
    keys: dict[str, int] = {
        r["device_id"]: r["device_key"]
        for r in conn.execute(QUERIES["org_devices"], {"org_id": import_row["org_id"]})
    }
    progress = _Progress()
    started = time.perf_counter()
    writer = _Writer(conn, import_id, progress, on_progress)
    spans: dict[int, list[float]] = {}
    latest: dict[tuple[int, str, str], Reading] = {}
    batch = _Batch()

    def count_bytes(n: int) -> None:
        progress.processed_bytes += n

    try:
        parsed = import_parse.parse(
            import_row["format"],
            _lines(content),
            allowed_devices=frozenset(keys),
            default_device=import_row["device_id"],
            on_bytes=count_bytes,
        )
        with _fewer_collections():
            for number, result in parsed:
                if isinstance(result, import_parse.LineError):
                    progress.rows_rejected += 1
                    if len(progress.errors) < MAX_REPORTED_ERRORS:
                        progress.errors.append({"line": number, "reason": str(result)})
                    continue
                device_id, line_readings = result
                key = keys[device_id]
                batch.messages.append((key, line_readings))
                batch.line_numbers.append(number)
                batch.rows += len(line_readings)
                span = spans.get(key)
                for reading in line_readings:
                    t = reading.time
                    if span is None:
                        span = spans[key] = [t, t]
                    elif t < span[0]:
                        span[0] = t
                    elif t > span[1]:
                        span[1] = t
                    slot = (key, reading.metric, reading.unit)
                    seen = latest.get(slot)
                    if seen is None or t > seen.time:
                        latest[slot] = reading
                progress.processed_rows += len(line_readings)
                if batch.rows >= BATCH_ROWS:
                    writer.submit(batch, progress.snapshot())
                    batch = _Batch()
        writer.submit(batch, progress.snapshot())
        writer.close()
        for conflict in writer.conflicts:
            # The stored reading stayed: the import's value is not the latest.
            slot = (conflict.key, conflict.metric, conflict.unit)
            chosen = latest.get(slot)
            if chosen is not None and round(chosen.time * 1e6) == conflict.micros:
                del latest[slot]
        with conn.transaction():
            readings.upsert_latest(conn, latest)
    except Exception as exc:
        writer.abandon()
        log.exception("import %s failed", import_id)
        return _finish(conn, import_id, "failed", f"{type(exc).__name__}: {exc}"[:500])
    loaded = time.perf_counter()
    ranges = [
        rollups.DeviceRange(
            key,
            dt.datetime.fromtimestamp(lo, dt.UTC),
            dt.datetime.fromtimestamp(hi, dt.UTC) + dt.timedelta(microseconds=1),
        )
        for key, (lo, hi) in sorted(spans.items())
    ]
    rollups.recompute_ranges(conn, ranges)
    if timings is not None:
        timings["load_s"] = loaded - started
        timings["rollups_s"] = time.perf_counter() - loaded
    return _finish(conn, import_id, "done", None)


@dataclasses.dataclass(frozen=True)
class _ConflictSlot:
    key: int
    metric: str
    unit: str
    micros: int


class _Writer:
    """Writes batches on a thread of its own so PostgreSQL works while Python parses.

    Conflicts are only known once a batch is written: this thread turns them into line
    errors and adds them to the progress it stores with the batch."""

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
        self.conflict_lines = 0
        self.conflict_errors: list[dict[str, Any]] = []
        self.conflicts: list[_ConflictSlot] = []
        # One batch in flight and one waiting bounds memory to about two batches.
        self.queue: queue.Queue[tuple[_Batch, dict[str, Any]] | None] = queue.Queue(1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"import-{import_id}", daemon=True)
        self.thread.start()

    def submit(self, batch: _Batch, snapshot: dict[str, Any]) -> None:
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

    def _write(self, batch: _Batch, snapshot: dict[str, Any]) -> None:
        conn = self.conn
        with conn.transaction():
            if batch.messages:
                written = readings.write(conn, batch.messages)
                self.inserted += written.inserted
                self._note_conflicts(batch, written.conflicts)
            errors = snapshot.pop("errors") + self.conflict_errors
            errors.sort(key=lambda error: int(error["line"]))
            params = {
                **snapshot,
                "rows_imported": self.inserted,
                "rows_rejected": snapshot["rows_rejected"] + self.conflict_lines,
                "errors": Jsonb(errors[:MAX_REPORTED_ERRORS]),
                "id": self.import_id,
            }
            conn.execute(QUERIES["progress"], params)
        if self.on_progress is not None:
            self.on_progress(params)

    def _note_conflicts(self, batch: _Batch, conflicts: list[readings.Conflict]) -> None:
        by_line: dict[int, list[readings.Conflict]] = {}
        for conflict in conflicts:
            by_line.setdefault(conflict.ordinal, []).append(conflict)
            key = batch.messages[conflict.ordinal][0]
            micros = round(conflict.time.timestamp() * 1e6)
            self.conflicts.append(_ConflictSlot(key, conflict.metric, conflict.unit, micros))
        for ordinal, found in by_line.items():
            self.conflict_lines += 1
            if len(self.conflict_errors) < MAX_REPORTED_ERRORS:
                self.conflict_errors.append(
                    {
                        "line": batch.line_numbers[ordinal],
                        "reason": "conflict: a reading with this identity is stored with "
                        "other content (the stored one is kept): " + found[0].describe(),
                    }
                )


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

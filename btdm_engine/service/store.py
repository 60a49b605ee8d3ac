"""The job store: one SQLite database (stdlib ``sqlite3``, WAL) under the service's data folder.

Layout of ``DATA``::

    DATA/jobs.sqlite3            job rows (this module)
    DATA/jobs/<id>/input/        the uploads, as validated (motion.npz, skeleton.npz, posemaps/, ...)
    DATA/jobs/<id>/...           pose maps, low-res result, frames, plates, video (the worker)

One connection, one writer: every statement runs under the store's lock, so the HTTP threads and
the worker never interleave a read-modify-write. Each row change bumps an in-memory version per
job, which the event streams poll without touching the database.

Crash safety: WAL with ``synchronous=NORMAL`` keeps the database consistent across a SIGKILL or
power loss (at worst the last transitions are lost, and the worker redoes them); :meth:`recover`
runs at start and puts jobs that were ``running`` back in the queue.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from btdm_engine.service.schemas import FINAL_STATES

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""1: the first store; 2 adds ``client``, ``idempotency_key``, ``request_hash``, ``priority``, ``tag``, ``retries``, ``worker``
(a version-1 database is migrated in place at open)."""
MAX_ATTEMPTS = 3
"""Runs a job gets across server crashes before it is failed (a job that kills the server every
time must not keep the queue from moving)."""

_COLUMNS = (
    "id", "seq", "state", "stage", "step", "total", "frames_done", "frames_total", "posemaps_done", "eta_s",
    "error", "created", "started", "finished", "params", "source", "inputs", "attempts", "cancel_requested",
    "has_video", "has_plates", "plate_width", "plate_height", "width", "height", "retarget",
    "client", "idempotency_key", "request_hash", "priority", "tag", "retries", "worker",
)
_JSON = ("params", "inputs", "retarget")
_BOOL = ("cancel_requested", "has_video", "has_plates")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state TEXT NOT NULL,
    stage TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER,
    posemaps_done INTEGER NOT NULL DEFAULT 0,
    eta_s REAL,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    params TEXT NOT NULL,
    source TEXT NOT NULL,
    inputs TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    has_video INTEGER NOT NULL DEFAULT 0,
    has_plates INTEGER NOT NULL DEFAULT 0,
    plate_width INTEGER,
    plate_height INTEGER,
    width INTEGER,
    height INTEGER,
    retarget TEXT,
    client TEXT,
    idempotency_key TEXT,
    request_hash TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    tag TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    worker TEXT
);
"""
_MIGRATE_1_TO_2 = (
    "ALTER TABLE jobs ADD COLUMN client TEXT",
    "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
    "ALTER TABLE jobs ADD COLUMN request_hash TEXT",
    "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN tag TEXT",
    "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN worker TEXT",
)
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_tag ON jobs (tag, seq) WHERE tag IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (COALESCE(client, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


class StoreError(RuntimeError):
    """The database belongs to another schema version (not a request error: the server refuses to start)."""


def new_job_id() -> str:
    """32 lowercase hex digits (uuid4): never derived from anything a client sent."""
    return uuid.uuid4().hex


class JobStore:
    """Job rows in ``DATA/jobs.sqlite3``; thread-safe; see the module docstring."""

    def __init__(self, data: str | Path) -> None:
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "jobs").mkdir(exist_ok=True)
        self.path = self.data / "jobs.sqlite3"
        self._lock = threading.RLock()
        self._versions: dict[str, int] = {}
        self._wakeup = threading.Condition(self._lock)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode}); "
                                 "is the folder on a network share?")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 1:
                self._migrate_from_1()
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: job store schema {row[0]}, this server reads {SCHEMA_VERSION}")
            self._db.executescript(_INDEXES)

    def _migrate_from_1(self) -> None:
        """A version-1 database gets the version-2 columns (its jobs: no client, no key, priority 0), in one
        transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATE_1_TO_2:
                self._db.execute(statement)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        logger.info("%s: job store migrated from schema 1 to %d", self.path, SCHEMA_VERSION)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def job_dir(self, job_id: str) -> Path:
        """The job's folder. ``job_id`` comes from :func:`new_job_id` or a row, never a raw request string."""
        if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.data / "jobs" / job_id

    # ------------------------------------------------------------------ rows
    def _row(self, row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for key in _JSON:
            job[key] = None if job[key] is None else json.loads(job[key])
        for key in _BOOL:
            job[key] = bool(job[key])
        return job

    def _bump(self, job_id: str) -> None:
        self._versions[job_id] = self._versions.get(job_id, 0) + 1
        self._wakeup.notify_all()

    def version(self, job_id: str) -> int:
        """Changes to the job's row since this process started (event streams poll this)."""
        return self._versions.get(job_id, 0)

    def create(self, job_id: str, *, params: dict[str, Any], source: str, inputs: dict[str, Any],
               retarget: dict[str, Any] | None = None, client: str | None = None,
               idempotency_key: str | None = None, request_hash: str | None = None, priority: int = 0,
               tag: str | None = None) -> dict[str, Any]:
        """Insert a queued job; returns its row.

        With an ``idempotency_key`` that ``client`` already used (:meth:`find_idempotent`), nothing is
        inserted and the existing job's row is returned instead (its ``id`` is not ``job_id``): the
        look-up and the insert happen under one lock, so two submits racing with one key make one job.
        """
        with self._lock:
            if idempotency_key is not None:
                existing = self.find_idempotent(client, idempotency_key)
                if existing is not None:
                    return existing
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, seq, state, created, params, source, inputs, retarget, client, "
                "idempotency_key, request_hash, priority, tag) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, time.time(), json.dumps(params), source, json.dumps(inputs),
                 None if retarget is None else json.dumps(retarget), client, idempotency_key, request_hash,
                 int(priority), tag),
            )
            self._bump(job_id)
            job = self.get(job_id)
        assert job is not None
        logger.info("job %s: queued (%s%s)", job_id, source, f", priority {priority}" if priority else "")
        return job

    def find_idempotent(self, client: str | None, key: str) -> dict[str, Any] | None:
        """The job ``client`` (None: a server without tokens) submitted with ``Idempotency-Key: key``, if it
        still exists (a deleted or expired job frees its key)."""
        with self._lock:
            return self._row(self._db.execute(
                "SELECT * FROM jobs WHERE COALESCE(client, '') = ? AND idempotency_key = ?",
                (client or "", key)).fetchone())

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._row(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 1000, *, states: Sequence[str] | None = None, tag: str | None = None,
             client: str | None = None, before_seq: int | None = None) -> list[dict[str, Any]]:
        """Newest first: at most ``limit`` jobs in one of ``states`` (None: any), with ``tag`` and ``client``
        when given, submitted before the job numbered ``before_seq`` (a page's cursor)."""
        where, args = [], []
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += list(states)
        for column, value in (("tag", tag), ("client", client)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [job for job in map(self._row, rows) if job is not None]

    def ids(self, state: str) -> list[str]:
        """The ids of the jobs in ``state``, oldest first."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state = ? ORDER BY seq", (state,))]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(("queued", "running", *FINAL_STATES), 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Set columns of one job; returns the new row."""
        unknown = set(fields) - set(_COLUMNS) or {"id", "seq"} & set(fields)
        if unknown:
            raise KeyError(f"cannot set job column(s) {sorted(unknown)}")
        values = [json.dumps(v) if k in _JSON and v is not None else (int(v) if k in _BOOL else v)
                  for k, v in fields.items()]
        with self._lock:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values, job_id))
            self._bump(job_id)
            job = self.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        return job

    def transition(self, job_id: str, state: str, **fields: Any) -> dict[str, Any]:
        """Change a job's state (logged: one line per job transition)."""
        job = self.update(job_id, state=state, **fields)
        extra = f": {job['error']}" if state == "failed" and job.get("error") else ""
        logger.info("job %s: %s%s", job_id, state, extra)
        return job

    def claim_next(self, worker: str | None = None) -> dict[str, Any] | None:
        """The next queued job, marked running (attempts + 1, progress reset, ``worker`` recorded); None when the
        queue is empty.

        The highest ``priority`` first; within a priority, the oldest (first come, first served).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq LIMIT 1").fetchone()
            if row is None:
                return None
            job = self.get(row[0])
            assert job is not None
            return self.transition(job["id"], "running", started=time.time(), attempts=job["attempts"] + 1,
                                   stage=None, step=0, total=None, eta_s=None, worker=worker)

    def cancel_queued(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job that is still queued (atomically against :meth:`claim_next`); None if it is not queued."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job["state"] != "queued":
                return None
            return self.transition(job_id, "cancelled", cancel_requested=True, finished=time.time())

    def requeue(self, job_id: str, priority: int | None = None) -> dict[str, Any] | None:
        """A failed or cancelled job back in the queue, as if just submitted (a new place at the back of its
        priority, the run's state and progress reset, ``retries`` + 1); None if it is in another state."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job["state"] not in ("failed", "cancelled"):
                return None
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("UPDATE jobs SET seq = ? WHERE id = ?", (seq, job_id))
            return self.transition(
                job_id, "queued", stage=None, step=0, total=None, frames_done=0, frames_total=None, posemaps_done=0,
                eta_s=None, error=None, started=None, finished=None, attempts=0, cancel_requested=False,
                has_video=False, retries=job["retries"] + 1,
                priority=job["priority"] if priority is None else int(priority))

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._bump(job_id)

    def expire(self, max_age_s: float, now: float | None = None) -> list[str]:
        """Delete the jobs that ended more than ``max_age_s`` seconds ago, rows and folders; their ids.

        Queued and running jobs are never touched, whatever their age. Each row goes before its
        folder, so a crash in between leaves a folder that :meth:`recover` removes at the next start.
        """
        cutoff = (time.time() if now is None else now) - max_age_s
        states = tuple(FINAL_STATES)
        with self._lock:
            ids = [row[0] for row in self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({', '.join('?' * len(states))}) AND finished < ?",
                (*states, cutoff))]
        for job_id in ids:
            self.delete(job_id)
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        if ids:
            logger.info("removed %d job(s) that ended over %.1f days ago", len(ids), max_age_s / 86400)
        return ids

    def recover(self) -> list[str]:
        """At start: jobs left ``running`` by a crash go back to the queue, or fail after :data:`MAX_ATTEMPTS`;
        job folders without a job row are removed. Returns the re-queued ids."""
        requeued = []
        with self._lock:
            rows = self._db.execute(
                "SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'").fetchall()
            for job_id, attempts, cancel_requested in rows:
                if cancel_requested:
                    self.transition(job_id, "cancelled", finished=time.time(), eta_s=None)
                elif attempts >= MAX_ATTEMPTS:
                    self.transition(job_id, "failed", finished=time.time(), eta_s=None,
                                    error=f"the server stopped during each of {attempts} runs of this job")
                else:
                    self.transition(job_id, "queued", eta_s=None)
                    requeued.append(job_id)
        if requeued:
            logger.info("recovered %d interrupted job(s): %s", len(requeued), ", ".join(requeued))
        # Folders without a row: a submit interrupted between copying its uploads and inserting the job.
        with self._lock:
            known = {row[0] for row in self._db.execute("SELECT id FROM jobs")}
        for folder in (self.data / "jobs").iterdir():
            if folder.is_dir() and folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed %s: an upload that never became a job", folder)
        return requeued

    def wake(self) -> None:
        """Wake :meth:`wait_for_queued` (the worker is asked to stop)."""
        with self._wakeup:
            self._wakeup.notify_all()

    def wait_for_queued(self, timeout: float) -> None:
        """Block until some job changes (or ``timeout`` s pass): the worker's idle wait."""
        with self._wakeup:
            self._wakeup.wait(timeout)

"""``controlroom worker``: final transcription as a process of its own, on any machine.

Theory of operation: a worker loads the configured recogniser once, then loops: claim the
next job from the store (:func:`transcription.jobs.claim`: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, the write lock on SQLite), transcribe the recording (the path in the job,
so the recordings folder must be reachable from the worker's machine at that path, e.g.
a shared mount), store the transcript and its search index, mark the job done. A
heartbeat thread renews the lease of the job in hand; if the worker dies, the lease
runs out and another taker (worker or service) does the job again. Any number of
workers may run; the services then run with ``[transcription] finals = "external"`` (or
keep their own job thread as well: claims never collide).

SIGTERM/SIGINT stop the worker between chunks of audio; the job in hand goes back to
the queue (it does not count as an attempt).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from store.db import Database

from . import jobs
from .engines import Engine, Interrupted
from .errors import AudioError
from .offline import run_job

log = structlog.get_logger("transcription.worker")


def run_worker(db: Database, engine: Engine, *, language: str, stop: threading.Event,
               lease: float = jobs.LEASE, poll: float = 1.0, worker: str | None = None,
               once: bool = False,
               on_done: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, int]:
    """Take and do jobs until ``stop`` is set (``once``: until the queue is empty).
    Returns ``{"done": n, "failed": n, "lost": n}`` (``lost``: finished after this
    worker's lease had run out and another taker had the job)."""
    who = worker or jobs.worker_id("worker")
    counts = {"done": 0, "failed": 0, "lost": 0}
    beat = jobs.Heartbeat(db, who, lease=lease).start()
    log.info("transcription worker started", worker=who, model=engine.model, store=db.path)
    try:
        while not stop.is_set():
            try:
                job = jobs.claim(db, who, lease=lease)
            except db.OperationalError as exc:  # the store is away: wait, then try again
                log.warning("cannot claim a job", error=str(exc))
                stop.wait(poll)
                continue
            if job is None:
                if once:
                    break
                stop.wait(poll)
                continue
            call_id, path = job
            beat.held.add(call_id)
            log.info("final transcription started", call_id=call_id, worker=who)
            error: str | None = None
            permanent = False
            result: dict[str, Any] = {}
            try:
                result = run_job(engine, db, call_id, path, language=language,
                                 should_stop=stop.is_set)
            except Interrupted:
                jobs.finish(db, call_id, who, requeue=True)
                break
            except AudioError as exc:
                error, permanent = str(exc), True
            except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
                error = f"{type(exc).__name__}: {exc}"
                log.exception("final transcription failed", call_id=call_id)
            finally:
                beat.held.discard(call_id)
            held = jobs.finish(db, call_id, who, error=error, permanent=permanent)
            if not held:
                counts["lost"] += 1
                log.warning("job was taken again before it finished (lease ran out)",
                            call_id=call_id, worker=who)
            elif error is None:
                counts["done"] += 1
                log.info("final transcription done", call_id=call_id, worker=who)
                if on_done is not None:
                    on_done(call_id, result)
            else:
                counts["failed"] += 1
                log.error("final transcription failed", call_id=call_id, error=error)
    finally:
        beat.stop()
    log.info("transcription worker stopped", worker=who, **counts)
    return counts


def cad_final(db: Database, *, node: str, call_id: str, result: dict[str, Any]) -> bool:
    """Queue the call's ``call.transcript`` CAD message in the store's outbox (the one
    the service sends after a final it made itself), with the call's line and incident;
    any node's publisher sends it. False when the call has no row in this store."""
    from cad.publisher import append_event
    from callevents import TranscriptFinal

    event = TranscriptFinal(call_id=call_id, at=time.time(), text=result["text"],
                            language=result["language"], engine=result["engine"],
                            model=result["model"], confidence=result["confidence"],
                            segments=result["segments"])
    with db.transaction() as conn:
        row = conn.execute("SELECT line, incident_number FROM calls WHERE call_id=?",
                           (call_id,)).fetchone()
        if row is None:
            return False
        append_event(conn, event, node=node, line=row[0] or "unknown", incident_number=row[1])
    return True

"""Final transcripts from recordings: one job, a file, or a re-run over a time range.

These functions block (seconds to minutes of CPU): the service runs :func:`run_job` in
its job thread; the CLI calls :func:`transcribe_file` and :func:`retranscribe` directly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from config.schema import TranscriptionSettings
from store.db import Database

from . import jobs, store
from .audio import read_recording
from .decoding import options_from
from .engines import Engine, Hypothesis, load_engine
from .errors import AudioError, ModelError

log = structlog.get_logger("transcription.offline")

FINAL_NICE = 10
"""Niceness of the final-job thread: live captions and the call path come first."""


def lower_thread_priority() -> None:
    """Renice the calling thread (Linux nice is per thread); ignore where unsupported."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FINAL_NICE)
    except (AttributeError, OSError):
        pass


def transcribe_recording(engine: Engine, path: str | Path, *,
                         should_stop: Callable[[], bool] | None = None
                         ) -> tuple[list[store.Segment], float]:
    """Both channels of a recording -> time-ordered final segments, and its duration."""
    rec = read_recording(path)
    hyps: dict[str, list[Hypothesis]] = {}
    for channel, pcm in rec.channels.items():
        if len(pcm) == 0 or not pcm.any():
            hyps[channel] = []  # an all-zero channel (handler never connected): skip decoding
            continue
        hyps[channel] = engine.transcribe(pcm, rec.rate, should_stop=should_stop)
    return store.segments_from(hyps), rec.duration


def run_job(engine: Engine, db: Database, call_id: str, recording_path: str, *,
            language: str, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Transcribe a recording and store it as the call's transcript; returns the dict
    (call_id, engine, model, language, text, confidence, duration, segments).
    Raises AudioError (bad/missing file), engines.Interrupted (stopped)."""
    t0 = time.monotonic()
    segs, duration = transcribe_recording(engine, recording_path, should_stop=should_stop)
    result = store.save_transcript(db, call_id, engine=engine.name, model=engine.model,
                                   language=language or engine.language, segments=segs,
                                   duration=duration, recording_path=str(recording_path))
    log.info("final transcript stored", call_id=call_id, segments=len(segs),
             audio_s=round(duration, 2), rtf=round((time.monotonic() - t0) / max(duration, 1e-3), 3))
    return result


def _engine(settings: TranscriptionSettings) -> Engine:
    engine = load_engine(settings.engine, settings.model, language=settings.language,
                         options=options_from(settings))
    if engine is None:
        raise ModelError("transcription.engine is 'none': nothing can be transcribed")
    return engine


def transcribe_file(path: str | Path, settings: TranscriptionSettings, *,
                    engine: Engine | None = None) -> dict[str, Any]:
    """Transcribe one recording file (no database). Returns engine, model, language,
    text, confidence, duration and segments (channel, start, end, text, confidence)."""
    eng = engine or _engine(settings)
    segs, duration = transcribe_recording(eng, path)
    return {"path": str(path), "engine": eng.name, "model": eng.model,
            "language": settings.language or eng.language, "text": store.full_text(segs),
            "confidence": store.overall_confidence(segs), "duration": duration,
            "segments": [s.as_dict() for s in segs]}


def _epoch(v: float | datetime | None) -> float | None:
    if v is None:
        return None
    return v.timestamp() if isinstance(v, datetime) else float(v)


def retranscribe(db: Database, settings: TranscriptionSettings,
                 since: float | datetime | None, until: float | datetime | None, *,
                 engine: Engine | None = None,
                 call_ids: list[str] | None = None) -> dict[str, int]:
    """Re-run final transcription for calls that arrived in [since, until) (and, with
    ``call_ids``, only those calls) and have a recording: queue a durable job per call,
    then work through them here (a running service may take some of them too; claims
    are atomic). Returns counts ``{"queued": n, "done": n, "failed": n}``. Each new
    transcript replaces the call's current one, which is kept as a previous version
    (``store.transcript_versions``); no event is published (the CLI has no bus)."""
    store.migrate(db)
    jobs.migrate(db)
    who = jobs.worker_id("retranscribe")
    where: list[str] = ["recording_path IS NOT NULL"]
    params: list[Any] = []
    if call_ids:
        where.append(f"call_id IN ({','.join('?' * len(call_ids))})")
        params.extend(call_ids)
    if since is not None:
        where.append("arrived_at >= ?")
        params.append(_epoch(since))
    if until is not None:
        where.append("arrived_at < ?")
        params.append(_epoch(until))
    rows = db.query(f"SELECT call_id, recording_path, priority FROM calls"
                    f" WHERE {' AND '.join(where)} ORDER BY arrived_at", params)
    ids = {r["call_id"] for r in rows}
    with db.transaction() as conn:
        for r in rows:
            store.enqueue_job(conn, r["call_id"], r["recording_path"], r["priority"])
    eng = engine or _engine(settings)
    counts = {"queued": len(rows), "done": 0, "failed": 0}
    lease = getattr(settings, "job_lease", jobs.LEASE)
    beat = jobs.Heartbeat(db, who, lease=lease).start()
    try:
        while True:
            job = jobs.claim(db, who, lease=lease)
            if job is None:
                break
            call_id, path = job
            beat.held.add(call_id)
            try:
                run_job(eng, db, call_id, path, language=settings.language)
            except AudioError as exc:
                jobs.finish(db, call_id, who, error=str(exc), permanent=True)
                counts["failed"] += call_id in ids
                continue
            except Exception as exc:
                jobs.finish(db, call_id, who, error=f"{type(exc).__name__}: {exc}")
                counts["failed"] += call_id in ids
                continue
            finally:
                beat.held.discard(call_id)
            jobs.finish(db, call_id, who)
            counts["done"] += call_id in ids
    finally:
        beat.stop()
    return counts

"""Transcripts, their segments, the FTS5 index and the durable job queue (SQLite).

Tables (component ``transcription``):

* ``transcription_transcripts``: one final transcript per call (engine, model, text).
* ``transcription_segments``: its segments (channel, start, end, text, confidence,
  words JSON); ``transcription_fts`` is an external-content FTS5 index over their text,
  kept in step by triggers, so a search hit is a segment and carries its time offset.
* ``transcription_jobs``: the final-transcription queue. A job is a row, so it
  survives restarts; a job found ``running`` at start-up was interrupted by a crash or a
  stop and goes back to ``queued``.

No foreign key to ``calls``: ``transcribe``/``retranscribe`` may store transcripts of
recordings whose call row lives elsewhere; search LEFT JOINs ``calls`` for its filters.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from store.db import Database

from .engines import Hypothesis

COMPONENT = "transcription"

MIGRATIONS = [
    """
    CREATE TABLE transcription_transcripts (
        call_id TEXT PRIMARY KEY,
        engine TEXT NOT NULL,
        model TEXT NOT NULL,
        language TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL,
        confidence REAL,
        duration REAL,
        recording_path TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE transcription_segments (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL,
        channel TEXT NOT NULL CHECK (channel IN ('caller', 'handler')),
        start REAL NOT NULL,
        "end" REAL NOT NULL,
        text TEXT NOT NULL,
        confidence REAL,
        words TEXT
    );
    CREATE INDEX transcription_segments_call ON transcription_segments(call_id, start);
    CREATE VIRTUAL TABLE transcription_fts USING fts5(
        text, content='transcription_segments', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER transcription_segments_ai AFTER INSERT ON transcription_segments BEGIN
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER transcription_segments_ad AFTER DELETE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER transcription_segments_au AFTER UPDATE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TABLE transcription_jobs (
        call_id TEXT PRIMARY KEY,
        recording_path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        enqueued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX transcription_jobs_state ON transcription_jobs(state, enqueued_at);
    """,
    # 2: prefix indexes (2-4 characters) for "burg*" searches: without them FTS5 merges
    # the doclists of every matching term, ~0.5 s on a million transcripts.
    """
    DROP TRIGGER transcription_segments_ai;
    DROP TRIGGER transcription_segments_ad;
    DROP TRIGGER transcription_segments_au;
    DROP TABLE transcription_fts;
    CREATE VIRTUAL TABLE transcription_fts USING fts5(
        text, content='transcription_segments', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2', prefix='2 3 4'
    );
    INSERT INTO transcription_fts(transcription_fts) VALUES ('rebuild');
    CREATE TRIGGER transcription_segments_ai AFTER INSERT ON transcription_segments BEGIN
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER transcription_segments_ad AFTER DELETE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER transcription_segments_au AFTER UPDATE ON transcription_segments BEGIN
        INSERT INTO transcription_fts(transcription_fts, rowid, text)
        VALUES ('delete', old.id, old.text);
        INSERT INTO transcription_fts(rowid, text) VALUES (new.id, new.text);
    END;
    """,
    # 3: job priority (the line's; lower first), so 999 transcripts reach the CAD first
    # when a surge leaves a backlog of final jobs.
    """
    ALTER TABLE transcription_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    DROP INDEX transcription_jobs_state;
    CREATE INDEX transcription_jobs_next ON transcription_jobs(state, priority, enqueued_at);
    """,
]

MAX_ATTEMPTS = 3
"""A job that fails this many times stays ``failed`` (visible to operators)."""


def migrate(db: Database) -> None:
    db.migrate(COMPONENT, MIGRATIONS)


@dataclass(frozen=True)
class Segment:
    """A final segment as stored."""

    channel: str
    start: float
    end: float
    text: str
    confidence: float | None
    words: Sequence[Any] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "start": round(self.start, 3),
                "end": round(self.end, 3), "text": self.text,
                "confidence": None if self.confidence is None else round(self.confidence, 4)}


def segments_from(hyps: dict[str, list[Hypothesis]]) -> list[Segment]:
    """Merge per-channel final hypotheses into one time-ordered list."""
    segs = [Segment(ch, h.start, h.end, h.text, h.confidence,
                    [[w.word, round(w.start, 3), round(w.end, 3), round(w.confidence, 3)]
                     for w in h.words])
            for ch, hs in hyps.items() for h in hs if h.final and h.text]
    return sorted(segs, key=lambda s: (s.start, s.channel))


def full_text(segs: Sequence[Segment]) -> str:
    return "\n".join(f"{s.channel}: {s.text}" for s in segs)


def overall_confidence(segs: Sequence[Segment]) -> float | None:
    """Duration-weighted mean of the segments' confidences."""
    num = den = 0.0
    for s in segs:
        if s.confidence is not None:
            w = max(s.end - s.start, 0.01)
            num += s.confidence * w
            den += w
    return num / den if den else None


def save_transcript(db: Database, call_id: str, *, engine: str, model: str, language: str,
                    segments: Sequence[Segment], duration: float | None,
                    recording_path: str | None) -> dict[str, Any]:
    """Replace the call's transcript (a retranscription overwrites); returns it as a dict."""
    text = full_text(segments)
    conf = overall_confidence(segments)
    with db.transaction() as conn:
        conn.execute("DELETE FROM transcription_segments WHERE call_id=?", (call_id,))
        conn.execute(
            "INSERT OR REPLACE INTO transcription_transcripts(call_id, engine, model, language,"
            " text, confidence, duration, recording_path, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (call_id, engine, model, language, text, conf, duration, recording_path, time.time()))
        conn.executemany(
            'INSERT INTO transcription_segments(call_id, channel, start, "end", text, confidence,'
            " words) VALUES (?,?,?,?,?,?,?)",
            [(call_id, s.channel, s.start, s.end, s.text, s.confidence, json.dumps(list(s.words)))
             for s in segments])
    return {"call_id": call_id, "engine": engine, "model": model, "language": language,
            "text": text, "confidence": conf, "duration": duration,
            "segments": [s.as_dict() for s in segments]}


def get_transcript(db: Database, call_id: str) -> dict[str, Any] | None:
    """The call's final transcript: engine, model, language, text, confidence, duration and
    ``segments`` (channel, start, end, text, confidence, words ``[word, start, end, conf]``)."""
    row = db.query_one("SELECT * FROM transcription_transcripts WHERE call_id=?", (call_id,))
    if row is None:
        return None
    segs = db.query('SELECT channel, start, "end", text, confidence, words FROM'
                    " transcription_segments WHERE call_id=? ORDER BY start, id", (call_id,))
    out = dict(row)
    out["segments"] = [{"channel": s["channel"], "start": s["start"], "end": s["end"],
                        "text": s["text"], "confidence": s["confidence"],
                        "words": json.loads(s["words"]) if s["words"] else []} for s in segs]
    return out


# -- jobs ------------------------------------------------------------------------------

def enqueue_job(conn: sqlite3.Connection, call_id: str, recording_path: str,
                priority: int = 0) -> None:
    """Queue (or re-queue) the call's final transcription; idempotent per call. Jobs run
    by ``priority`` (lower first, as line priorities), then in arrival order."""
    conn.execute(
        "INSERT INTO transcription_jobs(call_id, recording_path, state, attempts, enqueued_at,"
        " priority) VALUES (?, ?, 'queued', 0, ?, ?) ON CONFLICT(call_id) DO UPDATE SET"
        " recording_path=excluded.recording_path, state='queued', attempts=0, error=NULL,"
        " enqueued_at=excluded.enqueued_at, started_at=NULL, finished_at=NULL,"
        " priority=excluded.priority",
        (call_id, recording_path, time.time(), priority))


def recover_jobs(db: Database) -> int:
    """At start-up: jobs left ``running`` by a crash or stop go back to ``queued``."""
    with db.transaction() as conn:
        return conn.execute("UPDATE transcription_jobs SET state='queued' WHERE state='running'"
                            ).rowcount


def claim_job(db: Database) -> tuple[str, str] | None:
    """Take the next queued job, most urgent then oldest (marks it running); returns
    (call_id, recording_path)."""
    with db.transaction() as conn:
        row = conn.execute("SELECT call_id, recording_path FROM transcription_jobs"
                           " WHERE state='queued' ORDER BY priority, enqueued_at LIMIT 1").fetchone()
        if row is None:
            return None
        conn.execute("UPDATE transcription_jobs SET state='running', attempts=attempts+1,"
                     " started_at=? WHERE call_id=?", (time.time(), row[0]))
        return row[0], row[1]


def finish_job(db: Database, call_id: str, *, error: str | None = None,
               permanent: bool = False, requeue: bool = False) -> None:
    """Mark done, failed (permanent or after MAX_ATTEMPTS) or back to queued."""
    with db.transaction() as conn:
        if requeue:
            conn.execute("UPDATE transcription_jobs SET state='queued', attempts=max(attempts-1, 0)"
                         " WHERE call_id=?", (call_id,))
        elif error is None:
            conn.execute("UPDATE transcription_jobs SET state='done', error=NULL, finished_at=?"
                         " WHERE call_id=?", (time.time(), call_id))
        else:
            conn.execute(
                "UPDATE transcription_jobs SET error=?, finished_at=?, state=CASE WHEN ? OR"
                " attempts >= ? THEN 'failed' ELSE 'queued' END WHERE call_id=?",
                (error, time.time(), permanent, MAX_ATTEMPTS, call_id))


def job_state(db: Database, call_id: str) -> dict[str, Any] | None:
    row = db.query_one("SELECT * FROM transcription_jobs WHERE call_id=?", (call_id,))
    return dict(row) if row else None

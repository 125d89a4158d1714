"""Retention and legal hold: delete recordings, transcripts and call records past their
line's policy, never a call under legal hold, and record every deletion.

Theory of operation
-------------------
:func:`due` lists what is past retention (``[retention]`` per line, days since the call
arrived) and not yet deleted, skipping calls under hold. :func:`purge` deletes it one
call at a time in three steps, so a crash (``kill -9``) at any point leaves a state the
next run finishes:

1. **intent**: one transaction writes a ``retention_pending`` row naming the call, the
   kinds to delete and the files; it fails if the call is held (a hold set afterwards
   waits for the pending deletion to finish: :func:`set_hold` refuses while one is
   pending), so hold and deletion never race.
2. **files**: every recording file of the call is unlinked (a missing one is fine: a
   crash came after its unlink) and the folder fsynced.
3. **records**: the transcript, its versions and its search-index entries go (in the
   transcripts store, idempotent), then ONE transaction of the main store updates or
   deletes the call's rows, appends a ``retention_log`` row per kind and an access-log
   row (DPA 2018 s.62: erasure is logged), and drops the intent.

A run first finishes every pending intent (step 2 and 3 are idempotent), then takes new
ones. Nothing here runs on the call path: the service runs it in a thread, the CLI
(``controlroom purge``) in its own process. The run's summary becomes a
``system.retention_purge`` CAD system event (:func:`cad.messages.retention_event`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from config.retention import RetentionSettings

log = structlog.get_logger("controlroom.retention")

DAY = 86400.0
SYSTEM_USER = "retention"
"""The access-log user of deletions (the scheduled job or ``controlroom purge``)."""

COMPONENT = "retention"

MIGRATIONS = [
    """
    CREATE TABLE retention_holds (
        call_id TEXT PRIMARY KEY,
        set_by TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
        set_at REAL NOT NULL
    );
    CREATE TABLE retention_hold_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        call_id TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('set', 'release')),
        username TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TRIGGER retention_hold_log_no_update BEFORE UPDATE ON retention_hold_log
    BEGIN SELECT RAISE(ABORT, 'retention_hold_log is append-only'); END;
    CREATE TRIGGER retention_hold_log_no_delete BEFORE DELETE ON retention_hold_log
    BEGIN SELECT RAISE(ABORT, 'retention_hold_log is append-only'); END;
    CREATE TABLE retention_pending (
        call_id TEXT PRIMARY KEY,
        kinds TEXT NOT NULL,
        files TEXT NOT NULL,
        reason TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE TABLE retention_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        call_id TEXT NOT NULL,
        line TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('recording', 'transcript', 'call')),
        reason TEXT NOT NULL,
        UNIQUE (call_id, kind)
    );
    CREATE TRIGGER retention_log_no_update BEFORE UPDATE ON retention_log
    BEGIN SELECT RAISE(ABORT, 'retention_log is append-only'); END;
    """,
]

PG_MIGRATIONS = [
    """
    CREATE TABLE retention_holds (
        call_id TEXT PRIMARY KEY,
        set_by TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
        set_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE retention_hold_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        call_id TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('set', 'release')),
        username TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE retention_pending (
        call_id TEXT PRIMARY KEY,
        kinds TEXT NOT NULL,
        files TEXT NOT NULL,
        reason TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE retention_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        call_id TEXT NOT NULL,
        line TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('recording', 'transcript', 'call')),
        reason TEXT NOT NULL,
        UNIQUE (call_id, kind)
    );
    """,
]

KINDS = ("recording", "transcript", "call")


class HoldError(ValueError):
    """A legal hold cannot be set or released (message says why)."""


def migrate(db: Any) -> None:
    from store import drafts

    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)
    drafts.migrate(db)   # an unsaved grading goes with its call (_finish)


@dataclass(frozen=True)
class Due:
    """One call with what of it is past retention."""

    call_id: str
    line: str
    arrived_at: float
    kinds: tuple[str, ...]
    files: tuple[str, ...]
    reason: str


@dataclass
class Summary:
    """What a purge run did (or, dry, would do)."""

    dry_run: bool
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    calls: list[str] = field(default_factory=list)
    held: int = 0
    """Calls past retention left alone because of a legal hold."""
    resumed: int = 0
    """Deletions a previous, interrupted run had started and this one finished."""
    items: list[Due] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "deleted": dict(self.deleted), "calls": list(self.calls),
                "held": self.held, "resumed": self.resumed,
                "items": [{"call_id": d.call_id, "line": d.line, "arrived_at": d.arrived_at,
                           "kinds": list(d.kinds), "files": list(d.files), "reason": d.reason}
                          for d in self.items]}


# -- legal hold ------------------------------------------------------------------

def set_hold(db: Any, call_id: str, *, username: str, reason: str,
             now: float | None = None) -> None:
    """Put a call under legal hold (never deleted while held). Raises HoldError."""
    now = time.time() if now is None else now
    if not reason.strip():
        raise HoldError("a reason is required (it is written to the hold log)")
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM calls WHERE call_id=?", (call_id,)).fetchone() is None:
            raise HoldError(f"no call {call_id!r} (already deleted, or never existed)")
        if conn.execute("SELECT 1 FROM retention_pending WHERE call_id=?",
                        (call_id,)).fetchone() is not None:
            raise HoldError(f"call {call_id!r} is being deleted (past retention); "
                            "run controlroom purge to finish, then it is gone")
        if conn.execute("SELECT 1 FROM retention_holds WHERE call_id=?",
                        (call_id,)).fetchone() is not None:
            raise HoldError(f"call {call_id!r} is already under legal hold")
        conn.execute("INSERT INTO retention_holds(call_id, set_by, reason, set_at)"
                     " VALUES (?, ?, ?, ?)", (call_id, username, reason.strip(), now))
        conn.execute("INSERT INTO retention_hold_log(at, call_id, action, username, reason)"
                     " VALUES (?, ?, 'set', ?, ?)", (now, call_id, username, reason.strip()))
    log.info("retention.hold_set", call_id=call_id, user=username)


def release_hold(db: Any, call_id: str, *, username: str, reason: str,
                 now: float | None = None) -> None:
    """Lift a legal hold (the call then follows its line's policy again)."""
    now = time.time() if now is None else now
    if not reason.strip():
        raise HoldError("a reason is required (it is written to the hold log)")
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM retention_holds WHERE call_id=?",
                        (call_id,)).fetchone() is None:
            raise HoldError(f"call {call_id!r} is not under legal hold")
        conn.execute("DELETE FROM retention_holds WHERE call_id=?", (call_id,))
        conn.execute("INSERT INTO retention_hold_log(at, call_id, action, username, reason)"
                     " VALUES (?, ?, 'release', ?, ?)", (now, call_id, username, reason.strip()))
    log.info("retention.hold_released", call_id=call_id, user=username)


def holds(db: Any) -> list[dict[str, Any]]:
    """Every call under legal hold, oldest hold first."""
    return [dict(call_id=r["call_id"], set_by=r["set_by"], reason=r["reason"], set_at=r["set_at"])
            for r in db.query("SELECT * FROM retention_holds ORDER BY set_at, call_id")]


# -- what is due -------------------------------------------------------------------

def _files(row: Any) -> list[str]:
    files: list[str] = []
    path = row["recording_path"]
    if path:
        files.append(path)
    segs = row["recording_segments"]
    if segs:
        try:
            listed = json.loads(segs)
        except (ValueError, TypeError):
            listed = []
        for s in listed if isinstance(listed, list) else []:
            p = s.get("path") if isinstance(s, dict) else None
            if isinstance(p, str) and Path(p).name and p not in files:
                files.append(p)
    return files


def due(db: Any, tdb: Any, settings: RetentionSettings, *, now: float | None = None,
        limit: int | None = None) -> tuple[list[Due], int]:
    """Calls with something past retention, oldest first, and how many due calls are
    held. Only ended calls are considered (a call in progress is never due)."""
    now = time.time() if now is None else now
    limit = settings.batch if limit is None else limit
    policies = {**{name: settings.lines[name] for name in settings.lines}}
    ages = [p for p in (settings.default, *policies.values())]
    shortest = min((d for p in ages for d in (p.recordings_days, p.transcripts_days,
                                              p.calls_days) if d > 0), default=0.0)
    if shortest <= 0:
        return [], 0
    done: dict[str, set[str]] = {}
    rows = db.query(
        "SELECT c.call_id, c.line, c.arrived_at, c.recording_path, c.recording_segments,"
        " h.call_id AS held FROM calls c LEFT JOIN retention_holds h ON h.call_id = c.call_id"
        " WHERE c.arrived_at < ? AND c.ended_at IS NOT NULL"
        " AND c.call_id NOT IN (SELECT call_id FROM retention_pending)"
        " ORDER BY c.arrived_at, c.call_id", (now - shortest * DAY,))
    ids = [r["call_id"] for r in rows]
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for r in db.query(f"SELECT call_id, kind FROM retention_log WHERE call_id IN ({marks})",
                          chunk):
            done.setdefault(r["call_id"], set()).add(r["kind"])
    with_transcript: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for r in tdb.query("SELECT call_id FROM transcription_transcripts WHERE call_id IN "
                           f"({marks}) UNION SELECT call_id FROM transcription_call_index"
                           f" WHERE call_id IN ({marks})", chunk + chunk):
            with_transcript.add(r["call_id"])
    out: list[Due] = []
    held = 0
    for r in rows:
        p = settings.policy(r["line"])
        age = (now - r["arrived_at"]) / DAY
        gone = done.get(r["call_id"], set())
        kinds: list[str] = []
        why: list[str] = []
        if p.calls_days > 0 and age > p.calls_days:
            kinds = [k for k in KINDS if k not in gone]
            why.append(f"call records kept {p.calls_days:g} days")
        else:
            if (p.recordings_days > 0 and age > p.recordings_days and "recording" not in gone
                    and _files(r)):
                kinds.append("recording")
                why.append(f"recordings kept {p.recordings_days:g} days")
            if (p.transcripts_days > 0 and age > p.transcripts_days and "transcript" not in gone
                    and r["call_id"] in with_transcript):
                kinds.append("transcript")
                why.append(f"transcripts kept {p.transcripts_days:g} days")
        if not kinds:
            continue
        if r["held"] is not None:
            held += 1
            continue
        if len(out) < limit:
            out.append(Due(r["call_id"], r["line"], r["arrived_at"], tuple(kinds),
                           tuple(_files(r)) if ("recording" in kinds or "call" in kinds) else (),
                           f"retention policy of line {r['line']}: " + "; ".join(why)))
    return out, held


# -- deletion ------------------------------------------------------------------------

def _unlink(paths: list[str]) -> None:
    dirs: set[Path] = set()
    for p in paths:
        path = Path(p)
        if not path.name:
            continue
        for candidate in (path, path.with_name(path.name + ".part")):
            try:
                candidate.unlink()
                dirs.add(candidate.parent)
            except FileNotFoundError:
                pass
    for d in dirs:  # the unlinks are on disk before the record says so
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _delete_transcript(tdb: Any, call_id: str) -> None:
    from transcription import store as tstore

    with tdb.transaction() as conn:
        tstore.index_call(conn, call_id, [])  # the call-index row and its vocabulary counts
        for table in ("transcription_segments", "transcription_transcripts",
                      "transcription_transcript_versions", "transcription_jobs"):
            conn.execute(f"DELETE FROM {table} WHERE call_id=?", (call_id,))


def _finish(db: Any, tdb: Any, call_id: str, kinds: list[str], files: list[str], reason: str,
            *, client: str, now: float) -> None:
    """Steps 2 and 3 for one intent (idempotent)."""
    _unlink(files)
    if "transcript" in kinds:
        _delete_transcript(tdb, call_id)
    with db.transaction() as conn:
        row = conn.execute("SELECT line FROM calls WHERE call_id=?", (call_id,)).fetchone()
        line = row[0] if row is not None else ""
        if "call" in kinds:
            conn.execute("DELETE FROM queue_log WHERE call_id=?", (call_id,))
            conn.execute("DELETE FROM outbox WHERE call_id=?", (call_id,))
            conn.execute("DELETE FROM outbox_seq WHERE call_id=?", (call_id,))
            conn.execute("DELETE FROM calls WHERE call_id=?", (call_id,))
            conn.execute("DELETE FROM grading_drafts WHERE call_id=?", (call_id,))
        elif "recording" in kinds:
            # '' (not NULL: NULL means "sealed, not yet recorded" to the start-up repair);
            # the checksum stays as the record of what existed.
            conn.execute("UPDATE calls SET recording_path='', recording_segments=NULL"
                         " WHERE call_id=?", (call_id,))
        for kind in kinds:
            conn.execute("INSERT INTO retention_log(at, call_id, line, kind, reason)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT (call_id, kind) DO NOTHING",
                         (now, call_id, line, kind, reason))
        conn.execute(
            "INSERT INTO console_access_log(at, username, roles, action, call_id, query,"
            " filters, justification, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, SYSTEM_USER, json.dumps(["system"]), "erase", call_id, None,
             json.dumps({"kinds": kinds, "files": len(files)}, sort_keys=True), reason, client))
        conn.execute("DELETE FROM retention_pending WHERE call_id=?", (call_id,))


def purge(db: Any, tdb: Any, settings: RetentionSettings, *, dry_run: bool = False,
          now: float | None = None, client: str = "controlroom", rate: float = 0.0,
          limit: int | None = None, on_deleted: Callable[[str, list[str]], None] | None = None
          ) -> Summary:
    """One purge run (see the module docstring). ``rate``: calls per second at most (0:
    as fast as the disk allows). Returns what was (or would be) deleted."""
    now = time.time() if now is None else now
    summary = Summary(dry_run=dry_run)
    if not dry_run:
        for p in db.query("SELECT * FROM retention_pending ORDER BY started_at, call_id"):
            kinds, files = json.loads(p["kinds"]), json.loads(p["files"])
            _finish(db, tdb, p["call_id"], kinds, files, p["reason"], client=client, now=now)
            summary.resumed += 1
            summary.calls.append(p["call_id"])
            for k in kinds:
                summary.deleted[k] += 1
            log.info("retention.resumed", call_id=p["call_id"], kinds=kinds)
    items, summary.held = due(db, tdb, settings, now=now, limit=limit)
    summary.items = items
    if dry_run:
        for d in items:
            for k in d.kinds:
                summary.deleted[k] += 1
        summary.calls = [d.call_id for d in items]
        return summary
    gap = 1.0 / rate if rate > 0 else 0.0
    for d in items:
        started = time.monotonic()
        with db.transaction() as conn:  # step 1: the intent (never for a held call)
            if conn.execute("SELECT 1 FROM retention_holds WHERE call_id=?",
                            (d.call_id,)).fetchone() is not None:
                summary.held += 1
                continue
            conn.execute("INSERT INTO retention_pending(call_id, kinds, files, reason,"
                         " started_at) VALUES (?, ?, ?, ?, ?)",
                         (d.call_id, json.dumps(list(d.kinds)), json.dumps(list(d.files)),
                          d.reason, now))
        _finish(db, tdb, d.call_id, list(d.kinds), list(d.files), d.reason,
                client=client, now=now)
        summary.calls.append(d.call_id)
        for k in d.kinds:
            summary.deleted[k] += 1
        log.info("retention.deleted", call_id=d.call_id, line=d.line, kinds=list(d.kinds),
                 files=len(d.files))
        if on_deleted is not None:
            on_deleted(d.call_id, list(d.kinds))
        if gap:
            time.sleep(max(0.0, gap - (time.monotonic() - started)))
    return summary


def transcripts_db(db: Any, data_dir: Path) -> Any:  # noqa: ARG001
    """Where transcripts live: the main store, SQLite or PostgreSQL (as in
    :class:`controlroom.service.Service`)."""
    return db


def system_message(node: str, summary: Summary, *, now: float | None = None) -> dict[str, Any]:
    """The run's ``system.retention_purge`` CAD system event."""
    import uuid

    from cad import messages

    return messages.retention_event(node=node, deleted=summary.deleted, calls=summary.calls,
                                    held=summary.held, resumed=summary.resumed,
                                    now=time.time() if now is None else now,
                                    event_id=uuid.uuid4().hex)


def record(db: Any, message: dict[str, Any]) -> None:
    """Keep the run in ``system_events`` (the node's own health record)."""
    from store import systemlog

    try:
        with db.transaction() as conn:
            systemlog.append(conn, at=time.time(), type=message["type"], reason=message["reason"],
                             data={k: message[k] for k in ("deleted", "calls", "held", "resumed")})
    except Exception as exc:  # noqa: BLE001 - the deletions are recorded already
        log.warning("retention.system_event_not_recorded", error=str(exc))


def publish_summary(settings: Any, summary: Summary, *, timeout: float = 10.0) -> bool:
    """Outside the service (``controlroom purge``): publish the run's system event to the
    CAD broker once, QoS 1, and record it. False (logged) when the broker is away: the
    access log and ``retention_log`` still hold every deletion."""
    import asyncio

    import aiomqtt

    from cad import messages
    from config.loader import secret

    m = settings.mqtt
    msg = system_message(settings.node_id, summary)
    try:
        from store import Database, systemlog

        url = getattr(settings.storage, "url", "")
        db = Database((secret(url, key="storage.url") if url else None)
                      or settings.storage.database_path)
        db.migrate(systemlog.COMPONENT, systemlog.MIGRATIONS, postgresql=systemlog.PG_MIGRATIONS)
        record(db, msg)
        db.close()
    except Exception as exc:  # noqa: BLE001
        log.warning("retention.system_event_not_recorded", error=str(exc))
    if not m.enabled:
        return False

    async def send() -> None:
        tls = aiomqtt.TLSParameters(ca_certs=m.ca_file or None) if m.tls else None
        async with aiomqtt.Client(m.host, m.port, username=m.username or None,
                                  password=secret(m.password, key="mqtt.password"),
                                  tls_params=tls, timeout=timeout,
                                  identifier=f"{settings.node_id}-purge-{os.getpid()}") as c:
            await c.publish(messages.system_topic(m.topic_prefix, settings.node_id),
                            json.dumps(msg, separators=(",", ":")), qos=1)

    try:
        asyncio.run(asyncio.wait_for(send(), timeout + 1))
    except Exception as exc:  # noqa: BLE001 - broker away or refusing: logged, not fatal
        log.warning("retention.system_event_not_published", error=str(exc))
        return False
    return True

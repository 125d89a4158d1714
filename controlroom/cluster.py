"""Survivor salvage: a live node closes, on the record, the calls of a node that died.

Theory of operation (issue 14). On a shared PostgreSQL store every node beats in the
``nodes`` table (``store.nodes``). A node killed (``kill -9``, power, cable) takes its calls'
media with it: the callers are gone, but the store still has their rows open, their queue
legs open in the queue log, their recordings unsealed ``.part`` files, and the CAD has
heard no end. Every node runs :class:`Salvager`: every ``cluster.salvage_after / 4`` s it
looks for nodes whose heartbeat is older than ``cluster.salvage_after`` (a node that has
not beaten since it registered is starting: ``storage.node_stale_after``) and which were
not stopped, and salvages each one, through a connection of its own:

1. *Claim*, in one transaction with everything that follows: ``UPDATE nodes SET
   stopped_at ... WHERE node_id=? AND instance=? AND stopped_at IS NULL AND heartbeat_at
   < ?``. The row lock makes two survivors take turns; the second finds ``stopped_at`` set
   and does nothing. A restart of the dead node (``store.nodes.register``) waits on the same
   lock; after a salvage it takes the row over at once (it was stopped), before one it
   changes the instance and the salvage finds nothing to claim (the node closes its own
   calls at start, as a single node does).
2. *Recordings*: when ``cluster.peer_recordings`` names the dead node's recordings folder
   as this node sees it (a shared file system), its ``.part`` files are sealed by the
   engine's own crash recovery (``telephony.media.recording.recover``: header fixed from
   what reached the disk, fsync, rename), hashed, and recorded (``call.recording``).
   A ``.part`` file still growing (a node cut off from the store but alive) is left to
   its node, and that call is closed without a recording on record.
3. *Calls*: every call of that node still open is closed: state ``interrupted``,
   ``call.ended`` (by ``system``, the reason names the dead node and the survivor); calls
   still queued or ringing are abandoned on the record (``call.abandoned``, ABANDON in
   the queue log) and, on call-back lines (999), put on *this* node's call-back list
   (``Router.adopt``, the code a restart uses; with one global queue, once committed, they
   are sent to the routing leader, whose list the desks read, at once). Connected calls
   get COMPLETE in the queue log. CAD messages go through the shared outbox under the dead node's id (the node whose
   id starts the call id), so any node's publisher delivers them in order.

If the survivor dies mid-way the transaction rolls back and another survivor claims the
node; recordings it had already sealed are found sealed (``find_sealed``) and recorded.
The restarted node finds its calls closed, its queue legs closed and no ``.part`` files:
nothing is closed twice.

Not handled: a node cut from the store (not from its callers) for longer than
``salvage_after`` has its calls closed by a survivor while they may still be up; when it
reaches the store again its own end of those calls is recorded a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

import callevents as ev
from cad.publisher import append_event
from controlroom.storage import open_store
from store import calls as calls_table
from store import queuelog

if TYPE_CHECKING:
    from controlroom.node import Node

log = structlog.get_logger("controlroom.cluster")


def peer_folder(template: str, node_id: str) -> Path | None:
    """The dead node's recordings folder as this node sees it (``{node}`` replaced)."""
    return Path(template.replace("{node}", node_id)) if template else None


STALE = ("heartbeat_at < CASE WHEN heartbeat_at = started_at THEN ? ELSE ? END")
"""A node's heartbeat is stale: older than ``salvage_after``, or, for a node that has not
beaten since it registered (it is starting: migrations, recovery), ``node_stale_after``."""


def stale_nodes(db: Any, me: str, *, after: float, starting: float,
                now: float) -> list[dict[str, Any]]:
    """Nodes other than ``me``, not stopped, whose heartbeat is stale."""
    return [dict(r) for r in db.query(
        "SELECT node_id, instance, heartbeat_at FROM nodes WHERE stopped_at IS NULL"
        f" AND {STALE} AND node_id <> ? ORDER BY node_id",
        (now - starting, now - after, me))]


QUIET_S = 2.5
"""A recording's ``.part`` file untouched this long is not being written: the media layer
writes each recording every second (``flush_every``)."""


def _still_written(folder: Path) -> set[Path]:
    """``.part`` files some process still writes (a node cut off from the store, not
    dead): changed within ``QUIET_S``, or during a wait of up to ``QUIET_S``. Sealing
    them would take a live recording from under its node; that node seals them itself."""
    def stamp(p: Path) -> tuple[int, int] | None:
        try:
            st = p.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    first = {p: stamp(p) for p in folder.glob("*.wav.part")}
    now = time.time()
    young = {p: s for p, s in first.items() if s is not None and now - s[0] / 1e9 < QUIET_S}
    if not young:
        return set()
    time.sleep(max(0.0, QUIET_S - min(now - s[0] / 1e9 for s in young.values())))
    return {p for p, s in young.items() if stamp(p) != s}


def _recordings(folder: Path | None, call_ids: list[str]) -> dict[str, Any]:
    """Seal the dead node's ``.part`` files; every open call's sealed recording (hashed)."""
    if folder is None or not folder.is_dir() or not call_ids:
        return {}
    from telephony.media.recording import find_sealed, recover

    found = {info.call_id: info for info in recover(folder, skip=_still_written(folder))}
    for call_id in call_ids:
        if call_id not in found:
            try:
                info = find_sealed(folder, call_id)
            except Exception:  # noqa: BLE001 - not a call id the media layer knows
                info = None
            if info is not None:
                found[call_id] = info
    return {c: found[c] for c in call_ids if c in found}


class Salvager:
    """Watches the ``nodes`` table and salvages dead nodes' calls (PostgreSQL stores)."""

    def __init__(self, service: Node) -> None:
        self.s = service
        self.after = service.settings.cluster.salvage_after
        self.starting = max(self.after, service.settings.storage.node_stale_after)
        self.db: Any = None
        """Its own connection: a salvage transaction waits on the event loop (the router)
        and must never hold the connection the call path writes through."""
        self.salvaged: list[dict[str, Any]] = []
        """One summary per node this node salvaged (tests, logs)."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        every = max(0.1, self.after / 4)
        try:
            while True:
                await asyncio.sleep(every)
                await self._round(loop)
        finally:
            if self.db is not None:
                self.db.close()

    async def _round(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if self.db is None:
                self.db = await asyncio.to_thread(open_store, self.s.settings)
            dead = await asyncio.to_thread(stale_nodes, self.db, self.s.settings.node_id,
                                           after=self.after, starting=self.starting,
                                           now=time.time())
            for node in dead:
                done = await asyncio.to_thread(self.salvage, node["node_id"],
                                               node["instance"], loop)
                if done is not None:
                    self.salvaged.append(done)
        except Exception as exc:  # noqa: BLE001 - the store is away: try next round
            log.warning("node.salvage_failed", error=str(exc))

    # -- in a worker thread ------------------------------------------------------
    def salvage(self, node_id: str, instance: str,
                loop: asyncio.AbstractEventLoop) -> dict[str, Any] | None:
        """Claim ``node_id``'s run ``instance`` and close its calls (one transaction);
        None when another survivor or the node's restart came first."""
        s = self.s
        me = s.settings.node_id
        now = time.time()
        payloads: list[dict[str, Any]] = []
        with self.db.transaction() as conn:
            won = conn.execute(
                "UPDATE nodes SET stopped_at=? WHERE node_id=? AND instance=?"
                f" AND stopped_at IS NULL AND {STALE} RETURNING heartbeat_at",
                (now, node_id, instance, now - self.starting, now - self.after)).fetchone()
            if won is None:
                return None
            last_beat = float(won[0])
            rows = [calls_table.to_dict(r) for r in conn.execute(
                "SELECT * FROM calls WHERE node=? AND ended_at IS NULL ORDER BY arrived_at",
                (node_id,)).fetchall()]
            ids = [r["call_id"] for r in rows]
            recs = _recordings(peer_folder(s.settings.cluster.peer_recordings, node_id), ids)
            entries = self._queue_rows(conn, ids)
            reason = (f"node {node_id} died (last heartbeat "
                      f"{time.strftime('%H:%M:%S', time.localtime(last_beat))}): "
                      f"call interrupted, closed by node {me}")
            fut = asyncio.run_coroutine_threadsafe(self._adopt(entries, now, reason), loop)
            actions = fut.result(timeout=10)
            self._append_log(conn, actions)
            abandoned = {a.call_id: a for a in actions
                         if getattr(a, "event", "") == "ABANDON"}
            for r in rows:
                payloads += self._close(conn, r, node_id, recs.get(r["call_id"]),
                                        abandoned.get(r["call_id"]), last_beat, reason)
        summary = {"node": node_id, "by": me, "calls": len(rows), "recordings": len(recs),
                   "abandoned": len(abandoned),
                   "callbacks": sum(1 for a in abandoned.values() if a.data.get("callback"))}
        log.warning("node.salvaged", **summary, reason=reason)
        self._tell_leader(actions)
        for p in payloads:
            loop.call_soon_threadsafe(s._after_commit, p)
        if not payloads:
            loop.call_soon_threadsafe(s._storage_committed)
        return summary

    def _tell_leader(self, actions: list[Any]) -> None:
        """With one global queue, the call-backs this salvage put on the record join the
        leader's list at once (an input it applies: ``LeaderThread._add_callbacks``), not
        only at its next takeover. Sent after the commit: a salvage rolled back sends
        nothing."""
        from routing import QueueLogEntry

        gq = getattr(self.s, "global_queue", None)
        adds = [dataclasses.asdict(a) for a in actions
                if isinstance(a, QueueLogEntry) and a.event == "CALLBACK_ADD"]
        if gq is not None and adds:
            gq.send("callbacks", {"entries": adds})

    @staticmethod
    def _queue_rows(conn: Any, ids: list[str]) -> list[Any]:
        from routing import QueueLogEntry

        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT at, call_id, line, handler_id, event, data FROM queue_log"
            f" WHERE call_id IN ({marks}) ORDER BY id", tuple(ids)).fetchall()
        return [QueueLogEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    async def _adopt(self, entries: list[Any], now: float, reason: str) -> list[Any]:
        """On the event loop (the router is not thread-safe)."""
        return self.s.router.adopt(entries, now, reason=reason)

    def _append_log(self, conn: Any, actions: list[Any]) -> None:
        from routing import QueueLogEntry

        for a in actions:
            if isinstance(a, QueueLogEntry):
                queuelog.append(conn, a)

    def _close(self, conn: Any, r: dict[str, Any], node_id: str, rec: Any, abandon: Any,
               last_beat: float, reason: str) -> list[dict[str, Any]]:
        """Record one dead call's recording, abandonment and end; the events' payloads."""
        call_id, line = r["call_id"], r["line"]
        out: list[ev.DomainEvent] = []
        path, sha, duration = r["recording_path"], r["recording_sha256"], r["recording_duration"]
        if rec is not None and rec.sha256:
            segments = [{"id": g.path.stem, "path": str(g.path), "start": g.start,
                         "duration": g.duration, "sha256": g.sha256, "bytes": g.bytes}
                        for g in getattr(rec, "segments", ())]
            gaps = [{"start": g.start, "end": g.end, "frames_lost": g.frames_lost,
                     "reason": g.reason} for g in getattr(rec, "gaps", ())]
            path, sha, duration = str(rec.path), rec.sha256, rec.duration
            calls_table.update(conn, call_id, recording_path=path, recording_sha256=sha,
                               recording_duration=duration, recording_segments=segments,
                               recording_gaps=gaps)
            out.append(ev.RecordingReady(call_id=call_id, at=time.time(),
                                         recording_id=Path(path).stem, sha256=sha,
                                         duration=duration, path=path,
                                         segments=tuple(segments), gaps=tuple(gaps)))
        answered = r["answered_at"]
        # The recording runs from answer to the crash: the best record of the end;
        # without one, the dead node's last heartbeat.
        ended = ((answered or r["arrived_at"]) + duration if duration
                 else max(r["arrived_at"], last_beat))
        if abandon is not None:
            wait = float(abandon.data.get("wait", 0.0))
            out.append(ev.CallAbandoned(call_id=call_id, at=ended, line=line,
                                        caller=r["caller"] or "", wait=wait, position=0,
                                        callback=bool(abandon.data.get("callback"))))
        handler = r["handler_id"]
        out.append(ev.CallEnded(
            call_id=call_id, at=ended, line=line, by="system", reason=reason,
            wait=(answered or ended) - r["arrived_at"],
            talk=(ended - answered) if answered and handler else 0.0,
            total=ended - r["arrived_at"], handler_id=handler,
            recording_id=Path(path).stem if path else None, recording_sha256=sha))
        calls_table.update(conn, call_id, state="interrupted", ended_at=ended,
                           ended_by="system", end_reason=reason)
        payloads = []
        for e in out:
            append_event(conn, e, node=node_id, line=line,
                         incident_number=r.get("incident_number"))
            p = e.as_dict()
            p["line"] = line
            payloads.append(p)
        return payloads

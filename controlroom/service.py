"""The composition root: telephony, routing, store, CAD, transcription and the desk as one service.

Theory of operation
-------------------
The engine reports telephony events on the loop (:meth:`Service.on_telephony`). Each one
is turned into router calls (pure, fed ``now``), whose actions the service applies:
telephony commands (offer a handler's phone, bridge, hang up) and domain events.
Every domain event is written, together with the call's row and queue-log entries, in
ONE SQLite transaction (:meth:`Service._commit`); events for the CAD go to the outbox
in that same transaction and the publisher task drains it, so a dead broker never
delays a call and a crash never loses an event. After commit, events fan out to the
desk's WebSocket subscribers and the transcription service.

Nothing here blocks the loop: SQLite writes are single-row WAL commits; recognition
runs in transcription's workers; MQTT in the publisher's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import structlog

import callevents as ev
from cad import messages as cad_messages
from cad.publisher import append_event
from config import Settings
from console.backend import desk_state_name
from controlroom.calls import LiveCall
from controlroom.metrics import Registry
from controlroom.storage import open_store
from store import calls as calls_table
from store import nodes
from store import spool as storage
from telephony import api as tel

log = structlog.get_logger("controlroom")


ANSWER_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Service:
    """One controlroom node."""

    def __init__(self, settings: Settings) -> None:
        from routing import (
            Abandoned,
            CancelOffer,
            Connected,
            HandlerChanged,
            Offer,
            Queued,
            Reject,
            Router,
        )

        self._on_event: dict[type, Callable[[Any], None]] = {
            tel.CallArrived: self._call_arrived,
            tel.CallCancelled: self._call_cancelled,
            tel.CallRejected: self._call_rejected,
            tel.LegAnswered: self._leg_answered,
            tel.LegFailed: self._leg_failed,
            tel.LegEnded: self._leg_ended,
            tel.CallEnded: self._call_ended,
            tel.RecordingSealed: self._recording_sealed,
            tel.SilentCallFlag: self._silent_call_flag,
            tel.HoldChanged: self._hold_changed,
        }
        """Telephony event type -> its handler (:meth:`on_telephony`); others are ignored."""
        self._on_action: dict[type, Callable[[Any, float], None]] = {
            Queued: self._on_queued,
            Offer: self._on_offer,
            CancelOffer: self._on_cancel_offer,
            Connected: self._on_connected,
            Abandoned: self._on_abandoned,
            Reject: self._on_reject,
            HandlerChanged: self._on_handler_changed,
        }
        """Router action type -> how the service carries it out (:meth:`_apply`, fed ``now``).
        QueueLogEntry actions are written by :meth:`_log_entries`; Completed needs nothing."""
        self.settings = settings
        self.started_at = time.time()
        self.db = open_store(settings)
        self.db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS,
                        postgresql=calls_table.PG_MIGRATIONS)
        self.db.migrate(calls_table.RECORDING_COMPONENT, calls_table.RECORDING_MIGRATIONS,
                        postgresql=calls_table.RECORDING_PG_MIGRATIONS)
        self.db.migrate(calls_table.NODE_COMPONENT, calls_table.NODE_MIGRATIONS,
                        postgresql=calls_table.NODE_MIGRATIONS)  # portable SQL
        from store import outbox, queuelog

        self._outbox = outbox
        self._queuelog = queuelog
        self.db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
        self.db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS,
                        postgresql=queuelog.PG_MIGRATIONS)
        from store import systemlog

        self._systemlog = systemlog
        self.db.migrate(systemlog.COMPONENT, systemlog.MIGRATIONS,
                        postgresql=systemlog.PG_MIGRATIONS)
        # One running process per node id: a second one with this id refuses here
        # (store.nodes.NodeIdInUse) while the first's heartbeat is fresh.
        nodes.migrate(self.db)
        self.node_instance = nodes.new_instance()
        nodes.register(self.db, settings.node_id, self.node_instance,
                       stale_after=settings.storage.node_stale_after)
        # Transcripts, their jobs and their search live in the store, on PostgreSQL too
        # (transcription/pgschema.py, pgsearch.py): any node or `controlroom worker`.
        self.transcripts_db = self.db
        # Life before paperwork: the record of every decision goes through the spooled
        # writer, which commits it at once or, while the database will not take writes
        # (disk full, read-only), keeps it in order in memory until it does.
        self._system_unsent: list[dict[str, Any]] = []
        self.storage = storage.SpooledWriter(
            self.db, max_pending=settings.storage.spool_max_writes,
            on_committed=self._storage_committed, on_event=self._on_storage_event)
        self.handlers = {h.id: h for h in settings.handlers}
        self.lines = {line.name: line for line in settings.lines}
        self.router = Router.from_settings(settings.lines, settings.routing)
        self.global_queue: Any = None
        if settings.cluster.global_queue and self.db.dialect == "postgresql":
            from controlroom.leader import GlobalQueue  # one queue for the room (issue 14)

            self.global_queue = GlobalQueue(self)
            self.router = self.global_queue.proxy
        # Statistics and the call-back list survive a restart: rebuilt from the queue log.
        # Only the router's statistics window is read back (a week), not years of log.
        entries = queuelog.load(self.db, since=time.time() - 8 * 86400)
        if self.db.dialect == "postgresql":  # other nodes' waiting calls are live, not lost
            live = {r["call_id"] for r in self.db.query(
                "SELECT call_id FROM calls WHERE ended_at IS NULL AND node NOT IN (?, '')",
                (settings.node_id,))}
            entries = [e for e in entries if e.call_id not in live]
        restored = self.router.restore(entries, time.time())
        self._log_entries(restored)
        self.calls: dict[str, LiveCall] = {}
        self.legs: dict[str, str] = {}  # leg_id -> call_id
        self.wrapup_calls: dict[str, str] = {}  # handler_id -> call in wrap-up
        from controlroom.monitor import Monitors

        self.monitors = Monitors(self)
        """Supervisor listen / whisper / barge legs (controlroom.monitor)."""
        from controlroom.consult import Consults

        self.consults = Consults(self)
        """Consult / conference / transfer legs to other agencies (controlroom.consult)."""
        from controlroom.dialout import Dialouts

        self.dialouts = Dialouts(self)
        """Click-to-dial call-backs in progress (controlroom.dialout)."""
        self.rejected_today: dict[str, int] = {}
        self.grading_drafts: dict[str, dict[str, Any]] = {}
        """call id -> the grading a handler is typing (controlroom.desk), until saved."""
        self.live_transcripts: dict[str, list[dict[str, Any]]] = {}
        self._subscribers: set[Any] = set()  # console.feed.LiveQueue, one per subscription
        self._wake_router = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.loop_stall_max = 0.0
        """The longest the event loop was held (s; stalls over 0.1 s, ``_stall_loop``)."""
        self._draining = False
        self.ready = False
        self.engine: Any = None
        self.publisher: Any = None
        self.transcription: Any = None
        self.web_runner: Any = None
        self.web_port: int | None = None
        self._setup_metrics()

    # ------------------------------------------------------------------ metrics
    def _setup_metrics(self) -> None:
        m = self.metrics = Registry()
        self.m_calls = m.counter("controlroom_calls_total", "Calls by line and outcome")
        self.m_answer = m.histogram("controlroom_answer_seconds",
                                    "Arrival to handler answer, by line", ANSWER_BUCKETS)
        self.m_rejected = m.counter("controlroom_sip_rejected_total", "INVITEs refused, by status")
        self.m_live_resyncs = m.counter(
            "controlroom_live_resyncs_total",
            "Live console feeds that overflowed and were resynced with a fresh snapshot: "
            "stage=service (the console's subscription), stage=page (a page's WebSocket)")

        def by_state() -> list[tuple[dict[str, str], float]]:
            counts: dict[tuple[str, str], int] = {}
            for c in self.calls.values():
                counts[(c.line, c.state)] = counts.get((c.line, c.state), 0) + 1
            return [({"line": ln, "state": st}, n) for (ln, st), n in counts.items()]

        def waiting() -> list[tuple[dict[str, str], float]]:
            out: list[tuple[dict[str, str], float]] = []
            for name in self.lines:
                n = sum(1 for c in self.calls.values() if c.line == name and c.state == "queued")
                out.append(({"line": name}, n))
            return out

        def longest() -> list[tuple[dict[str, str], float]]:
            now = time.time()
            out = []
            for name in self.lines:
                waits = [now - c.arrived_at for c in self.calls.values()
                         if c.line == name and c.state in ("queued", "offered")]
                out.append(({"line": name}, max(waits, default=0.0)))
            return out

        def engine_stats() -> list[tuple[dict[str, str], float]]:
            s = getattr(self.engine, "stats", None)
            if s is None:
                return []
            out = [({"stat": k}, float(v)) for k, v in vars(s).items()
                   if isinstance(v, (int, float))]
            # SIP counters too: malformed_<kind>, untrusted_<verdict>, dropped... (issue 12)
            sip = getattr(self.engine, "sip_counters", None) or {}
            return out + [({"stat": f"sip_{k}"}, float(v)) for k, v in sorted(sip.items())]

        def outbox_depth() -> list[tuple[dict[str, str], float]]:
            return [({}, float(self._outbox.depth(self.db)))]

        def transcription_lag() -> list[tuple[dict[str, str], float]]:
            lags = self.transcription.worker_lag() if self.transcription is not None else []
            return [({"worker": str(i)}, float(v)) for i, v in enumerate(lags)]

        m.gauge("controlroom_calls", "Calls in progress by line and state", by_state)
        m.gauge("controlroom_queue_length", "Calls waiting, by line", waiting)
        m.gauge("controlroom_longest_wait_seconds", "Longest current wait, by line", longest)
        m.gauge("controlroom_engine", "SIP/RTP engine counters (RTP health)", engine_stats)
        m.gauge("controlroom_outbox_depth", "CAD events not yet acknowledged by the broker",
                outbox_depth)
        m.gauge("controlroom_transcription_lag_seconds", "Live transcription lag",
                transcription_lag)

        def storage_degraded() -> list[tuple[dict[str, str], float]]:
            fault = self.storage.fault
            return [({"reason": fault.reason if fault else ""}, 1.0 if fault else 0.0)]

        m.gauge("controlroom_storage_degraded",
                "1 while the database is not taking writes (label: why)", storage_degraded)
        m.gauge("controlroom_storage_spool_depth",
                "Records waiting in memory for the database to take writes",
                lambda: [({}, float(self.storage.depth))])
        m.gauge("controlroom_storage_spool_oldest_seconds",
                "How long the oldest record in the spool has waited",
                lambda: [({}, self.storage.oldest_age(time.time()))])
        self.m_storage_faults = m.counter("controlroom_storage_faults_total",
                                          "Times the database stopped taking writes, by reason")
        self.m_storage_lost = m.counter(
            "controlroom_storage_writes_lost_total",
            "Records lost because the spool was full (or the process stopped) while the "
            "database was not taking writes")
        from controlroom import operations  # histograms, disk, backlog (issue 18)

        operations.setup_metrics(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every part; the service is ready when the engine listens."""
        from cad.publisher import CadPublisher
        from telephony.engine import Engine
        from transcription import TranscriptionService

        s = self.settings
        s.storage.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.transcription = TranscriptionService(settings=s.transcription,
                                                  db=self.transcripts_db,
                                                  publish=self.publish_transcript,
                                                  node=(s.node_id if self.db.dialect
                                                        == "postgresql" else None))
        await self.transcription.start()
        # The node id names the node in topics and messages (cluster.node_id or mqtt.node).
        self.publisher = CadPublisher(dataclasses.replace(s.mqtt, node=s.node_id), self.db,
                                      on_incident=self.on_incident)
        self._tasks.append(asyncio.create_task(self.publisher.run(), name="cad-publisher"))
        self._tasks.append(asyncio.create_task(self.storage.run(), name="storage-spool"))
        from controlroom import operations  # first admin, /metrics listener, retention

        self._tasks += await operations.start(self)
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="node-heartbeat"))
        self._tasks.append(asyncio.create_task(self._stall_loop(), name="loop-stall"))
        for msg in self._system_unsent:  # health events from before the publisher existed
            self.publisher.publish_system(msg)
        self._system_unsent.clear()
        if s.sip.engine_workers > 1:  # whole engines in child processes, same API
            from telephony.workers import EngineWorkers

            engine_class: Any = EngineWorkers
        else:
            engine_class = Engine
        # Workers ship audio frames to this process only for live transcription.
        on_audio = (self._on_audio if s.sip.engine_workers == 1 or s.transcription.live
                    else None)
        self.engine = engine_class(settings=s.sip, lines=s.lines, handlers=s.handlers,
                                   recordings_dir=s.storage.recordings_dir,
                                   on_event=self.on_telephony, on_audio=on_audio,
                                   admit=self._admit,
                                   dialog_journal=s.storage.data_dir / "dialogs",
                                   call_id_prefix=f"{s.node_id}-")
        # seals recordings a crash left open (RecordingSealed) and sends BYE to the far
        # ends of dialogs it left up
        await self.engine.start()
        self._record_unrecorded_recordings()
        self._close_interrupted_calls()
        if self.db.dialect == "postgresql":  # a shared store: close dead nodes' calls
            from controlroom.cluster import Salvager

            self.salvager = Salvager(self)
            self._tasks.append(asyncio.create_task(self.salvager.run(), name="node-salvage"))
        if self.global_queue is not None:
            self._tasks.append(asyncio.create_task(self.global_queue.run(), name="routing-bus"))
        self._tasks.append(asyncio.create_task(self._router_loop(), name="router"))
        self._tasks.append(asyncio.create_task(self._summary_loop(), name="summary"))
        now = time.time()
        for h in s.handlers:
            self._apply(self.router.handler_login(h.id, now, skills=self._skills(h)))
            if s.routing.handlers_start_available:
                self._apply(self.router.set_available(h.id, now))
        if s.web.enabled:
            await self._start_web()
        self.ready = True
        log.info("service started", sip_port=self.engine.sip_port, web_port=self.web_port,
                 lines=list(self.lines), handlers=len(self.handlers))

    def _record_unrecorded_recordings(self) -> None:
        """Recordings sealed on disk whose checksum never reached the record: a crash
        came between the seal (write, fsync, rename) and its commit. The engine hashes
        their files and reports them (RecordingSealed, recovered), so every answered call
        gets its path, SHA-256 and ``call.recording`` message - ended calls too.

        Only calls with no recording on record are looked at (a partial index): calls
        answered by the engine always have one, so the set stays small."""
        mine, me = self._own_calls()
        rows = self.db.query("SELECT call_id FROM calls WHERE recording_path IS NULL "
                             "AND sip_call_id != ''" + mine, me)
        found = sum(1 for r in rows if self.engine.recover_recording(r["call_id"]))
        if found:
            log.warning("recordings sealed before a crash recorded at start", count=found)
        # Sealed while the file system was read-only, the file kept its temporary name.
        # engine.start() renamed and re-recorded every one that survived the repair; a
        # row still naming a .part whose file is gone lost its audio with the file
        # system (what the kernel had not written back): the record says so.
        for r in self.db.query("SELECT call_id, recording_path, recording_duration, "
                               "recording_gaps FROM calls WHERE recording_path LIKE '%.part'"):
            if Path(r["recording_path"]).exists():
                continue
            known = json.loads(r["recording_gaps"] or "[]")
            if any(g["reason"].startswith("recording file lost") for g in known):
                continue  # said at an earlier start
            dur = float(r["recording_duration"] or 0.0)
            gaps = [*known,
                    {"start": 0.0, "end": dur, "frames_lost": round(dur * 8000),
                     "reason": "recording file lost: sealed on a read-only file system, "
                               "not on disk after the restart"}]
            def lost(conn: Any, c: str = r["call_id"], g: list[dict[str, Any]] = gaps) -> None:
                calls_table.update(conn, c, recording_gaps=g)

            self.storage.write(lost, call_id=r["call_id"], what="call.recording_lost")
            log.error("recording file lost with a read-only file system",
                      call_id=r["call_id"], path=r["recording_path"])

    def _own_calls(self) -> tuple[str, tuple[str, ...]]:
        """SQL (and its parameter) keeping this node's calls: on a shared store the other
        nodes' open calls are live (or a survivor's to close: controlroom.cluster)."""
        if self.db.dialect != "postgresql":
            return "", ()
        return " AND node IN (?, '')", (self.settings.node_id,)

    def _close_interrupted_calls(self) -> None:
        """Calls still open in the store were cut off by a crash: close them on the record.

        Their recordings were sealed by the engine just before (recovered=True), so the
        ``call.ended`` message carries the checksum; the CAD learns the call is over.
        """
        restarted = time.time()
        mine, me = self._own_calls()
        rows = self.db.query("SELECT * FROM calls WHERE ended_at IS NULL" + mine, me)
        for row in rows:
            r = calls_table.to_dict(row)
            answered = r["answered_at"]
            reason = "service restarted: call interrupted"
            # The recording runs from answer to the crash: the best record of when it ended.
            now = (r["arrived_at"] + r["recording_duration"] if r["recording_duration"]
                   else restarted)
            with self.db.transaction() as conn:
                calls_table.update(conn, r["call_id"], state="interrupted", ended_at=now,
                                   ended_by="system", end_reason=reason)
                self._commit(conn, ev.CallEnded(
                    call_id=r["call_id"], at=now, line=r["line"], by="system", reason=reason,
                    wait=(answered or now) - r["arrived_at"],
                    talk=(now - answered) if answered else 0.0, total=now - r["arrived_at"],
                    handler_id=r["handler_id"],
                    recording_id=Path(r["recording_path"]).stem if r["recording_path"] else None,
                    recording_sha256=r["recording_sha256"]), line=r["line"])
            log.warning("call interrupted by a restart closed on the record",
                        call_id=r["call_id"], line=r["line"])

    @staticmethod
    def _skills(h: Any) -> dict[str, int]:
        return {skill: h.proficiency.get(skill, 5) for skill in h.skills}

    async def _start_web(self) -> None:
        from aiohttp import web

        from controlroom.web import build_app, tls_context

        app = build_app(self)
        self.web_runner = web.AppRunner(app, access_log=None)
        await self.web_runner.setup()
        site = web.TCPSite(self.web_runner, self.settings.web.bind, self.settings.web.port,
                           ssl_context=tls_context(self.settings.web))  # None: plain HTTP
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.web_port = sockets[0].getsockname()[1] if sockets else self.settings.web.port

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (default: settings)
        """Refuse new non-emergency calls (503) and wait for calls in progress to end."""
        self._draining = True
        self.engine.set_accepting(priority_max=min(line.priority for line in self.settings.lines))
        deadline = time.monotonic() + (self.settings.drain_timeout if timeout is None else timeout)
        while self.calls and time.monotonic() < deadline:  # noqa: ASYNC110 (calls end on many paths)
            await asyncio.sleep(0.2)

    async def stop(self, *, drain_timeout: float = 0.0) -> None:
        """Stop in order: drain calls, engine, transcription, publisher, web."""
        self.ready = False
        if self.engine is not None:
            if drain_timeout > 0:
                await self.drain(drain_timeout)
            await self.engine.stop(drain_timeout=0)
        if self.transcription is not None:
            await self.transcription.stop()
        # The heartbeat beats on until the node unregisters: on a shared store a node
        # silent for cluster.salvage_after has its calls closed by a survivor.
        beating = [t for t in self._tasks if t.get_name() == "node-heartbeat"]
        for t in self._tasks:
            if t not in beating:
                t.cancel()
        for t in self._tasks:
            if t not in beating:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._tasks = beating
        if self.publisher is not None and hasattr(self.publisher, "close"):
            await self.publisher.close()
        from controlroom import operations

        await operations.stop(self)
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        self.storage.close()  # a last try; what is still spooled is logged as lost
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        with contextlib.suppress(Exception):  # the id is free at once (else: when stale)
            nodes.unregister(self.db, self.settings.node_id, self.node_instance)
        if self.transcripts_db is not self.db:
            self.transcripts_db.close()
        self.db.close()

    # ------------------------------------------------------------------ loops
    async def _heartbeat_loop(self) -> None:
        """This node's heartbeat in the store (``nodes``); a beat the store refuses
        (outage) is only logged: the node goes on, and the id stays ours until stale."""
        node_id, every = self.settings.node_id, self.settings.storage.heartbeat_interval
        while True:
            await asyncio.sleep(every)
            try:
                ours = await asyncio.to_thread(nodes.heartbeat, self.db, node_id,
                                               self.node_instance)
            except Exception as exc:  # noqa: BLE001 - the store is away: calls go on
                log.warning("node.heartbeat_failed", node=node_id, error=str(exc))
                continue
            if not ours:
                log.error("node.id_taken", node=node_id,
                          note="another process registered this node id after our "
                               "heartbeat went stale; two nodes now share an id")

    async def _stall_loop(self, every: float = 0.05, over: float = 0.1) -> None:
        """The loop-stall tracer: a tick every ``every`` s; one that comes more than
        ``over`` s late is logged (``loop.stall``, ``stalled_s``: how long the loop was
        held). A thread watches the ticks too and logs, once per stall, what the loop's
        thread was running when it had been held ``over`` s (``loop.stalled_in``: the
        stack), so the cause is named, not guessed."""
        import sys
        import threading
        import traceback

        loop_thread = threading.get_ident()
        beat = [time.monotonic()]
        done = threading.Event()

        def watch() -> None:
            seen = 0.0
            while not done.wait(every):
                last = beat[0]
                if last != seen and time.monotonic() - last > over:
                    seen = last
                    frame = sys._current_frames().get(loop_thread)
                    stack = "".join(traceback.format_stack(frame, limit=12)) if frame else ""
                    log.warning("loop.stalled_in", held_s=round(time.monotonic() - last, 3),
                                stack=stack)

        watcher = threading.Thread(target=watch, name="loop-stall-watch", daemon=True)
        watcher.start()
        try:
            while True:
                before = time.monotonic()
                beat[0] = before
                await asyncio.sleep(every)
                late = time.monotonic() - before - every
                if late > over:
                    self.loop_stall_max = max(self.loop_stall_max, late)
                    log.warning("loop.stall", stalled_s=round(late, 3))
        finally:
            done.set()

    async def _router_loop(self) -> None:
        """Drive the router's timers: offer timeouts, wrap-up ends, ageing."""
        while True:
            deadline = self.router.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.time()))
            self._wake_router.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_router.wait(), timeout=delay)
            try:
                self._apply(self.router.tick(time.time()))
            except Exception:  # a bug here must not stop distribution
                log.exception("router tick failed")

    async def _summary_loop(self) -> None:
        """Retained queue summary for the CAD and a snapshot for wallboards, every 2 s."""
        while True:
            await asyncio.sleep(2.0)
            try:
                summary = self.queue_summary()
                publish = getattr(self.publisher, "publish_summary", None)
                if publish is not None:
                    publish(summary["lines"])
                self._fanout({"type": "wallboard.snapshot", "snapshot": self.snapshot()})
            except Exception:
                log.exception("summary failed")

    # ------------------------------------------------------------------ telephony in
    def on_telephony(self, e: tel.TelephonyEvent) -> None:
        """Engine events, on the loop. Never raises into the engine."""
        if self.monitors.owns(e):  # a supervisor's leg, not a handler's offer
            try:
                self.monitors.on_event(e)
            except Exception:
                log.exception("handling monitor event failed", kind=type(e).__name__)
            return
        if self.dialouts.owns(e):  # a call-back dialled from the desk
            try:
                self.dialouts.on_event(e)
            except Exception:
                log.exception("handling dial-out event failed", kind=type(e).__name__)
            return
        if self.consults.owns(e):  # an agency's leg (consult, conference, transfer)
            try:
                self.consults.on_event(e)
            except Exception:
                log.exception("handling consult event failed", kind=type(e).__name__)
            return
        handler = self._on_event.get(type(e))
        if handler is None:
            return  # Dtmf, LegRinging: nothing for the service to do
        call_id = getattr(e, "call_id", None)
        with structlog.contextvars.bound_contextvars(call_id=call_id):
            try:
                handler(e)
            except Exception:
                log.exception("handling telephony event failed", event=type(e).__name__)

    def _call_arrived(self, e: tel.CallArrived) -> None:
        line = self.lines[e.line]
        call = LiveCall(call_id=e.call_id, line=e.line, priority=line.priority, caller=e.caller,
                        arrived_at=e.at)
        self.calls[e.call_id] = call
        where, detail = e.location, e.location_detail
        if where is None and detail is None and line.location is not None:
            # a dedicated line from a known site: the call carries the line's location
            where, detail = line.location.text, line.location.detail()
        self._record(ev.CallArrived(call_id=e.call_id, at=e.at, line=e.line,
                                    priority=line.priority, caller=e.caller,
                                    display_name=e.display_name, dialled=e.dialled,
                                    location=where, sip_call_id=e.sip_call_id,
                                    caller_normalised=e.caller_normalised,
                                    location_detail=detail),
                     lambda conn: calls_table.insert(
                         conn, call_id=e.call_id, line=e.line, priority=line.priority,
                         caller=e.caller, display_name=e.display_name, dialled=e.dialled,
                         location=where, sip_call_id=e.sip_call_id, state="queued",
                         arrived_at=e.at, caller_normalised=e.caller_normalised,
                         location_detail=detail, node=self.settings.node_id))
        self.m_calls.inc(line=e.line, outcome="arrived")
        if self.transcription is not None and self.settings.transcription.live:
            self.transcription.live_start(e.call_id, priority=line.priority)
        self.engine.play(e.call_id, line.queue_prompt)
        self._apply(self.router.call_arrived(e.call_id, e.line, e.at, caller=e.caller,
                                             caller_key=e.caller_normalised or None))

    def _call_cancelled(self, e: tel.CallCancelled) -> None:
        """CANCEL before our answer: an abandoned call with no wait (999: call-back)."""
        line = self.lines[e.line]
        self.calls[e.call_id] = LiveCall(call_id=e.call_id, line=e.line, priority=line.priority,
                                         caller=e.caller, arrived_at=e.at, ended_by="caller",
                                         end_reason="cancelled")
        self._record(ev.CallArrived(call_id=e.call_id, at=e.at, line=e.line,
                                    priority=line.priority, caller=e.caller),
                     lambda conn: calls_table.insert(
                         conn, call_id=e.call_id, line=e.line, priority=line.priority,
                         caller=e.caller, state="queued", arrived_at=e.at,
                         node=self.settings.node_id))
        from routing import CancelOffer, Offer, Reject

        actions = self.router.call_arrived(
            e.call_id, e.line, e.at, caller=e.caller,
            caller_key=getattr(e, "caller_normalised", "") or None)
        if not any(isinstance(a, Reject) for a in actions):
            actions += self.router.call_abandoned(e.call_id, e.at)

        offered = {a.call_id for a in actions if isinstance(a, Offer)}
        self._apply([a for a in actions
                     if not (isinstance(a, (Offer, CancelOffer)) and a.call_id in offered)])
        self._finish(e.call_id, by="caller", reason="cancelled before answer")

    def _admit(self, incoming: tel.IncomingCall) -> tuple[int, str] | None:
        """Before we answer: a full 101 queue (overflow ``busy``) gets 486, never 999."""
        reason = self.router.would_refuse(incoming.line)
        if reason is None:
            return None
        return 486, f"Busy Here ({reason})"

    def _call_rejected(self, e: tel.CallRejected) -> None:
        self.m_rejected.inc(status=str(e.status), line=e.line or "")
        if e.status == 486 and e.line in self.lines and "(" in e.reason:
            reason = e.reason.split("(", 1)[1].rstrip(")")
            self._log_entries(self.router.refused(f"r-{ev.new_id()[:12]}", e.line, e.at,
                                                  caller=e.caller, reason=reason))
        log.info("call refused", status=e.status, reason=e.reason, line=e.line, dialled=e.dialled)

    def _leg_answered(self, e: tel.LegAnswered) -> None:
        call = self.calls.get(e.call_id)
        if call is None or call.leg_id != e.leg_id or call.state != "offered":
            # The caller left or the offer was withdrawn while the phone was answered.
            self.engine.cancel_offer(e.leg_id)
            return
        from routing import RoutingError

        try:
            actions = self.router.offer_answered(e.call_id, call.handler_id or "", e.at)
        except RoutingError as exc:
            # The router withdrew the offer (timeout) as the phone answered: hang it up.
            log.info("late answer hung up", leg_id=e.leg_id, why=str(exc))
            self.engine.cancel_offer(e.leg_id)
            return
        self._apply(actions)

    def _leg_failed(self, e: tel.LegFailed) -> None:
        self.legs.pop(e.leg_id, None)
        call = self.calls.get(e.call_id)
        if call is None or call.leg_id != e.leg_id:
            return  # already handled (we cancelled it on the router's timeout)
        if call.end_event is not None:
            # The caller left while this phone rang: the abandon (already handled when the
            # call ended) explains it; the handler did nothing and is not blamed.
            return
        handler_id = call.handler_id
        call.leg_id = None
        call.handler_id = None
        call.state = "queued"
        self._record(ev.CallOfferFailed(call_id=e.call_id, at=e.at, line=call.line,
                                        handler_id=handler_id or "", reason=e.reason))
        self._apply(self.router.offer_failed(e.call_id, handler_id or "", e.at, reason=e.reason))

    def _leg_ended(self, e: tel.LegEnded) -> None:
        self.legs.pop(e.leg_id, None)
        call = self.calls.get(e.call_id)
        if call is None or call.leg_id != e.leg_id:
            return
        if e.by == "handler" and call.state == "connected":
            call.ended_by = "handler"
            call.end_reason = "handler hung up"
            self.engine.hangup(e.call_id, "handler hung up")

    def _call_ended(self, e: tel.CallEnded) -> None:
        call = self.calls.get(e.call_id)
        if call is None:
            return
        if call.ended_by is None:
            call.ended_by, call.end_reason = e.by, e.reason
        call.end_event = e
        if call.state in ("queued", "offered"):
            # The router withdraws a ringing offer (CancelOffer 'caller-gone': the phone
            # gets CANCEL, the handler goes back to the state it had) and records the abandon.
            self._apply(self.router.call_abandoned(e.call_id, e.at))
        elif call.state == "connected":
            if call.handler_id:
                self.wrapup_calls[call.handler_id] = e.call_id
            self._apply(self.router.call_ended(e.call_id, e.at))
        if self.transcription is not None:
            self.transcription.live_stop(e.call_id)
        call.state = "ended"
        if call.recording is not None:
            self._finish(e.call_id, by=call.ended_by or e.by, reason=call.end_reason or e.reason)
        else:
            # The recording is sealed right after the call ends; wait for it briefly so
            # call.ended carries the checksum, but never hold the record back for long.
            asyncio.get_running_loop().call_later(3.0, self._finish_if_pending, e.call_id)

    def _finish_if_pending(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state == "ended":
            self._finish(call_id, by=call.ended_by or "system", reason=call.end_reason or "")

    def _recording_sealed(self, e: tel.RecordingSealed) -> None:
        call = self.calls.get(e.call_id)
        segments = [{"id": s.path.stem, "path": str(s.path), "start": s.start,
                     "duration": s.duration, "sha256": s.sha256, "bytes": s.bytes}
                    for s in e.segments]
        gaps = [{"start": g.start, "end": g.end, "frames_lost": g.frames_lost,
                 "reason": g.reason} for g in e.gaps]
        if gaps or len(segments) > 1:
            log.warning("recording split by a recordings-disk fault", segments=len(segments),
                        gaps=gaps)
        if not e.sha256:  # no audio ever reached the disk: the gaps are the record
            log.error("recording lost: the recordings disk failed for the whole call",
                      gaps=gaps)
            self.storage.write(lambda conn: calls_table.update(
                conn, e.call_id, recording_gaps=gaps, recording_segments=[]),
                call_id=e.call_id, what="call.recording_lost")
            return
        self._record(ev.RecordingReady(call_id=e.call_id, at=e.at, recording_id=e.path.stem,
                                       sha256=e.sha256, duration=e.duration, path=str(e.path),
                                       segments=tuple(segments), gaps=tuple(gaps)),
                     lambda conn: calls_table.update(
                         conn, e.call_id, recording_path=str(e.path), recording_sha256=e.sha256,
                         recording_duration=e.duration, recording_segments=segments,
                         recording_gaps=gaps),
                     line=call.line if call else None)
        if self.transcription is not None and self.settings.transcription.engine != "none":
            self.transcription.enqueue_final(e.call_id, e.path)
        if call is not None:
            call.recording = e
            if call.state == "ended":
                self._finish(e.call_id, by=call.ended_by or "system", reason=call.end_reason or "")

    def _silent_call_flag(self, e: tel.SilentCallFlag) -> None:
        """The engine detects 5-5 (RFC 4733 or SIP INFO); flag the call once."""
        call = self.calls.get(e.call_id)
        if call is not None and "dtmf55" not in call.flags:
            self._flag(call, "dtmf55", "caller pressed 55 (Silent Solution)", e.at)

    def _hold_changed(self, e: tel.HoldChanged) -> None:
        call = self.calls.get(e.call_id)
        if call is not None:
            call.on_hold = e.on_hold
        self._fanout({"type": "call.hold", "call_id": e.call_id, "on_hold": e.on_hold,
                      "by": e.by, "at": e.at})

    def _flag(self, call: LiveCall, flag: str, detail: str, at: float) -> None:
        call.flags.append(flag)
        flags = list(call.flags)
        self._record(ev.CallFlagged(call_id=call.call_id, at=at, flag=flag, detail=detail),
                     lambda conn: calls_table.update(conn, call.call_id, flags=flags),
                     line=call.line)

    def _on_audio(self, frame: tel.AudioFrame) -> None:
        if self.transcription is not None:
            self.transcription.feed(frame)

    # ------------------------------------------------------------------ router actions
    def _log_entries(self, actions: list[Any]) -> None:
        from routing import QueueLogEntry

        entries = [a for a in actions if isinstance(a, QueueLogEntry)]
        if entries:
            def write(conn: Any) -> None:
                for entry in entries:
                    self._queuelog.append(conn, entry)

            self._write(write, call_id=entries[0].call_id,
                        what="queue_log " + " ".join(e.event for e in entries))

    def _apply(self, actions: list[Any]) -> None:
        """Carry out the router's decisions: telephony commands and domain events."""
        now = time.time()
        self._log_entries(actions)
        for a in actions:
            apply = self._on_action.get(type(a))
            if apply is None:
                continue  # QueueLogEntry (written above), Completed
            try:
                apply(a, now)
            except Exception:
                log.exception("applying router action failed", action=repr(a))
        if actions:
            self._wake_router.set()

    def _on_handler_changed(self, a: Any, now: float) -> None:
        self._fanout({"type": "handler.state", "handler_id": a.handler_id,
                      "state": desk_state_name(a.state), "reason": a.reason, "at": now})

    def _on_queued(self, a: Any, now: float) -> None:
        call = self.calls.get(a.call_id)
        if call is None:
            return
        call.position = a.position
        call.positions.append((now, a.position))
        self._record(ev.CallQueued(call_id=a.call_id, at=now, line=a.line, position=a.position,
                                   estimated_wait=a.estimated_wait,
                                   priority=float(call.priority)),
                     lambda conn: calls_table.update(conn, a.call_id, state="queued"))

    def _on_offer(self, a: Any, now: float) -> None:
        call = self.calls.get(a.call_id)
        handler = self.handlers.get(a.handler_id)
        if call is None or handler is None:
            log.warning("offer for unknown call or handler", handler_id=a.handler_id)
            return
        leg_id = self.engine.offer(a.call_id, handler.phone,
                                   timeout=self.settings.routing.offer_timeout + 5.0,
                                   caller_display=f"{a.line} {call.caller}")
        call.state, call.handler_id, call.leg_id = "offered", a.handler_id, leg_id
        self.legs[leg_id] = a.call_id
        self._record(ev.CallOffered(call_id=a.call_id, at=now, line=a.line,
                                    handler_id=a.handler_id, wait=now - call.arrived_at),
                     lambda conn: calls_table.update(conn, a.call_id, state="offered"))

    def _on_cancel_offer(self, a: Any, now: float) -> None:
        call = self.calls.get(a.call_id)
        if call is None or call.leg_id is None:
            return
        # Forget the leg first: the engine may report LegFailed(cancelled) from inside
        # cancel_offer, and that report must not count as a second failed offer.
        leg_id = call.leg_id
        handler_id = call.handler_id or a.handler_id
        call.leg_id, call.handler_id = None, None
        self.legs.pop(leg_id, None)
        self.engine.cancel_offer(leg_id)
        if call.end_event is not None:
            return  # the caller left: call.abandoned tells the CAD, not an offer failure
        if call.state == "offered":
            call.state = "queued"
        self._record(ev.CallOfferFailed(call_id=a.call_id, at=now, line=call.line,
                                        handler_id=handler_id, reason=a.reason))

    def _on_connected(self, a: Any, now: float) -> None:
        call = self.calls.get(a.call_id)
        if call is None or call.leg_id is None:
            return
        self.engine.bridge(a.call_id, call.leg_id)
        call.state, call.answered_at = "connected", now
        if call.first_answered_at is None:
            call.first_answered_at = now
        self.m_answer.observe(a.wait, line=call.line)
        self.m_calls.inc(line=call.line, outcome="answered")
        self._record(ev.CallAnswered(call_id=a.call_id, at=now, line=call.line,
                                     handler_id=a.handler_id, wait=a.wait),
                     lambda conn: calls_table.update(
                         conn, a.call_id, state="connected", answered_at=now,
                         handler_id=a.handler_id, wait=a.wait))

    def _on_abandoned(self, a: Any, now: float) -> None:
        call = self.calls.get(a.call_id)
        self.m_calls.inc(line=a.line, outcome="abandoned")
        self._record(ev.CallAbandoned(call_id=a.call_id, at=now, line=a.line,
                                      caller=call.caller if call else "", wait=a.wait,
                                      position=a.position, callback=a.callback),
                     lambda conn: calls_table.update(conn, a.call_id, state="abandoned",
                                                     wait=a.wait))
        if call is not None:
            call.state = "abandoned_pending_end"

    def _on_reject(self, a: Any, now: float) -> None:
        """Overflow busy (never for 999): the call was answered, so tell and hang up."""
        call = self.calls.get(a.call_id)
        if call is None:
            return
        call.ended_by, call.end_reason = "system", f"overflow: {a.reason}"
        self.m_calls.inc(line=call.line, outcome="rejected")
        self.engine.hangup(a.call_id, f"overflow: {a.reason}")

    # ------------------------------------------------------------------ events out
    def _line_of(self, conn: Any, call_id: str) -> str | None:
        row = conn.execute("SELECT line FROM calls WHERE call_id=?", (call_id,)).fetchone()
        return row[0] if row else None

    def _commit(self, conn: Any, event: ev.DomainEvent, *, line: str | None = None) -> None:
        """Write ``event`` to the outbox inside the caller's transaction; fan out after."""
        if line is None:
            line = getattr(event, "line", None) or self._line_of(conn, event.call_id) or "unknown"
        call = self.calls.get(event.call_id)
        if call is not None:
            incident = call.incident_number
        else:  # the call is over (ended, recording, transcript, wrap-up): the record has it
            row = conn.execute("SELECT incident_number FROM calls WHERE call_id=?",
                               (event.call_id,)).fetchone()
            incident = row[0] if row else None
        if event.type in ev.CAD_EVENT_TYPES:
            # Validated against the published schema before it is written; a CAD
            # formatting bug is logged loudly but never rolls back the call's state.
            append_event(conn, event, node=self.settings.node_id, line=line,
                         incident_number=incident)
        loop = _running_loop()
        payload = event.as_dict()
        payload["line"] = line
        if loop is not None:
            loop.call_soon(self._after_commit, payload)
        else:
            self._after_commit(payload)

    def _write(self, write: Any, *, call_id: str = "", what: str = "") -> None:
        """Write to the database now, or (storage failing) spool it in order: never
        raises into the call path (store/spool.py)."""
        self.storage.write(write, call_id=call_id, what=what)

    def _record(self, event: ev.DomainEvent, rows: Any = None, *, line: str | None = None,
                incident: str | None = None) -> None:
        """Record a decision the service has already acted on: the call's row
        (``rows(conn)``), the event's CAD message (outbox) in one write unit, and fan
        the event out to desks now.

        Life before paperwork: the call path never waits for, or fails with, the
        database. The unit is committed at once when the database takes writes;
        otherwise it waits in the spool, in order behind earlier units, and the CAD
        publisher is woken when it is committed. ``line`` and ``incident`` are taken
        from the live call now (what was true when it was decided); for a call that is
        over they are read from its row when the unit is written.
        """
        call = self.calls.get(event.call_id)
        line = line or getattr(event, "line", None) or (call.line if call else None)
        if call is not None and incident is None:
            incident = call.incident_number
        known_incident = call is not None or incident is not None

        def write(conn: Any) -> None:
            if rows is not None:
                rows(conn)
            if event.type not in ev.CAD_EVENT_TYPES:
                return
            inc = incident
            if not known_incident:
                row = conn.execute("SELECT incident_number FROM calls WHERE call_id=?",
                                   (event.call_id,)).fetchone()
                inc = row[0] if row else None
            # Validated against the published schema before it is written; a CAD
            # formatting bug is logged loudly but never rolls back the call's state.
            append_event(conn, event, node=self.settings.node_id,
                         line=line or self._line_of(conn, event.call_id) or "unknown",
                         incident_number=inc)

        self.storage.write(write, call_id=event.call_id, what=event.type)
        payload = event.as_dict()
        if line is None:  # a call that is over: its row has the line (a read works degraded)
            with contextlib.suppress(Exception):
                row = self.db.query_one("SELECT line FROM calls WHERE call_id=?",
                                        (event.call_id,))
                line = row[0] if row else None
        payload["line"] = line
        loop = _running_loop()
        if loop is not None:
            loop.call_soon(self._fanout, payload)
        else:
            self._fanout(payload)

    def _storage_committed(self) -> None:
        if self.publisher is not None:
            self.publisher.notify()

    def _on_storage_event(self, e: storage.StorageEvent) -> None:
        """The database stopped or resumed taking writes, or a record was lost: metrics,
        a system event for the CAD (straight from memory, not through the outbox that
        cannot be written), and the record of it in ``system_events`` (through the
        spool: written when the storage returns)."""
        if isinstance(e, storage.WritesLost):
            if hasattr(self, "m_storage_lost"):
                self.m_storage_lost.inc()
            return
        fault = isinstance(e, storage.StorageFaulted)
        if fault and hasattr(self, "m_storage_faults"):
            self.m_storage_faults.inc(reason=e.reason)
        msg = cad_messages.storage_event(
            node=self.settings.node_id, fault=fault, reason=e.reason,
            since=e.at if isinstance(e, storage.StorageFaulted) else e.since,
            spooled=self.storage.depth,
            lost=e.lost if isinstance(e, storage.StorageRecovered) else 0,
            flushed=e.flushed if isinstance(e, storage.StorageRecovered) else None,
            now=e.at, event_id=ev.new_id())
        if self.publisher is not None:
            self.publisher.publish_system(msg)
        else:
            self._system_unsent.append(msg)
        data = {k: v for k, v in msg.items() if k in ("event_id", "since", "spooled", "lost",
                                                       "flushed")}
        if fault:
            data["error"] = e.error  # type: ignore[union-attr]
        self._write(lambda conn: self._systemlog.append(conn, at=e.at, type=msg["type"],
                                                        reason=e.reason, data=data),
                    what=msg["type"])

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``{"status": "ok"}``, or ``degraded`` with the reasons.

        Degraded is still HTTP 200: the node answers, queues and bridges calls while
        its database is full or read-only, so a load balancer or SIP dispatcher probe
        must not take it out of service; monitoring alarms on ``status`` and the
        ``controlroom_storage_degraded`` metric instead.
        """
        reasons: list[str] = []
        detail: dict[str, Any] = {}
        if self.storage.degraded:
            st = storage.summary(self.storage)
            reasons.append(f"database not taking writes: {st['reason']} ({st['spooled']} "
                           f"records waiting in memory, {st['lost']} lost)")
            detail["storage"] = st
        alone = self.global_queue.health_reason() if self.global_queue is not None else None
        if alone:  # the global queue's store away: routing this node's calls alone
            reasons.append(alone)
            detail["routing"] = "alone"
        engine_health = getattr(self.engine, "health", None)
        for component, reason in engine_health() if engine_health is not None else []:
            reasons.append(reason)  # e.g. the recordings disk failing (audio held in memory)
            detail.setdefault("engine", {})[component] = reason
        if not reasons:
            return {"status": "ok"}
        return {"status": "degraded", "reasons": reasons, **detail}

    def _after_commit(self, payload: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.notify()
        self._fanout(payload)

    def _fanout(self, payload: dict[str, Any]) -> None:
        # Never blocks: a subscriber that cannot keep up drops its backlog and is
        # resynced with a fresh snapshot (console.feed); it is never dropped.
        for q in list(self._subscribers):
            q.put(payload)

    def transfer(self, call: LiveCall, *, to_line: str | None, to_handler: str | None,
                 decided: list[Any] | None = None) -> None:
        """Move a connected call to a line's queue (at the head) or a named handler.
        ``decided``: the router already decided (the global queue's leader accepted it:
        ``controlroom.desk``); its actions come through the bus."""
        now = time.time()
        from_handler = call.handler_id or ""
        if decided is not None:
            actions = decided
        elif to_line is not None:
            actions = self.router.transfer_to_line(call.call_id, to_line, now, head=True)
        else:
            actions = self.router.transfer_to_handler(call.call_id, to_handler or "", now)
        self.engine.unbridge(call.call_id)
        if from_handler:
            self.wrapup_calls[from_handler] = call.call_id
        if call.answered_at is not None:
            call.talk_before += now - call.answered_at
        call.state, call.handler_id, call.leg_id, call.answered_at = "queued", None, None, None
        record_line = call.line
        if to_line is not None:
            # A call never loses urgency by a transfer (routing/transfers.py): a 999 sent
            # to the 101 queue keeps its priority and stays a 999 call in the records.
            if self.lines[to_line].priority <= call.priority:
                record_line = to_line
            call.priority = min(call.priority, self.lines[to_line].priority)
            call.line = to_line
        line = call.line
        self._record(ev.CallTransferred(call_id=call.call_id, at=now, from_handler=from_handler,
                                        to_line=to_line, to_handler=to_handler),
                     lambda conn: calls_table.update(conn, call.call_id, state="queued",
                                                     line=record_line),
                     line=line)
        self.engine.play(call.call_id, self.lines[call.line].queue_prompt)
        self._apply(actions)

    def _finish(self, call_id: str, *, by: str, reason: str) -> None:
        self.live_transcripts.pop(call_id, None)
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        # The end is when the call ended, not when its record is closed (which may wait
        # briefly for the recording's checksum).
        now = call.end_event.at if call.end_event is not None else time.time()
        talk = call.talk_before + ((now - call.answered_at) if call.answered_at else 0.0)
        answered = call.first_answered_at
        wait = (answered or now) - call.arrived_at
        rec = call.recording
        ended_by: Literal["caller", "handler", "system"] = (
            "caller" if by == "caller" else "handler" if by == "handler" else "system")
        final_state = "abandoned" if answered is None else "completed"
        self._record(ev.CallEnded(call_id=call_id, at=now, line=call.line, by=ended_by, reason=reason,
                                  wait=wait, talk=talk, total=now - call.arrived_at,
                                  handler_id=call.handler_id,
                                  recording_id=rec.path.stem if rec else None,
                                  recording_sha256=rec.sha256 if rec else None),
                     lambda conn: calls_table.update(
                         conn, call_id, state=final_state, ended_at=now, ended_by=ended_by,
                         end_reason=reason, talk=talk, wait=wait),
                     line=call.line, incident=call.incident_number)
        self.m_calls.inc(line=call.line, outcome="ended")

    def publish_transcript(self, event: ev.DomainEvent) -> None:
        """Transcription results (on the loop): live segments to desks, finals to the CAD."""
        if isinstance(event, ev.TranscriptSegment):
            payload = event.as_dict()
            if event.final and event.call_id in self.calls:
                self.live_transcripts.setdefault(event.call_id, []).append(
                    {"channel": event.channel, "text": event.text, "start": event.start,
                     "end": event.end, "final": True})
            call = self.calls.get(event.call_id)
            payload["line"] = call.line if call else None
            self._fanout(payload)
            return
        self._record(event)

    def on_incident(self, call_id: str, incident_number: str, grade: str = "") -> bool:
        """The CAD sent an incident number for a call. False: unknown call."""
        call = self.calls.get(call_id)
        if call is not None:  # live: known even while its row waits in the spool
            line = call.line
            call.incident_number = incident_number
        else:
            try:
                row = self.db.query_one("SELECT line FROM calls WHERE call_id=?", (call_id,))
            except Exception as exc:
                if storage.classify(exc, path=self.db.path) is None:
                    raise
                # The store is away (store.pg answers at once then): the link waits in
                # the spool behind the call's own rows; the call is looked up when it
                # is written, so the link is not lost.
                self._link_when_written(call_id, incident_number, grade)
                return True
            if row is None:
                return False
            line = row["line"]
        self._record(ev.IncidentLinked(call_id=call_id, at=time.time(),
                                       incident_number=incident_number, grade=grade),
                     lambda conn: calls_table.update(conn, call_id,
                                                     incident_number=incident_number,
                                                     grade=grade or None),
                     line=line)
        return True

    def _link_when_written(self, call_id: str, incident_number: str, grade: str) -> None:
        """An incident link for a call that is over, taken while the store is away: one
        write unit that finds the call's row when it is written (an unknown call is then
        logged and dropped, as :meth:`on_incident` would have)."""
        event = ev.IncidentLinked(call_id=call_id, at=time.time(),
                                  incident_number=incident_number, grade=grade)

        def write(conn: Any) -> None:
            line = self._line_of(conn, call_id)
            if line is None:
                log.warning("cad.incident.unknown_call", call_id=call_id,
                            incident_number=incident_number, checked="when written")
                return
            calls_table.update(conn, call_id, incident_number=incident_number,
                               grade=grade or None)
            append_event(conn, event, node=self.settings.node_id, line=line,
                         incident_number=incident_number)

        self.storage.write(write, call_id=call_id, what=event.type)

    # ------------------------------------------------------------------ desk subscriptions
    @contextlib.asynccontextmanager
    async def subscription(self, maxsize: int | None = None) -> AsyncIterator[Any]:
        """A bounded :class:`console.feed.LiveQueue` of live items (``resync`` after an overflow)."""
        from console.feed import LiveQueue, snapshot_key

        def overflowed() -> None:
            log.warning("live feed overflowed; subscriber resyncs", maxsize=q.maxsize)
            self.m_live_resyncs.inc(stage="service")

        q = LiveQueue(maxsize or self.settings.web.live_queue, key=snapshot_key,
                      on_overflow=overflowed)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    # ------------------------------------------------------------------ read side
    def snapshot(self) -> dict[str, Any]:
        snap = self.router.snapshot(time.time())
        snap["draining"] = self._draining
        return snap

    def queue_summary(self) -> dict[str, Any]:
        """Counts and longest wait per line; no personal data (it is retained on MQTT)."""
        now = time.time()
        lines = {}
        for name in self.lines:
            waiting = [c for c in self.calls.values() if c.line == name and c.state in ("queued", "offered")]
            lines[name] = {
                "waiting": len(waiting),
                "longest_wait": round(max((now - c.arrived_at for c in waiting), default=0.0), 1),
                "connected": sum(1 for c in self.calls.values() if c.line == name and c.state == "connected"),
            }
        return {"node": self.settings.node_id, "at": now, "lines": lines}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = ["LiveCall", "Service"]

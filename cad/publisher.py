"""The CAD publisher: drains the outbox to the MQTT broker, and hears incident links back.

Theory of operation:

- The service never talks to the broker. It appends each CAD message to the outbox in the
  same SQLite transaction as the call's state change (:func:`append_event`) and calls
  :meth:`CadPublisher.notify`, which only sets an event. A slow or dead broker therefore
  cannot delay call handling; the outbox grows on disk instead.
- :meth:`CadPublisher.run` is one task that loops: connect (MQTT 5, falling back to
  3.1.1 if the broker refuses the protocol), then pipeline. A feeder reads pending rows
  in commit order a batch at a time (on a separate read-only connection, in a worker
  thread, so only committed rows are sent and the event loop never waits for the disk)
  and hands them to paho at QoS 1, up to ``window`` unacknowledged; a completer awaits
  the PUBACKs in the same order and marks the acknowledged prefix delivered. Publishes
  are issued in outbox order on one connection, and MQTT keeps a connection's order, so
  each call's messages arrive in seq order.
- On any broker error the connection is dropped and re-made with exponential back-off
  (capped at ``settings.reconnect_max``); everything not marked is still pending and is
  sent again first. Only an acknowledged prefix is ever marked, so a resend never jumps
  a call's order. Duplicates can happen only for messages in flight (sent, or acked but
  not yet marked: at most ``window + mark_every``) when the connection or the process
  died; consumers dedupe on ``event_id`` (or ``(call_id, seq)``).
- The queue summary and node status are retained snapshots, not outbox rows: only the
  latest summary matters, so it is kept in memory and re-published on every connect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import sqlite3
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from callevents import CAD_EVENT_TYPES, DomainEvent
from config.loader import secret
from config.schema import MqttSettings
from store import outbox
from store.db import Database
from store.spool import classify

from . import inbound, messages, schema

log = structlog.get_logger("cad.publisher")

_UNSUPPORTED_PROTOCOL = {1, 132}
"""CONNACK codes for 'unacceptable protocol version' (3.1.1: 1, MQTT 5: 0x84)."""


def append_event(conn: sqlite3.Connection, event: DomainEvent, *, node: str, line: str,
                 incident_number: str | None = None, validate: bool = True,
                 strict: bool = False) -> int | None:
    """Append the CAD message for ``event`` to the outbox; returns its per-call seq.

    Call inside the ``db.transaction()`` that records the state change, then
    :meth:`CadPublisher.notify`. ``line`` is the call's line (a topic level) even for
    events that do not carry one. Events that do not go to the CAD (live transcript
    segments) are skipped: returns None.

    A message that cannot be built or fails the schema is a bug in this service. The
    call's state change matters more than its CAD message, so by default it is logged
    (``cad.message.invalid`` / ``cad.message.build_failed``, error level) rather than
    raised into the caller's transaction: an invalid message is still queued (the CAD
    sees it and may reject it), an unbuildable one is dropped. ``strict`` raises instead
    (tests).
    """
    if event.type not in CAD_EVENT_TYPES:
        return None
    if not conn.in_transaction:
        raise ValueError("append_event must run inside db.transaction()")

    def build(seq: int) -> dict[str, Any]:
        msg = messages.to_message(event, seq=seq, node=node, incident_number=incident_number)
        if validate:
            try:
                schema.validate(msg)
            except schema.SchemaError as exc:
                if strict:
                    raise
                log.error("cad.message.invalid", call_id=event.call_id, type=event.type,
                          event_id=event.event_id, error=str(exc))
        return msg

    if strict:
        return outbox.append(conn, call_id=event.call_id, line=line, type=event.type,
                             payload_fn=build, event_id=event.event_id)
    # A savepoint keeps a failed build from leaving a half-done append (the seq bump)
    # inside the caller's transaction.
    conn.execute("SAVEPOINT cad_append")
    try:
        seq = outbox.append(conn, call_id=event.call_id, line=line, type=event.type,
                            payload_fn=build, event_id=event.event_id)
    except Exception as exc:  # noqa: BLE001 - see docstring: never break call handling
        conn.execute("ROLLBACK TO cad_append")
        conn.execute("RELEASE cad_append")
        log.error("cad.message.build_failed", call_id=event.call_id, type=event.type,
                  event_id=event.event_id, error=repr(exc))
        return None
    conn.execute("RELEASE cad_append")
    return seq


def _reap(task: asyncio.Task[Any]) -> None:
    """Drop a publish task we no longer wait for: cancel it, or retrieve its error (the
    session's own error is what gets reported, not one line per message)."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished, re-cancelling as needed.

    On Python 3.11 ``asyncio.wait_for`` (used inside aiomqtt) can swallow a cancel that
    coincides with its future completing; a single cancel() + gather() could then wait
    for ever on a task that keeps running after its session is gone.
    """
    pending = [t for t in tasks if not t.done()]
    while pending:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=1.0)
        pending = [t for t in pending if not t.done()]
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved; the caller reports the error that matters


class CadPublisher:
    """Publishes the outbox to the CAD broker; see the module docstring.

    Use as ``async with CadPublisher(settings, db) as pub:`` (starts :meth:`run` as a
    task, stops it on exit) or run :meth:`run` yourself and cancel it.
    """

    def __init__(self, settings: MqttSettings, db: Database, *,
                 on_incident: inbound.OnIncident | None = None,
                 password: str | None = None, batch_size: int = 200,
                 window: int = 100, mark_every: int = 100, mark_delay: float = 0.02,
                 max_inflight: int = 20, poll_interval: float = 1.0,
                 initial_backoff: float = 0.2, publish_timeout: float = 10.0,
                 session_expiry: int = 3600) -> None:
        """
        :param on_incident: called for each valid incident link from the CAD; when
            given, the publisher subscribes to ``<prefix>/<node>/cad/incidents`` with a
            persistent session so links sent while we were disconnected are kept by
            the broker.
        :param password: the resolved password; default resolves ``settings.password``
            (``env:``/``file:``) here.
        :param batch_size: outbox rows read per query.
        :param window: publishes outstanding at once (handed to paho, PUBACK not yet
            seen); bounds memory during a drain.
        :param mark_every: acknowledged rows marked delivered per write (also whenever
            nothing is left in flight, after ``mark_delay`` seconds without more).
        :param max_inflight: QoS 1 publishes awaiting PUBACK at once (MQTT 5 brokers
            advertise a Receive Maximum, Mosquitto's is 20, that paho does not honour).
        :param poll_interval: how often to look at the outbox without a :meth:`notify`
            (rows appended by another process).
        """
        self.settings = settings
        self.db = db
        self.on_incident = on_incident
        self._password = (password if password is not None
                          else secret(settings.password, key="mqtt.password"))
        self.batch_size = batch_size
        self.window = window
        self.mark_every = mark_every
        self.mark_delay = mark_delay
        self.max_inflight = max_inflight
        self.poll_interval = poll_interval
        self.initial_backoff = initial_backoff
        self.publish_timeout = publish_timeout
        self.session_expiry = session_expiry
        self.qos = settings.qos
        self.client_id = settings.client_id or f"controlroom-{settings.node}"
        self.protocol = aiomqtt.ProtocolVersion.V5
        self.connected = False
        self.delivered = 0
        """Rows acknowledged by the broker since start."""
        self.connects = 0
        self._wake: asyncio.Event | None = None
        self._up = asyncio.Event()  # (3.10+: an Event binds to a loop only when awaited)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._summary: dict[str, Any] | None = None
        self._summary_dirty = False
        # Node health events (storage fault / recovered): kept in memory, never in the
        # outbox, because the outbox may be the thing that failed. Bounded: the oldest
        # give way (a later event tells the current state anyway).
        self._system: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self._unmarked: list[int] = []
        self._store_since: float | None = None
        """When the outbox was last found unreadable (None: readable)."""
        """Rows the broker acknowledged whose delivery could not be recorded yet (the
        database refused the write); marked with the next batch."""
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Task[Any] | None = None
        self._reader: sqlite3.Connection | None = None
        self._claimer: Any = None
        """PostgreSQL: this publisher's claim connection (see _drain_claimed)."""
        self._reader_lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None
        if settings.tls:
            # Built once here so a bad CA file fails at start-up, not at each connect.
            self._tls_context = ssl.create_default_context(cafile=settings.ca_file or None)
        db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)

    # -- API for the service ---------------------------------------------------
    def notify(self) -> None:
        """Wake the publisher after an outbox append. Never blocks; any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not running: the rows wait in the outbox
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def publish_summary(self, lines: Mapping[str, Mapping[str, Any]]) -> None:
        """Publish (retained) the per-line queue summary; only the latest is kept.

        ``lines`` maps line name to ``{"waiting": int, "longest_wait": s, ...}``; only
        the counts in :data:`cad.messages.SUMMARY_FIELDS` are sent (no personal data).
        """
        self._summary = messages.queue_summary(lines, node=self.settings.node, now=time.time())
        self._summary_dirty = True
        self.notify()

    def publish_system(self, message: Mapping[str, Any]) -> None:
        """Publish a node health event (``cad.messages.storage_event``) on
        ``<prefix>/<node>/system`` at QoS 1, straight from memory: it must reach the
        CAD while the database (and so the outbox) is failing. Sent before any further
        outbox rows once connected; up to 100 wait while the broker is away."""
        self._system.append(dict(message))
        self.notify()

    async def wait_connected(self) -> None:
        """Return once connected: status ``online`` published, incident topic subscribed,
        outbox draining (for readiness checks and tests)."""
        await self._up.wait()

    def depth(self) -> int:
        """Outbox rows not yet acknowledged by the broker."""
        return outbox.depth(self.db)

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> CadPublisher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> asyncio.Task[None]:
        """Start :meth:`run` as a task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="cad-publisher")
        return self._task

    async def stop(self) -> None:
        """Stop :meth:`run` however it was started (:meth:`start` or a task of the
        caller's) and wait for it: status ``offline`` is published if connected;
        unacknowledged rows stay pending for the next start."""
        task = self._task or self._running
        self._task = None
        if task is not None and task is not asyncio.current_task():
            await _cancel_all([task])

    async def close(self) -> None:
        """Alias of :meth:`stop` (for owners that close their parts)."""
        await self.stop()

    async def run(self) -> None:
        """Connect, drain, reconnect with back-off: until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._running = asyncio.current_task()
        self._wake = asyncio.Event()
        if not self.settings.enabled:
            log.info("cad.publisher.disabled")
            self._running = None
            return
        if self.qos == 0:
            log.warning("cad.publisher.qos0", note="QoS 0 has no PUBACK: delivery is not guaranteed")
        self._open_reader()
        backoff = self.initial_backoff
        try:
            while True:
                try:
                    await self._session()
                except MqttConnectError as exc:
                    if (getattr(exc.rc, "value", exc.rc) in _UNSUPPORTED_PROTOCOL
                            and self.protocol == aiomqtt.ProtocolVersion.V5):
                        log.warning("cad.publisher.mqtt5_refused", fallback="3.1.1")
                        self.protocol = aiomqtt.ProtocolVersion.V311
                        continue
                    log.warning("cad.publisher.connect_failed", error=str(exc),
                                retry_in=round(backoff, 2))
                except aiomqtt.MqttError as exc:
                    if self.connected:  # was up: a fresh outage starts the back-off again
                        backoff = self.initial_backoff
                        log.warning("cad.publisher.disconnected", error=str(exc),
                                    retry_in=round(backoff, 2),
                                    pending=await asyncio.to_thread(self._safe_depth))
                    else:
                        log.warning("cad.publisher.connect_failed", error=str(exc),
                                    retry_in=round(backoff, 2))
                except Exception:  # noqa: BLE001 - the publisher must outlive any bug
                    log.exception("cad.publisher.failed", retry_in=round(backoff, 2))
                finally:
                    self.connected = False
                    self._up.clear()
                # Jitter so a room of nodes does not reconnect in lock-step.
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.settings.reconnect_max)
        finally:
            self._close_reader()
            self._running = None

    # -- connection ------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        s = self.settings
        status = messages.node_status(node=s.node, online=False, now=time.time())
        will = aiomqtt.Will(messages.status_topic(s.topic_prefix, s.node),
                            json.dumps(status), qos=1, retain=True)
        v5 = self.protocol == aiomqtt.ProtocolVersion.V5
        persistent = self.on_incident is not None
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = self.session_expiry
            kwargs["properties"] = props
            kwargs["clean_start"] = (paho.MQTT_CLEAN_START_FIRST_ONLY if not persistent
                                     else False)
        else:
            kwargs["clean_session"] = not persistent
        client = aiomqtt.Client(
            s.host, s.port, username=s.username or None,
            password=self._password if s.username else None,
            identifier=self.client_id, protocol=self.protocol, will=will,
            keepalive=s.keepalive, timeout=self.publish_timeout,
            max_inflight_messages=self.max_inflight, tls_context=self._tls_context, **kwargs)
        # aiomqtt warns per publish above 10 pending calls; we pipeline on purpose.
        client.pending_calls_threshold = self.window + 10
        return client

    async def _session(self) -> None:
        s = self.settings
        status_topic = messages.status_topic(s.topic_prefix, s.node)
        async with self._client() as client:
            self.connected = True
            self.connects += 1
            tasks: list[asyncio.Task[None]] = []
            try:
                log.info("cad.publisher.connected", host=s.host, port=s.port,
                         protocol="5" if self.protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1",
                         pending=await asyncio.to_thread(self._safe_depth))
                online = messages.node_status(node=s.node, online=True, now=time.time())
                await client.publish(status_topic, json.dumps(online), qos=1, retain=True)
                if self.on_incident is not None:
                    await client.subscribe(messages.incidents_topic(s.topic_prefix, s.node),
                                           qos=1)
                self._summary_dirty = self._summary is not None
                drain = (self._drain_claimed if self.db.dialect == "postgresql"
                         else self._drain)
                tasks = [asyncio.create_task(self._receive(client), name="cad-receive"),
                         asyncio.create_task(drain(client), name="cad-drain")]
                self._up.set()
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:
                # Orderly stop: the will is not sent on a clean DISCONNECT, so say
                # "offline" ourselves (best effort, bounded) before leaving.
                await _cancel_all(tasks)
                offline = messages.node_status(node=s.node, online=False, now=time.time())
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await client.publish(status_topic, json.dumps(offline), qos=1,
                                             retain=True)
                raise
            finally:
                await _cancel_all(tasks)
            for t in done:
                t.result()  # re-raise the MqttError that ended the session

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Incoming messages; also how a dropped connection is noticed at once."""
        incidents = messages.incidents_topic(self.settings.topic_prefix, self.settings.node)
        async for message in client.messages:
            if self.on_incident is None or not message.topic.matches(incidents):
                continue
            payload = message.payload
            if not isinstance(payload, (bytes, bytearray, str)):
                payload = b"" if payload is None else str(payload).encode()
            await inbound.handle(payload, self.on_incident, topic=str(message.topic))

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Sliding-window pipeline: a feeder hands rows to paho in outbox order while a
        completer awaits their PUBACKs in the same order and marks the acknowledged
        prefix delivered. The window keeps the connection busy (no stall per batch) and
        bounds memory; the broker's per-connection order keeps each call's seq order."""
        window: asyncio.Queue[tuple[outbox.OutboxRow, asyncio.Task[None]]] = asyncio.Queue(
            maxsize=self.window)
        feeder = asyncio.create_task(self._feed(client, window), name="cad-feed")
        try:
            await self._complete(window, feeder)
        finally:
            await _cancel_all([feeder])
            while not window.empty():
                _reap(window.get_nowait()[1])

    async def _feed(self, client: aiomqtt.Client,
                    window: asyncio.Queue[tuple[outbox.OutboxRow, asyncio.Task[None]]]) -> None:
        assert self._wake is not None
        s = self.settings
        summary_topic = messages.summary_topic(s.topic_prefix, s.node)
        system_topic = messages.system_topic(s.topic_prefix, s.node)
        last_id = 0  # rows up to here are in the window already (this connection)
        while True:
            self._wake.clear()
            while self._system:
                await client.publish(system_topic, json.dumps(self._system[0]), qos=1)
                self._system.popleft()  # only once the broker has it
            if self._summary_dirty and self._summary is not None:
                self._summary_dirty = False
                await client.publish(summary_topic, json.dumps(self._summary), qos=1,
                                     retain=True)
            rows = await asyncio.to_thread(self._pending, last_id)
            for r in rows:
                # A task runs up to its first await in creation order, and publish()
                # hands the message to paho before awaiting: wire order = outbox order.
                task = asyncio.create_task(client.publish(
                    messages.call_topic(s.topic_prefix, s.node, r.line, r.call_id),
                    r.payload.encode(), qos=self.qos))
                try:
                    await window.put((r, task))  # waits while the window is full
                except BaseException:
                    _reap(task)  # not in the window: nobody else will
                    raise
                last_id = r.id
            if rows:
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # lands as the event fires, leaving this feeder running after its session.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _complete(self, window: asyncio.Queue[tuple[outbox.OutboxRow, asyncio.Task[None]]],
                        feeder: asyncio.Task[None]) -> None:
        acked: list[int] = []
        try:
            while True:
                if window.empty():
                    # Nothing else in flight. Acks not yet recorded wait ``mark_delay``
                    # for more, so a trickle of events does not cost a second write
                    # transaction each; then they are marked.
                    get = asyncio.ensure_future(window.get())
                    try:
                        await asyncio.wait({get, feeder}, timeout=self.mark_delay if acked else None,
                                           return_when=asyncio.FIRST_COMPLETED)
                    except BaseException:
                        # Cancelled just as an item was taken: reap its publish task.
                        if get.done() and not get.cancelled():
                            _reap(get.result()[1])
                        raise
                    finally:
                        if not get.done():
                            get.cancel()
                    if not get.done() or get.cancelled():
                        if feeder.done():
                            feeder.result()  # the feeder failed: raise its error
                            raise aiomqtt.MqttError("feeder stopped")
                        ids, acked = acked, []
                        await asyncio.to_thread(self._mark, ids)
                        continue
                    row, task = get.result()
                else:
                    row, task = window.get_nowait()
                await task  # raises MqttError on timeout / lost connection
                acked.append(row.id)
                if len(acked) >= self.mark_every:
                    ids, acked = acked, []
                    await asyncio.to_thread(self._mark, ids)
        finally:
            # Whatever ends the session, the acknowledged prefix is recorded: only rows
            # truly in flight can be sent twice.
            if acked:
                self._mark(acked)

    async def _drain_claimed(self, client: aiomqtt.Client) -> None:
        """PostgreSQL (one outbox for the cluster, a publisher on every node): claim
        whole calls (:func:`store.outbox.claim`, ``FOR UPDATE SKIP LOCKED``) in a
        transaction on this publisher's own connection, publish their rows in order,
        await every PUBACK, mark them and commit. Another node's publisher skips the
        calls held here, so each call's messages go out through one connection at a
        time, in seq order; a node that dies mid-batch gives its calls back with the
        transaction, and they are sent again (at least once, event ids unchanged)."""
        assert self._wake is not None
        s = self.settings
        system_topic = messages.system_topic(s.topic_prefix, s.node)
        summary_topic = messages.summary_topic(s.topic_prefix, s.node)
        limit = max(1, min(self.batch_size, self.window))
        while True:
            self._wake.clear()
            while self._system:
                await client.publish(system_topic, json.dumps(self._system[0]), qos=1)
                self._system.popleft()
            if self._summary_dirty and self._summary is not None:
                self._summary_dirty = False
                await client.publish(summary_topic, json.dumps(self._summary), qos=1,
                                     retain=True)
            try:
                rows = await asyncio.to_thread(self._claim, limit)
            except Exception as exc:  # noqa: BLE001 - sorted: the store away, or a bug
                if classify(exc) is None:
                    raise
                # The store is away (a restart, a cut: store.pg fails at once then). The
                # session stays up (system messages, incident links); the rows wait in
                # the outbox and are claimed when the store answers.
                await self._store_away(exc)
                continue
            self._store_since = None
            if rows:
                try:
                    tasks = [asyncio.create_task(client.publish(
                        messages.call_topic(s.topic_prefix, s.node, r.line, r.call_id),
                        r.payload.encode(), qos=self.qos)) for r in rows]
                    try:
                        for t in tasks:
                            await t
                    finally:
                        for t in tasks:
                            _reap(t)
                except BaseException:
                    await asyncio.shield(asyncio.to_thread(self._claim_end, None))
                    raise
                try:
                    await asyncio.to_thread(self._claim_end, [r.id for r in rows])
                except Exception as exc:  # noqa: BLE001 - sorted as above
                    if classify(exc) is None:
                        raise
                    # Published, not marked: the claim is rolled back with the lost
                    # connection and the rows go again (at least once, same event ids).
                    await self._store_away(exc)
                continue
            await asyncio.to_thread(self._claim_end, None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _store_away(self, exc: BaseException) -> None:
        """The outbox cannot be read: log once per outage, wait (woken early by a
        commit, which means the store is back), keep the MQTT session."""
        assert self._wake is not None
        if self._store_since is None:
            self._store_since = time.time()
            log.warning("cad.publisher.store_away", error=str(exc),
                        note="session kept; the outbox is drained when the store answers")
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self.poll_interval, 0.5)):
                await self._wake.wait()

    def _claim(self, limit: int) -> list[outbox.OutboxRow]:
        """Open the claim transaction and claim (worker thread)."""
        with self._reader_lock:
            conn = self._claimer
            if conn is None or conn.closed or conn.raw.broken:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                self._claimer = conn = self.db.connect_reader()
            conn.execute("BEGIN")
            try:
                return outbox.claim(conn, limit=limit)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise

    def _claim_end(self, delivered: list[int] | None) -> None:
        """Mark ``delivered`` and commit, or (None) give the claimed calls back."""
        with self._reader_lock:
            conn = self._claimer
            if conn is None or conn.closed:
                return
            if delivered is None:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                return
            outbox.mark_claimed(conn, delivered)
            conn.execute("COMMIT")
            self.delivered += len(delivered)

    # -- outbox access (worker threads) ---------------------------------------
    def _open_reader(self) -> None:
        # A separate connection sees only committed rows; an in-memory db has no second
        # connection, so it is read through the writer (tests only). PostgreSQL is read
        # through the writer (it re-connects after a server restart) and claimed on a
        # connection of the publisher's own (_claim).
        if (self.db.path != ":memory:" and self._reader is None
                and self.db.dialect != "postgresql"):
            self._reader = self.db.connect_reader()

    def _close_reader(self) -> None:
        if self._claimer is not None:
            with self._reader_lock, contextlib.suppress(Exception):
                self._claimer.close()
            self._claimer = None
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()
            self._reader = None

    def _pending(self, after_id: int) -> list[outbox.OutboxRow]:
        if self._reader is None:
            return outbox.pending(self.db, self.batch_size, after_id)
        with self._reader_lock:
            return outbox.pending(self._reader, self.batch_size, after_id)

    def _safe_depth(self) -> int | None:
        """The outbox depth for a log line; None while the store cannot say (a log
        line must not end the publisher)."""
        try:
            return self._depth()
        except Exception as exc:  # noqa: BLE001 - sorted: the store away, or a bug
            if classify(exc) is None:
                raise
            return None

    def _depth(self) -> int:
        if self._reader is None:
            return outbox.depth(self.db)
        with self._reader_lock:
            return outbox.depth(self._reader)

    def _mark(self, ids: list[int]) -> None:
        ids = self._unmarked + ids
        try:
            outbox.mark_delivered(self.db, ids)
        except (sqlite3.OperationalError, self.db.OperationalError) as exc:
            # The database will not take the write (disk full, read-only file system):
            # the rows were delivered, so keep their ids and mark them with the next
            # batch rather than drop the connection. A restart before then sends them
            # again (consumers dedupe on event_id).
            if not self._unmarked:
                log.warning("cad.publisher.mark_deferred", rows=len(ids), error=str(exc))
            self._unmarked = ids
            return
        self._unmarked = []
        self.delivered += len(ids)

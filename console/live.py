"""Live push to the pages: one backend subscription fanned out to every WebSocket.

Theory of operation: :class:`Hub` holds the single ``backend.subscribe()`` iterator
(started in ``app.cleanup_ctx``) and copies each item into every connected client's
bounded :class:`~console.feed.LiveQueue`. A client that cannot keep up (a burst of
calls, a frozen browser tab) is not allowed to slow the others or grow memory: its
backlog is dropped and its next item is a resync, on which the writer sends
``{"type": "resync", "state": "start"}``, the page's full current state (the handler's
``desk.view`` with any offer, and the queue summary; the wallboard snapshot) and
``{"type": "resync", "state": "done"}``, then carries on streaming. The page shows
"resyncing…" meanwhile. When the backend's own subscription overflowed (it yields a
``resync`` item), every client is resynced the same way. Wallboard snapshots are
coalesced per client: a slow page gets only the newest.

Each connection filters and shapes items for its role: a handler sees only their own
calls (and a fresh ``desk.view`` whenever the call or their state changes, which is what
draws the screen-pop); a supervisor sees snapshots and lifecycle events but never
transcript text or grading notes.

:class:`History` samples the wallboard at a fixed interval for the supervisor's chart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from . import users
from .backend import DeskBackend, DeskError
from .feed import RESYNC_TYPE, LiveQueue, snapshot_key
from .http import ApiError, cookie_name, session_of
from .keys import BACKEND, DB, SESSION_RECHECK_KEY

log = structlog.get_logger(__name__)

SESSION_RECHECK = 15.0
"""Seconds between checks that a WebSocket's session is still valid (logout, expiry)."""

CLOSE_SESSION_ENDED = 4001
"""WebSocket close code telling the page to go back to the login page."""

CLIENT_QUEUE = 2000
"""Items buffered per WebSocket before its backlog is dropped for a resync."""

# Events after which the handler's desk view is re-sent (the call card changed).
_VIEW_EVENTS = frozenset({
    "call.offered", "call.offer_failed", "call.answered", "call.transferred",
    "call.abandoned", "call.flagged", "call.ended", "call.incident", "call.recording"})
# Events whose content a supervisor's live feed must not carry.
_CONTENT_EVENTS = frozenset({"call.transcript_segment", "call.transcript", "call.wrapup"})


class Client(LiveQueue):
    """One WebSocket's bounded inbox (snapshots coalesced; overflow -> resync)."""

    def __init__(self, maxsize: int = CLIENT_QUEUE,
                 on_overflow: Callable[[], None] | None = None) -> None:
        super().__init__(maxsize, key=snapshot_key, on_overflow=on_overflow)


class Hub:
    """Fans the backend's live stream out to the connected pages."""

    def __init__(self, backend: DeskBackend, *, client_queue: int = CLIENT_QUEUE) -> None:
        self.backend = backend
        self.client_queue = client_queue
        self.clients: set[Client] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        """Open WebSockets, closed with 1001 on shutdown so the runner does not wait on them."""
        self.ready = asyncio.Event()
        """Set once the backend subscription is open (tests wait on it)."""
        self.resyncs = {"backend": 0, "page": 0}
        """Overflows of the backend subscription; resyncs sent to pages."""
        self.on_resync: Callable[[str], None] | None = None
        """Called with ``"backend"`` or ``"page"`` on each resync (the service's metrics)."""

    def _count(self, stage: str) -> None:
        self.resyncs[stage] += 1
        if self.on_resync is not None:
            self.on_resync(stage)

    def register(self) -> Client:
        c = Client(self.client_queue, on_overflow=lambda: self._count("page"))
        self.clients.add(c)
        return c

    def unregister(self, c: Client) -> None:
        self.clients.discard(c)

    async def close_all(self, app: web.Application | None = None) -> None:
        """``on_shutdown``: tell every page we are going away (it will reconnect)."""
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutdown")

    async def _fresh_snapshot(self, item: dict[str, Any]) -> dict[str, Any]:
        # A pushed snapshot is a trigger: the pages draw ``backend.snapshot()``'s
        # documented shape, whatever the push carried. Taken once here for all pages.
        try:
            return {"type": "wallboard.snapshot", "snapshot": await self.backend.snapshot()}
        except Exception:
            log.exception("console.snapshot_failed")
            return item

    async def run(self) -> None:
        """Consume the backend stream until cancelled; resubscribe if it ends or fails."""
        again = False
        while True:
            stream: Any = None
            nxt: asyncio.Future[dict[str, Any]] | None = None
            try:
                stream = self.backend.subscribe()
                # The first __anext__ is what registers a generator's subscription, so
                # mark ready only once it is pending.
                nxt = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0)
                self.ready.set()
                if again:
                    # Items went by while we were not subscribed: every page refetches.
                    for c in list(self.clients):
                        c.resync()
                again = True
                while True:
                    try:
                        item = await nxt
                    except StopAsyncIteration:
                        break
                    if item.get("type") == RESYNC_TYPE:
                        # The backend dropped items for us: every page refetches its state.
                        log.warning("console.live_resync", clients=len(self.clients))
                        self._count("backend")
                        for c in list(self.clients):
                            c.resync()
                    else:
                        if item.get("type") == "wallboard.snapshot":
                            item = await self._fresh_snapshot(item)
                        for c in list(self.clients):
                            c.put(item)
                    nxt = asyncio.ensure_future(anext(stream))
            except asyncio.CancelledError:
                if nxt is not None:
                    nxt.cancel()
                raise
            except Exception:
                log.exception("console.live_stream_failed")
            finally:
                self.ready.clear()
                if stream is not None and hasattr(stream, "aclose"):
                    with contextlib.suppress(Exception):
                        await stream.aclose()
            await asyncio.sleep(1.0)


class History:
    """Fixed-interval wallboard samples (waiting, longest wait, SL, abandon rate per line)."""

    def __init__(self, *, interval: float = 60.0, hours: float = 4.0) -> None:
        self.interval = interval
        self._samples: deque[dict[str, Any]] = deque(maxlen=int(hours * 3600 / interval) + 1)

    def add(self, snapshot: dict[str, Any]) -> None:
        self._samples.append({"at": snapshot.get("at"), "lines": {
            ln["name"]: {"waiting": len(ln.get("waiting", [])),
                         "longest_wait": ln.get("longest_wait", 0.0),
                         "sl": ln.get("sl_today"), "abandon_rate": ln.get("abandon_rate")}
            for ln in snapshot.get("lines", [])}})

    def samples(self) -> dict[str, Any]:
        """Oldest first."""
        return {"interval": self.interval,
                "samples": sorted(self._samples, key=lambda s: s["at"] or 0.0)}


HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
HISTORY: web.AppKey[History] = web.AppKey("history", History)


def live_ctx(history_interval: float) -> Any:
    """The cleanup_ctx that runs the hub and the history sampler."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        hub = app[HUB]
        backend, history = app[BACKEND], app[HISTORY]

        async def sample() -> None:
            while True:
                try:
                    history.add(await backend.snapshot())
                except Exception:
                    log.exception("console.history_sample_failed")
                await asyncio.sleep(history_interval)

        tasks = [asyncio.create_task(hub.run(), name="console-hub"),
                 asyncio.create_task(sample(), name="console-history")]
        yield
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    return ctx


def _queue_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"type": "queue.summary", "at": snapshot.get("at"), "lines": [
        {"name": ln["name"], "waiting": len(ln.get("waiting", [])),
         "longest_wait": ln.get("longest_wait", 0.0), "priority": ln.get("priority")}
        for ln in snapshot.get("lines", [])]}


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /api/ws``: live desk view (handler) or wallboard (supervisor)."""
    session = await session_of(request)
    if session is None:
        raise ApiError(401, "not logged in")
    roles = session.user.roles
    if not roles & {"handler", "supervisor"}:
        raise ApiError(403, "needs role handler or supervisor")
    # Cross-site WebSocket hijacking: browsers always send Origin on a WebSocket.
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        raise ApiError(403, "cross-origin WebSocket refused")
    hub, backend = request.app[HUB], request.app[BACKEND]
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
    await ws.prepare(request)
    hub.sockets.add(ws)
    client = hub.register()   # before the first fetch, so no change falls in between
    hid = session.user.handler_id if "handler" in roles else None
    supervisor = "supervisor" in roles
    mine: set[str] = set()

    async def view() -> dict[str, Any] | None:
        assert hid is not None
        try:
            v = await backend.handler_view(hid)
        except DeskError as e:
            return {"type": "desk.error", "error": e.message}
        for slot in ("offer", "call", "wrapup"):
            if v.get(slot):
                mine.add(v[slot]["call_id"])
        return {"type": "desk.view", "view": v}

    async def shape(item: dict[str, Any]) -> list[dict[str, Any] | None]:
        t = item.get("type", "")
        out: list[dict[str, Any] | None] = []
        if t == "wallboard.snapshot":
            if supervisor:
                out.append(item)
            if hid is not None:
                out.append(_queue_summary(item.get("snapshot", {})))
        elif t == "handler.state":
            if supervisor:
                out.append(item)
            if hid is not None and item.get("handler_id") == hid:
                out += [item, await view()]
        elif t.startswith("call."):
            cid = item.get("call_id", "")
            if hid is not None and hid in (item.get("handler_id"), item.get("to_handler"),
                                           item.get("from_handler")):
                mine.add(cid)
            if hid is not None and cid in mine:
                out.append(item)
                if t in _VIEW_EVENTS:
                    out.append(await view())
            elif hid is not None and t == "call.abandoned" and item.get("callback"):
                # Every handler's call-back list changes: a 999 caller must be called back.
                out.append(item)
            elif hid is not None and t == "call.callback_changed":
                out.append(item)   # taken, released or closed: every desk's list redraws
            elif supervisor and t not in _CONTENT_EVENTS:
                out.append(item)
        return out

    async def send_state() -> None:
        # The whole state this page is entitled to, as of now.
        if hid is not None:
            await ws.send_json(await view())
        if hid is not None or supervisor:
            snap = await backend.snapshot()
            if supervisor:
                await ws.send_json({"type": "wallboard.snapshot", "snapshot": snap})
            if hid is not None:
                await ws.send_json(_queue_summary(snap))

    async def writer() -> None:
        try:
            await send_state()
            while (item := await client.get()) is not None:
                if item.get("type") == RESYNC_TYPE:
                    log.info("console.ws_resync", user=session.user.username)
                    await ws.send_json({"type": RESYNC_TYPE, "state": "start"})
                    await send_state()
                    await ws.send_json({"type": RESYNC_TYPE, "state": "done"})
                    continue
                for msg in await shape(item):
                    if msg is not None:
                        await ws.send_json(msg)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # A backend bug must not leave a page connected but silently frozen:
            # close so it reconnects and refetches its whole state.
            log.exception("console.ws_writer_failed", user=session.user.username)
            await ws.close(code=1011, message=b"internal error; reconnect")
            return
        await ws.close(code=1001, message=b"feed closed; reconnect")

    async def recheck() -> None:
        # A WebSocket outlives the request that opened it: re-check the session so a
        # logout or expiry also cuts the live feed.
        token = request.cookies.get(cookie_name(request), "")
        while True:
            await asyncio.sleep(request.app[SESSION_RECHECK_KEY])
            if users.get_session(request.app[DB], token) is None:
                await ws.close(code=CLOSE_SESSION_ENDED, message=b"session ended")
                return

    task = asyncio.create_task(writer())
    guard = asyncio.create_task(recheck())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
            # Pages only listen; anything they send is ignored.
            if task.done():
                break
    finally:
        hub.unregister(client)
        hub.sockets.discard(ws)
        guard.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
            await task
        if task.done() and not task.cancelled() and task.exception():
            log.warning("console.ws_writer_failed", error=repr(task.exception()))
    return ws

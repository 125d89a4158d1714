"""The live WebSocket: screen-pop for the right handler only, wallboard for supervisors."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import ClientWebSocketResponse

from console.feed import LiveQueue, snapshot_key
from console.live import HUB
from tests.console.fake import FakeBackend

from .conftest import Api


async def _until(ws: ClientWebSocketResponse, pred: Any, limit: float = 5.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(limit):
        while True:
            msg = await ws.receive_json()
            seen.append(msg)
            if pred(msg):
                return seen


async def test_screen_pop_reaches_only_the_offered_handler(api: Api, backend: FakeBackend) -> None:
    """call.offered for h1 pushes a desk.view with the caller to h1; h1 never sees h2's call."""
    api.as_role("handler")
    ws = await api.client.ws_connect("/api/ws")
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "desk.view" and first["view"]["handler_id"] == "h1"
    await api.client.app[HUB].ready.wait()
    other = backend.arrive("101", "+440000")
    backend.offer(other, "h2")
    backend.say(other, "caller", "secret words for h2")
    cid = backend.arrive("999", "+447700900999", display_name="J BLOGGS")
    backend.offer(cid, "h1")
    seen = await _until(ws, lambda m: m["type"] == "desk.view" and m["view"]["offer"])
    assert seen[-1]["view"]["offer"]["caller"] == "+447700900999"
    assert seen[-1]["view"]["offer"]["line"] == "999"
    assert all(m.get("call_id") != other for m in seen)
    backend.say(cid, "caller", "he has a knife")
    seen = await _until(ws, lambda m: m["type"] == "call.transcript_segment")
    assert seen[-1]["text"] == "he has a knife" and seen[-1]["channel"] == "caller"
    backend.link_incident(cid, "INC-42", "1")
    seen = await _until(ws, lambda m: m["type"] == "call.incident")
    assert seen[-1]["incident_number"] == "INC-42"
    await ws.close()


async def test_supervisor_feed_has_no_transcript_text(api: Api, backend: FakeBackend) -> None:
    """Supervisors get snapshots and lifecycle events but no transcript segments."""
    api.as_role("supervisor")
    ws = await api.client.ws_connect("/api/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "wallboard.snapshot"
    await api.client.app[HUB].ready.wait()
    cid = backend.arrive("999", "+447700900999")
    backend.offer(cid, "h1")
    backend.say(cid, "caller", "private words")
    backend.flag(cid, "silent")
    seen = await _until(ws, lambda m: m["type"] == "call.flagged")
    types = [m["type"] for m in seen]
    assert "call.transcript_segment" not in types
    assert {"call.arrived", "call.queued", "wallboard.snapshot", "call.offered"} <= set(types)
    await ws.close()


def test_overflow_drops_backlog_then_resyncs_and_continues() -> None:
    """A full live queue drops its backlog (bounded memory), yields one resync, and then
    streams again; snapshots are coalesced to the newest and never fill it."""
    overflows: list[int] = []
    q = LiveQueue(3, key=snapshot_key, on_overflow=lambda: overflows.append(1))
    for i in range(3):
        q.put({"type": "wallboard.snapshot", "n": i})
    assert q.qsize() == 1                       # coalesced
    for i in range(10):
        q.put({"type": "call.queued", "i": i})
    assert q.needs_resync and q.qsize() == 0 and overflows == [1] and q.overflows == 1
    assert q.peak == 3
    q.put({"type": "call.queued", "i": 99})     # covered by the snapshot taken at resync
    assert q.get_nowait() == {"type": "resync"}
    assert q.get_nowait() is None
    q.put({"type": "call.offered", "i": 100})
    q.put({"type": "wallboard.snapshot", "n": 7})
    q.put({"type": "wallboard.snapshot", "n": 8})
    assert q.get_nowait() == {"type": "call.offered", "i": 100}
    assert q.get_nowait() == {"type": "wallboard.snapshot", "n": 8}
    assert not q.needs_resync and overflows == [1]


async def test_slow_page_is_resynced_not_dropped(aiohttp_client: Any, backend: FakeBackend,
                                                db: Any) -> None:
    """A handler's WebSocket that overflows gets resync start, its desk view (with the
    offer) and the queue, resync done, and then keeps receiving live events."""
    from config import WebSettings
    from console.app import create_app

    app = create_app(backend=backend, db=db, settings=WebSettings(live_queue=5))
    api = Api(await aiohttp_client(app), db).as_role("handler")
    ws = await api.client.ws_connect("/api/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "desk.view"
    await app[HUB].ready.wait()
    cid = backend.arrive("999", "+447700900777")
    backend.offer(cid, "h1")
    # A burst delivered faster than the page takes it (the hub puts without waiting).
    (client,) = app[HUB].clients
    for i in range(40):
        client.put({"type": "call.queued", "call_id": f"x{i}", "position": i})
    seen = await _until(ws, lambda m: m == {"type": "resync", "state": "done"})
    start = seen.index({"type": "resync", "state": "start"})
    views = [m for m in seen[start:] if m["type"] == "desk.view"]
    assert views and views[-1]["view"]["offer"]["call_id"] == cid
    assert any(m["type"] == "queue.summary" for m in seen[start:])
    assert app[HUB].resyncs["page"] >= 1
    backend.link_incident(cid, "INC-77", "1")
    seen = await _until(ws, lambda m: m["type"] == "call.incident")
    assert seen[-1]["incident_number"] == "INC-77"
    await ws.close()


async def test_backend_resync_resyncs_every_page(api: Api, backend: FakeBackend) -> None:
    """A resync from the backend (its subscription overflowed) sends each page its full
    state again: the supervisor gets a fresh wallboard snapshot."""
    api.as_role("supervisor")
    ws = await api.client.ws_connect("/api/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "wallboard.snapshot"
    hub = api.client.app[HUB]
    await hub.ready.wait()
    cid = backend.arrive("999", "+447700900888")
    backend.push({"type": "resync"})
    seen = await _until(ws, lambda m: m == {"type": "resync", "state": "done"})
    snaps = [m for m in seen if m["type"] == "wallboard.snapshot"]
    assert any(w["call_id"] == cid for ln in snaps[-1]["snapshot"]["lines"] for w in ln["waiting"])
    assert hub.resyncs["backend"] == 1
    await ws.close()


async def test_logout_closes_live_feed(aiohttp_client: Any, backend: FakeBackend, db: Any) -> None:
    """After logout the open WebSocket is closed with 4001 at the next session re-check."""
    from config import WebSettings
    from console.app import create_app
    from console.keys import SESSION_RECHECK_KEY
    from console.live import CLOSE_SESSION_ENDED

    app = create_app(backend=backend, db=db, settings=WebSettings())
    app[SESSION_RECHECK_KEY] = 0.05
    api = Api(await aiohttp_client(app), db).as_role("handler")
    ws = await api.client.ws_connect("/api/ws")
    assert (await ws.receive_json(timeout=5))["type"] == "desk.view"
    assert (await api.call("POST", "/api/logout"))[0] == 200
    async with asyncio.timeout(5):
        while not ws.closed:
            await ws.receive()
    assert ws.close_code == CLOSE_SESSION_ENDED


def test_history_keeps_fixed_window() -> None:
    """History keeps hours/interval samples of waiting count, longest wait and SL per line."""
    from console.live import History
    h = History(interval=600, hours=1)
    for i in range(10):
        h.add({"at": float(i), "lines": [{"name": "999", "waiting": [{}] * i, "longest_wait": 2.0 * i,
                                          "sl_today": 0.9, "abandon_rate": 0.0}]})
    out = h.samples()
    assert out["interval"] == 600
    assert [s["at"] for s in out["samples"]] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert out["samples"][-1]["lines"]["999"] == {"waiting": 9, "longest_wait": 18.0, "sl": 0.9,
                                                  "abandon_rate": 0.0}


async def test_hub_resubscribes_when_stream_ends(backend: FakeBackend) -> None:
    """If the backend's stream ends, the hub subscribes again and keeps delivering."""
    from console.live import Hub
    hub = Hub(backend)
    client = hub.register()
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.ready.wait(), 5)
        backend.close()                       # ends the subscription
        for _ in range(500):                  # the hub notices the end, then waits 1 s
            if not hub.ready.is_set():
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(hub.ready.wait(), 5)
        assert backend._subs                  # subscribed again
        backend.push({"type": "handler.state", "handler_id": "h1", "state": "available",
                      "reason": "", "at": 1.0})
        item = await asyncio.wait_for(client.get(), 5)
        assert item == {"type": "resync"}     # what went by meanwhile: refetch it all
        item = await asyncio.wait_for(client.get(), 5)
        assert item is not None and item["type"] == "handler.state"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_abandoned_999_reaches_every_handler(api: Api, backend: FakeBackend) -> None:
    """A call-back (abandoned 999) is pushed to handlers who never saw the call."""
    api.as_role("handler")
    ws = await api.client.ws_connect("/api/ws")
    await ws.receive_json(timeout=5)
    await api.client.app[HUB].ready.wait()
    quiet = backend.arrive("101", "+441")
    backend.hang_up(quiet)                 # 101: no call-back, not pushed to h1
    cid = backend.arrive("999", "+447700900444")
    backend.hang_up(cid)
    seen = await _until(ws, lambda m: m["type"] == "call.abandoned")
    assert [m["call_id"] for m in seen if m["type"] == "call.abandoned"] == [cid]
    assert seen[-1]["callback"] is True
    await ws.close()


async def test_pushed_snapshot_is_a_trigger(api: Api, backend: FakeBackend) -> None:
    """Whatever a pushed wallboard.snapshot carries, supervisors get backend.snapshot()'s shape."""
    api.as_role("supervisor")
    ws = await api.client.ws_connect("/api/ws")
    await ws.receive_json(timeout=5)
    await api.client.app[HUB].ready.wait()
    backend.push({"type": "wallboard.snapshot", "snapshot": {"handlers": {"h1": {}}, "odd": 1}})
    seen = await _until(ws, lambda m: m["type"] == "wallboard.snapshot")
    snap = seen[-1]["snapshot"]
    assert [ln["name"] for ln in snap["lines"]] == ["999", "101"]
    assert [h["handler_id"] for h in snap["handlers"]] == ["h1", "h2"]
    await ws.close()


async def test_backend_failure_closes_socket_for_reconnect(api: Api, backend: FakeBackend,
                                                           monkeypatch: Any) -> None:
    """If handler_view raises a bug, the page's socket is closed with 1011 (it reconnects)."""
    api.as_role("handler")
    ws = await api.client.ws_connect("/api/ws")
    await ws.receive_json(timeout=5)
    await api.client.app[HUB].ready.wait()

    async def broken(handler_id: str) -> dict[str, Any]:
        raise RuntimeError("bug")
    monkeypatch.setattr(backend, "handler_view", broken)
    backend.push({"type": "handler.state", "handler_id": "h1", "state": "available",
                  "reason": "", "at": 1.0})
    async with asyncio.timeout(5):
        while not ws.closed:
            await ws.receive()
    assert ws.close_code == 1011


async def test_service_feed_overflow_yields_resync_and_continues(tmp_path: Any) -> None:
    """The service's live subscription that overflows yields one resync (counted on the
    metrics as stage=service), is never dropped, and then streams new items."""
    from config import from_dict
    from controlroom.desk import ServiceDesk
    from controlroom.service import Service

    service = Service(from_dict({
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0}],
        "storage": {"data_dir": str(tmp_path)}, "web": {"live_queue": 8}}))
    stream = ServiceDesk(service).subscribe()
    try:
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)                      # subscribed
        for i in range(50):                         # a burst committed in one go
            service._fanout({"type": "call.queued", "call_id": f"c{i}", "position": i})
        assert await asyncio.wait_for(first, 5) == {"type": "resync"}
        service._fanout({"type": "call.offered", "call_id": "c99"})
        assert (await asyncio.wait_for(anext(stream), 5))["call_id"] == "c99"
        assert len(service._subscribers) == 1
        assert 'controlroom_live_resyncs_total{stage="service"} 1' in service.metrics.render()
    finally:
        await stream.aclose()
        service.db.close()

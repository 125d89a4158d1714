"""CAD test fixtures: a database with the outbox, a real Mosquitto, a collecting subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from harness import mosquitto as mq
from store import outbox
from store.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A file database (WAL) with the outbox migrated."""
    d = Database(tmp_path / "cr.sqlite3")
    d.migrate(outbox.COMPONENT, outbox.MIGRATIONS)
    yield d
    d.close()


@pytest.fixture
def mosquitto() -> Iterator[mq.Mosquitto]:
    """A private broker on a free loopback port, stopped after the test."""
    if not mq.available():
        pytest.skip("mosquitto is not installed")
    with mq.Mosquitto() as broker:
        yield broker


@pytest.fixture
def durable_mosquitto() -> Iterator[mq.Mosquitto]:
    """A broker with persistence on, so a persistent subscriber's queue survives a restart."""
    if not mq.available():
        pytest.skip("mosquitto is not installed")
    with mq.Mosquitto(persistence=True) as broker:
        yield broker


class Collector:
    """A CAD-like subscriber: persistent session, QoS 1, reconnects, keeps every message."""

    def __init__(self, host: str, port: int, topic: str, **client_kwargs: Any) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.client_kwargs = client_kwargs
        """Extra aiomqtt.Client arguments (username, password, tls_context)."""
        self.id = "cad-" + uuid.uuid4().hex[:8]
        self.messages: list[tuple[str, dict[str, Any], float]] = []
        """(topic, message, receive time.time())"""
        self.raw: list[tuple[str, bytes, bool]] = []
        self._ids: set[str] = set()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.id,
                                          clean_session=False, **self.client_kwargs) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for m in c.messages:
                        payload = bytes(m.payload) if isinstance(m.payload, (bytes, bytearray)) else str(m.payload).encode()
                        self.raw.append((str(m.topic), payload, m.retain))
                        self._add(str(m.topic), json.loads(payload))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def _add(self, topic: str, msg: Any) -> None:
        self.messages.append((topic, msg, time.time()))
        if isinstance(msg, dict) and "event_id" in msg:
            self._ids.add(msg["event_id"])
        self._changed.set()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_until(self, pred: Callable[[], bool], within: float) -> bool:
        """Wait until ``pred()`` holds (True) or the timeout passes (False)."""
        deadline = time.monotonic() + within
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
        return True

    def event_ids(self) -> set[str]:
        """Distinct event ids received so far."""
        return self._ids

    def per_call(self) -> dict[str, list[int]]:
        """Each call's seqs in arrival order, duplicates (same event_id) dropped."""
        seen: set[str] = set()
        out: dict[str, list[int]] = {}
        for _, m, _ in self.messages:
            if m["event_id"] in seen:
                continue
            seen.add(m["event_id"])
            out.setdefault(m["call_id"], []).append(m["seq"])
        return out

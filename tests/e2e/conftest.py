"""Fixtures for end-to-end tests: the whole system on loopback, and a CAD subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest


class CadSubscriber:
    """A real MQTT client standing in for the CAD: collects every call message."""

    def __init__(self, host: str, port: int,
                 filters: tuple[str, ...] = ("controlroom/+/calls/#",)) -> None:
        self.host, self.port = host, port
        self.filters = filters
        self.messages: list[dict[str, Any]] = []
        self.topics: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier=f"test-cad-{id(self)}") as client:
            for f in self.filters:
                await client.subscribe(f, qos=1)
            self._ready.set()
            async for msg in client.messages:
                self.topics.append(str(msg.topic))
                self.messages.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task

    def for_call(self, call_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("call_id") == call_id]

    async def wait_for(self, call_id: str, type_: str, timeout: float = 60.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for m in self.for_call(call_id):
                if m.get("type") == type_:
                    return m
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {type_} for {call_id} within {timeout} s; got "
                             f"{[m.get('type') for m in self.for_call(call_id)]}")


@pytest.fixture
async def cad_subscriber_factory() -> AsyncIterator[Any]:
    subs: list[CadSubscriber] = []

    async def make(host: str, port: int, *filters: str) -> CadSubscriber:
        s = CadSubscriber(host, port, *((filters,) if filters else ()))
        await s.start()
        subs.append(s)
        return s

    yield make
    for s in subs:
        await s.stop()


async def wait_until(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

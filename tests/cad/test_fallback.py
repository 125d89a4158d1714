"""Against a minimal in-test MQTT 3.1.1-only broker: protocol fallback, a broker that stops
acknowledging (no Mosquitto needed)."""

from __future__ import annotations

import asyncio
import json
import struct

import aiomqtt
from structlog.testing import capture_logs

import callevents as ev
from cad import messages
from cad.publisher import CadPublisher, append_event
from config.schema import MqttSettings
from store import outbox
from store.db import Database


class Broker311:
    """Just enough of an MQTT 3.1.1 broker: refuses MQTT 5 (CONNACK 1), acks QoS 1."""

    def __init__(self, *, mute_connections: int = 0, acks_before_mute: int = 0) -> None:
        self.mute_connections = mute_connections
        """How many accepted connections stop getting PUBACKs (a stalled broker)..."""
        self.acks_before_mute = acks_before_mute
        """...after this many."""
        self.accepted = 0
        self.levels: list[int] = []
        self.published: list[tuple[str, bytes, int]] = []  # topic, payload, qos

    async def _packet(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        mult, length = 1, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        return first, await reader.readexactly(length)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first, body = await self._packet(reader)
            assert first >> 4 == 1  # CONNECT
            level = body[6]
            self.levels.append(level)
            if level != 4:
                writer.write(bytes([0x20, 2, 0, 1]))  # unacceptable protocol version
                await writer.drain()
                return
            writer.write(bytes([0x20, 2, 0, 0]))
            self.accepted += 1
            stalls = self.accepted <= self.mute_connections
            acks = 0
            while True:
                first, body = await self._packet(reader)
                kind = first >> 4
                if kind == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    n = struct.unpack("!H", body[:2])[0]
                    topic = body[2:2 + n].decode()
                    rest = body[2 + n:]
                    if qos:
                        if not stalls or acks < self.acks_before_mute:
                            writer.write(bytes([0x40, 2]) + rest[:2])  # PUBACK
                            acks += 1
                        rest = rest[2:]
                    self.published.append((topic, rest, qos))
                elif kind == 8:  # SUBSCRIBE -> SUBACK granting QoS 1
                    writer.write(bytes([0x90, 3]) + body[:2] + b"\x01")
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def test_falls_back_to_311_when_broker_refuses_mqtt5(db: Database) -> None:
    """A broker answering MQTT 5 with 'unacceptable protocol' gets 3.1.1, and delivery works."""
    broker = Broker311()
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = MqttSettings(host="127.0.0.1", port=port, node="old", reconnect_max=0.5)
    try:
        with capture_logs() as logs:
            async with CadPublisher(s, db, initial_backoff=0.05, poll_interval=0.1) as pub:
                for i in range(5):
                    with db.transaction() as conn:
                        append_event(conn, ev.CallQueued(call_id="c1", at=1.0e9 + i, line="101",
                                                         position=i + 1), node="old", line="101")
                    pub.notify()
                await asyncio.wait_for(pub.wait_connected(), 10)
                for _ in range(200):
                    if outbox.depth(db) == 0:
                        break
                    await asyncio.sleep(0.05)
                assert pub.protocol == aiomqtt.ProtocolVersion.V311
    finally:
        server.close()
        await server.wait_closed()
    assert broker.levels[:2] == [5, 4]
    assert outbox.depth(db) == 0
    calls = [(t, json.loads(p)) for t, p, q in broker.published
             if t == messages.call_topic("controlroom", "old", "101", "c1")]
    assert [m["seq"] for _, m in calls] == [1, 2, 3, 4, 5]
    assert all(q == 1 for t, _, q in broker.published if "/calls/" in t)
    assert any(e["event"] == "cad.publisher.mqtt5_refused" for e in logs)


async def test_stalled_broker_times_out_reconnects_and_delivers(db: Database) -> None:
    """A broker that stops acknowledging is dropped after the publish timeout; on the next
    connection everything unacknowledged is sent again, in order, nothing lost."""
    broker = Broker311(mute_connections=1, acks_before_mute=6)  # status + 5 events
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = MqttSettings(host="127.0.0.1", port=port, node="slow", reconnect_max=0.5)
    events = [ev.CallQueued(call_id="c1", at=1.0e9 + i, line="999", position=1)
              for i in range(30)]
    try:
        with capture_logs() as logs:
            async with CadPublisher(s, db, initial_backoff=0.05, poll_interval=0.1,
                                    publish_timeout=1.0) as pub:
                for e in events:
                    with db.transaction() as conn:
                        append_event(conn, e, node="slow", line="999", strict=True)
                    pub.notify()
                for _ in range(200):
                    if outbox.depth(db) == 0:
                        break
                    await asyncio.sleep(0.05)
                assert outbox.depth(db) == 0
                assert pub.connects >= 2
    finally:
        server.close()
        await server.wait_closed()
    assert broker.accepted >= 2
    seen: list[str] = []
    for t, p, _ in broker.published:
        if "/calls/" in t:
            m = json.loads(p)
            if m["event_id"] not in seen:
                seen.append(m["event_id"])
    assert seen == [e.event_id for e in events]
    # First connection: 1-5 acknowledged, then paho's 20 in flight (6-25) never are;
    # the second connection resends exactly 6-30, in order.
    sent = [json.loads(p)["seq"] for t, p, _ in broker.published if "/calls/" in t]
    assert sent == list(range(1, 26)) + list(range(6, 31))
    assert any(e["event"] == "cad.publisher.disconnected" for e in logs)

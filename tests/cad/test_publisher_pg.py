"""One outbox for the cluster (PostgreSQL): publishers on two nodes drain it together
through a real Mosquitto; every event arrives, each call in seq order, event ids as
written, also when one node's publisher stops mid-stream (failover)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import callevents as ev
from cad.publisher import CadPublisher, append_event
from config.schema import MqttSettings
from harness.mosquitto import Mosquitto
from store import outbox
from store.db import Database

from .conftest import Collector

pytestmark = pytest.mark.realparts


def _publisher(broker: Mosquitto, node: str, db: Database) -> CadPublisher:
    s = MqttSettings(host=broker.host, port=broker.port, node=node, client_id=f"cr-{node}",
                     reconnect_max=1.0)
    return CadPublisher(s, db, initial_backoff=0.1, poll_interval=0.2, batch_size=20)


async def _wait(pred: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_two_nodes_drain_one_outbox_in_order_across_a_failover(
        mosquitto: Mosquitto, pg_url: str) -> None:
    """Nodes A and B append to and publish from one PostgreSQL outbox; A's publisher
    stops halfway; B delivers the rest. The CAD gets every event id, each call's seqs
    as 1..n in order (duplicates only from A's last batch in flight)."""
    a, b = Database(pg_url), Database(pg_url)
    a.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
    calls = [f"fcr-c{i}" for i in range(20)]
    written: dict[str, list[str]] = {c: [] for c in calls}
    async with Collector(mosquitto.host, mosquitto.port, "controlroom/+/calls/#") as col:
        pa, pb = _publisher(mosquitto, "nodea", a), _publisher(mosquitto, "nodeb", b)
        pa.start()  # B's publisher starts later: A alone drains the first steps
        for step in range(10):
            if step == 2:
                assert await _wait(lambda: pa.delivered > 0, 10)
                pb.start()
            for i, call_id in enumerate(calls):
                db, pub = (a, pa) if (i + step) % 2 else (b, pb)  # both nodes write a call
                e = ev.CallQueued(call_id=call_id, at=time.time(), line="999",
                                  position=1, estimated_wait=0.0)
                with db.transaction() as conn:
                    append_event(conn, e, node="nodea" if db is a else "nodeb", line="999",
                                 strict=True)
                written[call_id].append(e.event_id)
                pub.notify()
            if step == 4:
                await pa.stop()  # node A's publisher goes; B takes its calls
            await asyncio.sleep(0.02)
        assert await _wait(lambda: outbox.depth(b) == 0, 30)
        assert await col.wait_until(
            lambda: len(col.event_ids()) >= sum(map(len, written.values())), 15)
        await pb.stop()
    per_call = col.per_call()
    assert {c: len(s) for c, s in per_call.items()} == {c: 10 for c in calls}
    for call_id in calls:
        assert per_call[call_id] == list(range(1, 11)), call_id
        got = [m["event_id"] for _, m, _ in col.messages if m["call_id"] == call_id]
        assert list(dict.fromkeys(got)) == written[call_id]
    assert pb.delivered > 0 and pa.delivered > 0
    assert pa.delivered + pb.delivered >= 200
    a.close()
    b.close()

"""The service end to end on the shared PostgreSQL store (issue 14): Kamailio, SIPp
callers and handler phones, Mosquitto, and a real PostgreSQL cluster as ``storage.url``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cad.schema import validate
from config.schema import Settings
from controlroom.service import Service
from controlroom.stack import Stack, StackOptions
from store import Database, nodes

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


async def test_999_call_answered_and_published_with_its_record_in_postgresql(
        tmp_path: Path, pg_url: str, cad_subscriber_factory) -> None:
    """A 999 call through Kamailio is answered by a handler and ends; the CAD gets its
    events in order (the outbox drained by claims); the call's row, queue log and outbox
    are in PostgreSQL; a second node with the same id refuses to start, naming the first."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200, storage={"url": pg_url})
    async with Stack(tmp_path, opts) as st:
        assert st.service.db.dialect == "postgresql"
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        caller = st.call("999", caller="07700900123", talk_s=3.0)
        assert await asyncio.to_thread(caller.wait, 40) == 0, caller.diagnostics()
        await wait_until(lambda: any(m["type"] == "call.ended" for m in cad.messages), 20,
                         "call.ended on MQTT")
        types = [m["type"] for m in cad.messages if m.get("call_id")]
        assert types[0] == "call.arrived" and "call.answered" in types
        seqs = [m["seq"] for m in cad.messages if m.get("call_id")]
        assert seqs == list(range(1, len(seqs) + 1))
        for m in cad.messages:
            validate(m)
        with pytest.raises(nodes.NodeIdInUse, match="already running"):
            Service(st.service.settings)
        settings: Settings = st.service.settings
    db = Database(pg_url)
    row = db.query_one("SELECT * FROM calls")
    assert row["line"] == "999" and row["caller"] == "07700900123"
    assert row["answered_at"] is not None and row["ended_at"] is not None
    assert row["node"] == settings.node_id
    events = [r["event"] for r in db.query("SELECT event FROM queue_log ORDER BY id")]
    assert "ENTERQUEUE" in events or events  # the router's log is there
    assert db.query_one("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")[0] == 0
    assert nodes.running(db, stale_after=60) == []  # stopped: the id is free again
    db.close()

"""The CAD publisher against a real Mosquitto: order, outages, kill -9, inbound, retained."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

import callevents as ev
from cad import messages, schema
from cad.publisher import CadPublisher, append_event
from config.schema import MqttSettings
from harness.mosquitto import Mosquitto, make_certs
from store import outbox
from store.db import Database

from .conftest import Collector
from .samples import one_of_each

pytestmark = pytest.mark.realparts


def _settings(broker: Mosquitto, **kw: object) -> MqttSettings:
    node = kw.pop("node", "n" + uuid.uuid4().hex[:6])
    return MqttSettings(host=broker.host, port=broker.port, node=node,  # type: ignore[arg-type]
                        client_id=f"cr-{node}", reconnect_max=1.0, **kw)  # type: ignore[arg-type]


def _publisher(settings: MqttSettings, db: Database, **kw: object) -> CadPublisher:
    kw.setdefault("initial_backoff", 0.1)
    kw.setdefault("poll_interval", 0.2)
    return CadPublisher(settings, db, **kw)  # type: ignore[arg-type]


def _append(db: Database, pub: CadPublisher | None, event: ev.DomainEvent, node: str,
            line: str = "999", validate: bool = True) -> int:
    with db.transaction() as conn:
        seq = append_event(conn, event, node=node, line=line, validate=validate,
                           strict=validate)
    if pub is not None:
        pub.notify()
    assert seq is not None
    return seq


def _queued(call_id: str, i: int) -> ev.CallQueued:
    return ev.CallQueued(call_id=call_id, at=time.time(), line="999", position=1 + i % 5,
                         estimated_wait=float(i % 30))


def _assert_complete(col: Collector, expected: dict[str, int]) -> None:
    """Every call's seqs arrived as exactly 1..n, in order (duplicates dropped)."""
    per_call = col.per_call()
    assert set(per_call) == set(expected)
    for call_id, n in expected.items():
        assert per_call[call_id] == list(range(1, n + 1)), call_id


async def test_events_arrive_valid_in_order_on_call_topics(mosquitto: Mosquitto,
                                                           db: Database) -> None:
    """Appended events reach a subscriber schema-valid, in per-call order, on their topic."""
    s = _settings(mosquitto)
    async with Collector(mosquitto.host, mosquitto.port,
                         messages.calls_filter(s.topic_prefix, s.node)) as col:
        async with _publisher(s, db) as pub:
            calls = [one_of_each(f"call{i}")[:-1] for i in range(3)]
            for step in range(len(calls[0])):  # interleave the calls
                for events in calls:
                    _append(db, pub, events[step], s.node, line="999")
            n = sum(len(c) for c in calls)
            assert await col.wait_until(lambda: len(col.messages) >= n, 15)
            assert await _wait(lambda: outbox.depth(db) == 0, 5)
    assert len(col.messages) == n
    for topic, msg, _ in col.messages:
        schema.validate(msg)
        assert topic == messages.call_topic(s.topic_prefix, s.node, "999", msg["call_id"])
    assert all(not retain for _, _, retain in col.raw)
    _assert_complete(col, {f"call{i}": len(calls[0]) for i in range(3)})
    types = [m["type"] for _, m, _ in col.messages if m["call_id"] == "call0"]
    assert types == [e.type for e in calls[0]]


async def _wait(pred: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _stream_through_outage(broker: Mosquitto, db: Database, outage: float) -> None:
    s = _settings(broker)
    counts: dict[str, int] = {}
    stop = asyncio.Event()
    async with Collector(broker.host, broker.port,
                         messages.calls_filter(s.topic_prefix, s.node)) as col:
        async with _publisher(s, db) as pub:
            async def produce() -> None:
                i = 0
                while not stop.is_set():
                    call_id = f"call{i % 6}"
                    _append(db, pub, _queued(call_id, i), s.node)
                    counts[call_id] = counts.get(call_id, 0) + 1
                    i += 1
                    await asyncio.sleep(0.01)
            producer = asyncio.create_task(produce())
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.stop)
            before = sum(counts.values())
            await asyncio.sleep(outage)
            during = sum(counts.values()) - before
            depth_during = outbox.depth(db)
            connected_during = pub.connected
            await asyncio.to_thread(broker.start)
            await asyncio.sleep(1.0)
            stop.set()
            await producer
            total = sum(counts.values())
            assert await col.wait_until(lambda: len(col.event_ids()) >= total, 30 + outage)
            assert await _wait(lambda: outbox.depth(db) == 0, 10)
    # Calls kept flowing into the outbox while the broker was away.
    assert during >= outage * 20
    assert depth_during >= during
    assert connected_during is False
    assert len(col.event_ids()) == total
    _assert_complete(col, counts)
    for _, msg, _ in col.messages:
        schema.validate(msg)


async def test_outage_short_loses_nothing(durable_mosquitto: Mosquitto, db: Database) -> None:
    """A 5 s broker outage under a steady stream: all events arrive, per-call order, no gaps."""
    await _stream_through_outage(durable_mosquitto, db, 5.0)


@pytest.mark.slow
async def test_outage_30s_loses_nothing(durable_mosquitto: Mosquitto, db: Database) -> None:
    """The issue's 30 s outage: all events arrive, per-call order, no gaps."""
    await _stream_through_outage(durable_mosquitto, db, 30.0)


async def test_broker_down_at_start_then_up(mosquitto: Mosquitto, db: Database) -> None:
    """Started with no broker, the publisher retries and delivers the backlog once it is up."""
    s = _settings(mosquitto)
    mosquitto.stop()
    with capture_logs() as logs:
        async with _publisher(s, db) as pub:
            for i in range(20):
                _append(db, pub, _queued("c1", i), s.node)
            await asyncio.sleep(1.0)
            assert outbox.depth(db) == 20 and not pub.connected
            await asyncio.to_thread(mosquitto.start)
            async with Collector(mosquitto.host, mosquitto.port,
                                 messages.calls_filter(s.topic_prefix, s.node)) as col:
                # The subscriber may come after the first drain: rows delivered before
                # it subscribed are gone, so append a marker and check the outbox instead.
                assert await _wait(lambda: outbox.depth(db) == 0, 15)
                _append(db, pub, _queued("c1", 20), s.node)
                assert await col.wait_until(
                    lambda: any(m["seq"] == 21 for _, m, _ in col.messages), 10)
    assert any(e["event"] == "cad.publisher.connect_failed" for e in logs)


async def test_kill_9_publisher_then_new_one_delivers_everything(mosquitto: Mosquitto,
                                                                 db: Database) -> None:
    """A publisher killed mid-drain loses nothing; a new one sends the rest (dups only in flight)."""
    s = _settings(mosquitto)
    counts: dict[str, int] = {}
    for i in range(3000):
        call_id = f"call{i % 8}"
        _append(db, None, _queued(call_id, i), s.node, validate=False)  # bulk: speed
        counts[call_id] = counts.get(call_id, 0) + 1
    status = Collector(mosquitto.host, mosquitto.port,
                       messages.status_topic(s.topic_prefix, s.node))
    async with Collector(mosquitto.host, mosquitto.port,
                         messages.calls_filter(s.topic_prefix, s.node)) as col, status:
        child = subprocess.Popen(  # noqa: ASYNC220 - a fork/exec, not a wait
            [sys.executable, str(Path(__file__).with_name("publisher_child.py")), db.path,
             mosquitto.host, str(mosquitto.port), s.node],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert await col.wait_until(lambda: len(col.messages) >= 300, 30)
            child.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait, 10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        left = outbox.depth(db)
        assert 0 < left < 3000
        # The broker published our will: the node is offline.
        assert await status.wait_until(
            lambda: any(m.get("status") == "offline" for _, m, _ in status.messages), 10)
        async with _publisher(s, db) as pub:
            assert await col.wait_until(lambda: len(col.event_ids()) >= 3000, 30)
            assert await _wait(lambda: outbox.depth(db) == 0, 10)
            window = pub.window + pub.mark_every
    _assert_complete(col, counts)
    duplicates = len(col.messages) - len(col.event_ids())
    assert 0 <= duplicates <= window


async def test_inbound_incident_links_and_bad_input(mosquitto: Mosquitto, db: Database) -> None:
    """Good links reach on_incident; malformed, unknown-call and wrong-type ones are logged, dropped."""
    s = _settings(mosquitto)
    linked: list[tuple[str, str, str]] = []

    def on_incident(call_id: str, number: str, grade: str) -> bool:
        if call_id != "known":
            return False
        linked.append((call_id, number, grade))
        return True

    topic = messages.incidents_topic(s.topic_prefix, s.node)
    good = {"schema_version": "1.0", "call_id": "known", "incident_number": "WMP-1",
            "grade": "2"}
    with capture_logs() as logs:
        async with _publisher(s, db, on_incident=on_incident) as pub:
            assert await _wait(lambda: pub.connected, 10)
            await asyncio.sleep(0.2)  # subscription in place
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as cad:
                for payload in (b"{malformed", b"\xff", b"[]",
                                json.dumps({**good, "call_id": "unknown"}),
                                json.dumps({**good, "grade": 2}),
                                json.dumps({**good, "incident_number": None}),
                                json.dumps(good)):
                    await cad.publish(topic, payload, qos=1)
            assert await _wait(lambda: linked != [], 10)
            # The subscriber still works for outbound after all that.
            async with Collector(mosquitto.host, mosquitto.port,
                                 messages.calls_filter(s.topic_prefix, s.node)) as col:
                _append(db, pub, _queued("known", 0), s.node)
                assert await col.wait_until(lambda: len(col.messages) == 1, 10)
            assert pub.connects == 1
    assert linked == [("known", "WMP-1", "2")]
    rejected = [e for e in logs if e["event"] == "cad.incident.rejected"]
    assert len(rejected) == 5
    assert rejected[0]["reason"].startswith("malformed JSON")
    assert rejected[1]["reason"] == "payload is not UTF-8"
    assert rejected[3]["reason"] == "schema: $.grade: 2 is not of type 'string'"
    unknown = [e for e in logs if e["event"] == "cad.incident.unknown_call"]
    assert [e["call_id"] for e in unknown] == ["unknown"]


async def test_incident_links_sent_while_disconnected_are_kept(mosquitto: Mosquitto,
                                                               db: Database) -> None:
    """With on_incident the session is persistent: a link sent while we are away arrives."""
    s = _settings(mosquitto)
    linked: list[str] = []
    topic = messages.incidents_topic(s.topic_prefix, s.node)
    async with _publisher(s, db, on_incident=lambda c, n, g: linked.append(n) or True) as pub:
        assert await _wait(lambda: pub.connected, 10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as cad:
        await cad.publish(topic, json.dumps({"schema_version": "1.0", "call_id": "c",
                                             "incident_number": "WMP-9"}), qos=1)
    async with _publisher(s, db, on_incident=lambda c, n, g: linked.append(n) or True):
        assert await _wait(lambda: linked == ["WMP-9"], 10)


async def test_queue_summary_is_retained_without_personal_data(mosquitto: Mosquitto,
                                                               db: Database) -> None:
    """The summary is retained (a late subscriber gets it) and carries counts only."""
    s = _settings(mosquitto)
    async with _publisher(s, db) as pub:
        pub.publish_summary({"999": {"waiting": 2, "longest_wait": 7.5,
                                     "caller": "+447700900123", "call_ids": ["c1"]},
                             "101": {"waiting": 0, "longest_wait": 0}})
        pub.publish_summary({"999": {"waiting": 3, "longest_wait": 9.0},
                             "101": {"waiting": 1, "longest_wait": 2.0}})
        await asyncio.sleep(0.5)
        async with Collector(mosquitto.host, mosquitto.port,
                             messages.summary_topic(s.topic_prefix, s.node)) as late:
            assert await late.wait_until(lambda: len(late.messages) >= 1, 10)
    _, payload, retained = late.raw[0]
    msg = json.loads(payload)
    assert retained is True
    schema.validate(msg)
    assert msg["lines"] == {"999": {"waiting": 3, "longest_wait": 9.0},
                            "101": {"waiting": 1, "longest_wait": 2.0}}
    assert b"+4477" not in payload and b"call" not in payload


async def test_username_password_from_env(monkeypatch: pytest.MonkeyPatch, db: Database) -> None:
    """Password given as env:NAME authenticates; a wrong one retries without crashing."""
    monkeypatch.setenv("CR_TEST_MQTT_PW", "s3cret")
    with Mosquitto(users={"cad": "s3cret"}) as broker:
        good = _settings(broker, username="cad", password="env:CR_TEST_MQTT_PW")
        async with Collector(broker.host, broker.port,
                             messages.calls_filter(good.topic_prefix, good.node),
                             username="cad", password="s3cret") as col:
            async with _publisher(good, db) as pub:
                _append(db, pub, _queued("c1", 0), good.node)
                assert await col.wait_until(lambda: len(col.messages) == 1, 10)
        bad = _settings(broker, username="cad", password="wrong")
        with capture_logs() as logs:
            async with _publisher(bad, db) as pub:
                _append(db, pub, _queued("c2", 0), bad.node)
                await asyncio.sleep(1.0)
                assert not pub.connected
        assert outbox.depth(db) == 1
        failures = [e for e in logs if e["event"] == "cad.publisher.connect_failed"]
        assert failures and "wrong" not in json.dumps(failures)


async def test_notify_from_another_thread(mosquitto: Mosquitto, db: Database) -> None:
    """notify() from a worker thread wakes the publisher (no poll needed)."""
    s = _settings(mosquitto)
    async with Collector(mosquitto.host, mosquitto.port,
                         messages.calls_filter(s.topic_prefix, s.node)) as col:
        async with _publisher(s, db, poll_interval=30.0) as pub:
            assert await _wait(lambda: pub.connected, 10)
            await asyncio.sleep(0.3)  # the drain is now parked on the wake event

            def worker() -> None:
                _append(db, pub, _queued("c1", 0), s.node)
            t = threading.Thread(target=worker)
            t.start()
            await asyncio.to_thread(t.join)
            assert await col.wait_until(lambda: len(col.messages) == 1, 5)


async def test_disabled_publisher_leaves_outbox_untouched(mosquitto: Mosquitto,
                                                          db: Database) -> None:
    """enabled = false: events stay in the outbox, nothing is published."""
    s = _settings(mosquitto, enabled=False)
    async with _publisher(s, db) as pub:
        _append(db, pub, _queued("c1", 0), s.node)
        await asyncio.sleep(0.3)
        assert not pub.connected
    assert outbox.depth(db) == 1


def test_env_mosquitto_binary_present() -> None:
    """The harness finds the mosquitto binary on this machine."""
    from harness import mosquitto as mq
    assert mq.available()
    assert os.path.exists(mq._binary() or "")


async def test_status_online_then_offline_on_orderly_stop(mosquitto: Mosquitto,
                                                          db: Database) -> None:
    """The retained status says online while connected and offline after stop()."""
    s = _settings(mosquitto)
    topic = messages.status_topic(s.topic_prefix, s.node)
    async with Collector(mosquitto.host, mosquitto.port, topic) as col:
        async with _publisher(s, db) as pub:
            await asyncio.wait_for(pub.wait_connected(), 10)
            assert await col.wait_until(lambda: len(col.messages) >= 1, 10)
        assert await col.wait_until(lambda: len(col.messages) >= 2, 10)
    statuses = [m["status"] for _, m, _ in col.messages]
    assert statuses == ["online", "offline"]
    for _, m, _ in col.messages:
        schema.validate(m)
        assert m["node"] == s.node


async def test_tls_with_ca_file(db: Database, tmp_path: Path) -> None:
    """tls + ca_file: delivery over TLS; a broker cert from another CA is refused, no crash."""
    with Mosquitto(tls=True) as broker:
        s = _settings(broker, tls=True, ca_file=broker.ca_file)
        ctx = ssl.create_default_context(cafile=broker.ca_file)
        async with Collector(broker.host, broker.port,
                             messages.calls_filter(s.topic_prefix, s.node), tls_context=ctx) as col:
            async with _publisher(s, db) as pub:
                _append(db, pub, _queued("c1", 0), s.node)
                assert await col.wait_until(lambda: len(col.messages) == 1, 10)
                # The PUBACK mark is written a moment after the subscriber sees the message.
                for _ in range(200):
                    if outbox.depth(db) == 0:
                        break
                    await asyncio.sleep(0.05)
                assert outbox.depth(db) == 0
        other = make_certs(tmp_path)
        wrong = _settings(broker, tls=True, ca_file=str(other["ca"]))
        with capture_logs() as logs:
            async with _publisher(wrong, db) as pub:
                _append(db, pub, _queued("c2", 0), wrong.node)
                await asyncio.sleep(1.0)
                assert not pub.connected
        assert outbox.depth(db) == 1
        failed = [e for e in logs if e["event"] == "cad.publisher.connect_failed"]
        assert failed and "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]


async def test_close_stops_a_run_task_started_by_the_owner(mosquitto: Mosquitto,
                                                           db: Database) -> None:
    """close() stops run() even when the owner created the task, and says offline."""
    s = _settings(mosquitto)
    topic = messages.status_topic(s.topic_prefix, s.node)
    async with Collector(mosquitto.host, mosquitto.port, topic) as col:
        pub = _publisher(s, db)
        task = asyncio.create_task(pub.run())
        await asyncio.wait_for(pub.wait_connected(), 10)
        await pub.close()
        assert task.done() and task.cancelled()
        await col.wait_until(lambda: len(col.messages) >= 2, 10)
        assert [m["status"] for _, m, _ in col.messages] == ["online", "offline"]

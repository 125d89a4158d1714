"""The service end to end through the real parts: Kamailio, SIPp callers and handler
phones with real RTP, Mosquitto, Whisper, SQLite. Nothing on the call path is mocked."""

from __future__ import annotations

import asyncio
import hashlib
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from cad.schema import validate
from controlroom.desk import ServiceDesk
from controlroom.stack import Stack, StackOptions
from transcription import TranscriptSearch, get_transcript

from .audio import frames_found_in_order
from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

SENTENCE = "A car has crashed into a wall on the high street and the driver is not moving."


def read_stereo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        a = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    return a[:, 0].copy(), a[:, 1].copy()


async def test_999_call_recorded_published_transcribed_and_found(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """A 999 call through Kamailio reaches a handler's phone; both sides are recorded
    bit-exactly in stereo with a SHA-256; the CAD receives every event, valid and in
    order; the final transcript has the caller's words and a search finds the call."""
    async with Stack(tmp_path, StackOptions(handlers=1, engine="whisper", ring_ms=300)) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        clip = await asyncio.to_thread(st.clip, SENTENCE, lead_s=1.5, voice="en-us")
        caller = st.call("999", caller="07700900123", clip=clip, talk_s=clip.duration + 1.5)
        assert await asyncio.to_thread(caller.wait, 60) == 0, caller.diagnostics()
        await wait_until(lambda: st.service.db.query_one(
            "SELECT 1 FROM calls WHERE ended_at IS NOT NULL"), 15, "call ended")
        row = dict(st.service.db.query_one("SELECT * FROM calls"))
        call_id = row["call_id"]
        await cad.wait_for(call_id, "call.ended", 30)
        final = await cad.wait_for(call_id, "call.transcript", 120)

        # The call record.
        assert row["line"] == "999" and row["caller"] == "07700900123"
        assert row["handler_id"] == "h1" and row["state"] == "completed"
        assert row["ended_by"] == "caller"

        # The recording: stereo, checksummed, both channels carry what was sent.
        path = Path(row["recording_path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
        left, right = read_stereo(path)
        assert abs(len(left) / 8000 - row["talk"] - row["wait"]) < 1.0
        sent, found, shifts = frames_found_in_order(clip.sent, left)
        assert found == sent, f"caller: {found}/{sent} speech frames bit-exact ({shifts} shifts)"
        sent, found, shifts = frames_found_in_order(st.handler_clip.sent, right)
        assert found == sent, f"handler: {found}/{sent} speech frames bit-exact ({shifts} shifts)"

        # The CAD: every lifecycle event, valid, in order, no gaps.
        msgs = cad.for_call(call_id)
        for m in msgs:
            validate(m)
        seqs = sorted({m["seq"] for m in msgs})
        assert seqs == list(range(1, len(seqs) + 1))
        by_seq = {m["seq"]: m["type"] for m in msgs}
        types = [by_seq[s] for s in seqs]
        for earlier, later in [("call.arrived", "call.queued"), ("call.queued", "call.offered"),
                               ("call.offered", "call.answered"),
                               ("call.answered", "call.ended"), ("call.recording", "call.ended")]:
            assert types.index(earlier) < types.index(later), types
        ended = next(m for m in msgs if m["type"] == "call.ended")
        assert row["recording_sha256"] in str(ended)

        # The transcript and the search.
        text = final["transcript"]["text"] if "transcript" in final else str(final)
        assert "crashed" in text.lower() and "wall" in text.lower(), text
        transcript = get_transcript(st.service.db, call_id)
        assert transcript and any(s["channel"] == "caller" for s in transcript["segments"])
        hits = TranscriptSearch(st.service.db).search("crashed wall")
        assert [h.call_id for h in hits] == [call_id]
        assert 1.0 <= hits[0].offset <= row["talk"] + row["wait"]


async def test_999_answered_before_three_waiting_101_calls(tmp_path: Path,
                                                           cad_subscriber_factory) -> None:
    """With three 101 callers already waiting, a 999 caller who arrives last is answered first."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=200)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        callers = []
        for i in range(3):
            callers.append(st.call("101", caller=f"0121496000{i}", talk_s=25))
            await wait_until(lambda n=i: len(st.service.calls) == n + 1, 15, f"101 call {i}")
        callers.append(st.call("999", caller="07700900999", talk_s=6))
        await wait_until(lambda: len(st.service.calls) == 4, 15, "999 call queued")
        assert st.service.router.position(
            next(c.call_id for c in st.service.calls.values() if c.line == "999")) == 1
        await ServiceDesk(st.service).set_handler_state("h1", "available")
        await wait_until(lambda: any(c.state == "connected" for c in st.service.calls.values()),
                         15, "first answer")
        first = next(c for c in st.service.calls.values() if c.state == "connected")
        assert first.line == "999" and first.caller == "07700900999"
        await wait_until(lambda: any(m["type"] == "call.answered" for m in cad.messages), 10,
                         "call.answered on MQTT")
        answered = [m for m in cad.messages if m["type"] == "call.answered"]
        assert answered[0]["call_id"] == first.call_id
        for c in callers:
            await asyncio.to_thread(c.stop)


async def test_caller_who_hangs_up_while_queued_is_abandoned_and_called_back(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """A 999 caller who gives up while queued is recorded as abandoned with wait and
    position, published, and put on the call-back list; a 101 abandon is not."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        c999 = st.call("999", caller="07700900555", talk_s=2.0)
        c101 = st.call("101", caller="01214960555", talk_s=2.5)
        assert await asyncio.to_thread(c999.wait, 30) == 0, c999.diagnostics()
        assert await asyncio.to_thread(c101.wait, 30) == 0, c101.diagnostics()
        await wait_until(lambda: len([m for m in cad.messages if m["type"] == "call.abandoned"]) == 2,
                         15, "two call.abandoned messages")
        rows = {r["line"]: dict(r) for r in st.service.db.query("SELECT * FROM calls")}
        assert rows["999"]["state"] == "abandoned" and rows["101"]["state"] == "abandoned"
        assert 1.5 <= rows["999"]["wait"] <= 5.0
        abandoned = {m["call_id"]: m for m in cad.messages if m["type"] == "call.abandoned"}
        for m in abandoned.values():
            validate(m)
        cbs = await ServiceDesk(st.service).callbacks()
        assert [cb["call_id"] for cb in cbs] == [rows["999"]["call_id"]]
        assert cbs[0]["caller"] == "07700900555" and cbs[0]["state"] == "open"
        assert time.time() - cbs[0]["abandoned_at"] < 60


async def test_full_101_queue_is_busy_before_answer_and_999_never_is(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """With the 101 queue full (max_queue 1, overflow busy) the next 101 caller gets 486
    before we answer, counted as rejected in the queue log; a 999 caller is still queued."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False,
                        line_101={"max_queue": 1, "overflow": "busy"})
    async with Stack(tmp_path, opts) as st:
        first = st.call("101", caller="01214960001", talk_s=15)
        await wait_until(lambda: len(st.service.calls) == 1, 15, "first 101 queued")
        busy = st.call("101", caller="01214960002", expect_status=486)
        assert await asyncio.to_thread(busy.wait, 30) == 0, busy.diagnostics()
        emergency = st.call("999", caller="07700900002", talk_s=3)
        await wait_until(lambda: len(st.service.calls) == 2, 15, "999 queued")
        assert await asyncio.to_thread(emergency.wait, 30) == 0, emergency.diagnostics()
        rows = st.service.db.query("SELECT event, line, data FROM queue_log WHERE event='REJECTED'")
        assert [(r["event"], r["line"]) for r in rows] == [("REJECTED", "101")]
        assert "01214960002" in rows[0]["data"]
        sl = st.service.router.service_level("101", time.time())
        assert sl.rejected == 1
        assert st.service.db.query_one("SELECT COUNT(*) n FROM calls WHERE line='101'")["n"] == 1
        await asyncio.to_thread(first.stop)


async def test_transfer_to_the_999_queue_reaches_the_next_handler(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """A connected 101 call that turns out to be an emergency is moved to the 999 queue:
    the first handler's phone is released into wrap-up, the next handler's phone rings and
    is bridged, and the CAD sees call.transferred then a second call.answered."""
    opts = StackOptions(handlers=2, engine="none", handlers_available=False, ring_ms=200)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        desk = ServiceDesk(st.service)
        await desk.set_handler_state("h1", "available")
        caller = st.call("101", caller="01214960777", talk_s=12)
        await wait_until(lambda: any(c.state == "connected" for c in st.service.calls.values()),
                         15, "answered by h1")
        call = next(iter(st.service.calls.values()))
        assert call.handler_id == "h1"
        await desk.set_handler_state("h2", "available")
        await desk.transfer(call.call_id, to_line="999")
        await wait_until(lambda: call.state == "connected" and call.handler_id == "h2", 15,
                         "answered by h2 after the transfer")
        assert call.line == "999"
        h1 = st.service.router.handler_info("h1")
        assert h1 is not None and h1["state"] == "wrap_up"
        await cad.wait_for(call.call_id, "call.transferred", 10)
        await wait_until(lambda: len([m for m in cad.for_call(call.call_id)
                                      if m["type"] == "call.answered"]) == 2, 10, "2nd answer")
        answered = [m for m in cad.for_call(call.call_id) if m["type"] == "call.answered"]
        assert "h1" in str(answered[0]) and "h2" in str(answered[1])
        assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()
        ended = await cad.wait_for(call.call_id, "call.ended", 15)
        row = st.service.db.query_one("SELECT * FROM calls WHERE call_id=?", (call.call_id,))
        # Still an answered call after the transfer; talk counts both handlers' time.
        assert row["state"] == "completed" and row["handler_id"] == "h2"
        assert 8.0 <= row["talk"] + row["wait"] <= 14.0, dict(row)
        assert row["wait"] < 3.0
        assert ended["type"] == "call.ended"


async def test_ring_no_answer_puts_the_call_back_and_the_next_handler_takes_it(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """h1's phone rings past the offer timeout: CANCEL, h1 is set not ready ("missed
    call"), the call keeps its place and h2's phone answers it."""
    opts = StackOptions(handlers=2, engine="none", handlers_available=False, ring_ms=200,
                        offer_timeout=2.0, ring_ms_by_handler={"h1": 60000})
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        desk = ServiceDesk(st.service)
        await desk.set_handler_state("h1", "available")
        caller = st.call("999", caller="07700900888", talk_s=10)
        await wait_until(lambda: any(c.state == "offered" for c in st.service.calls.values()),
                         15, "offered to h1")
        await desk.set_handler_state("h2", "available")  # h1 is longest idle: h1 was offered
        call = next(iter(st.service.calls.values()))
        await wait_until(lambda: call.state == "connected", 20, "answered after RONA")
        assert call.handler_id == "h2"
        h1 = st.service.router.handler_info("h1")
        assert h1 is not None and (h1["state"], h1["reason"]) == ("not_ready", "missed call")
        failed = await cad.wait_for(call.call_id, "call.offer_failed", 10)
        assert "h1" in str(failed) and "no-answer" in str(failed)
        log = [r["event"] for r in st.service.db.query(
            "SELECT event FROM queue_log WHERE call_id=? AND event != 'STATE' ORDER BY id",
            (call.call_id,))]
        assert log[:5] == ["ENTER", "OFFER", "RINGNOANSWER", "OFFER", "CONNECT"], log
        assert len([m for m in cad.for_call(call.call_id) if m["type"] == "call.offer_failed"]) == 1
        assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()


async def test_cad_incident_number_comes_back_onto_the_call(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """The CAD publishes an incident number for a live call: it is stored on the call,
    acknowledged as call.incident, carried by every later message; junk is ignored."""
    import json

    import aiomqtt

    opts = StackOptions(handlers=1, engine="none", ring_ms=200)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        caller = st.call("999", caller="07700900444", talk_s=6)
        await wait_until(lambda: any(c.state == "connected" for c in st.service.calls.values()),
                         15, "connected")
        call_id = next(iter(st.service.calls))
        async with aiomqtt.Client("127.0.0.1", st.mosquitto.port, identifier="test-cad-out") as c:
            topic = "controlroom/fcr1/cad/incidents"
            await c.publish(topic, b"{not json", qos=1)
            await c.publish(topic, json.dumps({"schema_version": "1.0", "call_id": "nope",
                                               "incident_number": "X-1"}), qos=1)
            await c.publish(topic, json.dumps({"schema_version": "1.0", "call_id": call_id,
                                               "incident_number": "WMP-20261123-0042",
                                               "grade": "1"}), qos=1)
        ack = await cad.wait_for(call_id, "call.incident", 15)
        assert "WMP-20261123-0042" in str(ack)
        row = st.service.db.query_one("SELECT incident_number, grade FROM calls WHERE call_id=?",
                                      (call_id,))
        assert (row["incident_number"], row["grade"]) == ("WMP-20261123-0042", "1")
        assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()
        ended = await cad.wait_for(call_id, "call.ended", 15)
        assert ended["incident"]["number"] == "WMP-20261123-0042"


async def test_silent_caller_pressing_55_is_flagged(tmp_path: Path, cad_subscriber_factory) -> None:
    """A 999 caller who presses 5 5 (RFC 4733 events through Kamailio) is flagged as a
    Silent Solution call, once, on the record and to the CAD."""
    from harness import scenarios, speech
    from harness.sipp import Sipp

    opts = StackOptions(handlers=1, engine="none", handlers_available=False)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        packets = speech.dtmf_packets("55", "PCMA")
        pcap = speech.write_rtp_pcap(tmp_path / "dtmf55.pcap", packets)
        caller = Sipp(scenarios.caller(dialled="999", caller_id="07700900055", pcap=pcap,
                                       talk_ms=int(packets[-1].at * 1000) + 1500),
                      target=st.kamailio.addr, calls=1, timeout=60, name="silent").start()
        try:
            assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()
        finally:
            caller.stop()
        row = st.service.db.query_one("SELECT call_id, flags FROM calls")
        flagged = await cad.wait_for(row["call_id"], "call.flagged", 10)
        assert "dtmf55" in str(flagged)
        assert [m["type"] for m in cad.for_call(row["call_id"])].count("call.flagged") == 1
        assert "dtmf55" in row["flags"]

"""A 999 call end to end over each SIP transport (issue 16): SIPp caller -> Kamailio ->
the service over UDP, TCP or TLS (Kamailio's TLS module, certificates from a throw-away
CA made by the test), handler leg back through Kamailio the same way to a SIPp phone:
answered, queued, offered, bridged both ways with the audio checked bit for bit,
recorded with its SHA-256, published to the CAD in order."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from cad.schema import validate
from controlroom.stack import Stack, StackOptions

from .audio import frames_found_in_order
from .conftest import wait_until
from .test_service_e2e import read_stereo

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_999_call_over_each_transport(tmp_path: Path, cad_subscriber_factory,
                                            transport: str) -> None:
    """The same 999 call over UDP, TCP and TLS between Kamailio and the service."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=300, transport=transport)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        clip = await asyncio.to_thread(st.clip, "Help, there is a fire at the school.",
                                       lead_s=1.5)
        talk = max(clip.duration, st.handler_clip.duration) + 2.0  # both heard whole
        caller = st.call("999", caller="07700900123", clip=clip, talk_s=talk)
        assert await asyncio.to_thread(caller.wait, 60) == 0, caller.diagnostics()
        await wait_until(lambda: st.service.db.query_one(
            "SELECT 1 FROM calls WHERE ended_at IS NOT NULL"), 15, "call ended")
        row = dict(st.service.db.query_one("SELECT * FROM calls"))
        call_id = row["call_id"]
        await cad.wait_for(call_id, "call.ended", 30)
        assert (row["line"], row["handler_id"], row["state"]) == ("999", "h1", "completed")

        path = Path(row["recording_path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
        left, right = read_stereo(path)
        sent, found, shifts = frames_found_in_order(clip.sent, left)
        assert found == sent, f"caller: {found}/{sent} frames bit-exact ({shifts} shifts)"
        sent, found, shifts = frames_found_in_order(st.handler_clip.sent, right)
        assert found == sent, f"handler: {found}/{sent} frames bit-exact ({shifts} shifts)"

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

        counters = st.service.engine.sip_counters
        if transport == "udp":
            assert "stream_open" not in counters
        else:
            # the caller's INVITE came in on a connection Kamailio opened, and the handler
            # leg went out on one we opened (Kamailio's port, not its ephemeral one)
            assert counters["stream_accepted"] >= 1, counters
            assert counters["stream_framing_faults"] == 0 and counters["stream_refused"] == 0
            conns = st.service.engine._conns
            assert conns is not None
            assert any(not c.server_side for c in conns._all), "no outbound connection"
        if transport == "tls":
            assert counters["stream_tls_handshakes"] >= 2, counters
            assert counters["stream_tls_failures"] == 0, counters
            assert counters["tls_cert_days_left"] >= 1


async def test_999_call_from_baresip_over_tls(tmp_path: Path, cad_subscriber_factory) -> None:
    """baresip (a real softphone) calls 999 over TLS to Kamailio, which relays it over TLS
    to the service; the handler's phone answers through the same TLS hops: answered,
    queued, offered, bridged (the caller's tone and the handler's words are both in the
    recording), recorded with its SHA-256, published in order. Every hop that carries
    the call's signalling to and from the service is TLS."""
    import numpy as np

    from harness import speech
    from harness.baresip import Baresip

    opts = StackOptions(handlers=1, engine="none", ring_ms=300, transport="tls")
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        talk = st.handler_clip.duration + 3.0
        t = np.arange(int(8000 * 2.0)) / 8000
        tone = (np.sin(2 * np.pi * 660 * t) * 8000).astype(np.int16)
        wav = speech.write_wav(tmp_path / "caller.wav", np.concatenate([
            np.zeros(8000, dtype=np.int16), tone,
            np.zeros(int(8000 * (talk - 3.0)), dtype=np.int16)]))
        caller_cert = st.ca.issue("baresip", "caller.local")
        phone = Baresip(user="caller", registrar=st.kamailio.addr, domain="controlroom.local",
                        audio=wav, codecs="PCMA", register=False,
                        tls=(caller_cert.cert, caller_cert.key, st.ca.cert),
                        tls_port=st.kamailio.tls_port, workdir=tmp_path / "baresip")
        await asyncio.to_thread(phone.start)
        try:
            await asyncio.to_thread(phone.dial, "sip:999@controlroom.local")
            await wait_until(lambda: st.service.db.query_one(
                "SELECT 1 FROM calls WHERE ended_at IS NOT NULL"), talk + 30, "call ended")
        finally:
            log = phone.log_text()
            await asyncio.to_thread(phone.stop)
        assert "Call established: sip:999@controlroom.local;transport=tls" in log, log
        row = dict(st.service.db.query_one("SELECT * FROM calls"))
        call_id = row["call_id"]
        await cad.wait_for(call_id, "call.ended", 30)
        assert (row["line"], row["handler_id"], row["state"]) == ("999", "h1", "completed")
        path = Path(row["recording_path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
        left, right = read_stereo(path)
        # the caller's tone (baresip's own G.711 encoder) is in the left channel: the
        # strongest frequency of its loudest second is 660 Hz
        loud = max(range(0, len(left) - 8000, 800),
                   key=lambda i: float(np.abs(left[i:i + 8000].astype(np.int64)).sum()))
        spectrum = np.abs(np.fft.rfft(left[loud:loud + 8000].astype(np.float64)))
        assert abs(int(np.argmax(spectrum)) - 660) <= 2, int(np.argmax(spectrum))
        sent, found, shifts = frames_found_in_order(st.handler_clip.sent, right)
        assert found == sent, f"handler: {found}/{sent} frames bit-exact ({shifts} shifts)"
        types = [m["type"] for m in sorted(cad.for_call(call_id), key=lambda m: m["seq"])]
        for earlier, later in [("call.arrived", "call.queued"), ("call.queued", "call.offered"),
                               ("call.offered", "call.answered"), ("call.answered", "call.ended")]:
            assert types.index(earlier) < types.index(later), types
        counters = st.service.engine.sip_counters
        assert counters["stream_tls_handshakes"] >= 2 and counters["stream_tls_failures"] == 0
        assert "udp" not in {getattr(c.hop, "transport", "udp")
                             for c in st.service.engine._conns._all}  # type: ignore[union-attr]

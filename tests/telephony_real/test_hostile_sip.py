"""SIP input the running engine must survive (issue 12, defects 7 and 8): raw datagrams
at the real engine on loopback, directly and through the real Kamailio."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from harness.kamailio import sip_options
from telephony.api import CallArrived, CallEnded

from .conftest import EngineRig
from .rawsip import Msg, RawUac

pytestmark = [pytest.mark.realparts, pytest.mark.faults]

LATIN1_NAME = b"Jos\xe9 M\xfcller"
"""A caller name as an old network sends it: Latin-1, not UTF-8."""


def _engine_addr(rig: EngineRig) -> tuple[str, int]:
    return ("127.0.0.1", rig.engine.sip_port)


def _hostile_invite(uac: RawUac) -> bytes:
    """The UAC's INVITE with a Latin-1 From display name and a non-UTF-8 User-Agent."""
    data = uac.invite().encode()
    data = data.replace(b"From: <", b'From: "' + LATIN1_NAME + b'" <', 1)
    return data.replace(b"Max-Forwards: 70\r\n",
                        b"Max-Forwards: 70\r\nUser-Agent: SBC\xff\xfe 2\r\n", 1)


def _ack_through_proxy(uac: RawUac, ok: Msg) -> bytes:
    """ACK for a 2xx that came through a record-routing proxy (route set reversed)."""
    contact = (ok.get("Contact") or "").strip().strip("<>").split(">")[0]
    routes = "".join(f"Route: {r}\r\n" for r in reversed(ok.all("Record-Route")))
    return (f"ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{uac.port};"
            f"branch={uac.branch}-ack;rport\r\n{routes}Max-Forwards: 70\r\n"
            f"From: {ok.get('From')}\r\nTo: {ok.get('To')}\r\nCall-ID: {uac.call_id}\r\n"
            "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")


async def _answered(uac: RawUac, within: float = 3.0) -> Msg:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (left := end - loop.time()) > 0:
        m = await uac.recv(left)
        if m is not None and m.cseq_method == "INVITE" and (m.status or 0) >= 200:
            return m
    raise AssertionError("no final response to the INVITE")


@pytest.mark.parametrize("path", ["direct", "kamailio"])
async def test_999_with_latin1_display_name_and_user_agent_is_answered(
        rig: EngineRig, path: str) -> None:
    """A 999 INVITE whose From display name and User-Agent are not UTF-8 is answered 200
    and reported as a call (display name readable, U+FFFD for the bad bytes), straight
    from the SBC and through Kamailio; the call then ends normally."""
    target = _engine_addr(rig) if path == "direct" else rig.kamailio.addr
    uac = await RawUac(target).open()
    try:
        uac.send(_hostile_invite(uac))
        ok = await _answered(uac)
        assert ok.status == 200, ok.first
        arrived = await rig.wait(CallArrived, sip_call_id=uac.call_id)
        assert arrived.line == "999"
        assert arrived.display_name == "Jos\ufffd M\ufffdller"
        arrived.display_name.encode("utf-8")  # storable as is (SQLite, MQTT JSON)
        if path == "direct":
            uac.send(uac.ack(ok))
            uac.send(uac.bye(ok))
            ended = await rig.wait(CallEnded, call_id=arrived.call_id)
            assert ended.by == "caller"
        else:
            uac.send(_ack_through_proxy(uac, ok))
            await asyncio.sleep(0.3)
            rig.engine.hangup(arrived.call_id, "test over")
            bye = await uac.recv(3.0)
            assert bye is not None and bye.method == "BYE"
            await rig.wait(CallEnded, call_id=arrived.call_id)
        assert rig.engine.sip_counters.get("malformed", 0) == 0
    finally:
        uac.close()


def _request(uac: RawUac, n: int, *, headers: str = "", start: str = "",
             cseq: str = "1 INVITE", call_id: str = "") -> bytes:
    start = start or f"INVITE {uac.ruri} SIP/2.0"
    call = call_id or f"Call-ID: hostile{n}@127.0.0.1\r\n"
    return (f"{start}\r\nVia: SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK-h{n};rport\r\n"
            f"From: <sip:07700900999@127.0.0.1>;tag=h{n}\r\nTo: <{uac.ruri}>\r\n{call}"
            f"CSeq: {cseq}\r\nMax-Forwards: 70\r\n{headers}Content-Length: 0\r\n\r\n"
            ).encode("utf-8", "surrogateescape")


async def test_malformed_requests_get_exactly_one_400_naming_the_fault(rig: EngineRig) -> None:
    """Each malformed request gets exactly one 400 whose reason names the fault, is
    counted by kind and logged (sip.refused); no call starts and the engine still answers."""
    uac = await RawUac(_engine_addr(rig)).open()
    many = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(205))
    cases = [
        (dict(headers="Content-Length: 12\r\n"),
         "Conflicting Content-Length headers: 12, 0", "bad_content_length"),
        (dict(headers=many), "Too many headers (more than 200)", "too_many_headers"),
        (dict(call_id=" "), "Missing Call-ID header", "missing_header"),
        (dict(cseq="one INVITE"), "Malformed CSeq: 'one INVITE'", "bad_cseq"),
        (dict(start=f"INVITE {uac.ruri}"),
         f"Malformed start line: 'INVITE {uac.ruri}'", "bad_start_line"),
        (dict(call_id="Call-ID: caf\udce9@127.0.0.1\r\n"),
         "Call-ID header is not valid UTF-8", "bad_bytes"),
    ]
    try:
        with capture_logs() as logs:
            for n, (kw, reason, _) in enumerate(cases):
                uac.send(_request(uac, n, **kw))  # type: ignore[arg-type]
                got = await uac.collect(0.6)
                assert [(m.status, m.first.split(" ", 2)[2]) for m in got] == [(400, reason)], \
                    (reason, [m.first for m in got])
        counters = rig.engine.sip_counters
        for _, _, kind in cases:
            assert counters[f"malformed_{kind}"] >= 1, (kind, counters)
        assert counters["malformed"] == len(cases)
        refused = [e for e in logs if e["event"] == "sip.refused"]
        assert [(e["kind"], e["status"], e["verdict"]) for e in refused] == [
            (kind, 400, "answered") for _, _, kind in cases]
        assert not rig.of(CallArrived)
        assert await asyncio.to_thread(sip_options, _engine_addr(rig), timeout=2.0) == 200
    finally:
        uac.close()


async def test_spoofed_invite_from_untrusted_address_gets_at_most_one_answer(
        rig: EngineRig) -> None:
    """An INVITE from 127.0.0.77 (the lines trust only 127.0.0.1), retransmitted as a UDP
    client does (T1 doubling, 4 copies over 3.5 s): over 5 s it gets one 403, no 100
    Trying, nothing bigger than itself; no call; trusted callers are still served."""
    spoof = await RawUac(_engine_addr(rig), bind="127.0.0.77").open()
    try:
        invite = spoof.invite().encode()
        loop = asyncio.get_running_loop()
        start = loop.time()
        got: list[Msg] = []
        for at in (0.0, 0.5, 1.5, 3.5):
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            spoof.send(invite)
        got += await spoof.collect(max(0.0, start + 5.0 - loop.time()))
        assert [(m.status, m.first.split(" ", 2)[2]) for m in got] == [(403, "Source not trusted")]
        assert len(got[0].body) == 0 and got[0].get("Server") is None
        assert not rig.of(CallArrived)
        counters = rig.engine.sip_counters
        assert counters["untrusted_answered"] == 1
        assert counters["untrusted_repeat_dropped"] == 3
    finally:
        spoof.close()
    trusted = await RawUac(_engine_addr(rig)).open()
    try:
        trusted.send(trusted.invite())
        ok = await _answered(trusted)
        assert ok.status == 200
        trusted.send(trusted.ack(ok))
        trusted.send(trusted.bye(ok))
        arrived = await rig.wait(CallArrived, sip_call_id=trusted.call_id)
        await rig.wait(CallEnded, call_id=arrived.call_id)
    finally:
        trusted.close()

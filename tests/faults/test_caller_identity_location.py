"""Issue 12 (defects 10, 11) through the real parts: a 999 INVITE through Kamailio from
``+447700900123`` with a multipart body (SDP + PIDF-LO by ``Geolocation: <cid:...>``) and
a session timer. The 200 carries the timer; the CAD message on Mosquitto and the handler's
screen-pop (desk API) carry the number with its ``+``, its E.164 form, the parsed
location and the earlier call from the same caller dialled nationally."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cad.schema import validate
from console import users
from controlroom.stack import Stack, StackOptions
from tests.e2e.conftest import wait_until
from tests.sip.test_caller_location import PIDF_LO
from tests.telephony_real.rawsip import Msg, RawUac

pytestmark = [pytest.mark.faults, pytest.mark.realparts]

PASSWORD = "correct horse battery"
CALLER = "+447700900123"


def invite(uac: RawUac, *, body: bytes, ctype: str, extra: str) -> bytes:
    head = (f"INVITE {uac.ruri} SIP/2.0\r\n{uac._via(uac.branch)}\r\nMax-Forwards: 70\r\n"
            f"{uac._from()}\r\nTo: <{uac.ruri}>\r\nCall-ID: {uac.call_id}\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:{uac.caller}@127.0.0.1:{uac.port}>\r\n{extra}"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def multipart(uac: RawUac, cid: str) -> tuple[bytes, str]:
    b = "boundary-999"
    body = (f"--{b}\r\nContent-Type: application/sdp\r\n\r\n{uac.sdp()}\r\n"
            f"--{b}\r\nContent-Type: application/pidf+xml\r\nContent-ID: <{cid}>\r\n\r\n"
            ).encode() + PIDF_LO + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/mixed;boundary={b}"


def refresh(uac: RawUac, ok: Msg, cseq: int) -> bytes:
    """A session refresh: a re-INVITE in the dialog with the same SDP (RFC 4028 §7.4)."""
    contact = (ok.get("Contact") or "").strip("<>").split(">")[0]
    body = uac.sdp()
    return (f"INVITE {contact} SIP/2.0\r\n{uac._via(uac.branch + f'-r{cseq}')}\r\n"
            f"Max-Forwards: 70\r\n{uac._from()}\r\nTo: {ok.get('To')}\r\n"
            f"Call-ID: {uac.call_id}\r\nCSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:{uac.caller}@127.0.0.1:{uac.port}>\r\n"
            f"Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()


async def final(uac: RawUac, within: float = 5.0) -> Msg:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (left := end - loop.time()) > 0:
        m = await uac.recv(left)
        if m is not None and m.status is not None and m.status >= 200:
            return m
    raise AssertionError("no final response")


async def desk_offer(base: str) -> dict[str, Any]:
    # unsafe: the jar keeps cookies of an IP-address host (127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{base}/api/login",
                             json={"username": "h1", "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
        for _ in range(100):
            async with http.get(f"{base}/api/desk") as r:
                assert r.status == 200, await r.text()
                view = await r.json()
            if view.get("offer"):
                return view["offer"]
            await asyncio.sleep(0.1)
    raise AssertionError(f"no offer on h1's desk: {view}")


async def test_e164_caller_pidf_lo_and_session_timer_reach_200_cad_and_screen_pop(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """The 200 has Session-Expires 90;refresher=uac and Require: timer (a 60 s timer
    gets 422 Min-SE 90); call.arrived has callback +447700900123 with its E.164 form and
    the PIDF-LO's point, circle (18 m) and civic address; h1's screen-pop shows the same
    and lists the earlier call from 07700900123 as the same caller."""
    opts = StackOptions(handlers=1, engine="none", offer_timeout=20.0,
                        ring_ms_by_handler={"h1": 60000})
    async with Stack(tmp_path, opts) as st:
        svc = st.service
        users.create_user(svc.db, "h1", PASSWORD, ["handler"])
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        base = f"http://127.0.0.1:{svc.web_port}"

        # An earlier call from the same phone, dialled as a national number (abandoned).
        first = st.call("999", caller="07700900123", talk_s=1.0, name="earlier")
        assert await asyncio.to_thread(first.wait, 30) == 0, first.diagnostics()
        await wait_until(lambda: not svc.calls, 10, "earlier call closed")
        await wait_until(lambda: svc.router.handler_info("h1")["state"] == "available", 10,
                         "h1 available again")
        earlier = svc.db.query_one("SELECT call_id, caller, caller_normalised FROM calls")
        assert (earlier["caller"], earlier["caller_normalised"]) == ("07700900123", CALLER)

        # Below our Min-SE: 422 with Min-SE, through Kamailio.
        small = await RawUac(st.kamailio.addr, caller=CALLER).open()
        try:
            body, ctype = multipart(small, "loc@sbc.example")
            small.send(invite(small, body=body, ctype=ctype,
                              extra="Session-Expires: 60\r\nSupported: timer\r\n"))
            resp = await final(small)
            assert (resp.status, resp.get("Min-SE")) == (422, "90"), resp.first
            small.send(small.ack(resp))
        finally:
            small.close()

        uac = await RawUac(st.kamailio.addr, caller=CALLER).open()
        try:
            body, ctype = multipart(uac, "loc1@sbc.example")
            uac.send(invite(uac, body=body, ctype=ctype, extra=(
                "Session-Expires: 90;refresher=uac\r\nMin-SE: 90\r\nSupported: timer\r\n"
                "Geolocation: <cid:loc1@sbc.example>\r\nGeolocation-Routing: no\r\n")))
            ok = await final(uac)
            assert ok.status == 200, ok.first
            assert ok.get("Session-Expires") == "90;refresher=uac"
            assert "timer" in [t.strip() for v in ok.all("Require") for t in v.split(",")]
            uac.send(uac.ack(ok))

            await wait_until(lambda: svc.db.query_one(
                "SELECT 1 FROM calls WHERE sip_call_id=?", (uac.call_id,)), 10, "call row")
            row = svc.db.query_one("SELECT call_id FROM calls WHERE sip_call_id=?",
                                   (uac.call_id,))
            call_id = row["call_id"]

            # The CAD: the number as given, its E.164 form, the location as read.
            arrived = await cad.wait_for(call_id, "call.arrived", 15)
            validate(arrived)
            assert arrived["callback"]["number"] == CALLER
            assert arrived["callback"]["normalised"] == CALLER
            loc = arrived["location"]
            assert (loc["by"], loc["uri"], loc["parsed"]) == ("value", "cid:loc1@sbc.example",
                                                             True)
            assert [g["shape"] for g in loc["geodetic"]] == ["Point", "Circle"]
            assert loc["geodetic"][1]["radius"] == 18.0 and loc["geodetic"][1]["uom"] == "m"
            assert loc["geodetic"][0]["method"] == "GPS"
            assert loc["civic"][0]["RD"] == "Station Road" and loc["civic"][0]["PC"] == "B15 2TT"
            assert loc["accuracy"] == 18.0 and "Station Road" in loc["text"]

            # The handler's screen-pop (desk API) while the phone rings.
            card = await desk_offer(base)
            assert card["call_id"] == call_id
            assert (card["caller"], card["caller_normalised"]) == (CALLER, CALLER)
            assert card["location_accuracy"] == 18.0
            assert card["location"].startswith("52.486200, -1.890400 (±18 m)")
            assert card["location_detail"]["civic"][0]["HNO"] == "14"
            assert earlier["call_id"] in [p["call_id"] for p in card["previous_calls"]]

            # A refresh (re-INVITE) is answered with the timer again.
            uac.send(refresh(uac, ok, 2))
            again = await final(uac)
            assert again.status == 200 and again.cseq_method == "INVITE", again.first
            assert again.get("Session-Expires") == "90;refresher=uac"
            uac.send(uac.ack(again).replace("CSeq: 1 ACK", "CSeq: 2 ACK"))

            # A 999 whose PIDF-LO is not XML is answered all the same; the CAD gets the
            # body as given and why it was not read.
            bad = await RawUac(st.kamailio.addr, caller="07700900456").open()
            try:
                bbody, bctype = multipart(bad, "bad@sbc.example")
                bbody = bbody.replace(PIDF_LO, b"<presence><oops")
                bad.send(invite(bad, body=bbody, ctype=bctype,
                                extra="Geolocation: <cid:bad@sbc.example>\r\n"))
                bok = await final(bad)
                assert bok.status == 200, bok.first
                bad.send(bad.ack(bok))
                await wait_until(lambda: svc.db.query_one(
                    "SELECT 1 FROM calls WHERE sip_call_id=?", (bad.call_id,)), 10, "bad row")
                bad_id = svc.db.query_one("SELECT call_id FROM calls WHERE sip_call_id=?",
                                          (bad.call_id,))["call_id"]
                barrived = await cad.wait_for(bad_id, "call.arrived", 15)
                validate(barrived)
                bloc = barrived["location"]
                assert (bloc["text"], bloc["parsed"]) == ("<presence><oops", False)
                assert bloc["error"].startswith("PIDF-LO is not well-formed XML")
                assert barrived["callback"] == {"number": "07700900456", "name": "",
                                                "normalised": "+447700900456"}
                bad.send(bad.bye(bok))
            finally:
                bad.close()

            uac.send(uac.bye(ok, cseq=3))
            await wait_until(lambda: not svc.calls, 10, "calls ended")
        finally:
            uac.close()

"""The whole service on loopback survives hostile SIP (issue 12, defects 7 and 8): a 999 call
with a Latin-1 caller name through Kamailio is queued, stored and published readable;
malformed and spoofed requests are answered once and show in /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from controlroom.stack import Stack, StackOptions
from tests.telephony_real.rawsip import RawUac
from tests.telephony_real.test_hostile_sip import _ack_through_proxy, _answered, _hostile_invite

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.faults]


async def test_latin1_999_call_is_queued_and_hostile_requests_are_counted(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Through Kamailio, a 999 INVITE with a Latin-1 display name and User-Agent is answered,
    queued (no handler), stored and sent to the CAD with the name readable (U+FFFD for the
    bad bytes); a request with conflicting Content-Length gets one 400 and a spoofed INVITE
    from 127.0.0.77 one 403; /metrics counts both by kind."""
    async with Stack(tmp_path, StackOptions(handlers=0, engine="none")) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        engine = ("127.0.0.1", st.service.engine.sip_port)
        uac = await RawUac(st.kamailio.addr).open()
        try:
            uac.send(_hostile_invite(uac))
            ok = await _answered(uac, 5.0)
            assert ok.status == 200, ok.first
            uac.send(_ack_through_proxy(uac, ok))
            await wait_until(lambda: any(c.state == "queued" for c in st.service.calls.values()),
                             10, "call queued")
            row = dict(st.service.db.query_one("SELECT * FROM calls"))
            assert row["state"] == "queued" and row["line"] == "999"
            assert row["display_name"] == "Jos\ufffd M\ufffdller"
            arrived = await cad.wait_for(row["call_id"], "call.arrived", 15)
            assert "Jos\ufffd M\ufffdller" in str(arrived)

            bad = await RawUac(engine).open()
            spoof = await RawUac(engine, bind="127.0.0.77").open()
            try:
                bad.send(bad.invite().replace("Content-Type:",
                                              "Content-Length: 3\r\nContent-Type:"))
                got = await bad.collect(1.0)
                assert [m.status for m in got] == [400], [m.first for m in got]
                assert got[0].first.startswith("SIP/2.0 400 Conflicting Content-Length headers")
                invite = spoof.invite()
                for _ in range(3):
                    spoof.send(invite)
                    await asyncio.sleep(0.5)
                assert [m.status for m in await spoof.collect(1.0)] == [403]
            finally:
                bad.close()
                spoof.close()

            base = f"http://127.0.0.1:{st.service.web_port}"
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert 'controlroom_engine{stat="sip_malformed_bad_content_length"} 1' in text
            assert 'controlroom_engine{stat="sip_untrusted_answered"} 1' in text
            assert 'controlroom_engine{stat="sip_untrusted_repeat_dropped"} 2' in text
            assert 'controlroom_calls{line="999",state="queued"} 1' in text
        finally:
            uac.close()

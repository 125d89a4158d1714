"""Operations through the real parts: health, readiness, Prometheus metrics, graceful drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from controlroom.stack import Stack, StackOptions

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


async def test_health_metrics_and_drain(tmp_path: Path) -> None:
    """/healthz and /readyz answer; /metrics counts a real call by line; while draining
    /readyz is 503, a new 101 call gets 503 and a 999 call is still answered."""
    async with Stack(tmp_path, StackOptions(handlers=1, engine="none", ring_ms=200)) as st:
        base = f"http://127.0.0.1:{st.service.web_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200 and (await r.json()) == {"status": "ok"}
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200

            c = st.call("999", caller="07700900321", talk_s=2.0)
            assert await asyncio.to_thread(c.wait, 30) == 0, c.diagnostics()
            await wait_until(lambda: not st.service.calls, 10, "call over")
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert r.status == 200
            assert 'controlroom_calls_total{line="999",outcome="answered"} 1' in text
            assert 'controlroom_calls_total{line="999",outcome="ended"} 1' in text
            assert 'controlroom_answer_seconds_count{line="999"} 1' in text
            assert 'controlroom_queue_length{line="101"} 0' in text
            assert "controlroom_outbox_depth " in text
            assert 'controlroom_engine{stat="rtp_packets_in"}' in text
            assert "# TYPE controlroom_transcription_lag_seconds gauge" in text
            assert 'controlroom_longest_wait_seconds{line="999"} 0' in text

            drain = asyncio.create_task(st.service.drain(timeout=30))
            await asyncio.sleep(0.2)
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["draining"] is True
            # We answer 503 + Retry-After; Kamailio, as RFC 3261 16.7 asks of a proxy,
            # passes it upstream as 500 (the reason phrase is kept).
            refused = st.call("101", caller="01214960999", expect_status=500)
            assert await asyncio.to_thread(refused.wait, 30) == 0, refused.diagnostics()
            assert "500 Service Unavailable" in refused.messages_text()
            accepted = st.call("999", caller="07700900322", talk_s=2.0)
            assert await asyncio.to_thread(accepted.wait, 30) == 0, accepted.diagnostics()
            await asyncio.wait_for(drain, 20)
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert 'controlroom_sip_rejected_total{line="101",status="503"} 1' in text

"""/metrics from prometheus_client (issue 18 item 4): the same metric names as the
hand-written registry had, valid exposition, the new histograms and gauges, and the
endpoint refused without the token (or only on its own listener)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlroom.stack import Stack, StackOptions
from harness.ports import free_tcp_port

from .conftest import wait_until

pytestmark = [pytest.mark.realparts]

BEFORE = {  # name -> type, as the hand-written registry exposed them
    "controlroom_calls_total": "counter", "controlroom_answer_seconds": "histogram",
    "controlroom_sip_rejected_total": "counter", "controlroom_live_resyncs_total": "counter",
    "controlroom_calls": "gauge", "controlroom_queue_length": "gauge",
    "controlroom_longest_wait_seconds": "gauge", "controlroom_engine": "gauge",
    "controlroom_outbox_depth": "gauge", "controlroom_transcription_lag_seconds": "gauge",
    "controlroom_storage_degraded": "gauge", "controlroom_storage_spool_depth": "gauge",
    "controlroom_storage_spool_oldest_seconds": "gauge",
    "controlroom_storage_faults_total": "counter",
    "controlroom_storage_writes_lost_total": "counter",
}
NEW = {"controlroom_routing_decision_seconds": "histogram",
       "controlroom_cad_latency_seconds": "histogram", "controlroom_disk": "gauge",
       "controlroom_transcription_backlog": "gauge", "controlroom_legal_holds": "gauge",
       "controlroom_retention_deleted_total": "counter"}


def families(text: str) -> dict[str, str]:
    out = {}
    for f in text_string_to_metric_families(text):
        # the parser names a counter family without _total
        name = f.name + "_total" if f.type == "counter" else f.name
        out[name] = f.type
    return out


async def test_same_names_new_histograms_and_token(tmp_path: Path) -> None:
    """After a real 999 call: every metric name and type of before is exposed, plus
    routing-decision and CAD-latency histograms with samples and the disk gauges; the
    text parses as Prometheus exposition; without the bearer token /metrics is 401."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200,
                        web={"metrics_token": "env:CR_TEST_METRICS_TOKEN"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CR_TEST_METRICS_TOKEN", "a-scrape-token-77")
        async with Stack(tmp_path, opts) as st:
            base = f"http://127.0.0.1:{st.service.web_port}"
            c = st.call("999", caller="07700900321", talk_s=1.0)
            assert await asyncio.to_thread(c.wait, 30) == 0, c.diagnostics()
            await wait_until(lambda: not st.service.calls, 10, "call over")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 401
                async with http.get(f"{base}/metrics",
                                    headers={"Authorization": "Bearer nope"}) as r:
                    assert r.status == 401
                auth = {"Authorization": "Bearer a-scrape-token-77"}
                text = ""
                for _ in range(50):
                    async with http.get(f"{base}/metrics", headers=auth) as r:
                        assert r.status == 200
                        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                        text = await r.text()
                    if "controlroom_cad_latency_seconds_count" in text:
                        break
                    await asyncio.sleep(0.2)
    got = families(text)
    for name, kind in {**BEFORE, **NEW}.items():
        assert got.get(name) == kind, (name, got.get(name))
    assert 'controlroom_calls_total{line="999",outcome="answered"} 1.0' in text
    assert 'controlroom_routing_decision_seconds_count{decision="call_arrived"} 1.0' in text
    assert "controlroom_cad_latency_seconds_count " in text
    assert 'controlroom_disk{stat="free_bytes",volume="data"}' in text
    assert "process_cpu_seconds_total" in text

    # every series the Grafana dashboard in docker/ queries is one the service exposes
    import json
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docker" /
                            "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    exposed = set(got) | {n + s for n, k in got.items() if k == "histogram"
                          for s in ("_bucket", "_count", "_sum")}
    for expr in exprs:
        for name in re.findall(r"\b((?:controlroom|process)_[a-z_]+)", expr):
            assert name in exposed, (name, expr)


async def test_metrics_on_their_own_listener(tmp_path: Path) -> None:
    """With web.metrics_port, /metrics is served there and not on the console."""
    port = free_tcp_port()
    opts = StackOptions(handlers=1, engine="none",
                        web={"metrics_bind": "127.0.0.1", "metrics_port": port})
    async with Stack(tmp_path, opts) as st, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{st.service.web_port}/metrics") as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            assert "controlroom_calls_total" in await r.text()

"""``sip.engine_workers``: the schema's range checks, check-config's port and
registered-line checks, and the pure parts of telephony.workers (settings split,
bookkeeping of a dead worker's calls, summed stats)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from config import ConfigError, from_dict
from config.telephony import SipSettings
from controlroom.stack import toml_dump
from telephony import api
from telephony.api import EngineStats
from telephony.workers import WORKER_DIED, WorkerBook, sum_stats, worker_settings
from tests.config.test_check_config import CLI, base, both


def test_default_is_one_in_process_engine() -> None:
    """Without the key, the engine runs in the service process."""
    assert SipSettings().engine_workers == 1


@pytest.mark.parametrize(("workers", "rtp", "message"), [
    (0, (40000, 40099), "sip.engine_workers: must be 1..64, got 0"),
    (65, (40000, 49999), "sip.engine_workers: must be 1..64, got 65"),
    (4, (40000, 40010), "sip.engine_workers: 4 workers leave 2 RTP ports each"),
])
def test_bad_worker_counts_are_refused_naming_the_key(tmp_path: Path, workers: int,
                                                      rtp: tuple[int, int], message: str) -> None:
    """Out-of-range counts and a range too small to split are refused with the key."""
    data = base(tmp_path)
    data["sip"].update(engine_workers=workers, rtp_port_min=rtp[0], rtp_port_max=rtp[1])
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert message in str(err.value)


def test_check_config_names_a_busy_worker_port(tmp_path: Path) -> None:
    """Worker 1 binds sip.port + 1: a port another process holds fails check-config
    and serve alike, naming sip.engine_workers."""
    data = base(tmp_path)
    data["sip"]["engine_workers"] = 2
    port = data["sip"]["port"] + 1
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    try:
        check, serve = both(tmp_path, data)
    finally:
        udp.close()
    for r in (check, serve):
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"sip.engine_workers: worker 1 needs port {port}: 127.0.0.1:{port} is " \
               "already in use" in r.stderr
        assert "Traceback" not in r.stderr


def test_check_config_refuses_workers_with_a_registered_line(tmp_path: Path) -> None:
    """Every worker would register the same account: refused."""
    data = base(tmp_path)
    data["sip"]["engine_workers"] = 2
    data["lines"].append({"name": "reg", "numbers": ["555"], "priority": 1, "mode": "registered",
                          "registrar": "sip:127.0.0.1:5999", "username": "u", "password": "p"})
    p = tmp_path / "c.toml"
    p.write_text(toml_dump(data))
    r = subprocess.run([*CLI, "check-config", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "sip.engine_workers: must be 1 with a registered line (lines[1] 'reg')" in r.stderr


def test_worker_settings_split_ports_and_rtp_range() -> None:
    """Each worker gets port + i, tls_port + i, a disjoint even-aligned RTP share."""
    sip = SipSettings(port=5080, tls_port=5061, rtp_port_min=20000, rtp_port_max=29999,
                      engine_workers=3, max_calls=400)
    parts = [worker_settings(sip, i, 3) for i in range(3)]
    assert [p.port for p in parts] == [5080, 5081, 5082]
    assert [p.tls_port for p in parts] == [5061, 5062, 5063]
    assert [(p.rtp_port_min, p.rtp_port_max) for p in parts] == [
        (20000, 23331), (23332, 26663), (26664, 29995)]
    assert all(p.engine_workers == 1 and p.max_calls == 134 for p in parts)
    assert worker_settings(SipSettings(port=0, engine_workers=2), 1, 2).port == 0


def test_dead_worker_ends_its_calls_then_its_legs() -> None:
    """A dead worker's calls end (system, WORKER_DIED) before their legs: a ringing leg
    fails, an answered one ends; the other worker's calls are untouched."""
    book = WorkerBook()
    for w, cid in ((0, "n-w0-c1"), (1, "n-w1-c1"), (1, "n-w1-c2")):
        book.seen(w, api.CallArrived(at=1.0, call_id=cid, line="999", dialled="999",
                                     caller="1", display_name="", source="", sip_call_id="x",
                                     codec="PCMA"))
    book.offered(1, "n-w1-c1", "n-w1-p1")
    book.offered(1, "n-w1-c2", "n-w1-p2")
    book.seen(1, api.LegAnswered(at=2.0, call_id="n-w1-c1", leg_id="n-w1-p1"))
    book.seen(1, api.CallEnded(at=3.0, call_id="n-w1-c9", by="caller", reason="bye"))
    out = book.died(1, 5.0)
    assert out == [
        api.CallEnded(at=5.0, call_id="n-w1-c1", by="system", reason=WORKER_DIED),
        api.CallEnded(at=5.0, call_id="n-w1-c2", by="system", reason=WORKER_DIED),
        api.LegEnded(at=5.0, call_id="n-w1-c1", leg_id="n-w1-p1", by="system"),
        api.LegFailed(at=5.0, call_id="n-w1-c2", leg_id="n-w1-p2", reason="error"),
    ]
    assert book.calls == {"n-w0-c1": 0} and book.legs == {}
    assert book.died(1, 6.0) == []


def test_stats_are_summed_and_the_worst_gap_kept() -> None:
    """Counters add up over workers; max_send_gap_ms is the worst of them."""
    a = EngineStats(calls_active=2, invites=10, rejected={503: 1}, max_send_gap_ms=12.0)
    b = EngineStats(calls_active=3, invites=5, rejected={503: 2, 486: 1}, max_send_gap_ms=30.0)
    total = sum_stats([a, b])
    assert (total.calls_active, total.invites, total.max_send_gap_ms) == (5, 15, 30.0)
    assert total.rejected == {503: 3, 486: 1}


class _FakeEngine:
    """Stands in for the worker's Engine: mints its own leg ids, reports synchronously."""

    def __init__(self, emit) -> None:  # noqa: ANN001
        self.emit = emit
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def offer(self, call_id: str, uri: str, *, timeout: float, caller_display: str = "") -> str:
        if call_id == "n-w0-gone":
            from telephony.errors import EngineError
            raise EngineError("no such call")
        # an event about the leg before offer() returns (the proxy id is mapped at flush)
        self.emit(api.LegRinging(at=1.0, call_id=call_id, leg_id="n-w0-l7-abc"))
        return "n-w0-l7-abc"

    def bridge(self, call_id: str, leg_id: str) -> None:
        self.calls.append(("bridge", (call_id, leg_id)))


async def test_worker_side_maps_leg_ids_both_ways() -> None:
    """In a worker, events name the proxy's leg id (even one reported inside offer()),
    commands naming it reach the engine with its own id, and an offer the engine
    refuses comes back as LegFailed(error) for the proxy's leg."""
    import asyncio
    import socket

    from telephony.workers import _WorkerEngine, read_frame

    a, b = socket.socketpair()
    r1, w1 = await asyncio.open_connection(sock=a)
    r2, w2 = await asyncio.open_connection(sock=b)
    side = _WorkerEngine(r1, w1)
    side.out.hold = False
    fake = _FakeEngine(side.on_event)
    side.engine = fake
    side._command(("offer", "n-w0-p1", "n-w0-c1", "sip:h1@x", 10.0, ""))
    side._command(("cmd", "bridge", ("n-w0-c1", "n-w0-p1"), {}))
    side._command(("offer", "n-w0-p2", "n-w0-gone", "sip:h1@x", 10.0, ""))
    side.out.flush()
    msgs = await asyncio.wait_for(read_frame(r2), 5)
    assert [m[1] for m in msgs] == [
        api.LegRinging(at=1.0, call_id="n-w0-c1", leg_id="n-w0-p1"),
        api.LegFailed(at=msgs[1][1].at, call_id="n-w0-gone", leg_id="n-w0-p2", reason="error"),
    ]
    assert fake.calls == [("bridge", ("n-w0-c1", "n-w0-l7-abc"))]
    for w in (w1, w2):
        w.close()

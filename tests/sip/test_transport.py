"""The SIP socket under load: bursts drained in bounded batches, priority order within a
batch, and overload shedding of new non-emergency INVITEs (999 always served)."""

from __future__ import annotations

import asyncio
import socket
import time

from telephony import api
from telephony.sip.message import Response, parse
from telephony.transport import BATCH, open_sip_socket, prioritise

from .peer import in_dialog, invite
from .rigs import Rig

BURST = 2000


def _options(port: int, engine_port: int, n: int) -> bytes:
    return (f"OPTIONS sip:999@127.0.0.1:{engine_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKburst{n}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\n"
            f"To: <sip:999@127.0.0.1>\r\nCall-ID: burst-{n}\r\nCSeq: {n + 1} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


async def test_burst_queued_while_loop_blocked_is_drained_in_few_iterations(rig: Rig) -> None:
    """2000 OPTIONS (fewer if rmem_max is small) queued while the loop is blocked are all
    answered 200 once, read in batches of at most BATCH, in far fewer loop iterations
    than datagrams (asyncio's DatagramProtocol reads one per iteration)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        raw.bind(("127.0.0.1", 0))
        port = raw.getsockname()[1]
        sock = rig.engine._sock
        assert sock is not None and sock.sock is not None
        # a machine with a small net.core.rmem_max (CI) cannot queue 2000: send what fits
        room = min(sock.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                   raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        burst = min(BURST, room // 1536)  # ~1.3 KB of buffer per small datagram
        assert burst > BATCH
        before = rig.engine.sip_counters.get("requests", 0)
        # no await between the sends: the loop is blocked, everything queues in the kernel
        for n in range(burst):
            raw.sendto(_options(port, rig.engine.sip_port, n), ("127.0.0.1", rig.engine.sip_port))
        iterations = 0
        deadline = time.monotonic() + 10
        while rig.engine.sip_counters.get("requests", 0) - before < burst:
            assert time.monotonic() < deadline, "burst not drained in 10 s"
            await asyncio.sleep(0)
            iterations += 1
        assert iterations <= burst // 10
        assert sock.max_batch == BATCH
        assert sock.kernel_drops == 0
        raw.settimeout(2.0)
        seen: dict[str, int] = {}
        for _ in range(burst):
            msg = parse(raw.recv(65535))
            assert isinstance(msg, Response) and msg.status == 200
            seen[msg.call_id] = seen.get(msg.call_id, 0) + 1
        assert seen == {f"burst-{n}": 1 for n in range(burst)}
        raw.settimeout(0.2)
        try:
            extra = raw.recv(65535)
        except TimeoutError:
            extra = b""
        assert extra == b""
        assert sock.handler_errors == 0
    finally:
        raw.close()


async def test_overload_sheds_101_but_serves_999(rig: Rig) -> None:
    """INVITEs that waited past overload_wait: the 101 one gets 503 + Retry-After at once
    (no media allocated), the 999 one is answered 200; the shed one is counted."""
    p = rig.peer
    text101, cid101, _ = invite(p, rig.engine.sip_port, number="101", from_tag="t101")
    text999, cid999, _ = invite(p, rig.engine.sip_port, number="999", from_tag="t999")
    allocated = len(rig.media.streams)
    p.send(text101, rig.engine.sip_port)
    p.send(text999, rig.engine.sip_port)
    time.sleep(0.4)  # noqa: ASYNC251 - block the loop: both INVITEs wait 400 ms
    finals: dict[str, Response] = {}
    while len(finals) < 2:
        msg = await p.recv()
        assert isinstance(msg, Response)
        if msg.status >= 200:
            finals[msg.call_id] = msg
    assert finals[cid101].status == 503
    assert finals[cid101].get("Retry-After") == str(rig.engine.settings.retry_after)
    assert finals[cid999].status == 200
    assert rig.engine.sip_counters["overload_rejected"] == 1
    assert rig.engine.sip_counters["max_rx_wait_ms"] >= 400
    [rejected] = rig.of(api.CallRejected)
    assert (rejected.line, rejected.status) == ("101", 503)
    assert [a.line for a in rig.of(api.CallArrived)] == ["999"]
    assert len(rig.media.streams) == allocated + 1  # only the 999 call got a port


async def test_no_shedding_when_not_behind(rig: Rig) -> None:
    """A 101 INVITE handled promptly is answered 200 and nothing is counted as shed."""
    ok, _ = await rig.answered_call(number="101")
    assert ok.status == 200
    assert rig.engine.sip_counters["overload_rejected"] == 0


async def test_in_dialog_bye_handled_before_queued_new_invites(rig: Rig) -> None:
    """During overload a BYE queued behind new INVITEs is handled first (its 200 is the
    first answer out) and is never shed; the new 101 INVITEs are refused 503."""
    p = rig.peer
    ok, call_id = await rig.answered_call(number="101", from_tag="est")
    await rig.wait_for(api.CallArrived)
    texts = [invite(p, rig.engine.sip_port, number="101", from_tag=f"n{k}")[0] for k in range(5)]
    for t in texts:
        p.send(t, rig.engine.sip_port)
    p.send(in_dialog("BYE", p, rig.engine.sip_port, ok, cseq=2, from_tag="est"),
           rig.engine.sip_port)
    time.sleep(0.35)  # noqa: ASYNC251 - block the loop so everything queues
    first = await p.recv()
    assert isinstance(first, Response)
    assert (first.status, first.cseq) == (200, (2, "BYE"))
    statuses = []
    while len(statuses) < 5:
        msg = await p.recv()
        assert isinstance(msg, Response)
        if msg.status >= 200:
            statuses.append(msg.status)
    assert statuses == [503] * 5
    await rig.wait_for(api.CallEnded)
    assert rig.engine.sip_counters["overload_rejected"] == 5


def test_prioritise_orders_in_dialog_first_and_keeps_cancel_after_its_invite() -> None:
    """Responses/ACK/BYE/CANCEL go first in arrival order, the rest after in arrival
    order; a CANCEL for an INVITE in the same batch stays behind that INVITE."""
    a = ("127.0.0.1", 5060)

    def d(text: str) -> tuple[bytes, tuple[str, int], float]:
        return text.encode(), a, 0.0

    inv1 = d("INVITE sip:1@x SIP/2.0\r\nCall-ID: one\r\n\r\n")
    inv2 = d("INVITE sip:2@x SIP/2.0\r\ni: two\r\n\r\n")
    opt = d("OPTIONS sip:x SIP/2.0\r\nCall-ID: o\r\n\r\n")
    bye = d("BYE sip:x SIP/2.0\r\nCall-ID: b\r\n\r\n")
    ack = d("ACK sip:x SIP/2.0\r\nCall-ID: k\r\n\r\n")
    resp = d("SIP/2.0 180 Ringing\r\nCall-ID: r\r\n\r\n")
    cancel2 = d("CANCEL sip:2@x SIP/2.0\r\ncall-id:  two \r\n\r\n")
    cancel9 = d("CANCEL sip:9@x SIP/2.0\r\nCall-ID: nine\r\n\r\n")
    batch = [inv1, opt, bye, inv2, cancel2, ack, resp, cancel9]
    assert prioritise(batch) == [bye, ack, resp, cancel9, inv1, opt, inv2, cancel2]
    assert prioritise([inv1, opt]) == [inv1, opt]
    assert prioritise([]) == []


async def test_handler_exception_is_contained_and_reading_continues(rig: Rig) -> None:
    """A handler that raises on one datagram: counted, and the rest of the batch and
    later datagrams are still handled."""
    sock = rig.engine._sock
    assert sock is not None
    real = sock._on_datagram
    calls: list[bytes] = []

    def flaky(data: bytes, addr: tuple[str, int]) -> None:
        calls.append(data)
        if data == b"boom":
            raise RuntimeError("bug")
        real(data, addr)

    sock._on_datagram = flaky
    rig.peer.send(b"boom", rig.engine.sip_port)
    ok, _ = await rig.answered_call(number="999", from_tag="after-boom")
    assert ok.status == 200
    assert calls[0] == b"boom"
    assert sock.handler_errors == 1


async def test_handling_budget_yields_to_the_loop_and_keeps_order() -> None:
    """Slow handling (5 ms each, 10 ms budget): datagrams are spread over several loop
    iterations (a timer due meanwhile runs before the last is handled), none lost, in
    arrival order."""
    handled: list[bytes] = []
    timer_ran_after: list[int] = []

    def slow(data: bytes, addr: tuple[str, int]) -> None:
        time.sleep(0.005)
        handled.append(data)

    proto, port = await open_sip_socket("127.0.0.1", 0, slow)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert proto.budget == 0.010
        loop = asyncio.get_running_loop()
        for n in range(40):
            raw.sendto(b"OPTIONS %d" % n, ("127.0.0.1", port))
        loop.call_later(0.001, lambda: timer_ran_after.append(len(handled)))
        deadline = time.monotonic() + 5
        while len(handled) < 40:
            assert time.monotonic() < deadline
            await asyncio.sleep(0)
        assert handled == [b"OPTIONS %d" % n for n in range(40)]
        assert len(timer_ran_after) == 1 and timer_ran_after[0] < 40
        assert proto.deferred >= 5
        assert proto.backlog == 0
        assert proto.max_wakeup < 0.05
    finally:
        raw.close()
        proto.close()


async def test_request_missing_call_id_or_cseq_is_answered_400(rig: Rig) -> None:
    """An INVITE without Call-ID, or without CSeq, but with a good Via gets 400 naming
    the missing header, sent to the Via address with its branch (RFC 3261 §8.2); no call
    is started; an ACK missing Call-ID is never answered."""
    p = rig.peer
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(2.0)
        port = raw.getsockname()[1]
        for missing in ("Call-ID", "CSeq"):
            text, _, branch = invite(p, rig.engine.sip_port, number="999")
            text = text.replace(f"Via: SIP/2.0/UDP 127.0.0.1:{p.port}",
                                f"Via: SIP/2.0/UDP 127.0.0.1:{port}")
            text = "".join(ln for ln in text.splitlines(keepends=True)
                           if not ln.startswith(f"{missing}:"))
            raw.sendto(text.encode(), ("127.0.0.1", rig.engine.sip_port))
            await asyncio.sleep(0.1)  # same loop: let the engine read and answer
            data = raw.recv(65535)
            head = data.decode()
            assert head.startswith(f"SIP/2.0 400 Missing {missing} header\r\n")
            assert f";branch={branch}" in head
            assert "From: \"Jo Caller\" <sip:07700900123@127.0.0.1>;tag=ft1\r\n" in head
            assert ("Call-ID:" in head) == (missing != "Call-ID")
            assert ("CSeq: 1 INVITE" in head) == (missing != "CSeq")
        ack = (f"ACK sip:999@127.0.0.1:{rig.engine.sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKack1\r\n"
               "From: <sip:a@127.0.0.1>;tag=a\r\nTo: <sip:999@127.0.0.1>\r\n"
               "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        raw.sendto(ack.encode(), ("127.0.0.1", rig.engine.sip_port))
        await asyncio.sleep(0.2)
        raw.settimeout(0.1)
        try:
            extra = raw.recv(65535)
        except TimeoutError:
            extra = b""
        assert extra == b""
        assert rig.of(api.CallArrived) == []
        assert rig.engine.sip_counters["malformed"] == 3
    finally:
        raw.close()

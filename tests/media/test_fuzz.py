"""Hostile input: random datagrams never raise out of the parser, the stream or the tick."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.media import Codec, MediaEngine, RtpError, rtp
from telephony.media.dtmf import DtmfReceiver

from .test_session import free_even_range

header_like = st.builds(
    lambda b0, b1, rest: bytes([b0, b1]) + rest,
    st.sampled_from([0x80, 0x81, 0x8F, 0x90, 0xA0, 0xB5, 0x40, 0x00]),
    st.sampled_from([0x00, 0x08, 0x88, 0x65, 0xE5, 0x12]),
    st.binary(max_size=400),
)
datagrams = st.one_of(st.binary(max_size=400), header_like)


@settings(max_examples=500, deadline=None)
@given(datagrams)
def test_parse_returns_or_raises_rtp_error(data: bytes) -> None:
    """rtp.parse either returns a packet whose payload fits in the datagram or raises RtpError."""
    try:
        p = rtp.parse(data)
    except RtpError as e:
        assert e.reason
        return
    assert len(p.payload) + 12 <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=8)), max_size=30))
def test_dtmf_receiver_survives_anything(packets: list[tuple[int, bytes]]) -> None:
    """Random telephone-event payloads give digits or RtpError, never another exception."""
    rx = DtmfReceiver()
    for ts, payload in packets:
        try:
            digits = rx.feed(ts, payload)
        except RtpError:
            continue
        assert all(d in "0123456789*#ABCD" for d in digits)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(datagrams, min_size=1, max_size=40))
def test_stream_and_tick_survive_random_datagrams(tmp_path: Path, batch: list[bytes]) -> None:
    """Random datagrams into a stream (direct and batched) and ticks afterwards never raise."""

    async def run() -> None:
        lo, hi = free_even_range(2)
        eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
        a, b = eng.allocate(), eng.allocate()
        a.configure(remote=("127.0.0.1", 9), codec=Codec.PCMA, dtmf_pt=101)
        b.configure(remote=("127.0.0.1", 9), codec=Codec.PCMU, dtmf_pt=101)
        eng.bridge(a, b)
        src = ("127.0.0.1", 9)
        for d in batch:
            a.datagram_received(d, src, 1.0)
        eng._ingest([(b, d, src) for d in batch], 1.0)
        for n in range(5):
            eng._tick(n)
        a.close()
        b.close()
        assert eng.free_ports == 2

    asyncio.run(run())

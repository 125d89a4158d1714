"""The supervisor mix (telephony.media.mixer): pass-through of one source, sum of more."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from telephony.media.mixer import Mix


def src(values: list[int], raw: tuple[int, bytes] | None = None, closed: bool = False):
    return SimpleNamespace(rx_frame=np.array(values, dtype=np.int16), rx_raw=raw,
                           closed=closed)


def test_one_live_source_passes_through_bit_for_bit() -> None:
    """With one live source (the other closed) the listener gets its frame and raw codes."""
    a = src([1, -2, 3, -4], raw=(8, b"\x01\x02\x03\x04"))
    m = Mix([a, src([9, 9, 9, 9], closed=True)], 4)
    m.update()
    assert m.rx_frame is a.rx_frame and m.rx_raw == (8, b"\x01\x02\x03\x04")


def test_two_sources_are_summed_and_clipped_not_wrapped() -> None:
    """Two voices add up in 32 bits and clip at the 16-bit limits; no raw pass-through."""
    m = Mix([src([1000, 30000, -30000, 0]), src([-500, 10000, -10000, 7])], 4)
    m.update()
    assert m.rx_frame.tolist() == [500, 32767, -32768, 7] and m.rx_raw is None
    assert m.rx_frame.dtype == np.int16


def test_no_live_source_is_silence() -> None:
    """Every source gone: the listener is sent silence."""
    m = Mix([src([5, 5], closed=True)], 2)
    m.update()
    assert m.rx_frame.tolist() == [0, 0] and m.rx_raw is None


def test_heard_adds_the_supervisor_only_while_the_listener_hears_them() -> None:
    """The recorded 'caller hears' channel (mixer.Heard): the handler alone, the handler
    plus the supervisor (clipped) while the caller's peer is a mix with the supervisor in
    it, the handler alone again once the caller is bridged back or the supervisor left;
    closed and the jitter buffer are the handler's."""
    from telephony.media.mixer import Heard

    handler = src([1000, 30000, 3], raw=(8, b"abc"))
    handler._jb = "handler-jb"
    sup = src([-500, 10000, 4])
    caller = SimpleNamespace(peer=handler, closed=False)
    heard = Heard(handler, caller, sup)
    assert heard.rx_frame is handler.rx_frame and heard.rx_raw == (8, b"abc")   # whisper
    caller.peer = Mix([handler, sup], 3)                                          # barge
    assert heard.rx_frame.tolist() == [500, 32767, 7] and heard.rx_raw is None
    caller.peer = Mix([handler], 3)        # a mix without the supervisor: not heard
    assert heard.rx_frame is handler.rx_frame
    caller.peer = Mix([handler, sup], 3)
    sup.closed = True                                                             # left
    assert heard.rx_frame is handler.rx_frame
    assert heard.closed is False and heard._jb == "handler-jb"

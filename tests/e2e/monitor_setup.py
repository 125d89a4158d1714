"""What the two supervisor-monitoring tests share (test_monitor.py drives the desk's API,
test_monitor_browser.py the wallboard's buttons; test_consult.py measures tones the same
way): the tones each phone plays, the
supervisor's own SIPp phone registered through Kamailio, the caller with the RTP ports of
the three phones, and the measure of which tones each phone was sent in each mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from controlroom.stack import Stack
from harness import scenarios, speech
from harness.sipp import RtpCapture, Sipp

CALLER_HZ, HANDLER_HZ, SUPERVISOR_HZ = 440.0, 1000.0, 2200.0
PHASE_S = 3.0
"""How long each mode is held while the phones' audio is captured."""

# What each phone hears (tones measured on the wire), mode by mode.
EXPECTED = {
    "listen": {"caller": {HANDLER_HZ}, "handler": {CALLER_HZ},
               "supervisor": {CALLER_HZ, HANDLER_HZ}},
    "whisper": {"caller": {HANDLER_HZ}, "handler": {CALLER_HZ, SUPERVISOR_HZ},
                "supervisor": {CALLER_HZ, HANDLER_HZ}},
    "barge": {"caller": {HANDLER_HZ, SUPERVISOR_HZ}, "handler": {CALLER_HZ, SUPERVISOR_HZ},
              "supervisor": {CALLER_HZ, HANDLER_HZ}},
    # after stop the call goes on as before: the caller talks to the handler only again
    "after": {"caller": {HANDLER_HZ}, "handler": {CALLER_HZ}, "supervisor": set()},
}


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000.0
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def heard(pcm: np.ndarray, tones: tuple[float, ...] = (CALLER_HZ, HANDLER_HZ, SUPERVISOR_HZ)
          ) -> set[float]:
    """Which of ``tones`` are present in ``pcm``: those carrying over 5 % of its energy."""
    if len(pcm) < 800:
        return set()
    spec = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    total = spec.sum() or 1.0
    return {hz for hz in tones
            if spec[(freqs > hz - 20) & (freqs < hz + 20)].sum() / total > 0.05}


def received(packets: list[Any], port: int, start: float, end: float) -> np.ndarray:
    """What the phone on RTP ``port`` was sent between ``start`` and ``end`` (wall clock)."""
    got = sorted((p for p in packets if p.dst[1] == port and start <= p.time < end
                  and p.rtp.pt in (0, 8)), key=lambda p: p.time)
    if not got:
        return np.zeros(0, dtype=np.int16)
    codec = "PCMA" if got[0].rtp.pt == 8 else "PCMU"
    return speech.decode(b"".join(p.rtp.payload for p in got), codec)


async def supervisor_phone(st: Stack, tmp_path: Path, *, user: str, name: str,
                           seconds: float) -> Sipp:
    """A SIPp phone for the supervisor, registered as ``user``: it answers after 200 ms,
    plays the supervisor's tone for ``seconds`` and hangs up when the engine does."""
    clip = st.pcm_clip(tone(SUPERVISOR_HZ, seconds), name="supervisor")
    (tmp_path / name).mkdir()
    sup = Sipp(scenarios.handler(user=user, ring_ms=200, pcap=clip.pcap, hangup="remote"),
               calls=10, timeout=300, name=name, trace_msg=False, workdir=tmp_path / name)
    await asyncio.to_thread(lambda: st._exit.enter_context(sup))
    await asyncio.to_thread(st.kamailio.register, user, sup.contact(user))
    return sup


def call_in(st: Stack, sup: Sipp, *, seconds: float, talk_s: float) -> tuple[Any, dict[str, int]]:
    """A 999 call whose caller plays its tone for ``seconds``, and the RTP ports of the
    caller's, handler h1's and the supervisor's phones (what to capture)."""
    clip = st.pcm_clip(tone(CALLER_HZ, seconds), name="caller")
    caller = st.call("999", caller="07700900777", clip=clip, talk_s=talk_s)
    return caller, {"caller": caller.media_port, "handler": st.phones["h1"].media_port,
                    "supervisor": sup.media_port}


async def tones_heard(cap: RtpCapture, ports: dict[str, int],
                      marks: dict[str, tuple[float, float]]) -> dict[str, dict[str, set[float]]]:
    """For each mode's time span in ``marks``, the tones each phone was sent (read from the
    stopped capture ``cap``)."""
    packets = await asyncio.to_thread(cap.packets)
    return {mode: {who: heard(received(packets, port, *marks[mode]))
                   for who, port in ports.items()} for mode in marks}


async def hold(marks: dict[str, tuple[float, float]], mode: str, seconds: float = PHASE_S) -> None:
    """Keep the call as it is for ``seconds`` and mark that span as ``mode``'s (its first
    0.5 s left out: the mix and the phones' jitter buffers settle)."""
    start = time.time() + 0.5
    await asyncio.sleep(seconds)
    marks[mode] = (start, time.time())

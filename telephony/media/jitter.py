"""Receive-side jitter buffer: packets in, exactly one frame out per media-clock tick.

Theory of operation (pure: no clock, no socket; fed packets and ``pull()`` once per tick):

* Playout is a schedule in RTP timestamp units. The first packet of a source anchors
  ``position`` (the start of the next frame to play) at ``timestamp - min_delay``; every
  ``pull()`` returns the samples in ``[position, position + frame)`` and (normally)
  advances ``position`` by one frame, whatever arrived. N pulls always return N frames,
  so a recording's duration equals the call's.
* Packets are keyed on their (unwrapped) timestamp, so reordering is free and packets of
  any size (10/20/30/40 ms ptime) fill the window they cover. Wrap-around of the 16-bit
  sequence number and 32-bit timestamp is handled by unwrapping against ``position``.
* A packet whose samples all lie before ``position`` is *late* (dropped, counted); one
  whose sequence number was already seen is a *duplicate* (dropped, counted).
* Missing samples are silence. The first silent frame after audio fades linearly from
  the last played sample to zero over ``fade_samples`` so a loss never clicks; samples of
  packets that did arrive in time are returned untouched (bit-exact).
* A new SSRC, or a timestamp more than ``max_jump`` away from the schedule, is a new
  source: the buffer is flushed and re-anchored (counted as ``resyncs``).

Adaptation (jitter and sender clock drift). Each packet's *lead* is how early it came:
``timestamp - position`` at arrival (negative: late). Over windows of ``window``
packets we keep the smallest and largest lead:

* grow (one frame): a packet was late, or the smallest lead fell under ``grow_below``
  (a slow sender's clock drifting us towards lateness) - unless the largest lead is
  already at ``max_delay`` (the bound);
* shrink (one frame): the smallest lead stayed at or above ``min_delay + frame`` for a
  whole window (a fast sender's clock, or a jitter spike that passed).

An adjustment waits for a window with no data (silence or loss), where holding the
schedule for a tick or skipping an empty frame changes no audio. With continuous audio
(G.711 phones rarely use silence suppression) a grow caused by a *late* packet is forced
after ``grow_grace`` ticks (one faded silent frame, instead of losing a packet every few
ticks), and a shrink after ``shrink_grace`` ticks once the excess reaches two frames
(one frame of audio dropped, counted in ``skipped``: recorded evidence is only cut for
a real latency problem); a merely proactive grow (lead under ``grow_below``, nothing late yet) only
ever happens in silence, since forcing it would cost the same 20 ms gap as the loss it
tries to avoid. With 100 ppm drift that is one 20 ms adjustment every
~200 s, and latency stays bounded instead of growing by 0.36 s per hour.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["JitterBuffer", "PushResult", "silence"]

Pcm = npt.NDArray[np.int16]

_SILENCE: dict[int, Pcm] = {}
_SEEN = 512
"""Packets whose sequence numbers are remembered for the duplicate check (10 s at 20 ms)."""


def silence(samples: int) -> Pcm:
    """A shared read-only frame of zeros."""
    frame = _SILENCE.get(samples)
    if frame is None:
        frame = np.zeros(samples, dtype=np.int16)
        frame.setflags(write=False)
        _SILENCE[samples] = frame
    return frame


class PushResult:
    """What ``push`` did with a packet (string constants, cheap to compare)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    OVERFLOW = "overflow"
    """Dropped: the buffer already holds ``max_packets`` (a flood far ahead of playout)."""
    RESYNC = "resync"
    """Accepted as the first packet of a new source or after a timestamp jump."""


class JitterBuffer:
    """Reorders packets of one RTP stream and plays them out one frame per tick."""

    def __init__(self, *, frame_samples: int = 160, min_delay: int = 320, max_delay: int = 1600,
                 max_jump: int = 8000 * 2, fade_samples: int = 40, window: int = 50,
                 grow_below: int = 40, grow_grace: int = 25, shrink_grace: int = 500,
                 max_packets: int = 200) -> None:
        """Sizes are in samples (8 kHz: 160 = 20 ms), graces in ticks."""
        if frame_samples <= 0 or not 0 <= min_delay < max_delay:
            raise ValueError("need frame_samples > 0 and 0 <= min_delay < max_delay")
        self.frame = frame_samples
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_jump = max_jump
        self.fade_samples = min(fade_samples, frame_samples)
        self.window = window
        self.grow_below = grow_below
        self.grow_grace = grow_grace
        self.shrink_grace = shrink_grace
        self.max_packets = max_packets
        self._silence = silence(frame_samples)
        self._fade = (np.arange(self.fade_samples, 0, -1, dtype=np.float32)
                      / max(1, self.fade_samples))
        self.ssrc: int | None = None
        self.position: int | None = None
        """Unwrapped timestamp of the next frame ``pull()`` returns (None before any packet)."""
        self._nominal = min_delay  # anchor delay plus holds minus skips
        self.lead_min: int | None = None
        """Smallest lead (samples) over the last complete window of packets."""
        self.lead_max: int | None = None
        """Largest lead (samples) over the last complete window of packets."""
        self._keys: list[int] = []
        self._buf: dict[int, Pcm] = {}
        self._raw: dict[int, Any] = {}
        self.last_raw: Any = None
        """``raw`` of the packet the last ``pull`` returned whole, else None."""
        # sequence numbers of the last _SEEN packets (duplicate check): one bit per
        # 16-bit number plus a ring of the numbers in arrival order, 9 KB; a set and a
        # deque of int objects held ~35 KB per stream, most of a call's media heap
        self._seen = bytearray(8192)
        self._seen_ring = array("H", bytes(2 * _SEEN))
        self._seen_n = 0
        self._last_out: Pcm | None = None  # last frame played (its last sample starts a fade)
        self._win_min = self._win_max = 0
        self._win_n = 0
        # 2: grow (a packet was late: forced after grow_grace); 1: grow in silence only;
        # -1: shrink in silence only; -2: shrink (forced after shrink_grace)
        self._want = 0
        self._waited = 0
        # counters
        self.accepted = 0
        self.late = 0
        self.duplicates = 0
        self.overflows = 0
        self.resyncs = 0
        self.holds = 0
        """Schedule held one tick (delay grown by a frame)."""
        self.skips = 0
        """Schedule advanced an extra frame (delay shrunk by a frame)."""
        self.skipped = 0
        """Packets dropped by a forced skip."""
        self.frames_played = 0
        """Frames that carried at least one received sample."""
        self.frames_silent = 0
        """Frames with no received sample (loss, late, silence before the first packet)."""

    # ------------------------------------------------------------------ input
    def push(self, *, ssrc: int, seq: int, timestamp: int, pcm: Pcm,
             raw: Any = None) -> str:
        """Offer one decoded packet; returns a :class:`PushResult` constant.

        ``raw`` (optional, opaque) travels with the packet and is exposed as
        :attr:`last_raw` when ``pull`` returns exactly this packet's samples (the media
        engine passes the G.711 payload, so a bridge can forward it without re-encoding).
        """
        return self.add(ssrc, seq, timestamp, pcm, raw)

    def add(self, ssrc: int, seq: int, timestamp: int, pcm: Pcm, raw: Any = None) -> str:
        """``push`` with positional arguments (the receive path's call, once per packet:
        a keyword call costs measurably more)."""
        if ssrc != self.ssrc or self.position is None:
            self._anchor(ssrc, timestamp)
            self._store(timestamp, seq, pcm, raw)  # anchored: timestamp is its own unwrapped value
            return PushResult.RESYNC
        # (this runs for every packet: _unwrap and _store are written out in line)
        pos = self.position
        lead = (timestamp - pos) & 0xFFFFFFFF
        if lead >= 0x80000000:
            lead -= 0x100000000
        ext = pos + lead
        if self._seen[seq >> 3] & (1 << (seq & 7)) or ext in self._buf:
            self.duplicates += 1
            return PushResult.DUPLICATE
        if lead > self.max_jump or -lead > self.max_jump:
            self._anchor(ssrc, timestamp)
            self._store(timestamp, seq, pcm, raw)
            return PushResult.RESYNC
        # _observe(lead), its per-packet part written out
        n = self._win_n
        if n == 0:
            self._win_min = self._win_max = lead
        elif lead < self._win_min:
            self._win_min = lead
        elif lead > self._win_max:
            self._win_max = lead
        n += 1
        if n < self.window:
            self._win_n = n
        else:
            self._window_done()
        if lead + len(pcm) <= 0:
            self.late += 1
            self._remember(seq)
            if self._want <= 1 and self._may_grow():
                self._want, self._waited = 2, 0
            return PushResult.LATE
        keys = self._keys
        if len(keys) >= self.max_packets:
            self.overflows += 1  # far-future flood: keep what is due soonest
            return PushResult.OVERFLOW
        self.accepted += 1
        # _remember(seq), written out
        seen, n = self._seen, self._seen_n
        i = n % _SEEN
        if n >= _SEEN:
            old = self._seen_ring[i]
            seen[old >> 3] &= ~(1 << (old & 7))
        self._seen_ring[i] = seq
        seen[seq >> 3] |= 1 << (seq & 7)
        self._seen_n = n + 1
        self._buf[ext] = pcm
        if raw is not None:
            self._raw[ext] = raw
        if not keys or ext > keys[-1]:
            keys.append(ext)
        else:
            bisect.insort(keys, ext)
        return PushResult.ACCEPTED

    def _observe(self, lead: int) -> None:
        if self._win_n == 0 or lead < self._win_min:
            self._win_min = lead
        if self._win_n == 0 or lead > self._win_max:
            self._win_max = lead
        self._win_n += 1
        if self._win_n >= self.window:
            self._window_done()

    def _window_done(self) -> None:
        """A window of ``window`` leads is complete: decide whether to grow or shrink."""
        self.lead_min, self.lead_max = self._win_min, self._win_max
        self._win_n = 0
        if self._want == 2:
            return  # a late packet already asked for a (forced) grow
        frame, lead_min = self.frame, self.lead_min
        if lead_min < self.grow_below and self._may_grow():
            want = 1
        elif lead_min >= self.min_delay + 2 * frame:
            want = -2  # 40 ms too much: forced after shrink_grace
        elif lead_min >= self.min_delay + frame:
            want = -1  # 20 ms too much: only in silence
        else:
            want = 0  # (a wish the last window no longer supports is dropped)
        if want != self._want:
            self._want, self._waited = want, 0

    def _may_grow(self) -> bool:
        top = self._win_max if self._win_n else (self.lead_max or 0)
        return top + self.frame <= self.max_delay

    def _adjusted(self) -> None:
        self._want = 0
        self._win_n = 0  # leads measured before the change are off by a frame now
        self.lead_min = self.lead_max = None

    def _anchor(self, ssrc: int, timestamp: int) -> None:
        if self.ssrc is not None:
            self.resyncs += 1
        self.ssrc = ssrc
        self._nominal = self.min_delay
        self.position = timestamp - self.min_delay
        self._keys.clear()
        self._buf.clear()
        self._raw.clear()
        if self._seen_n:  # (a fresh buffer's first packet: nothing to clear)
            self._seen[:] = bytes(8192)
        self._seen_n = 0
        self._adjusted()

    def _unwrap(self, timestamp: int) -> int:
        pos = self.position
        assert pos is not None
        diff = (timestamp - pos) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 0x100000000
        return pos + diff

    def _remember(self, seq: int) -> None:
        seen, ring, n = self._seen, self._seen_ring, self._seen_n
        i = n % _SEEN
        if n >= _SEEN:  # forget the oldest (well inside the 16-bit space: wrap is safe)
            old = ring[i]
            seen[old >> 3] &= ~(1 << (old & 7))
        ring[i] = seq
        seen[seq >> 3] |= 1 << (seq & 7)
        self._seen_n = n + 1

    def _store(self, ext: int, seq: int, pcm: Pcm, raw: Any) -> None:
        self.accepted += 1
        self._remember(seq)
        self._buf[ext] = pcm
        if raw is not None:
            self._raw[ext] = raw
        if not self._keys or ext > self._keys[-1]:
            self._keys.append(ext)
        else:
            bisect.insort(self._keys, ext)

    # ----------------------------------------------------------------- output
    def pull(self) -> Pcm:
        """The next frame (``frame_samples`` int16); do not modify the returned array."""
        pos = self.position
        if pos is None:
            self.frames_silent += 1
            return self._silence
        frame = self.frame
        end = pos + frame
        keys, buf = self._keys, self._buf
        # drop whatever ended before the window (leftovers of a forced skip)
        while keys and keys[0] + len(buf[keys[0]]) <= pos:
            self._raw.pop(keys[0], None)
            del buf[keys.pop(0)]
            self.skipped += 1
        self.last_raw = None
        empty = not keys or keys[0] >= end
        want = self._want
        if want:
            self._waited += 1
            if want > 0 and (empty or (want == 2 and self._waited >= self.grow_grace)):
                self.holds += 1
                self._nominal += frame
                self._adjusted()
                return self._silent_frame()  # position not advanced: one frame later
            if want < 0 and ((empty and not (keys and keys[0] < end + frame))
                             or (want == -2 and self._waited >= self.shrink_grace)):
                self.skips += 1
                self._nominal -= frame
                self._adjusted()
                self.position = pos = pos + frame  # the skipped frame's data is dropped
                end = pos + frame
                while keys and keys[0] + len(buf[keys[0]]) <= pos:
                    self._raw.pop(keys[0], None)
                    del buf[keys.pop(0)]
                    self.skipped += 1
                empty = not keys or keys[0] >= end
        if empty:
            self.position = end
            return self._silent_frame()
        k0 = keys[0]
        pcm = buf[k0]
        if k0 == pos and len(pcm) == frame:  # the common case: one aligned packet
            keys.pop(0)
            del buf[k0]
            out = pcm
            if self._raw:
                self.last_raw = self._raw.pop(k0, None)
        else:
            out = np.zeros(frame, dtype=np.int16)
            i = 0
            while i < len(keys) and keys[i] < end:
                k = keys[i]
                pcm = buf[k]
                a, b = max(k, pos), min(k + len(pcm), end)
                out[a - pos:b - pos] = pcm[a - k:b - k]
                if k + len(pcm) <= end:
                    keys.pop(i)
                    del buf[k]
                    self._raw.pop(k, None)
                else:
                    i += 1
        self.position = end
        self.frames_played += 1
        self._last_out = out  # (read only if a silent frame follows: no per-tick indexing)
        return out

    def _silent_frame(self) -> Pcm:
        self.frames_silent += 1
        last = self._last_out
        if last is not None:
            self._last_out = None
            sample = int(last[-1])
            if sample and self.fade_samples:
                out = np.zeros(self.frame, dtype=np.int16)
                out[:self.fade_samples] = (self._fade * sample).astype(np.int16)
                return out
        return self._silence

    @property
    def delay(self) -> int:
        """Current playout delay in samples: the largest lead seen over the last window
        (how long the earliest packets wait), else the nominal delay since the last change."""
        return self.lead_max if self.lead_max is not None else self._nominal

    @property
    def depth(self) -> int:
        """Samples buffered ahead of the playout position (0 if empty)."""
        if not self._keys or self.position is None:
            return 0
        last = self._keys[-1]
        return max(0, last + len(self._buf[last]) - self.position)

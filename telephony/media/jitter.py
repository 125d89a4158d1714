"""Receive-side jitter buffer: packets in, exactly one frame out per media-clock tick.

Theory of operation (pure: no clock, no socket; fed packets and ``pull()`` once per tick):

* Playout is a schedule in RTP timestamp units. The first packet of a source anchors
  ``position`` (the start of the next frame to play) at ``timestamp - delay``; every
  ``pull()`` returns the samples in ``[position, position + frame)`` and advances
  ``position`` by one frame, whatever arrived. So timing is preserved: N pulls always
  return N frames, and a recording's duration equals the call's.
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
* Adaptive delay: it starts at ``min_delay``; each late packet raises the target by one
  frame up to ``max_delay``. The delay only changes where the output is silent anyway
  (the window holds no data): growing holds ``position`` for one tick, shrinking (after
  ``shrink_after`` quiet frames) skips one empty frame. Audio is never cut or stretched.
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np
import numpy.typing as npt

__all__ = ["JitterBuffer", "PushResult", "silence"]

Pcm = npt.NDArray[np.int16]

_SILENCE: dict[int, Pcm] = {}


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
    RESYNC = "resync"
    """Accepted as the first packet of a new source or after a timestamp jump."""


class JitterBuffer:
    """Reorders packets of one RTP stream and plays them out one frame per tick."""

    def __init__(self, *, frame_samples: int = 160, min_delay: int = 320, max_delay: int = 960,
                 max_jump: int = 8000 * 2, fade_samples: int = 40, shrink_after: int = 500,
                 max_packets: int = 200) -> None:
        """Sizes are in samples (8 kHz: 160 = 20 ms). ``max_packets`` bounds memory."""
        if frame_samples <= 0 or not 0 <= min_delay <= max_delay:
            raise ValueError("need frame_samples > 0 and 0 <= min_delay <= max_delay")
        self.frame = frame_samples
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_jump = max_jump
        self.fade_samples = min(fade_samples, frame_samples)
        self.shrink_after = shrink_after
        self.max_packets = max_packets
        self._silence = silence(frame_samples)
        self._fade = (np.arange(self.fade_samples, 0, -1, dtype=np.float32)
                      / max(1, self.fade_samples))
        self.ssrc: int | None = None
        self.position: int | None = None
        """Unwrapped timestamp of the next frame ``pull()`` returns (None before any packet)."""
        self.delay = min_delay
        """Current playout delay in samples."""
        self.target = min_delay
        """Delay the buffer is moving towards (raised by late packets)."""
        self._keys: list[int] = []
        self._buf: dict[int, Pcm] = {}
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._last_sample = 0
        self._quiet = 0
        # counters
        self.accepted = 0
        self.late = 0
        self.duplicates = 0
        self.resyncs = 0
        self.overflows = 0
        self.frames_played = 0
        """Frames that carried at least one received sample."""
        self.frames_silent = 0
        """Frames with no received sample (loss, late, silence before the first packet)."""

    # ------------------------------------------------------------------ input
    def push(self, *, ssrc: int, seq: int, timestamp: int, pcm: Pcm) -> str:
        """Offer one decoded packet; returns a :class:`PushResult` constant."""
        if ssrc != self.ssrc or self.position is None:
            self._anchor(ssrc, timestamp)
            self._store(timestamp, seq, pcm)  # anchored: timestamp is its own unwrapped value
            return PushResult.RESYNC
        ext = self._unwrap(timestamp)
        if seq in self._seen or ext in self._buf:
            self.duplicates += 1
            return PushResult.DUPLICATE
        pos = self.position
        if ext - pos > self.max_jump or pos - ext > self.max_jump:
            self._anchor(ssrc, timestamp)
            self._store(self._unwrap(timestamp), seq, pcm)
            return PushResult.RESYNC
        if ext + len(pcm) <= pos:
            self.late += 1
            self._remember(seq)
            self.target = min(self.max_delay, self.target + self.frame)
            self._quiet = 0
            return PushResult.LATE
        if len(self._keys) >= self.max_packets:
            self.overflows += 1  # far-future flood: keep what is due soonest
            return PushResult.LATE
        self._store(ext, seq, pcm)
        return PushResult.ACCEPTED

    def _anchor(self, ssrc: int, timestamp: int) -> None:
        if self.ssrc is not None:
            self.resyncs += 1
        self.ssrc = ssrc
        self.delay = self.target
        self.position = timestamp - self.delay
        self._keys.clear()
        self._buf.clear()
        self._seen.clear()
        self._seen_order.clear()

    def _unwrap(self, timestamp: int) -> int:
        pos = self.position
        assert pos is not None
        diff = (timestamp - pos) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 0x100000000
        return pos + diff

    def _remember(self, seq: int) -> None:
        self._seen.add(seq)
        self._seen_order.append(seq)
        if len(self._seen_order) > 512:  # well inside the 16-bit space, so wrap is safe
            self._seen.discard(self._seen_order.popleft())

    def _store(self, ext: int, seq: int, pcm: Pcm) -> None:
        self.accepted += 1
        self._remember(seq)
        self._buf[ext] = pcm
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
        keys = self._keys
        # drop whatever ended before the window (partially consumed leftovers)
        while keys and keys[0] + len(self._buf[keys[0]]) <= pos:
            del self._buf[keys.pop(0)]
        if not keys or keys[0] >= end:
            return self._empty_window(pos)
        self._quiet += 1
        if self._quiet >= self.shrink_after and self.target > self.min_delay:
            self.target -= frame
            self._quiet = 0
        k0 = keys[0]
        pcm = self._buf[k0]
        if k0 == pos and len(pcm) == frame:  # the common case: one aligned packet
            keys.pop(0)
            del self._buf[k0]
            out = pcm
        else:
            out = np.zeros(frame, dtype=np.int16)
            i = 0
            while i < len(keys) and keys[i] < end:
                k = keys[i]
                pcm = self._buf[k]
                a, b = max(k, pos), min(k + len(pcm), end)
                out[a - pos:b - pos] = pcm[a - k:b - k]
                if k + len(pcm) <= end:
                    keys.pop(i)
                    del self._buf[k]
                else:
                    i += 1
        self.position = end
        self.frames_played += 1
        self._last_sample = int(out[-1])
        return out

    def _empty_window(self, pos: int) -> Pcm:
        self.frames_silent += 1
        frame = self.frame
        if self.delay < self.target:
            self.delay += frame  # hold: the schedule slips one frame later, during silence
        elif (self.delay > self.target
              and not (self._keys and self._keys[0] < pos + 2 * frame)):
            self.delay -= frame  # skip an empty frame: the schedule moves one frame earlier
            self.position = pos + 2 * frame
        else:
            self.position = pos + frame
        if self._last_sample and self.fade_samples:
            out = np.zeros(frame, dtype=np.int16)
            out[:self.fade_samples] = (self._fade * self._last_sample).astype(np.int16)
            self._last_sample = 0
            return out
        return self._silence

    @property
    def depth(self) -> int:
        """Samples buffered ahead of the playout position (0 if empty)."""
        if not self._keys or self.position is None:
            return 0
        last = self._keys[-1]
        return max(0, last + len(self._buf[last]) - self.position)

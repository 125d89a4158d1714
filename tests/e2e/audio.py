"""Bit-exact comparison of what was sent with what a recording holds.

The jitter buffer may stretch playout under load (a late packet is heard one tick later
and silence fills the gap), so the check is frame by frame: every 20 ms frame of speech
that was sent must occur in the recording bit for bit, in order, at a non-decreasing
offset. Nothing is compared with a tolerance.
"""

from __future__ import annotations

import numpy as np

FRAME = 160


def frames_found_in_order(sent: np.ndarray, recorded: np.ndarray, *,
                          silence: int = 8) -> tuple[int, int, int]:
    """Return (speech frames sent, frames found exactly in order, playout shifts)."""
    frames = [sent[i:i + FRAME] for i in range(0, len(sent) - FRAME + 1, FRAME)]
    speech = [(i, f) for i, f in enumerate(frames) if np.abs(f.astype(np.int32)).max() > silence]
    if not speech:
        raise ValueError("nothing but silence was sent")
    first_i, first = speech[0]
    starts = np.flatnonzero(recorded[: len(recorded) - FRAME + 1] == first[0])
    base = next((int(s) for s in starts if np.array_equal(recorded[s:s + FRAME], first)), None)
    if base is None:
        return len(speech), 0, 0
    found, shift, shifts, last_pos = 0, 0, 0, -1
    for i, f in speech:
        expect = base + (i - first_i) * FRAME + shift
        for extra in range(0, 50 * FRAME + 1, FRAME):  # up to 1 s of added delay
            pos = expect + extra
            if pos > last_pos and np.array_equal(recorded[pos:pos + FRAME], f):
                if extra:
                    shifts += 1
                    shift += extra
                found += 1
                last_pos = pos
                break
    return len(speech), found, shifts
